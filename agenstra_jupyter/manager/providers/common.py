"""Helpers shared by the providers that run agent programs (cli, acp)."""

from __future__ import annotations

import asyncio
import os
from pathlib import PurePosixPath
from typing import Any

from ..runtimes.sandbox import loader_variable

MAX_ERROR_CHARS = 300
# The manager's and Jupyter's own credentials: never handed to an agent by name.
RESERVED_ENV_PREFIXES = ("AGENSTRA_", "JUPYTER", "JPY_")


def manager_variable(name: str) -> str | None:
    """A variable of the manager's environment that config may pass to an agent."""
    if name.upper().startswith(RESERVED_ENV_PREFIXES):
        return None
    return os.environ.get(name)


def check_str_list(config: dict[str, Any], key: str) -> None:
    value = config.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"config.{key} must be a list of strings")


def check_str_dict(config: dict[str, Any], key: str) -> None:
    value = config.get(key, {})
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"config.{key} must map strings to strings")


def check_program_config(config: dict[str, Any]) -> None:
    """`env`, `passEnv` and `files` (settings written into the workspace)."""
    check_str_list(config, "passEnv")
    for name in [*config.get("passEnv", []), config.get("apiKeyEnv", "")]:
        if isinstance(name, str) and name.upper().startswith(RESERVED_ENV_PREFIXES):
            raise ValueError(f"{name} is the manager's own variable: it is never passed on")
    for key in ("env", "files"):
        check_str_dict(config, key)
    for name in config.get("env", {}):
        if loader_variable(name):
            raise ValueError(f"config.env may not set {name} (it would steer the sandbox)")
    for path in config.get("files", {}):
        parts = PurePosixPath(path).parts
        if not parts or PurePosixPath(path).is_absolute() or ".." in parts:
            raise ValueError("config.files paths must be relative to the workspace")


def program_environment(config: dict[str, Any], base: dict[str, str] | None = None) -> dict:
    """The agent program's extra environment: named manager variables, then config.env."""
    env = dict(base or {})
    for name in config.get("passEnv", []):
        if (value := manager_variable(name)) is not None:
            env[name] = value
    env.update(config.get("env", {}))
    return env


async def read_tail(reader: asyncio.StreamReader, keep: int) -> str:
    """Read a stream to its end, keeping its last `keep` bytes (for error messages)."""
    kept = b""
    while chunk := await reader.read(65536):
        kept = (kept + chunk)[-keep:]
    return kept.decode(errors="replace")


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def short_error(message: str) -> str:
    """One line, at most MAX_ERROR_CHARS: what an error turn shows."""
    message = " ".join(message.split())
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 1] + "…"

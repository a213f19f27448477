"""Helpers shared by the providers that run agent programs (cli, acp)."""

from __future__ import annotations

import asyncio
import os
from pathlib import PurePosixPath
from typing import Any

from ..models import AgentRecord
from ..runtimes import ExecResult, Runtime
from ..runtimes.sandbox import loader_variable

# Run inside the agent's runtime, so a path means what it means to the agent: the nearest
# existing ancestor is resolved (symlinks followed), the rest is appended; a last component
# that is a symlink is refused (O_NOFOLLOW), a dangling one on the way is not judged.
# Modes: resolve (print it), read, write (stdin).
# Exit codes: 3 a symlink, 4 outside the workspace, 5 missing, 6 a path it will not judge.
FILE_SCRIPT = r"""
mode=$1 path=$2 root=$3 rest=
case "$path" in /*) ;; *) path="$root/$path";; esac
t=$path
while [ ! -d "$t" ]; do
  # a directory on the way that is a symlink leading nowhere the agent can see: unjudged
  [ -n "$rest" ] && [ -L "$t" ] && exit 6
  rest="/$(basename -- "$t")$rest"; t=$(dirname -- "$t")
done
case "$rest/" in */../*|*/./*) exit 6;; esac
real="$(cd -- "$t" && pwd -P)$rest"
real=$(printf '%s' "$real" | sed 's://*:/:g')
if [ "$mode" = resolve ]; then
  [ -L "$real" ] && real=$(readlink -f -- "$real")  # judged by where it leads
  printf '%s' "$real"; exit 0
fi
[ -L "$real" ] && exit 3
case "$real/" in "$root"/*) ;; *) [ "$mode" = write ] && exit 4;; esac
if [ "$mode" = read ]; then [ -f "$real" ] || exit 5; exec cat -- "$real"; fi
mkdir -p -- "$(dirname -- "$real")" && exec cat > "$real"
"""
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


async def runtime_file_op(runtime: Runtime, agent: AgentRecord, mode: str, path: str,
                          content: str | None = None) -> ExecResult:
    """Run FILE_SCRIPT in the agent's runtime for `path` (see its modes and exit codes)."""
    root = runtime.workspace_path(agent).rstrip("/")
    return await runtime.exec(
        agent, ["sh", "-c", FILE_SCRIPT, "sh", mode, path, root],
        stdin=content.encode() if content is not None else None,
    )


async def workspace_relative(runtime: Runtime, agent: AgentRecord, path: str) -> str | None:
    """`path` relative to the agent's workspace if, resolved as the agent sees it (symlinks
    followed), it lies inside; None when it lies outside or cannot be judged."""
    result = await runtime_file_op(runtime, agent, "resolve", path)
    root = runtime.workspace_path(agent).rstrip("/") + "/"
    real = result.stdout + "/"
    if result.exit_code != 0 or not real.startswith(root):
        return None
    return real[len(root):].strip("/") or "."

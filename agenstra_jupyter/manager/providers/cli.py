"""Agent CLIs that print JSON lines: Claude Code, Codex, Gemini CLI, opencode, cursor-agent.

Each turn runs the CLI once inside the agent's runtime (sandboxed process or container),
resuming the CLI's own session so the conversation carries over. API keys reach the CLI
through the agent's `env` / `passEnv` config only; they are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..runtimes import AgentProcess
from .base import Provider, ProviderError, Turn, TurnRecorder, TurnResult
from .cli_formats import PARSERS
from .common import (
    check_program_config,
    check_str_list,
    last_line,
    program_environment,
    read_tail,
    short_error,
)

STDERR_KEPT = 64 * 1024


def _safe_positional(prompt: str) -> str:
    # A prompt is never taken for an option of the CLI.
    return " " + prompt if prompt.startswith("-") else prompt


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    stdin: str | None  # the prompt when the CLI reads it from stdin


@dataclass(frozen=True)
class CliPreset:
    name: str
    binary: str
    format: str
    description: str
    build: Callable[[str, str, str | None, dict[str, Any]], Invocation]
    env: dict[str, str] = field(default_factory=dict)
    # Manager variables the CLI gets unless config.passEnv says otherwise (its credentials).
    pass_env: tuple[str, ...] = ()

    def invocation(self, prompt: str, session: str | None, config: dict[str, Any]) -> Invocation:
        binary = config.get("binary") or self.binary
        return self.build(binary, prompt, session, config)


def _opt(flag: str, value: Any) -> list[str]:
    return [flag, str(value)] if value else []


def _claude(binary: str, prompt: str, session: str | None, c: dict[str, Any]) -> Invocation:
    argv = [binary, "-p", "--output-format", "stream-json", "--verbose",
            "--include-partial-messages", *_opt("--resume", session), *_opt("--model", c.get(
                "model")), *_opt("--permission-mode", c.get("permissionMode")), *c.get("args", [])]
    return Invocation(argv, prompt)


def _codex(binary: str, prompt: str, session: str | None, c: dict[str, Any]) -> Invocation:
    if session:  # `resume` takes no --sandbox: the session keeps its own
        argv = [binary, "exec", "resume", session, "--json", "--skip-git-repo-check"]
    else:
        argv = [binary, "exec", "--json", "--skip-git-repo-check",
                "--sandbox", c.get("sandbox", "workspace-write")]
    return Invocation([*argv, *_opt("-m", c.get("model")), *c.get("args", []), "-"], prompt)


def _gemini(binary: str, prompt: str, session: str | None, c: dict[str, Any]) -> Invocation:
    argv = [binary, "--output-format", "stream-json", "--skip-trust",
            *_opt("-m", c.get("model")), *_opt("--resume", session),
            *_opt("--approval-mode", c.get("approvalMode")), *c.get("args", [])]
    return Invocation(argv, prompt)


def _opencode(binary: str, prompt: str, session: str | None, c: dict[str, Any]) -> Invocation:
    argv = [binary, "run", "--format", "json", *_opt("-m", c.get("model")),
            *_opt("--session", session), *c.get("args", []), _safe_positional(prompt)]
    return Invocation(argv, None)


def _cursor(binary: str, prompt: str, session: str | None, c: dict[str, Any]) -> Invocation:
    argv = [binary, "-p", "--output-format", "stream-json", "--stream-partial-output",
            *_opt("--resume", session), *_opt("--model", c.get("model")), *c.get("args", []),
            _safe_positional(prompt)]
    return Invocation(argv, None)


def _custom(binary: str, prompt: str, session: str | None, c: dict[str, Any]) -> Invocation:
    values = {"{prompt}": prompt, "{session}": session or "", "{model}": c.get("model", "")}

    def fill(part: str) -> str:
        for placeholder, value in values.items():
            part = part.replace(placeholder, value)
        return part

    argv = [fill(part) for part in c["command"]]
    if session:
        argv += [fill(part) for part in c.get("resumeArgs", [])]
    reads_stdin = not any("{prompt}" in part for part in c["command"])
    return Invocation(argv, prompt if reads_stdin else None)


PRESETS: dict[str, CliPreset] = {
    preset.name: preset
    for preset in (
        CliPreset("claude", "claude", "claude", "Claude Code (claude -p, stream-json)", _claude,
                  pass_env=("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
                            "CLAUDE_CODE_OAUTH_TOKEN")),
        CliPreset("codex", "codex", "codex", "OpenAI Codex (codex exec --json)", _codex,
                  pass_env=("CODEX_API_KEY", "OPENAI_API_KEY")),
        CliPreset("gemini", "gemini", "gemini", "Gemini CLI (stream-json)", _gemini,
                  {"GEMINI_CLI_TRUST_WORKSPACE": "true"},
                  ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL")),
        CliPreset("opencode", "opencode", "opencode", "opencode (opencode run --format json)",
                  _opencode, {"OPENCODE_DISABLE_AUTOUPDATE": "1"}),
        CliPreset("cursor", "cursor-agent", "cursor", "Cursor (cursor-agent -p, stream-json)",
                  _cursor, pass_env=("CURSOR_API_KEY",)),
        CliPreset("custom", "", "claude", "Your own command template", _custom),
    )
}

# Order of preference when picking an agent for a new user.
PREFERENCE = ["claude", "codex", "gemini", "opencode", "cursor"]


def detected_presets() -> list[str]:
    """Presets whose CLI is on this host's PATH."""
    return [name for name in PREFERENCE if shutil.which(PRESETS[name].binary)]


class CliProvider(Provider):
    name = "cli"
    description = "An agent CLI that prints JSON lines (Claude Code, Codex, Gemini, ...)."
    capabilities = frozenset({"streaming", "cancel", "sessions", "tools"})
    needs_network = True
    example = {"preset": "claude"}

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        preset = config.get("preset")
        if preset not in PRESETS:
            raise ValueError(f"config.preset must be one of {', '.join(PRESETS)}")
        for key in ("args", "command", "resumeArgs"):
            check_str_list(config, key)
        check_program_config(config)
        if preset == "custom" and not config.get("command"):
            raise ValueError("config.command is required for a custom CLI")
        if config.get("format", PRESETS[preset].format) not in PARSERS:
            raise ValueError(f"config.format must be one of {', '.join(PARSERS)}")
        timeout = config.get("timeout", 1)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise ValueError("config.timeout must be a positive number of seconds")

    @classmethod
    def info(cls) -> dict[str, Any]:
        presets = [{"name": p.name, "description": p.description, "binary": p.binary}
                   for p in PRESETS.values()]
        return {**super().info(), "presets": presets, "detected": detected_presets()}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._session: str | None = self.agent.provider_state.get("sessionId")
        self._files_written = False

    @property
    def preset(self) -> CliPreset:
        return PRESETS[self.agent.config["preset"]]

    def environment(self) -> dict[str, str]:
        config = {"passEnv": list(self.preset.pass_env), **self.agent.config}
        return program_environment(config, self.preset.env)

    async def run_turn(self, turn: Turn) -> TurnResult:
        await self._write_files()
        recorder = TurnRecorder(turn)
        parser = PARSERS[self.agent.config.get("format", self.preset.format)](recorder)
        call = self.preset.invocation(turn.message, self._session, self.agent.config)
        await recorder.status("starting " + (self.preset.binary or call.argv[0]))
        process = await self.runtime.spawn(self.agent, call.argv, self.environment())
        stderr = asyncio.ensure_future(read_tail(process.stderr, STDERR_KEPT))
        try:
            if call.stdin is not None:
                await process.write(call.stdin.encode())
            await process.close_stdin()
            timeout = self.agent.config.get("timeout", self.runtime.exec_timeout)
            try:
                code = await asyncio.wait_for(self._read(process, parser), timeout)
            except asyncio.TimeoutError:
                raise ProviderError(f"The agent did not finish within {timeout:g} s") from None
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(process.kill())
            stderr_text = await _settle(stderr)
        await self._remember(parser.session_id)
        return self._outcome(parser, recorder, code, stderr_text)

    async def _read(self, process: AgentProcess, parser: Any) -> int:
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # a line beyond the reader's limit: skip it
                continue
            if not line:
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue  # banners, warnings, partial noise: not ours to parse
            if isinstance(event, dict):
                await parser.feed(event)
        return await process.wait()

    def _outcome(self, parser: Any, recorder: TurnRecorder, code: int, stderr: str) -> TurnResult:
        if parser.error:
            if self._session and "no conversation found" in parser.error.lower():
                self._session = None
            raise ProviderError(short_error(parser.error))
        if code != 0:
            if self._session and "no conversation found" in stderr.lower():
                self._session = None  # its session is gone: the next turn starts afresh
            detail = last_line(stderr) or f"exit code {code}"
            raise ProviderError(short_error(f"The agent CLI failed: {detail}"))
        if parser.has_final_line and not parser.done:
            raise ProviderError("The agent CLI ended without a final result")
        text = recorder.text or parser.final_text or ""
        return recorder.result(text, sessionId=self._session)

    async def _remember(self, session_id: str | None) -> None:
        if session_id and session_id != self._session:
            self._session = session_id
            await self.save_state({"sessionId": session_id})

    async def _write_files(self) -> None:
        """Write config.files (CLI settings) into the workspace, once per provider."""
        if not self._files_written:
            for path, content in self.agent.config.get("files", {}).items():
                await self.runtime.write_file(self.agent, path, content)
            self._files_written = True


async def _settle(task: asyncio.Future[str]) -> str:
    try:
        return await asyncio.wait_for(asyncio.shield(task), 2)
    except Exception:  # TimeoutError included: a stuck stderr reader never holds a turn up
        task.cancel()
        return ""

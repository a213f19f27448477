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
from dataclasses import dataclass, field, replace
from typing import Any

from ...protocol import (
    DEFAULT_PERMISSION_POLICY,
    MCP_SERVER_NAME,
    MCP_TOKEN_ENV,
    PERMISSION_POLICIES,
)
from ..notebook_tools import McpEndpoint
from ..runtimes import AgentProcess
from .base import Provider, ProviderError, Turn, TurnRecorder, TurnResult
from .cli_control import ControlChannel, TurnClock
from .cli_formats import PARSERS
from .common import (
    check_program_config,
    check_str_list,
    last_line,
    program_environment,
    read_tail,
    runtime_file_op,
    short_error,
    workspace_relative,
)

STDERR_KEPT = 64 * 1024


def _safe_positional(prompt: str) -> str:
    # A prompt is never taken for an option of the CLI.
    return " " + prompt if prompt.startswith("-") else prompt


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    stdin: str | None  # the prompt when the CLI reads it from stdin
    # stdin is Claude Code's control channel: the prompt goes as a stream-json user
    # message and its permission prompts are answered there (cli_control.py).
    control: bool = False
    env: dict[str, str] = field(default_factory=dict)  # under config.env, over the preset's


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
    # "interactive": the user is asked per request; "policy": the CLI cannot ask, so
    # config.permissions is turned into its own mode up front (see approval_note).
    approvals: str = "policy"
    approval_note: str = ""

    def invocation(self, prompt: str, session: str | None, config: dict[str, Any]) -> Invocation:
        binary = config.get("binary") or self.binary
        return self.build(binary, prompt, session, config)


def _opt(flag: str, value: Any) -> list[str]:
    return [flag, str(value)] if value else []


def _policy(c: dict[str, Any]) -> str:
    return c.get("permissions", DEFAULT_PERMISSION_POLICY)


# What each policy becomes in a CLI that cannot ask: what would ask is refused up front.
CLAUDE_MODES = {"allow": "bypassPermissions", "deny": "dontAsk"}
CODEX_SANDBOXES = {"ask": "read-only", "deny": "read-only", "workspace": "workspace-write",
                   "allow": "danger-full-access"}  # our own sandbox still holds it
GEMINI_MODES = {"ask": "default", "deny": "default", "workspace": "auto_edit", "allow": "yolo"}
_OPENCODE_READS = {"read": "allow", "glob": "allow", "grep": "allow", "list": "allow",
                   "todoread": "allow", "todowrite": "allow", "external_directory": "deny"}
# opencode run refuses what asks (unless --auto); OPENCODE_PERMISSION merges into its config.
OPENCODE_RULES = {
    "ask": {"*": "deny", **_OPENCODE_READS},
    "deny": {"*": "deny", **_OPENCODE_READS},
    "workspace": {"*": "deny", **_OPENCODE_READS, "edit": "allow"},
}


def _claude(binary: str, prompt: str, session: str | None, c: dict[str, Any]) -> Invocation:
    policy = _policy(c)
    # Under allow / deny nobody is asked, so the one-shot `-p` run does; otherwise the
    # CLI asks us before each tool that needs approval (streaming input, stdio prompt).
    control = policy not in CLAUDE_MODES
    mode = c.get("permissionMode") or CLAUDE_MODES.get(policy)
    argv = [binary, "-p", "--output-format", "stream-json", "--verbose",
            "--include-partial-messages"]
    if control:
        argv += ["--input-format", "stream-json", "--permission-prompt-tool", "stdio"]
    argv += [*_opt("--resume", session), *_opt("--model", c.get("model")),
             *_opt("--permission-mode", mode), *c.get("args", [])]
    # Claude refuses bypassPermissions as root unless told it runs in a sandbox: it does.
    env = {"IS_SANDBOX": "1"} if mode == "bypassPermissions" else {}
    return Invocation(argv, prompt, control, env)


def _codex(binary: str, prompt: str, session: str | None, c: dict[str, Any]) -> Invocation:
    sandbox = c.get("sandbox") or CODEX_SANDBOXES[_policy(c)]
    if session:  # `resume` takes no --sandbox: the config override sets it for this run
        argv = [binary, "exec", "resume", session, "--json", "--skip-git-repo-check",
                "-c", f'sandbox_mode="{sandbox}"']
    else:
        argv = [binary, "exec", "--json", "--skip-git-repo-check", "--sandbox", sandbox]
    return Invocation([*argv, *_opt("-m", c.get("model")), *c.get("args", []), "-"], prompt)


def _gemini(binary: str, prompt: str, session: str | None, c: dict[str, Any]) -> Invocation:
    mode = c.get("approvalMode") or GEMINI_MODES[_policy(c)]
    argv = [binary, "--output-format", "stream-json", "--skip-trust",
            *_opt("-m", c.get("model")), *_opt("--resume", session),
            *_opt("--approval-mode", mode), *c.get("args", [])]
    return Invocation(argv, prompt)


def _opencode(binary: str, prompt: str, session: str | None, c: dict[str, Any]) -> Invocation:
    policy = _policy(c)
    argv = [binary, "run", "--format", "json", *_opt("-m", c.get("model")),
            *_opt("--session", session), *(["--auto"] if policy == "allow" else []),
            *c.get("args", []), _safe_positional(prompt)]
    rules = OPENCODE_RULES.get(policy)
    env = {"OPENCODE_PERMISSION": json.dumps(rules)} if rules else {}
    return Invocation(argv, None, env=env)


def _cursor(binary: str, prompt: str, session: str | None, c: dict[str, Any]) -> Invocation:
    force = ["--force"] if _policy(c) == "allow" else []  # else its commands are refused
    argv = [binary, "-p", "--output-format", "stream-json", "--stream-partial-output",
            *_opt("--resume", session), *_opt("--model", c.get("model")), *force,
            *c.get("args", []), _safe_positional(prompt)]
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
                            "CLAUDE_CODE_OAUTH_TOKEN"),
                  approvals="interactive", approval_note=(
                      "You approve each tool use that needs it (its permission prompt); "
                      "permissions allow / deny skip the prompt.")),
        CliPreset("codex", "codex", "codex", "OpenAI Codex (codex exec --json)", _codex,
                  pass_env=("CODEX_API_KEY", "OPENAI_API_KEY"), approval_note=(
                      "codex exec cannot ask: the policy picks its sandbox (ask, deny: "
                      "read-only; workspace: workspace-write; allow: danger-full-access).")),
        CliPreset("gemini", "gemini", "gemini", "Gemini CLI (stream-json)", _gemini,
                  {"GEMINI_CLI_TRUST_WORKSPACE": "true"},
                  ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL"),
                  approval_note=(
                      "gemini -p cannot ask: the policy picks its approval mode (ask, deny: "
                      "default, read-only tools; workspace: auto_edit; allow: yolo).")),
        CliPreset("opencode", "opencode", "opencode", "opencode (opencode run --format json)",
                  _opencode, {"OPENCODE_DISABLE_AUTOUPDATE": "1"}, approval_note=(
                      "opencode run cannot ask: the policy becomes its permission rules "
                      "(ask, deny: reads only; workspace: reads and edits; allow: --auto).")),
        CliPreset("cursor", "cursor-agent", "cursor", "Cursor (cursor-agent -p, stream-json)",
                  _cursor, pass_env=("CURSOR_API_KEY",), approval_note=(
                      "cursor-agent -p cannot ask: its commands run only under allow "
                      "(--force); edits follow its own settings.")),
        CliPreset("custom", "", "claude", "Your own command template", _custom,
                  approval_note=("Your command decides what it may do: config.permissions "
                                 "is not applied to it.")),
    )
}

# How each preset is handed the notebook tools (its MCP config); the token is never on a
# command line (`ps` shows those): in a 0600 file in the agent's HOME, or in its env.
CLAUDE_MCP_CONFIG = ".agenstra/claude-mcp.json"
GEMINI_SETTINGS = ".gemini/settings.json"
MCP_PRESETS = ("claude", "codex", "gemini")


def _mcp_server_json(endpoint: McpEndpoint, url_key: str) -> dict[str, Any]:
    return {url_key: endpoint.url, "headers": {"Authorization": endpoint.authorization}}


def _claude_mcp_config(endpoint: McpEndpoint) -> str:
    server = {"type": "http", **_mcp_server_json(endpoint, "url")}
    return json.dumps({"mcpServers": {MCP_SERVER_NAME: server}})


def _gemini_settings(endpoint: McpEndpoint, theirs: str | None) -> str:
    """The agent's own settings (config.files) with the tools added; `trust`: Gemini does
    not ask again, as the notebook tools ask the user themselves."""
    try:
        settings = json.loads(theirs) if theirs else {}
    except ValueError:
        settings = {}
    settings = settings if isinstance(settings, dict) else {}
    servers = settings.get("mcpServers")
    servers = dict(servers) if isinstance(servers, dict) else {}
    servers[MCP_SERVER_NAME] = {**_mcp_server_json(endpoint, "httpUrl"), "trust": True}
    return json.dumps({**settings, "mcpServers": servers})


def _codex_overrides(endpoint: McpEndpoint) -> list[str]:
    """The server, its token by variable name, and no approval of Codex's own for its
    tools (codex exec cannot ask: it would refuse them; they ask the user themselves)."""
    prefix = f"mcp_servers.{MCP_SERVER_NAME}"
    return ["-c", f"{prefix}.url={json.dumps(endpoint.url)}",
            "-c", f"{prefix}.bearer_token_env_var={json.dumps(MCP_TOKEN_ENV)}",
            "-c", f'{prefix}.default_tools_approval_mode="approve"']


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
    gets_notebook_tools = True  # with the claude, codex and gemini presets
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
        if config.get("permissions", DEFAULT_PERMISSION_POLICY) not in PERMISSION_POLICIES:
            raise ValueError(f"config.permissions must be one of {', '.join(PERMISSION_POLICIES)}")
        for key in ("permissionMode", "approvalMode", "sandbox"):
            if not isinstance(config.get(key, ""), str):
                raise ValueError(f"config.{key} must be a string")
        timeout = config.get("timeout", 1)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise ValueError("config.timeout must be a positive number of seconds")

    @classmethod
    def info(cls) -> dict[str, Any]:
        presets = [{"name": p.name, "description": p.description, "binary": p.binary,
                    "approvals": p.approvals, "approvalsNote": p.approval_note,
                    "notebookTools": p.name in MCP_PRESETS}
                   for p in PRESETS.values()]
        return {**super().info(), "presets": presets, "detected": detected_presets()}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._session: str | None = self.agent.provider_state.get("sessionId")
        self._files_written = False
        self._claude_mcp: str | None = None  # the MCP config file, once written
        self._gemini_written = False

    @property
    def preset(self) -> CliPreset:
        return PRESETS[self.agent.config["preset"]]

    def environment(self, call: Invocation | None = None) -> dict[str, str]:
        config = {"passEnv": list(self.preset.pass_env), **self.agent.config}
        return program_environment(config, {**self.preset.env, **(call.env if call else {})})

    async def run_turn(self, turn: Turn) -> TurnResult:
        await self._write_files()
        recorder = TurnRecorder(turn)
        parser = PARSERS[self.agent.config.get("format", self.preset.format)](recorder)
        call = await self._with_notebook_tools(
            self.preset.invocation(turn.message, self._session, self.agent.config))
        await recorder.status("starting " + (self.preset.binary or call.argv[0]))
        process = await self.runtime.spawn(self.agent, call.argv, self.environment(call))
        stderr = asyncio.ensure_future(read_tail(process.stderr, STDERR_KEPT))
        timeout = self.agent.config.get("timeout", self.runtime.exec_timeout)
        clock = TurnClock(timeout)  # stands still while the user is asked
        control = ControlChannel(process, recorder, clock, self._judge, self._current_text) \
            if call.control else None
        try:
            if control is not None:
                await control.start(turn.message, self._session)
            else:
                if call.stdin is not None:
                    await process.write(call.stdin.encode())
                await process.close_stdin()
            try:
                code = await self._read(process, parser, clock, control)
            except asyncio.TimeoutError:
                raise ProviderError(f"The agent did not finish within {timeout:g} s") from None
        finally:
            if control is not None:
                await control.close()
            with contextlib.suppress(Exception):
                await asyncio.shield(process.kill())
            stderr_text = await _settle(stderr)
        await self._remember(parser.session_id)
        return self._outcome(parser, recorder, code, stderr_text)

    async def _read(self, process: AgentProcess, parser: Any, clock: TurnClock,
                    control: ControlChannel | None) -> int:
        while True:
            try:
                line = await clock.within(process.stdout.readline())
            except ValueError:  # a line beyond the reader's limit: skip it
                continue
            if not line:
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue  # banners, warnings, partial noise: not ours to parse
            if not isinstance(event, dict) or (control and await control.handle(event)):
                continue
            await parser.feed(event)
            if control is not None and event.get("type") == "result":
                await control.finish()
        return await clock.within(process.wait())

    async def _judge(self, path: str) -> str | None:
        return await workspace_relative(self.runtime, self.agent, path)

    async def _current_text(self, path: str) -> str:
        """A workspace file's text as the agent sees it; "" when it has none yet."""
        result = await runtime_file_op(self.runtime, self.agent, "read", path)
        return result.stdout if result.exit_code == 0 else ""

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

    async def _with_notebook_tools(self, call: Invocation) -> Invocation:
        """`call` with the preset's MCP config for the notebook tools, when it gets them."""
        preset = self.agent.config["preset"]
        if preset not in MCP_PRESETS:
            return call
        endpoint = await self.runtime.notebook_endpoint(self.agent)
        if endpoint is None:
            return call
        binary, rest = call.argv[0], call.argv[1:]
        if preset == "claude":
            if self._claude_mcp is None:
                self._claude_mcp = await self.runtime.write_private_file(
                    self.agent, CLAUDE_MCP_CONFIG, _claude_mcp_config(endpoint))
            # Both options take several values: a flag (-p) follows each. The tools ask
            # the user themselves, so Claude Code does not ask a second time.
            argv = [binary, "--mcp-config", self._claude_mcp,
                    "--allowedTools", f"mcp__{MCP_SERVER_NAME}", *rest]
        elif preset == "codex":
            at = rest.index("exec") + 1 if "exec" in rest else 0
            argv = [binary, *rest[:at], *_codex_overrides(endpoint), *rest[at:]]
        else:
            if not self._gemini_written:
                theirs = self.agent.config.get("files", {}).get(GEMINI_SETTINGS)
                await self.runtime.write_private_file(
                    self.agent, GEMINI_SETTINGS, _gemini_settings(endpoint, theirs))
                self._gemini_written = True
            argv = call.argv
        return replace(call, argv=argv)

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

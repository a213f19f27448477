"""Agents that speak the Agent Client Protocol over stdio (Claude Code, Codex, Gemini, ...).

One long-lived agent process per agent, started in the agent's runtime, one ACP session
kept across turns. `session/update` notifications become chatEvents; the agent's file
reads and writes go through the runtime; permission requests go to the agent's policy and,
when it does not settle them, to the user (`Turn.ask`, see manager/approvals.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from ... import protocol
from ..permissions import PermissionAsk, Resolution
from ..runtimes import AgentProcess
from .base import Provider, ProviderError, Turn, TurnRecorder, TurnResult
from .common import (
    FILE_SCRIPT,
    check_program_config,
    check_str_list,
    program_environment,
    read_tail,
    short_error,
)

# Launch commands of well-known ACP agents (AGENT-PROTOCOLS.md, section 6).
KNOWN_AGENTS: dict[str, list[str]] = {
    "claude": ["claude-agent-acp"],
    "codex": ["codex-acp"],
    "gemini": ["gemini", "--acp"],
    "opencode": ["opencode", "acp"],
    "cursor": ["cursor-agent", "acp"],
    "goose": ["goose", "acp"],
}
CANCEL_GRACE = 5.0  # seconds an agent gets to end a cancelled turn itself
# The SDK runs each request_permission in a task of its own and judging a path is a sandbox
# exec: an agent's requests are prepared this many at a time, with this many paths each.
MAX_PREPARING = 4
MAX_LOCATIONS = 16
STDERR_KEPT = 16 * 1024


class _ProcessTransport:
    """ACP's message transport (newline-delimited JSON-RPC) over a runtime process."""

    def __init__(self, process: AgentProcess) -> None:
        self._process = process

    async def send(self, message: dict[str, Any]) -> None:
        await self._process.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def receive(self) -> dict[str, Any] | None:
        while True:
            try:
                line = await self._process.stdout.readline()
            except ValueError:  # longer than the reader's limit: not a message we can use
                continue
            if not line:
                return None
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict):
                    return message

    async def close(self) -> None:
        await self._process.close_stdin()


class AcpProvider(Provider):
    name = "acp"
    description = "Any Agent Client Protocol agent over stdio (config.command)."
    capabilities = frozenset({"streaming", "cancel", "sessions", "tools", "permissions"})
    needs_network = True
    reports_diffs = True  # ACP tool calls carry `diff` content
    gets_notebook_tools = True  # as an HTTP MCP server, when the agent takes one
    example = {"command": ["claude-agent-acp"]}

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        check_str_list(config, "command")
        if not config.get("command"):
            raise ValueError("config.command (the agent's argv) is required")
        check_program_config(config)
        policies = protocol.PERMISSION_POLICIES
        if config.get("permissions", protocol.DEFAULT_PERMISSION_POLICY) not in policies:
            raise ValueError(f"config.permissions must be one of {', '.join(policies)}")

    @classmethod
    def info(cls) -> dict[str, Any]:
        detected = [name for name, argv in KNOWN_AGENTS.items() if shutil.which(argv[0])]
        return {**super().info(), "known": KNOWN_AGENTS, "detected": detected,
                "approvals": "interactive", "approvalsNote": (
                    "You approve each request the agent makes (session/request_permission) "
                    "that its permissions policy does not settle.")}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._process: AgentProcess | None = None
        self._connection: Any = None
        self._session_id: str | None = None
        self._stderr: asyncio.Future[str] | None = None
        self._recorder: TurnRecorder | None = None
        self._lock = asyncio.Lock()
        self._preparing = asyncio.Semaphore(MAX_PREPARING)

    # -- turns ---------------------------------------------------------------------------

    async def run_turn(self, turn: Turn) -> TurnResult:
        import acp

        async with self._lock:
            connection, session_id = await self._session()
            recorder = self._recorder = TurnRecorder(turn)
            prompt = asyncio.ensure_future(
                connection.prompt(session_id=session_id, prompt=[acp.text_block(turn.message)])
            )
            try:
                response = await asyncio.shield(prompt)
            except asyncio.CancelledError:
                await self._cancel(connection, session_id, prompt)
                raise
            except (ConnectionError, acp.RequestError) as exc:
                await self._reset()
                raise ProviderError(self._failure(exc)) from None
            finally:
                self._recorder = None
        if response.stop_reason == "cancelled":
            raise asyncio.CancelledError
        extra = {} if response.stop_reason == "end_turn" else {"stopReason": response.stop_reason}
        return recorder.result(**extra)

    async def _cancel(self, connection: Any, session_id: str, prompt: asyncio.Future[Any]) -> None:
        """ACP cancel: the agent ends the turn itself (stopReason "cancelled")."""
        with contextlib.suppress(Exception):
            await connection.cancel(session_id=session_id)
        try:
            await asyncio.wait_for(prompt, CANCEL_GRACE)
        except Exception:
            await self._reset()  # it did not stop: stop its process instead

    def _failure(self, exc: BaseException) -> str:
        detail = ""
        if self._stderr is not None and self._stderr.done() and not self._stderr.cancelled():
            detail = self._stderr.result().strip().splitlines()[-1:] or [""]
            detail = detail[0]
        return short_error(f"The ACP agent failed: {detail or exc}")

    # -- the agent process and session ---------------------------------------------------

    async def _session(self) -> tuple[Any, str]:
        if self._connection is not None and self._session_id is not None:
            return self._connection, self._session_id
        import acp
        from acp.core import ClientSideConnection

        await self._write_files()
        process = await self.runtime.spawn(self.agent, self.agent.config["command"],
                                           self._environment())
        self._process = process
        self._stderr = asyncio.ensure_future(read_tail(process.stderr, STDERR_KEPT))
        self._connection = ClientSideConnection(_AcpClient(self), _ProcessTransport(process))
        try:
            await asyncio.wait_for(self._open_session(acp), 60)
        except (ConnectionError, acp.RequestError, asyncio.TimeoutError) as exc:
            await asyncio.sleep(0.1)  # let stderr arrive for the message
            message = self._failure(exc)
            await self._reset()
            raise ProviderError(message) from None
        return self._connection, self._session_id  # type: ignore[return-value]

    async def _open_session(self, acp: Any) -> None:
        from acp.schema import ClientCapabilities, FileSystemCapabilities, Implementation

        capabilities = ClientCapabilities(
            fs=FileSystemCapabilities(read_text_file=True, write_text_file=True), terminal=False
        )
        hello = await self._connection.initialize(
            protocol_version=acp.PROTOCOL_VERSION, client_capabilities=capabilities,
            client_info=Implementation(name="agenstra-jupyter", version="0.1.0"),
        )
        servers = await self._mcp_servers(hello)
        session = await self._connection.new_session(
            cwd=self.runtime.workspace_path(self.agent), mcp_servers=servers,
            **(NOTEBOOK_TOOLS_META if servers else {}),
        )
        self._session_id = session.session_id
        await self.save_state({"sessionId": session.session_id})

    async def _mcp_servers(self, hello: Any) -> list[Any]:
        """The notebook tools as an HTTP MCP server, for an agent that said it takes one
        (initialize: agentCapabilities.mcpCapabilities.http); else none."""
        from acp.schema import HttpHeader, HttpMcpServer

        endpoint = await self.runtime.notebook_endpoint(self.agent)
        if endpoint is None:
            return []
        capabilities = getattr(getattr(hello, "agent_capabilities", None),
                               "mcp_capabilities", None)
        if not getattr(capabilities, "http", False):
            self.log.debug("Agent %s: its ACP agent takes no HTTP MCP servers, so it gets "
                           "no notebook tools", self.agent.name)
            return []
        return [HttpMcpServer(type="http", name=protocol.MCP_SERVER_NAME, url=endpoint.url,
                              headers=[HttpHeader(name="Authorization",
                                                  value=endpoint.authorization)])]

    def _environment(self) -> dict[str, str]:
        return program_environment(self.agent.config)

    async def _write_files(self) -> None:
        for path, content in self.agent.config.get("files", {}).items():
            await self.runtime.write_file(self.agent, path, content)

    async def _reset(self) -> None:
        connection, process = self._connection, self._process
        self._connection = self._process = self._session_id = None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 2)
        if process is not None:
            with contextlib.suppress(Exception):
                await process.kill()

    async def close(self) -> None:
        await self._reset()

    # -- the agent's requests (see _AcpClient) -------------------------------------------

    async def file_op(self, mode: str, path: str, content: str | None = None) -> Any:
        """Run FILE_SCRIPT in the runtime for `path` (see its modes and exit codes)."""
        root = self.runtime.workspace_path(self.agent).rstrip("/")
        return await self.runtime.exec(
            self.agent, ["sh", "-c", FILE_SCRIPT, "sh", mode, path, root],
            stdin=content.encode() if content is not None else None,
        )

    async def within_workspace(self, path: str) -> bool:
        """Whether `path`, resolved as the agent sees it, lies inside its workspace."""
        result = await self.file_op("resolve", path)
        root = self.runtime.workspace_path(self.agent).rstrip("/") + "/"
        return result.exit_code == 0 and (result.stdout + "/").startswith(root)

    def relative(self, path: str) -> str:
        """`path` as the user reads it: relative to the workspace when it names a file in it
        (as written; whether it really lies inside is within_workspace's to judge)."""
        root = self.runtime.workspace_path(self.agent).rstrip("/") + "/"
        return path[len(root):] if path.startswith(root) and len(path) > len(root) else path

    def diff(self, tool_call: Any) -> list[dict[str, Any]]:
        """The `diff` content items of an ACP tool call, as [{path, oldText, newText}]
        (`oldText` "" for a new file, as the contract's other diffs say it)."""
        return [{"path": self.relative(item.path), "oldText": item.old_text or "",
                 "newText": item.new_text or ""}
                for item in tool_call.content or [] if getattr(item, "type", "") == "diff"]

    async def permission_ask(self, tool_call: Any, options: list[Any],
                             crowded: Callable[[], bool] = lambda: False) -> PermissionAsk:
        """The contract's request for an ACP `session/request_permission`; its paths are
        not judged (counted outside) while `crowded()`: it is rejected anyway."""
        raw = [location.path for location in (tool_call.locations or [])[:MAX_LOCATIONS]]
        diff = self.diff(tool_call)
        async with self._preparing:
            inside = bool(raw) and not crowded() and await self._all_inside(raw)
            if inside and await self._fill_old_texts(tool_call, diff):
                await self._show_edit(tool_call, diff)
        kind = tool_call.kind if tool_call.kind in protocol.PERMISSION_KINDS else "other"
        return PermissionAsk(
            title=tool_call.title or kind, kind=kind,
            options=[{"optionId": o.option_id, "name": o.name, "kind": o.kind} for o in options],
            paths=[self.relative(path) for path in raw], inside_workspace=inside,
            diff=diff or None, tool_call_id=tool_call.tool_call_id)

    async def _fill_old_texts(self, tool_call: Any, diff: list[dict[str, Any]]) -> bool:
        """A whole-file write comes with `oldText: null` (claude-agent-acp's Write): show
        what it replaces, read as the agent sees the file (inside the workspace only).
        True when a text was filled in."""
        filled = False
        items = [i for i in tool_call.content or [] if getattr(i, "type", "") == "diff"]
        for item, entry in zip(items, diff, strict=True):
            if item.old_text is None and entry["oldText"] == "" \
                    and await self._shown_before(item.path):
                result = await self.file_op("read", item.path)
                if result.exit_code == 0 and not result.truncated and result.stdout:
                    entry["oldText"], filled = result.stdout, True
        return filled

    async def _shown_before(self, path: str) -> bool:
        """Whether a file's current text may be read for the card: one in the workspace
        (the diff's path, not only the call's locations) and not a hidden one (see
        _hidden), neither as written nor where it leads (a directory symlink to .git)."""
        if _hidden(self.relative(path)):
            return False
        result = await self.file_op("resolve", path)
        root = self.runtime.workspace_path(self.agent).rstrip("/") + "/"
        return (result.exit_code == 0 and result.stdout.startswith(root)
                and not _hidden(result.stdout[len(root):]))

    async def _show_edit(self, tool_call: Any, diff: list[dict[str, Any]]) -> None:
        """The tool card shows the real before/after too (the same id updates it)."""
        recorder = self._recorder
        if recorder is not None and tool_call.tool_call_id:
            await recorder.tool_call(tool_call.tool_call_id,
                                     recorder.tool_name(tool_call.tool_call_id, tool_call.title),
                                     tool_call.raw_input, tool_call.status or "pending", diff)

    async def _all_inside(self, paths: list[str]) -> bool:
        for path in paths:
            if not await self.within_workspace(path):
                return False  # the rest need no exec
        return True


def _hidden(path: str) -> bool:
    """Whether a path has a component starting with "." (.git/config holds remote URLs
    with tokens, .env secrets): its current text is not read before anyone agreed, the
    card shows the write as a whole new text."""
    return any(part.startswith(".") for part in PurePosixPath(path).parts)


class _AcpClient:
    """The client side of ACP the agent talks to; one per agent process."""

    def __init__(self, provider: AcpProvider) -> None:
        self._provider = provider

    async def session_update(self, session_id: str, update: Any, **_: Any) -> None:
        recorder = self._provider._recorder
        if recorder is None:
            return  # e.g. history replayed outside a turn
        kind = getattr(update, "session_update", "")
        if kind == "agent_message_chunk":
            await recorder.delta(getattr(update.content, "text", "") or "")
        elif kind == "tool_call":
            await recorder.tool_call(update.tool_call_id, update.title or update.kind or "tool",
                                     update.raw_input, update.status or "pending",
                                     self._provider.diff(update))
        elif kind == "tool_call_update":
            if diff := self._provider.diff(update):  # the edit became known: the card shows it
                await recorder.tool_call(update.tool_call_id, recorder.tool_name(
                    update.tool_call_id, update.title), update.raw_input,
                    update.status or "in_progress", diff)
            if update.status in ("completed", "failed"):
                await recorder.tool_result(update.tool_call_id, _tool_output(update),
                                           update.status == "failed")
        elif kind == "plan":
            steps = "; ".join(entry.content for entry in update.entries)
            await recorder.status(f"plan: {steps}")

    async def request_permission(self, session_id: str, tool_call: Any, options: list[Any],
                                 **_: Any) -> Any:
        from acp.schema import AllowedOutcome, DeniedOutcome, RequestPermissionResponse

        recorder = self._provider._recorder
        if recorder is None:  # no turn runs: nobody could be asked
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        ask = await self._provider.permission_ask(tool_call, options, recorder.crowded)
        resolution = await recorder.ask(ask)
        option_id = _answer(resolution, options)
        if option_id is None:
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(
            outcome=AllowedOutcome(outcome="selected", option_id=option_id)
        )

    async def read_text_file(self, session_id: str, path: str, line: int | None = None,
                             limit: int | None = None, **_: Any) -> Any:
        import acp
        from acp.schema import ReadTextFileResponse

        result = await self._provider.file_op("read", path)
        if result.exit_code != 0:
            raise acp.RequestError(-32002, f"Cannot read {path}")
        lines = result.stdout.splitlines(keepends=True)
        start = max((line or 1) - 1, 0)
        end = start + limit if limit else None
        return ReadTextFileResponse(content="".join(lines[start:end]))

    async def write_text_file(self, session_id: str, path: str, content: str, **_: Any) -> Any:
        import acp
        from acp.schema import WriteTextFileResponse

        result = await self._provider.file_op("write", path, content)
        if result.exit_code == 4:
            raise acp.RequestError(-32000, "Writes outside the workspace are not allowed")
        if result.exit_code != 0:
            raise acp.RequestError(-32000, f"Cannot write {path}")
        return WriteTextFileResponse()



# session/new `_meta` for agents that ask before each MCP tool call of their own accord:
# the notebook tools ask the user themselves (writes and runs), so asking first would ask
# twice. claude-agent-acp passes `claudeCode.options` to Claude Code (allowedTools: the
# server's tools pass Claude Code's own permission check). Other agents ignore it.
NOTEBOOK_TOOLS_META = {"claudeCode": {"options": {
    "allowedTools": [f"mcp__{protocol.MCP_SERVER_NAME}"]}}}

def _tool_output(update: Any) -> Any:
    texts = [
        getattr(getattr(item, "content", None), "text", "")
        for item in update.content or []
        if getattr(item, "type", "") == "content"
    ]
    return "".join(texts) or update.raw_output


def _answer(resolution: Resolution, options: list[Any]) -> str | None:
    """The option the agent is told was selected; None: the request was cancelled.

    A rejection (or an expiry) selects the agent's own reject option when it offered one.
    """
    if resolution.outcome == "cancelled":
        return None
    offered = {o.option_id for o in options}
    if resolution.allowed and resolution.option_id in offered:
        return resolution.option_id
    if resolution.allowed:
        return None
    if resolution.option_id in offered:
        return resolution.option_id
    return next((o.option_id for o in options if o.kind in ("reject_once", "reject_always")),
                None)

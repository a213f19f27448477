"""Claude Code's permission prompts, answered by the manager's approval flow.

Run with `--input-format stream-json --permission-prompt-tool stdio` (what the official
Agent SDKs do), the CLI reads the user's message and our control responses on stdin and
writes `control_request` lines on stdout between its usual stream-json output. Before a
tool that needs approval runs it sends `can_use_tool`; each one becomes a PermissionAsk
(policy first, then the user), and the Resolution goes back as `allow` or `deny`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from ..bounds import clip_text
from ..permissions import PermissionAsk, Resolution
from ..runtimes import AgentProcess
from .base import TurnRecorder

# Claude Code's tools by what they do (DESIGN.md "Approvals" kinds); the rest is "other".
TOOL_KINDS = {
    "Read": "read", "Glob": "search", "Grep": "search", "LS": "search",
    "Edit": "edit", "MultiEdit": "edit", "Write": "edit", "NotebookEdit": "edit",
    "Bash": "execute", "WebFetch": "fetch", "WebSearch": "fetch",
}
PATH_KEYS = ("file_path", "notebook_path", "path")
SEARCH_TOOLS = frozenset({"Glob", "Grep", "LS"})  # no path: they search the working directory
DIFF_TEXT_LIMIT = 64 * 1024  # bytes of each side of a diff shown to the user
TITLE_DETAIL = 200
POLL = 1.0  # seconds between looks at the clock while waiting for the CLI
DENIALS = {
    "user": "The user rejected this tool use.",
    "policy": "The agent's permission policy does not allow this tool use.",
    "timeout": "Nobody answered the permission request in time, so it was refused.",
}
CANCELLED = "The permission request was cancelled."
# Each can_use_tool costs sandbox execs (the path judged, the file read for the diff): a
# turn prepares this many at a time (a turn is one CLI process and closes its requests
# before the next one), none while the agent's requests are at their bound.
MAX_PREPARING = 4

# judge(path) -> the path relative to the workspace if it lies inside, else None.
Judge = Callable[[str], Awaitable[str | None]]
# read(relative path) -> the file's current text, "" when there is none.
Reader = Callable[[str], Awaitable[str]]


class TurnClock:
    """A turn's time budget that stands still while the user is being asked."""

    def __init__(self, seconds: float) -> None:
        self._left = seconds
        self._since = time.monotonic()
        self._asking = 0

    def remaining(self) -> float | None:
        """Seconds left; None while someone is being asked."""
        return None if self._asking else self._left - (time.monotonic() - self._since)

    @contextlib.contextmanager
    def asking(self) -> Iterator[None]:
        if not self._asking:
            self._left -= time.monotonic() - self._since
        self._asking += 1
        try:
            yield
        finally:
            self._asking -= 1
            if not self._asking:
                self._since = time.monotonic()

    async def within(self, awaitable: Awaitable[Any]) -> Any:
        """Await `awaitable`, raising TimeoutError once the budget is spent."""
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                left = self.remaining()
                wait = POLL if left is None else max(0.0, min(left, POLL))
                done, _ = await asyncio.wait({task}, timeout=wait)
                if done:
                    return task.result()
                left = self.remaining()
                if left is not None and left <= 0:
                    raise asyncio.TimeoutError
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


def user_message(prompt: str, session: str | None) -> dict[str, Any]:
    return {"type": "user", "message": {"role": "user", "content": prompt},
            "parent_tool_use_id": None, "session_id": session or "default"}


def control_response(request_id: str, response: dict[str, Any] | None = None,
                     error: str | None = None) -> dict[str, Any]:
    if error is not None:
        body: dict[str, Any] = {"subtype": "error", "request_id": request_id, "error": error}
    else:
        body = {"subtype": "success", "request_id": request_id, "response": response or {}}
    return {"type": "control_response", "response": body}


def decision(resolution: Resolution, tool_input: Any, tool_use_id: str | None) -> dict:
    """The `can_use_tool` answer: allow (the input unchanged) or deny with a reason."""
    if resolution.allowed:
        answer: dict[str, Any] = {"behavior": "allow", "updatedInput": tool_input}
    elif resolution.outcome == "cancelled":
        answer = {"behavior": "deny", "message": CANCELLED}
    else:
        answer = {"behavior": "deny", "message": DENIALS.get(resolution.by, DENIALS["policy"])}
    if tool_use_id:
        answer["toolUseID"] = tool_use_id
    return answer


def _raw_paths(tool: str, tool_input: dict[str, Any]) -> list[str]:
    paths = [tool_input[key] for key in PATH_KEYS if isinstance(tool_input.get(key), str)]
    if not paths and tool in SEARCH_TOOLS:
        paths = ["."]
    return paths[:1]


def _title(tool: str, request: dict[str, Any], tool_input: dict[str, Any], paths: list[str]
           ) -> str:
    detail = next((tool_input[key] for key in ("command", "url", "query", "pattern")
                   if isinstance(tool_input.get(key), str)), None)
    detail = detail or (paths[0] if paths else request.get("description") or "")
    name = request.get("display_name") or tool
    detail = " ".join(str(detail).split())[:TITLE_DETAIL]
    return f"{name}: {detail}" if detail else str(name)


def _clip(text: Any) -> str:
    return clip_text(text if isinstance(text, str) else "", DIFF_TEXT_LIMIT)[0]


async def _diff(tool: str, tool_input: dict[str, Any], path: str | None, inside: bool,
                read: Reader) -> list[dict[str, Any]] | None:
    if path is None:
        return None
    if tool == "Edit":
        edits = [tool_input]
    elif tool == "MultiEdit":
        edits = [e for e in tool_input.get("edits") or [] if isinstance(e, dict)]
    elif tool == "Write":
        # What the file holds now, so the user sees what is replaced (only read inside).
        old = await read(path) if inside else ""
        return [{"path": path, "oldText": _clip(old), "newText": _clip(tool_input.get("content"))}]
    else:
        return None
    return [{"path": path, "oldText": _clip(e.get("old_string")),
             "newText": _clip(e.get("new_string"))} for e in edits]


async def permission_ask(request: dict[str, Any], judge: Judge, read: Reader) -> PermissionAsk:
    """The PermissionAsk for one `can_use_tool` request."""
    tool = str(request.get("tool_name") or "tool")
    tool_input = request.get("input") if isinstance(request.get("input"), dict) else {}
    raw = _raw_paths(tool, tool_input)
    judged = [await judge(path) for path in raw]
    inside = bool(raw) and all(rel is not None for rel in judged)
    paths = [rel if rel is not None else path for path, rel in zip(raw, judged, strict=True)]
    return PermissionAsk(
        title=_title(tool, request, tool_input, paths),
        kind=TOOL_KINDS.get(tool, "other"),
        paths=paths,
        inside_workspace=inside,
        diff=await _diff(tool, tool_input, paths[0] if paths else None, inside, read),
        tool_call_id=request.get("tool_use_id") or None,
    )


async def _outside(path: str) -> str | None:
    """A judge that runs nothing: every path counts as outside (so none is read either)."""
    return None


class ControlChannel:
    """Our side of the CLI's stdin: the user's message, then answers to its requests."""

    def __init__(self, process: AgentProcess, recorder: TurnRecorder, clock: TurnClock,
                 judge: Judge, read: Reader) -> None:
        self._process = process
        self._recorder = recorder
        self._clock = clock
        self._judge = judge
        self._read = read
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._preparing = asyncio.Semaphore(MAX_PREPARING)

    async def start(self, prompt: str, session: str | None) -> None:
        await self._send({"type": "control_request", "request_id": "agenstra_init",
                          "request": {"subtype": "initialize"}})
        await self._send(user_message(prompt, session))

    async def handle(self, event: dict[str, Any]) -> bool:
        """Take `event` if it belongs to the control protocol (True), else leave it."""
        kind = event.get("type")
        if kind == "control_request":
            await self._request(event)
        elif kind == "control_cancel_request":
            task = self._pending.pop(str(event.get("request_id")), None)
            if task is not None:
                task.cancel()
        elif kind not in ("control_response", "keep_alive"):
            return False
        return True

    async def finish(self) -> None:
        """The turn's result is out: end the input, so the CLI exits."""
        await self._process.close_stdin()

    async def close(self) -> None:
        """Withdraw every unanswered request (the turn ended or was cancelled)."""
        tasks, self._pending = list(self._pending.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _request(self, event: dict[str, Any]) -> None:
        request_id = str(event.get("request_id") or "")
        request = event.get("request") if isinstance(event.get("request"), dict) else {}
        if request.get("subtype") != "can_use_tool":
            # We register no hooks, SDK MCP servers or elicitation handlers.
            await self._send(control_response(request_id, error="Not supported by this client"))
            return
        if request_id in self._pending:
            return  # the same request again: its first copy gets the answer
        task = asyncio.ensure_future(self._answer(request_id, request))
        self._pending[request_id] = task
        task.add_done_callback(lambda _: self._pending.pop(request_id, None))

    async def _answer(self, request_id: str, request: dict[str, Any]) -> None:
        try:
            async with self._preparing:
                # Crowded: rejected unless the policy allows anyway, so nothing is judged.
                crowded = self._recorder.crowded()
                ask = await permission_ask(request, _outside if crowded else self._judge,
                                           self._read)
            with self._clock.asking():
                resolution = await self._recorder.ask(ask)
            answer = decision(resolution, request.get("input"), request.get("tool_use_id"))
        except Exception:  # a request we could not put to anyone is refused, never allowed
            answer = {"behavior": "deny", "message": DENIALS["policy"]}
        await self._send(control_response(request_id, answer))

    async def _send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with contextlib.suppress(BrokenPipeError, ConnectionError):
            await self._process.write(line)

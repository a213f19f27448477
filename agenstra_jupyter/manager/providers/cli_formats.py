"""Readers of the JSON-line output of agent CLIs (see AGENT-PROTOCOLS.md).

Each parser takes the CLI's events one by one and turns them into recorder calls. Unknown
event types and fields are ignored: every one of these formats grows new ones often.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .base import TurnRecorder


def _text_of(content: Any) -> str:
    """Tool output as text: a string, or the text blocks of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            block.get("text", "") for block in content if isinstance(block, dict)
        )
    return "" if content is None else str(content)


class OutputParser:
    """Base: what every CLI reader learns during a turn."""

    name: ClassVar[str]
    # Whether a successful run always ends with a final line (else a clean exit will do).
    has_final_line: ClassVar[bool] = True

    def __init__(self, recorder: TurnRecorder) -> None:
        self.rec = recorder
        self.session_id: str | None = None
        self.final_text: str | None = None
        self.error: str | None = None
        self.done = False
        self._message_gap = False

    async def feed(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    async def say(self, text: str) -> None:
        """Assistant text; separate messages get a blank line between them."""
        if not text:
            return
        if self._message_gap and self.rec.text:
            text = "\n\n" + text
        self._message_gap = False
        await self.rec.delta(text)

    def next_message(self) -> None:
        self._message_gap = True


class ClaudeParser(OutputParser):
    """`claude -p --output-format stream-json --verbose --include-partial-messages`."""

    name = "claude"

    def __init__(self, recorder: TurnRecorder) -> None:
        super().__init__(recorder)
        self._streamed: set[str] = set()  # messages whose text came as deltas
        self._current: str | None = None

    async def feed(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        self.session_id = event.get("session_id") or self.session_id
        if event.get("parent_tool_use_id"):
            return  # a subagent's inner messages; its result arrives as a tool result
        if kind == "stream_event":
            await self._stream_event(event.get("event") or {})
        elif kind == "assistant":
            await self._assistant(event.get("message") or {})
        elif kind == "user":
            await self._tool_results(event.get("message") or {})
        elif kind == "result":
            self.done = True
            if event.get("is_error"):
                errors = event.get("errors") or []
                self.error = event.get("result") or "; ".join(errors) or event.get("subtype")
            else:
                self.final_text = event.get("result")

    async def _stream_event(self, raw: dict[str, Any]) -> None:
        if raw.get("type") == "message_start":
            self._current = (raw.get("message") or {}).get("id")
            self.next_message()
        elif raw.get("type") == "content_block_delta":
            delta = raw.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                if self._current:
                    self._streamed.add(self._current)
                await self.say(delta["text"])

    async def _assistant(self, message: dict[str, Any]) -> None:
        streamed = message.get("id") in self._streamed
        for block in message.get("content") or []:
            if block.get("type") == "text" and not streamed:
                self.next_message()
                await self.say(block.get("text", ""))
            elif block.get("type") in ("tool_use", "server_tool_use"):
                await self.rec.tool_call(block.get("id", ""), block.get("name", "tool"),
                                         block.get("input"))

    async def _tool_results(self, message: dict[str, Any]) -> None:
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                await self.rec.tool_result(block.get("tool_use_id", ""),
                                           _text_of(block.get("content")),
                                           bool(block.get("is_error")))


class CodexParser(OutputParser):
    """`codex exec --json`: thread/turn/item events, no token deltas."""

    name = "codex"

    async def feed(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "thread.started":
            self.session_id = event.get("thread_id")
        elif kind in ("item.started", "item.completed"):
            await self._item(event.get("item") or {}, completed=kind == "item.completed")
        elif kind == "turn.completed":
            self.done = True
        elif kind == "turn.failed":
            self.done = True
            self.error = (event.get("error") or {}).get("message") or "The turn failed"
        elif kind == "error":
            await self.rec.status(str(event.get("message", "")))  # retries: not fatal

    async def _item(self, item: dict[str, Any], completed: bool) -> None:
        kind, item_id = item.get("type"), item.get("id", "")
        if kind == "agent_message" and completed:
            self.next_message()
            await self.say(item.get("text", ""))
        elif kind == "command_execution":
            if not completed:
                await self.rec.tool_call(item_id, "shell", {"command": item.get("command")},
                                         "in_progress")
            else:
                failed = item.get("status") in ("failed", "declined") or item.get(
                    "exit_code") not in (0, None)
                await self.rec.tool_result(item_id, item.get("aggregated_output", ""), failed,
                                           name="shell")
        elif kind in ("file_change", "mcp_tool_call", "web_search") and completed:
            name = item.get("tool") or kind
            args = item.get("arguments") or item.get("changes") or item.get("query")
            await self.rec.tool_call(item_id, name, args, item.get("status", "completed"))
            error = item.get("error")
            await self.rec.tool_result(item_id, (error or {}).get("message") or item.get(
                "result"), bool(error) or item.get("status") == "failed")
        elif kind == "error":
            await self.rec.status(item.get("message", ""))


class GeminiParser(OutputParser):
    """`gemini --output-format stream-json`."""

    name = "gemini"

    async def feed(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "init":
            self.session_id = event.get("session_id")
        elif kind == "message" and event.get("role") == "assistant":
            await self.say(event.get("content", ""))
        elif kind == "tool_use":
            self.next_message()
            await self.rec.tool_call(event.get("tool_id", ""), event.get("tool_name", "tool"),
                                     event.get("parameters"))
        elif kind == "tool_result":
            failed = event.get("status") != "success"
            output = event.get("output") or (event.get("error") or {}).get("message")
            await self.rec.tool_result(event.get("tool_id", ""), output, failed)
        elif kind == "error":
            await self.rec.status(event.get("message", ""))
        elif kind == "result":
            self.done = True
            if event.get("status") != "success":
                self.error = (event.get("error") or {}).get("message") or "The run failed"


class OpencodeParser(OutputParser):
    """`opencode run --format json`: finished parts only; success is a clean exit."""

    name = "opencode"
    has_final_line = False

    async def feed(self, event: dict[str, Any]) -> None:
        self.session_id = event.get("sessionID") or self.session_id
        kind, part = event.get("type"), event.get("part") or {}
        if kind == "text":
            self.next_message()
            await self.say(part.get("text", ""))
        elif kind == "tool_use":
            state = part.get("state") or {}
            call_id = part.get("callID", "")
            await self.rec.tool_call(call_id, part.get("tool", "tool"), state.get("input"),
                                     state.get("status", "completed"))
            failed = state.get("status") == "error"
            await self.rec.tool_result(call_id, state.get("error") if failed
                                       else state.get("output"), failed)
        elif kind == "error":
            error = event.get("error") or {}
            self.error = (error.get("data") or {}).get("message") or error.get("name") or "error"


class CursorParser(OutputParser):
    """`cursor-agent -p --output-format stream-json [--stream-partial-output]` (documented)."""

    name = "cursor"

    def __init__(self, recorder: TurnRecorder) -> None:
        super().__init__(recorder)
        self._partial = False  # partial deltas seen since the last full segment

    async def feed(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        self.session_id = event.get("session_id") or self.session_id
        if kind == "assistant":
            text = _text_of((event.get("message") or {}).get("content"))
            if "timestamp_ms" in event and "model_call_id" not in event:
                self._partial = True
                await self.say(text)
            elif self._partial:
                self._partial = False  # the full repeat of what was streamed
                self.next_message()
            else:
                self.next_message()
                await self.say(text)
        elif kind == "tool_call":
            await self._tool(event)
        elif kind == "result":
            self.done = True
            if event.get("is_error"):
                self.error = event.get("result") or "The run failed"
            else:
                self.final_text = event.get("result")

    async def _tool(self, event: dict[str, Any]) -> None:
        call = event.get("tool_call") or {}
        name, body = next(iter(call.items()), ("tool", {}))
        body = body if isinstance(body, dict) else {}
        if name == "function":
            name = body.get("name", "function")
        call_id = event.get("call_id", "")
        if event.get("subtype") == "started":
            await self.rec.tool_call(call_id, name, body.get("args") or body.get("arguments"))
        elif event.get("subtype") == "completed":
            result = body.get("result") or {}
            failed = "success" not in result and bool(result)
            await self.rec.tool_result(call_id, result.get("success", result) or None, failed)


PARSERS: dict[str, type[OutputParser]] = {
    parser.name: parser
    for parser in (ClaudeParser, CodexParser, GeminiParser, OpencodeParser, CursorParser)
}

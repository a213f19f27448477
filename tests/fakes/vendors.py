"""Fake model APIs on 127.0.0.1, speaking each vendor's real streaming wire format.

The agent CLIs under test are real; only the model behind them is scripted. A test queues
`Reply`s; each model request takes the next one (or a short default answer once the
queue is empty, for the CLIs' own side requests such as titles).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tornado import httpserver, netutil, web


@dataclass
class ToolUse:
    name: str
    args: dict[str, Any]
    id: str = field(default_factory=lambda: f"toolu_{uuid.uuid4().hex[:12]}")
    # Responses API: the namespace of a namespaced tool (Codex lists MCP tools so).
    namespace: str | None = None


@dataclass
class Reply:
    """One scripted model response."""

    text: str = ""
    tool: ToolUse | None = None
    status: int = 200  # an HTTP error status instead of a stream
    error_message: str = "scripted failure"
    chunk_delay: float = 0.0  # seconds between streamed chunks (slow streams, cancel tests)
    cut_after: int | None = None  # drop the connection after this many chunks
    retry_after: float | None = None
    # The text made from the request instead of `text` (Anthropic): a model that reports
    # what its last tool call returned, say.
    answer: Callable[[Any], str] | None = None


def last_tool_result(body: Any) -> str:
    """The text of the last `tool_result` block in an Anthropic Messages request."""
    for message in reversed((body or {}).get("messages", [])):
        content = message.get("content")
        for block in reversed(content if isinstance(content, list) else []):
            if isinstance(block, dict) and block.get("type") == "tool_result":
                inner = block.get("content")
                if isinstance(inner, str):
                    return inner
                return "".join(part.get("text", "") for part in inner or []
                               if isinstance(part, dict))
    return ""


@dataclass
class SeenRequest:
    path: str
    headers: dict[str, str]
    body: Any


class FakeVendor:
    """Serves Anthropic Messages, OpenAI Responses and Chat Completions, Gemini streaming."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[SeenRequest] = []
        self.default = Reply(text="ok")
        # Requests this says are a CLI's side errands (e.g. a session title) get `default`
        # and leave the script alone; None: every request takes the next scripted reply.
        self.side_request: Any = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: httpserver.HTTPServer | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def next_reply(self) -> Reply:
        return self.replies.popleft() if self.replies else self.default

    def model_requests(self, path_part: str) -> list[SeenRequest]:
        return [r for r in self.requests if path_part in r.path]

    def start(self) -> FakeVendor:
        threading.Thread(target=self._run, name="fake-vendor", daemon=True).start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = web.Application([
            (r"/v1/messages", AnthropicHandler, {"vendor": self}),
            (r"/v1/responses", ResponsesHandler, {"vendor": self}),
            (r"/v1/chat/completions", ChatCompletionsHandler, {"vendor": self}),
            (r"/v1beta/models/([^/:]+):streamGenerateContent", GeminiHandler, {"vendor": self}),
            (r"/v1beta/models/([^/:]+):(\w+)", GeminiOtherHandler, {"vendor": self}),
            (r"/(.*)", CatchAllHandler, {"vendor": self}),
        ])
        self._server = httpserver.HTTPServer(app)
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        self._server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()


class _Handler(web.RequestHandler):
    def initialize(self, vendor: FakeVendor) -> None:
        self.vendor = vendor

    def check_xsrf_cookie(self) -> None:
        pass

    def record(self) -> Any:
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            body = None
        self.vendor.requests.append(
            SeenRequest(self.request.path, dict(self.request.headers), body)
        )
        return body

    async def stream(self, reply: Reply, events: list[str]) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        for index, event in enumerate(events):
            if reply.cut_after is not None and index >= reply.cut_after:
                self.request.connection.stream.close()  # mid-stream disconnect
                return
            self.write(event)
            await self.flush()
            if reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
        self.finish()

    def fail(self, reply: Reply, body: dict[str, Any]) -> None:
        self.set_status(reply.status)
        if reply.retry_after is not None:
            self.set_header("retry-after", str(reply.retry_after))
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


def sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def chunks(text: str, size: int = 6) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or []


class AnthropicHandler(_Handler):
    async def post(self) -> None:
        body = self.record()
        side = self.vendor.side_request
        reply = self.vendor.default if side and side(body) else self.vendor.next_reply()
        if reply.status != 200:
            kind = "rate_limit_error" if reply.status == 429 else "api_error"
            if reply.status == 400:
                kind = "invalid_request_error"
            self.fail(reply, {"type": "error", "error": {"type": kind,
                                                        "message": reply.error_message}})
            return
        model = (body or {}).get("model", "claude-sonnet-4-5")
        events = [sse({"type": "message_start", "message": {
            "id": f"msg_{uuid.uuid4().hex[:10]}", "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1}}}, "message_start")]
        index = 0
        text = reply.answer(body) if reply.answer else reply.text
        if text:
            events.append(sse({"type": "content_block_start", "index": index,
                               "content_block": {"type": "text", "text": ""}},
                              "content_block_start"))
            for piece in chunks(text):
                events.append(sse({"type": "content_block_delta", "index": index,
                                   "delta": {"type": "text_delta", "text": piece}},
                                  "content_block_delta"))
            events.append(sse({"type": "content_block_stop", "index": index},
                              "content_block_stop"))
            index += 1
        if reply.tool:
            events.append(sse({"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": reply.tool.id, "name": reply.tool.name, "input": {}}},
                "content_block_start"))
            events.append(sse({"type": "content_block_delta", "index": index, "delta": {
                "type": "input_json_delta", "partial_json": json.dumps(reply.tool.args)}},
                "content_block_delta"))
            events.append(sse({"type": "content_block_stop", "index": index},
                              "content_block_stop"))
        stop = "tool_use" if reply.tool else "end_turn"
        events.append(sse({"type": "message_delta", "delta": {"stop_reason": stop,
                                                              "stop_sequence": None},
                           "usage": {"output_tokens": 5}}, "message_delta"))
        events.append(sse({"type": "message_stop"}, "message_stop"))
        await self.stream(reply, events)


class ResponsesHandler(_Handler):
    async def post(self) -> None:
        self.record()
        reply = self.vendor.next_reply()
        if reply.status != 200:
            self.fail(reply, {"error": {"message": reply.error_message, "type": "server_error",
                                        "code": "rate_limit_exceeded" if reply.status == 429
                                        else None}})
            return
        response_id = f"resp_{uuid.uuid4().hex[:10]}"
        base = {"id": response_id, "object": "response", "created_at": 1, "model": "gpt-test"}
        events = [sse({"type": "response.created", "sequence_number": 0,
                       "response": {**base, "status": "in_progress", "output": []}},
                      "response.created")]
        output: list[dict[str, Any]] = []
        if reply.text:
            item_id = f"msg_{uuid.uuid4().hex[:10]}"
            item = {"id": item_id, "type": "message", "role": "assistant",
                    "status": "in_progress", "content": []}
            events.append(sse({"type": "response.output_item.added", "output_index": 0,
                               "item": item}, "response.output_item.added"))
            events.append(sse({"type": "response.content_part.added", "item_id": item_id,
                               "output_index": 0, "content_index": 0,
                               "part": {"type": "output_text", "text": "", "annotations": []}},
                              "response.content_part.added"))
            for piece in chunks(reply.text):
                events.append(sse({"type": "response.output_text.delta", "item_id": item_id,
                                   "output_index": 0, "content_index": 0, "delta": piece},
                                  "response.output_text.delta"))
            done = {**item, "status": "completed", "content": [
                {"type": "output_text", "text": reply.text, "annotations": []}]}
            events.append(sse({"type": "response.output_text.done", "item_id": item_id,
                               "output_index": 0, "content_index": 0, "text": reply.text},
                              "response.output_text.done"))
            events.append(sse({"type": "response.output_item.done", "output_index": 0,
                               "item": done}, "response.output_item.done"))
            output.append(done)
        if reply.tool:
            call = {"id": f"fc_{uuid.uuid4().hex[:10]}", "type": "function_call",
                    "status": "completed", "call_id": reply.tool.id, "name": reply.tool.name,
                    "arguments": json.dumps(reply.tool.args)}
            if reply.tool.namespace:
                call["namespace"] = reply.tool.namespace
            events.append(sse({"type": "response.output_item.added", "output_index": len(output),
                               "item": {**call, "status": "in_progress", "arguments": ""}},
                              "response.output_item.added"))
            events.append(sse({"type": "response.output_item.done", "output_index": len(output),
                               "item": call}, "response.output_item.done"))
            output.append(call)
        usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": 15}
        events.append(sse({"type": "response.completed", "response": {
            **base, "status": "completed", "output": output, "usage": usage}},
            "response.completed"))
        await self.stream(reply, events)


class ChatCompletionsHandler(_Handler):
    async def post(self) -> None:
        self.record()
        reply = self.vendor.next_reply()
        if reply.status != 200:
            self.fail(reply, {"error": {"message": reply.error_message, "type": "server_error",
                                        "param": None, "code": None}})
            return
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                "model": "gpt-test"}
        events = [sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                  "content": ""},
                                            "finish_reason": None}]})]
        for piece in chunks(reply.text):
            events.append(sse({**base, "choices": [{"index": 0, "delta": {"content": piece},
                                                    "finish_reason": None}]}))
        if reply.tool:
            events.append(sse({**base, "choices": [{"index": 0, "delta": {"tool_calls": [{
                "index": 0, "id": reply.tool.id, "type": "function",
                "function": {"name": reply.tool.name,
                             "arguments": json.dumps(reply.tool.args)}}]},
                "finish_reason": None}]}))
        finish = "tool_calls" if reply.tool else "stop"
        events.append(sse({**base, "choices": [{"index": 0, "delta": {},
                                                "finish_reason": finish}]}))
        events.append(sse({**base, "choices": [], "usage": {
            "prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}))
        events.append("data: [DONE]\n\n")
        await self.stream(reply, events)


class GeminiHandler(_Handler):
    async def post(self, model: str) -> None:
        self.record()
        reply = self.vendor.next_reply()
        if reply.status != 200:
            self.fail(reply, {"error": {"code": reply.status, "message": reply.error_message,
                                        "status": "RESOURCE_EXHAUSTED" if reply.status == 429
                                        else "INTERNAL"}})
            return
        usage = {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}
        events = []
        pieces = chunks(reply.text)
        for piece in pieces:
            events.append(sse({"candidates": [{"content": {"parts": [{"text": piece}],
                                                           "role": "model"}, "index": 0}],
                               "usageMetadata": usage, "modelVersion": model}))
        final_parts: list[dict[str, Any]] = []
        if reply.tool:
            final_parts.append({"functionCall": {"name": reply.tool.name,
                                                 "args": reply.tool.args}})
        events.append(sse({"candidates": [{"content": {"parts": final_parts or [{"text": ""}],
                                                       "role": "model"},
                                           "finishReason": "STOP", "index": 0}],
                           "usageMetadata": usage, "modelVersion": model}))
        await self.stream(reply, events)


class GeminiOtherHandler(_Handler):
    async def post(self, model: str, method: str) -> None:
        self.record()
        if method == "countTokens":
            self.finish({"totalTokens": 10})
        elif method == "generateContent":
            text = self.vendor.default.text
            self.finish({"candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
                                         "finishReason": "STOP", "index": 0}],
                         "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1,
                                           "totalTokenCount": 2}})
        else:
            self.set_status(404)
            self.finish({"error": {"code": 404, "message": "not faked"}})


class CatchAllHandler(_Handler):
    async def get(self, path: str) -> None:
        self.record()
        if path.endswith("models"):
            self.finish({"object": "list", "data": [], "models": []})
            return
        self.set_status(404)
        self.finish({"error": {"message": f"not faked: {path}"}})

    async def post(self, path: str) -> None:
        await self.get(path)

"""A tornado handler that serves its requests with an ASGI application.

Jupyter is a tornado server and the MCP SDK's transport is an ASGI app; this is the small
piece between them. The request body is read by tornado, bounded before it is read
(`max_body_size`), and handed to the app whole; the app's answer is written as it comes,
each chunk flushed, so a streamed (SSE) answer reaches the client at once. A client that
goes away cancels its request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from tornado import iostream, web

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY = 4 * 1024 * 1024


@web.stream_request_body
class ASGIHandler(web.RequestHandler):
    """Subclasses give `asgi_app()` and may add to the scope (`scope_extra`)."""

    SUPPORTED_METHODS = ("GET", "POST", "DELETE")  # type: ignore[assignment]
    max_body_size = DEFAULT_MAX_BODY

    def asgi_app(self) -> ASGIApp:
        raise NotImplementedError

    def scope_extra(self) -> dict[str, Any]:
        return {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before anything can run: the connection may close before prepare() does.
        self._body: bytearray | None = bytearray()
        self._too_large = False
        self._disconnected = asyncio.Event()
        self._serving: asyncio.Task[None] | None = None
        self._started = False
        super().__init__(*args, **kwargs)

    async def prepare(self) -> None:
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_body_size:
            self.refuse(413, "Request body too large")
            return
        # Tornado stops reading (and drops the connection) past this: a chunked body that
        # never says its length cannot grow beyond it either.
        connection = self.request.connection
        if connection is not None and hasattr(connection, "set_max_body_size"):
            connection.set_max_body_size(self.max_body_size)

    def data_received(self, chunk: bytes) -> None:
        if self._body is None:  # already handed to the app: nothing more belongs to it
            return
        if len(self._body) + len(chunk) > self.max_body_size:
            self._too_large = True
            return
        self._body += chunk

    def refuse(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        """A short plain answer, before anything of the app ran."""
        self.clear()
        self.set_status(status)
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        self.finish({"error": message})

    def check_xsrf_cookie(self) -> None:
        """Requests here carry a bearer token, which a browser never adds by itself: there
        is no ambient credential to forge a request with (the app decides what it needs)."""

    def on_connection_close(self) -> None:
        self._disconnected.set()
        if self._serving is not None and not self._serving.done():
            self._serving.cancel()

    async def get(self) -> None:
        await self._serve()

    async def post(self) -> None:
        await self._serve()

    async def delete(self) -> None:
        await self._serve()

    async def _serve(self) -> None:
        if self._too_large:
            self.refuse(413, "Request body too large")
            return
        self._serving = asyncio.ensure_future(self.asgi_app()(self._scope(), self._receive,
                                                              self._send))
        try:
            await self._serving
        except (asyncio.CancelledError, iostream.StreamClosedError):
            self._disconnected.set()  # the client is gone; nobody to answer
            return
        if not self._finished:
            if not self._started:  # the app answered nothing: that is its fault
                self.refuse(500, "No answer")
            else:
                self.finish()

    def _scope(self) -> Scope:
        request = self.request
        path = request.path
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.version.removeprefix("HTTP/") or "1.1",
            "method": request.method,
            "scheme": request.protocol,
            "path": unquote(path),
            "raw_path": path.encode("latin-1", "replace"),
            "query_string": request.query.encode("latin-1", "replace"),
            "root_path": "",
            "headers": [(name.lower().encode("latin-1"), value.encode("latin-1", "replace"))
                        for name, value in request.headers.get_all()],
            "client": (request.remote_ip or "", 0),
            "server": None,
            "state": {},
            **self.scope_extra(),
        }

    async def _receive(self) -> Message:
        if self._body is not None:
            body, self._body = bytes(self._body), None
            return {"type": "http.request", "body": body, "more_body": False}
        await self._disconnected.wait()  # nothing more to read: only the end can come
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._start(message)
        elif kind == "http.response.body":
            body = message.get("body", b"")
            if body:
                self.write(body)
            if message.get("more_body", False):
                await self.flush()
            elif not self._finished:
                await self.finish()
                self._disconnected.set()

    def _start(self, message: Message) -> None:
        self._started = True
        self.clear()
        self.clear_header("Content-Type")  # not tornado's text/html: the app says what it sends
        self.set_status(int(message["status"]))
        for name, value in message.get("headers", []):
            self.add_header(name.decode("latin-1"), value.decode("latin-1"))

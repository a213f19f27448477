"""The notebook tools' MCP endpoint (DESIGN.md "Notebook tools (MCP)").

One MCP server (the SDK's low-level `Server` behind its streamable-HTTP session manager,
stateless, JSON answers) served twice: in the Jupyter server at `{base_url}agenstra/mcp`,
and on an MCP-only UNIX socket (0600, in the controller's private data directory) that the
local manager relays into its agents' sandboxes as their one loopback port.

A request is served only with `Authorization: Bearer <token>`, a token the controller
minted for one agent (registry grants): never the Jupyter token or cookie. Whatever is
wrong with it, the answer is the same 401. The token stands for the caller: its agent,
that agent's manager and its project, the one folder its tools may touch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import tempfile
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mcp.types as types
from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.utils import url_path_join
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from tornado import httpserver, netutil, web

from ... import protocol
from ..._version import __version__
from ...protocol import AgenstraError, ErrorCode
from ..manager_api import is_outcome
from ..registry import GrantRecord
from .asgi import ASGIApp, ASGIHandler
from .tools import Caller, ToolError, call_tool, tool_definitions

if TYPE_CHECKING:
    from ..app import Controller

GRANT_KEY = "agenstra.grant"  # where a request's scope carries its caller
UNAUTHORIZED = "Unauthorized"  # one answer for every failure: nothing to learn from it
SOCKET_NAME = "mcp.sock"
SPARE_PREFIX = "agenstra-mcp-"  # a private temporary folder, when data_dir cannot hold it
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, fewer elsewhere
_BEARER = re.compile(r"(?i:bearer) +([A-Za-z0-9_-]{16,256})")
_LOOPBACK_HOST = re.compile(r"(127\.0\.0\.1|localhost|\[::1\])(:[0-9]{1,5})?", re.IGNORECASE)


class MCPEndpoint:
    """The MCP server, its session manager's lifetime, and the MCP-only socket."""

    def __init__(self, controller: Controller, *, data_dir: Path, max_body_bytes: int,
                 ask_timeout: float, max_calls_per_agent: int) -> None:
        self.controller = controller
        self.log = controller.log
        self.max_body_bytes = max_body_bytes
        self.ask_timeout = ask_timeout
        self.max_calls_per_agent = max_calls_per_agent
        self.socket_path = socket_path(data_dir)
        self.server: Server[Any] = Server(
            protocol.MCP_SERVER_NAME, version=__version__,
            instructions="Notebook tools for the Jupyter files of this agent's project.",
            on_list_tools=self._list_tools, on_call_tool=self._call_tool,
        )
        # Stateless: every request stands alone with its token, so no session outlives a
        # revoked grant and nothing is kept per client. The SDK's Host/Origin checks are
        # replaced by ours (MCPHandler), which know which listener a request came in on.
        self.sessions = StreamableHTTPSessionManager(
            self.server, json_response=True, stateless=True,
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            max_request_body_size=max_body_bytes,
        )
        self._in_flight: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._running: asyncio.Task[None] | None = None
        self._listener: httpserver.HTTPServer | None = None

    @property
    def listening(self) -> bool:
        """Whether the MCP-only socket is up (what the local manager may be handed)."""
        return self._listener is not None

    @property
    def serverapp(self) -> Any:
        return self.controller.app.serverapp

    @property
    def route(self) -> str:
        """The endpoint's path, the same on both listeners (agents get one URL shape)."""
        return url_path_join(self.serverapp.base_url, protocol.MCP_PATH)

    def jupyter_handlers(self) -> list[tuple[str, type, dict[str, Any]]]:
        """For the extension's handlers (which get base_url prefixed)."""
        return [("/" + protocol.MCP_PATH + "/?", MCPHandler,
                 {"endpoint": self, "loopback_only": False})]

    # -- lifetime ------------------------------------------------------------------------

    async def start(self) -> None:
        """Run the session manager's task group on this (the server's) loop until stop(),
        then open the MCP-only socket."""
        if self._running is not None:
            return
        started = asyncio.Event()
        self._running = asyncio.create_task(self._run(started), name="agenstra-mcp")
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({waiter, self._running}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._running.done():  # it failed to start: say why
            self._running.result()
        self._listen()

    async def _run(self, started: asyncio.Event) -> None:
        async with self.sessions.run():
            started.set()
            await self._stop.wait()

    def _listen(self) -> None:
        path = self.socket_path
        app = web.Application(
            [(re.escape(self.route) + "/?", MCPHandler, {"endpoint": self, "loopback_only": True})],
            xsrf_cookies=False, compress_response=False,
        )
        sock = netutil.bind_unix_socket(str(path), mode=0o600)
        self._listener = httpserver.HTTPServer(app, max_body_size=self.max_body_bytes + 1024)
        self._listener.add_socket(sock)
        self.log.info("agenstra: notebook tools (MCP) at %s and on %s", self.route, path)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.close_all_connections(), 5)
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            if self.socket_path.parent.name.startswith(SPARE_PREFIX):
                with contextlib.suppress(OSError):
                    self.socket_path.parent.rmdir()
        self._stop.set()
        if self._running is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._running, 10)
            self._running = None

    # -- auth ----------------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """Whether requests can be served: the SDK's task group runs, the registry is open
        (never ready(): a request must not be what retries starting the local manager)."""
        running = self._running is not None and not self._running.done()
        return running and self.controller.registry_open

    async def authenticate(self, authorization: str | None) -> GrantRecord | None:
        """The grant a request's Authorization header stands for, or None."""
        match = _BEARER.fullmatch(authorization or "")
        if match is None:
            return None
        return await self.controller.registry.grant(match.group(1))

    # -- the MCP server's handlers -------------------------------------------------------

    async def _list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        _grant(ctx)  # nobody reaches here without one; never serve a request that has none
        return types.ListToolsResult(tools=tool_definitions())

    async def _call_tool(self, ctx: Any, params: types.CallToolRequestParams
                         ) -> types.CallToolResult:
        grant = _grant(ctx)
        caller = Caller(client_id=grant.client_id, agent_id=grant.agent_id,
                        project=grant.project, ask=partial(self.ask, grant))
        try:
            with self._slot(f"{grant.client_id}/{grant.agent_id}"):
                content = await call_tool(self.serverapp, caller, params.name,
                                          params.arguments or {})
        except ToolError as exc:
            return _failed(str(exc))
        except Exception:
            self.log.exception("agenstra: notebook tool %r failed", params.name)
            return _failed(f"The tool {params.name!r} failed on the server")
        return types.CallToolResult(content=content)

    @contextlib.contextmanager
    def _slot(self, agent: str) -> Iterator[None]:
        """One agent's calls at once are bounded: each may hold a kernel or a user's ask."""
        if self.max_calls_per_agent and self._in_flight[agent] >= self.max_calls_per_agent:
            raise ToolError(f"Too many tool calls at once (at most "
                            f"{self.max_calls_per_agent}); wait for one to finish")
        self._in_flight[agent] += 1
        try:
            yield
        finally:
            self._in_flight[agent] -= 1
            if self._in_flight[agent] <= 0:
                del self._in_flight[agent]

    # -- asks ----------------------------------------------------------------------------

    async def ask(self, grant: GrantRecord, request: protocol.ToolPermissionRequest) -> str:
        """Ask the agent's user through its manager, in the agent's running turn; the
        outcome: allowed, rejected, expired or cancelled."""
        registry = self.controller.registry
        client = await registry.get_client(grant.client_id)
        if client is None:
            raise ToolError("This agent's manager is no longer registered")
        try:
            answer = await self.controller.api.request(
                client.endpoint, client.api_key, "POST",
                f"/api/agents/{grant.agent_id}/permissions",
                json=request.model_dump(exclude_none=True), shape=is_outcome,
                local=client.local, timeout=self.ask_timeout,
            )
        except AgenstraError as exc:
            if exc.status == 404 and exc.code == ErrorCode.NOT_FOUND:  # the agent is gone
                await registry.revoke_grant(grant.client_id, grant.agent_id)
                raise ToolError("This agent no longer exists") from None
            if exc.code == ErrorCode.CONFLICT:
                raise ToolError("No turn of this agent is running: tools that change or run "
                                "anything work only while the agent answers a message") from None
            raise ToolError(f"The user could not be asked: {exc.message}") from None
        return answer["outcome"]


@web.stream_request_body
class MCPHandler(ASGIHandler):
    """One listener's MCP requests: checked, authenticated, then served by the SDK."""

    def initialize(self, endpoint: MCPEndpoint, loopback_only: bool) -> None:
        self.endpoint = endpoint
        self.loopback_only = loopback_only
        self.max_body_size = endpoint.max_body_bytes
        self._grant: GrantRecord | None = None

    def asgi_app(self) -> ASGIApp:
        return self.endpoint.sessions.handle_request

    def scope_extra(self) -> dict[str, Any]:
        return {GRANT_KEY: self._grant}

    async def prepare(self) -> None:
        await super().prepare()
        if self._finished:
            return
        headers = self.request.headers
        # The socket is reached only through an agent's relayed loopback port: any other
        # Host is a request that was never meant for it (DNS rebinding). On the Jupyter
        # port any Host is served, as Jupyter serves its users: there the bearer token is
        # the only credential, and a page rebound to this server cannot have it.
        if self.loopback_only and not _LOOPBACK_HOST.fullmatch(headers.get("Host", "")):
            self.refuse(421, "Invalid Host header")
            return
        # No browser page may call the tools: agents' HTTP clients send no Origin, and
        # a page that could would act with the token of whoever it got it from.
        if "Origin" in headers:
            self.refuse(403, "Invalid Origin header")
            return
        if not self.endpoint.serving:
            self.refuse(503, "The notebook tools are not available now")
            return
        self._grant = await self.endpoint.authenticate(headers.get("Authorization"))
        if self._grant is None:
            self.refuse(401, UNAUTHORIZED, {"WWW-Authenticate": 'Bearer realm="agenstra"'})

    # Jupyter's login does not apply here: the bearer token checked in prepare() does.
    @allow_unauthenticated
    async def get(self) -> None:
        # Stateless: the server never sends a message of its own, so it offers no SSE
        # stream (the spec's 405), rather than holding a connection open for nothing.
        self.refuse(405, "This endpoint offers no event stream: POST requests",
                    {"Allow": "POST, DELETE"})

    @allow_unauthenticated
    async def post(self) -> None:
        await super().post()

    @allow_unauthenticated
    async def delete(self) -> None:
        await super().delete()


def _grant(ctx: Any) -> GrantRecord:
    request = getattr(ctx, "request", None)
    grant = request.scope.get(GRANT_KEY) if request is not None else None
    if not isinstance(grant, GrantRecord):
        raise ToolError(UNAUTHORIZED)
    return grant


def _failed(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def socket_path(data_dir: Path) -> Path:
    """`<data_dir>/mcp.sock`, or in a fresh private temporary folder when that path is too
    long for a UNIX socket or another live server listens on it (never take that over)."""
    path = data_dir / SOCKET_NAME
    if len(os.fsencode(path)) > MAX_SOCKET_PATH or _someone_listens(path):
        return _spare_socket_path()
    return path


def _spare_socket_path() -> Path:
    return Path(tempfile.mkdtemp(prefix=SPARE_PREFIX)) / SOCKET_NAME  # mkdtemp: 0700


def _someone_listens(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(path))
        except OSError:
            return False  # a stale socket of a server that is gone
    return True



"""Socket.IO namespace `/agents`: login, chat, cancel, logout, permissionResponse (see
DESIGN.md). A socket may be logged into several agents ("One manager socket, several
agents"): requests name theirs by `agentId`, which may be left out while it holds one.
Events run concurrently, in the order of their agent's lane (ordering.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from .. import protocol
from ..protocol import AgenstraError, ErrorCode, ManagerEvent
from ..socketio_tuned import TunedServer, socketio_handler
from . import metrics
from .auth import Authenticator, Caller, handshake_key
from .channel import AgentChannel
from .ordering import InFlight, SocketOrder
from .providers import ProviderError
from .service import AgentService

Handler = Callable[[str, Any], Awaitable[Any]]

# Agents one socket may be logged into at once: a controller multiplexes its frontends'
# agents over one socket per manager, and each costs the manager a room and a listener.
MAX_AGENTS_PER_SOCKET = 10_000


def agent_room(agent_id: str) -> str:
    return f"agent:{agent_id}"


def _waiting_size(data: Any) -> int:
    """The bytes an event holds while it waits: its chat text (the frame bounds the rest).
    A chat over max_message_bytes is refused in its turn, so refusals keep their order."""
    message = data.get("message") if isinstance(data, dict) else None
    return len(message) if isinstance(message, str) else 0


def _lane_of(data: Any) -> str | None:
    """The agent an event names (its lane), or None: it is ordered with the whole socket."""
    agent_id = data.get("agentId") if isinstance(data, dict) else None
    return agent_id if isinstance(agent_id, str) and agent_id else None


def _peer(environ: dict[str, Any]) -> str:
    """The peer's address (engine.io's tornado environ always says 127.0.0.1)."""
    handler = environ.get("tornado.handler")
    return getattr(getattr(handler, "request", None), "remote_ip", None) or ""


def bounded_socketio_handler(
    sio: TunedServer, max_sockets: int, handshake_timeout: float
) -> type:
    """The Socket.IO handler, bounded: at most `max_sockets` engine.io connections (a new
    one over that gets a 503 before any upgrade), and a connection that has not joined
    /agents `handshake_timeout` seconds after it opened (refused, or never tried) closed."""
    base: Any = socketio_handler(sio, sio.eio.max_http_buffer_size)
    joined = sio.eio.handlers["connect"]  # python-socketio's own
    closing: set[asyncio.Task[None]] = set()

    def expire(eio_sid: str) -> None:
        if eio_sid in sio.eio.sockets and \
                sio.manager.sid_from_eio_sid(eio_sid, protocol.AGENTS_NAMESPACE) is None:
            task = asyncio.ensure_future(sio.eio.disconnect(eio_sid))
            closing.add(task)
            task.add_done_callback(closing.discard)

    async def on_eio_connect(eio_sid: str, environ: dict[str, Any]) -> Any:
        if handshake_timeout > 0:
            asyncio.get_running_loop().call_later(handshake_timeout, expire, eio_sid)
        return await joined(eio_sid, environ)

    sio.eio.on("connect", on_eio_connect)

    class BoundedHandler(base):  # type: ignore[misc, valid-type]
        async def get(self, *args: Any, **kwargs: Any) -> None:
            new = self.get_query_argument("sid", None) is None
            if new and max_sockets and len(sio.eio.sockets) >= max_sockets:
                metrics.ERRORS.labels(ErrorCode.RATE_LIMITED).inc()
                self.set_status(503)
                self.set_header("Content-Type", "application/json")
                self.finish(json.dumps(protocol.error_payload(
                    ErrorCode.RATE_LIMITED, "Too many connections")))
                return
            await super().get(*args, **kwargs)

    return BoundedHandler


class AgentsNamespace(socketio.AsyncNamespace):
    def __init__(
        self,
        service: AgentService,
        gate: Authenticator,
        history_limit: int,
        max_message_bytes: int,
        log: logging.Logger,
    ) -> None:
        super().__init__(protocol.AGENTS_NAMESPACE)
        self.service = service
        self._gate = gate
        self._history_limit = history_limit
        self._max_message_bytes = max_message_bytes
        self._log = log
        # sid -> the agents it is logged into (an ordered set), at most MAX_AGENTS_PER_SOCKET
        self._logged_in: dict[str, dict[str, None]] = {}
        self._callers: dict[str, Caller] = {}  # sid -> who its handshake named
        self._orders: dict[str, SocketOrder] = {}  # sid -> the order its events run in
        self._in_flight = InFlight()  # bytes waiting, every socket's: bounded
        self._handlers: dict[str, Handler] = {
            ManagerEvent.LOGIN: self._login,
            ManagerEvent.CHAT: self._chat,
            ManagerEvent.CANCEL: self._cancel,
            ManagerEvent.LOGOUT: self._logout,
            ManagerEvent.PERMISSION_RESPONSE: self._permission_response,
        }
        service.outbox = self

    # -- Outbox (used by agent channels) -------------------------------------------------

    async def to_agent(self, agent_id: str, event: str, payload: Any) -> None:
        await self.emit(event, payload, room=agent_room(agent_id))

    async def to_socket(self, sid: str, event: str, payload: Any) -> None:
        await self.emit(event, payload, to=sid)

    async def join(self, sid: str, agent_id: str) -> None:
        if self.server.manager.is_connected(sid, self.namespace):  # not gone meanwhile
            await self.enter_room(sid, agent_room(agent_id))

    async def leave(self, sid: str, agent_id: str) -> None:
        await self.leave_room(sid, agent_room(agent_id))

    # -- dispatch ------------------------------------------------------------------------

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        try:
            caller = await self._gate.identify(_peer(environ), handshake_key(environ, auth))
        except AgenstraError as refusal:
            metrics.ERRORS.labels(refusal.code).inc()
            if refusal.code == ErrorCode.UNAUTHORIZED:  # one message, nothing more
                raise socketio.exceptions.ConnectionRefusedError(refusal.message) from None
            raise socketio.exceptions.ConnectionRefusedError(
                refusal.message, {"code": refusal.code}) from None
        self._callers[sid] = caller
        self._orders[sid] = SocketOrder(self._in_flight)
        metrics.SOCKETS.inc()

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        metrics.SOCKETS.dec()
        self._orders.pop(sid, None)
        self._logged_in.pop(sid, None)
        self._callers.pop(sid, None)

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        sid = args[0]
        handler = self._handlers.get(event)
        try:
            if handler is None:
                raise AgenstraError(ErrorCode.UNKNOWN_EVENT, "Unknown event")
            if len(args) > 2:
                raise AgenstraError(ErrorCode.INVALID_PAYLOAD, "Send one payload object")
            data = args[1] if len(args) > 1 else None
            size = _waiting_size(data)  # counted against the in-flight budget while it waits
            # Taken now, as it arrives: see ordering.py.
            async with self._order(sid).turn(_lane_of(data), size):
                return await handler(sid, data)
        except AgenstraError as exc:
            metrics.ERRORS.labels(exc.code).inc()
            await self.emit(ManagerEvent.ERROR, exc.payload(), to=sid)
            return {"ok": False, "error": exc.payload()}  # the ack, for a caller that asked
        except Exception:
            metrics.ERRORS.labels(ErrorCode.INTERNAL).inc()
            self._log.exception("Handling %r failed", event)
            await self.emit(
                ManagerEvent.ERROR,
                protocol.error_payload(ErrorCode.INTERNAL, "Internal error"),
                to=sid,
            )
        return None

    def _order(self, sid: str) -> SocketOrder:
        # A socket gone already (its events may still run): an order of its own, dropped.
        return self._orders.get(sid) or SocketOrder(self._in_flight)

    # -- events --------------------------------------------------------------------------

    async def _login(self, sid: str, data: Any) -> None:
        request: protocol.LoginRequest = protocol.parse(protocol.LoginRequest, data)
        caller = self._callers.get(sid)
        agent = await self.service.authenticate(
            request.agentId, request.agentName, request.password,
            caller.user if caller else None,
        )
        if agent is not None and (caller is None or not caller.may_use(agent.owner)):
            agent = None  # another user's agent: the same refusal as a wrong password
        metrics.LOGINS.labels("success" if agent else "failure").inc()
        if agent is None:
            await self.emit(ManagerEvent.LOGIN_ERROR, protocol.login_error(), to=sid)
            return
        if sid not in self._callers:
            return  # the socket went while the password was checked: nothing to keep
        agents = self._logged_in.setdefault(sid, {})
        if agent.id in agents:  # logged in again: the history after afterSeq once more
            await self.leave(sid, agent.id)  # still logged in: its chats go on meanwhile
        elif len(agents) >= MAX_AGENTS_PER_SOCKET:
            raise AgenstraError(ErrorCode.RATE_LIMITED, f"A socket is logged into at most "
                                f"{MAX_AGENTS_PER_SOCKET} agents: log out of one first")
        agents[agent.id] = None
        await self.emit(
            ManagerEvent.LOGIN_SUCCESS, protocol.login_success(agent.id, agent.name), to=sid
        )
        await self.service.channel(agent).subscribe(sid, request.afterSeq, self._history_limit)

    async def _chat(self, sid: str, data: Any) -> dict[str, Any]:
        request: protocol.ChatRequest = protocol.parse(protocol.ChatRequest, data)
        if len(request.message.encode()) > self._max_message_bytes:
            raise AgenstraError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"Message is larger than {self._max_message_bytes} bytes",
            )
        channel = self._current_channel(sid, request.agentId)
        try:
            message = await channel.submit(
                request.message, request.correlationId or str(uuid.uuid4()), request.stream
            )
        except ProviderError as exc:
            raise AgenstraError(ErrorCode.INTERNAL, str(exc)) from None
        # Acknowledged (when asked) only once the message is stored.
        return {"ok": True, "id": message["id"], "seq": message["seq"],
                "correlationId": message["correlationId"]}

    async def _cancel(self, sid: str, data: Any) -> None:
        request: protocol.CancelRequest = protocol.parse(protocol.CancelRequest, data)
        self._current_channel(sid, request.agentId).cancel(request.correlationId)

    async def _logout(self, sid: str, data: Any) -> None:
        request: protocol.LogoutRequest = protocol.parse(protocol.LogoutRequest, data)
        agent_id = self._agent_of(sid, request.agentId)
        await self._leave_agent(sid, agent_id)
        await self.emit(ManagerEvent.LOGOUT_SUCCESS, {"agentId": agent_id}, to=sid)

    async def _permission_response(self, sid: str, data: Any) -> dict[str, Any]:
        request: protocol.PermissionResponseRequest = protocol.parse(
            protocol.PermissionResponseRequest, data)
        channel = self._current_channel(sid, request.agentId)
        # `user` is who the controller says answered; it is stored and announced as given.
        await channel.approvals.respond(request.requestId, request.optionId, request.user)
        return protocol.ack_ok()

    def _agent_of(self, sid: str, agent_id: str | None) -> str:
        """The agent a request is for: the one it names, or the socket's only one."""
        agents = self._logged_in.get(sid) or {}
        if agent_id is not None:
            if agent_id not in agents:
                raise AgenstraError(ErrorCode.NOT_LOGGED_IN, "Not logged in to that agent")
            return agent_id
        if not agents:
            raise AgenstraError(ErrorCode.NOT_LOGGED_IN, "Log in to an agent first")
        if len(agents) > 1:
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD, "This socket is logged into "
                                "several agents: name one with agentId")
        return next(iter(agents))

    def _current_channel(self, sid: str, agent_id: str | None = None) -> AgentChannel:
        """The channel of the agent a request is for (none once it is deleted)."""
        agent_id = self._agent_of(sid, agent_id)
        channel = self.service.existing_channel(agent_id)
        if channel is None:
            self._forget(sid, agent_id)
            raise AgenstraError(ErrorCode.NOT_LOGGED_IN, "Log in to an agent first")
        return channel

    def _forget(self, sid: str, agent_id: str) -> None:
        agents = self._logged_in.get(sid)
        if agents is not None:
            agents.pop(agent_id, None)
            if not agents:
                del self._logged_in[sid]

    async def _leave_agent(self, sid: str, agent_id: str) -> None:
        self._forget(sid, agent_id)
        await self.leave(sid, agent_id)

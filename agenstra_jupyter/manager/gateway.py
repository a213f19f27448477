"""Socket.IO namespace `/agents`: login, chat, cancel, logout (see DESIGN.md)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from .. import protocol
from ..protocol import ErrorCode, ManagerEvent, ProtocolError
from . import metrics
from .auth import handshake_key, key_matches
from .channel import AgentChannel
from .providers import ProviderError
from .service import AgentService

Handler = Callable[[str, Any], Awaitable[Any]]


def agent_room(agent_id: str) -> str:
    return f"agent:{agent_id}"


class AgentsNamespace(socketio.AsyncNamespace):
    def __init__(
        self,
        service: AgentService,
        api_key: str,
        history_limit: int,
        max_message_bytes: int,
        log: logging.Logger,
    ) -> None:
        super().__init__(protocol.AGENTS_NAMESPACE)
        self.service = service
        self._api_key = api_key
        self._history_limit = history_limit
        self._max_message_bytes = max_message_bytes
        self._log = log
        self._logged_in: dict[str, str] = {}  # sid -> agent id
        self._handlers: dict[str, Handler] = {
            ManagerEvent.LOGIN: self._login,
            ManagerEvent.CHAT: self._chat,
            ManagerEvent.CANCEL: self._cancel,
            ManagerEvent.LOGOUT: self._logout,
        }
        service.outbox = self

    # -- Outbox (used by agent channels) -------------------------------------------------

    async def to_agent(self, agent_id: str, event: str, payload: Any) -> None:
        await self.emit(event, payload, room=agent_room(agent_id))

    async def to_socket(self, sid: str, event: str, payload: Any) -> None:
        await self.emit(event, payload, to=sid)

    async def join(self, sid: str, agent_id: str) -> None:
        await self.enter_room(sid, agent_room(agent_id))

    async def leave(self, sid: str, agent_id: str) -> None:
        await self.leave_room(sid, agent_room(agent_id))

    # -- dispatch ------------------------------------------------------------------------

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        if not key_matches(self._api_key, handshake_key(environ, auth)):
            metrics.ERRORS.labels(ErrorCode.UNAUTHORIZED).inc()
            raise socketio.exceptions.ConnectionRefusedError(protocol.UNAUTHORIZED_MESSAGE)
        metrics.SOCKETS.inc()

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        metrics.SOCKETS.dec()
        self._logged_in.pop(sid, None)

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        sid = args[0]
        handler = self._handlers.get(event)
        try:
            if handler is None:
                raise ProtocolError(ErrorCode.UNKNOWN_EVENT, "Unknown event")
            if len(args) > 2:
                raise ProtocolError(ErrorCode.INVALID_PAYLOAD, "Send one payload object")
            return await handler(sid, args[1] if len(args) > 1 else None)
        except ProtocolError as exc:
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

    # -- events --------------------------------------------------------------------------

    async def _login(self, sid: str, data: Any) -> None:
        request: protocol.LoginRequest = protocol.parse(protocol.LoginRequest, data)
        agent = await self.service.authenticate(
            request.agentId, request.agentName, request.password
        )
        metrics.LOGINS.labels("success" if agent else "failure").inc()
        if agent is None:
            await self.emit(ManagerEvent.LOGIN_ERROR, protocol.login_error(), to=sid)
            return
        await self._leave_agent(sid)
        self._logged_in[sid] = agent.id
        await self.emit(
            ManagerEvent.LOGIN_SUCCESS, protocol.login_success(agent.id, agent.name), to=sid
        )
        await self.service.channel(agent).subscribe(sid, request.afterSeq, self._history_limit)

    async def _chat(self, sid: str, data: Any) -> dict[str, Any]:
        request: protocol.ChatRequest = protocol.parse(protocol.ChatRequest, data)
        if len(request.message.encode()) > self._max_message_bytes:
            raise ProtocolError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"Message is larger than {self._max_message_bytes} bytes",
            )
        channel = self._current_channel(sid)
        try:
            message = await channel.submit(
                request.message, request.correlationId or str(uuid.uuid4()), request.stream
            )
        except ProviderError as exc:
            raise ProtocolError(ErrorCode.INTERNAL, str(exc)) from None
        # Acknowledged (when asked) only once the message is stored.
        return {"ok": True, "id": message["id"], "seq": message["seq"],
                "correlationId": message["correlationId"]}

    async def _cancel(self, sid: str, data: Any) -> None:
        request: protocol.CancelRequest = protocol.parse(protocol.CancelRequest, data)
        self._current_channel(sid).cancel(request.correlationId)

    async def _logout(self, sid: str, data: Any) -> None:
        protocol.parse(protocol.LogoutRequest, data)
        agent_id = self._logged_in.get(sid)
        if agent_id is None:
            raise ProtocolError(ErrorCode.NOT_LOGGED_IN, "Not logged in")
        await self._leave_agent(sid)
        await self.emit(ManagerEvent.LOGOUT_SUCCESS, {"agentId": agent_id}, to=sid)

    def _current_channel(self, sid: str) -> AgentChannel:
        """The channel of the agent this socket is logged into (none once it is deleted)."""
        agent_id = self._logged_in.get(sid)
        channel = self.service.existing_channel(agent_id) if agent_id else None
        if channel is None:
            self._logged_in.pop(sid, None)
            raise ProtocolError(ErrorCode.NOT_LOGGED_IN, "Log in to an agent first")
        return channel

    async def _leave_agent(self, sid: str) -> None:
        agent_id = self._logged_in.pop(sid, None)
        if agent_id is not None:
            await self.leave(sid, agent_id)

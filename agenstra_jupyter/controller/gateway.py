"""Socket.IO namespace `/clients`: the frontends' side (setClient, forward, forwardedEvent)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import socketio
from jupyter_core.utils import ensure_async

from .. import protocol
from ..protocol import AgenstraError, ControllerEvent, ErrorCode, ManagerEvent
from . import metrics
from .links import Backoff, ConnectionPool, ManagerLink
from .ratelimit import RateLimiter
from .registry import Registry


@dataclass(frozen=True)
class Limits:
    """What one frontend socket, or one user, may do (0: no limit)."""

    logins_per_minute: int = 30
    chats_per_minute: int = 120
    max_message_bytes: int = 256 * 1024
    sockets_per_user: int = 64
    events_per_minute: int = 600  # any other event a socket sends, junk included
    links_per_socket: int = 32  # each link logs an agent in, and replays its history
    links_per_user: int = 128


def _emits(log: logging.Logger, level: int) -> bool:
    """Whether a line at `level` reaches a handler. traitlets leaves an app's logger at
    DEBUG and filters in its handlers, so every debug call built a record (a twentieth of
    the controller's time per chat) that the handler then dropped."""
    if not log.isEnabledFor(level):
        return False
    handlers: list[logging.Handler] = []
    logger: logging.Logger | None = log
    while logger is not None:
        handlers += logger.handlers
        logger = logger.parent if logger.propagate else None
    if not handlers and logging.lastResort is not None:
        handlers = [logging.lastResort]  # what logging falls back to
    return any(handler.level <= level for handler in handlers)


# Forwarded events that only read (log in and replay history, log out); any other event
# makes an agent act, so it needs "execute".
READ_EVENTS = frozenset({ManagerEvent.LOGIN, ManagerEvent.LOGOUT})


@dataclass
class FrontendSession:
    sid: str
    user: str
    handler: Any  # the JupyterHandler that opened the socket: what the authorizer is asked about
    logins: RateLimiter
    chats: RateLimiter
    events: RateLimiter
    client_id: str | None = None
    links: dict[tuple[str, str], ManagerLink] = field(default_factory=dict)


def _user_of(environ: dict[str, Any]) -> str | None:
    """Who opened this socket (authenticated by JupyterHandler), as a key for per-user caps.

    Jupyter makes up a new anonymous user for each token-authenticated request, so token
    holders are keyed by (a hash of) their token instead.
    """
    handler = environ.get("tornado.handler")
    user = getattr(handler, "current_user", None) if handler is not None else None
    if user is None:
        return None
    if getattr(handler, "token_authenticated", False):
        token = handler.identity_provider.get_token(handler) or ""
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    return getattr(user, "username", None) or str(user)


def _name_of(session: FrontendSession) -> str:
    """The Jupyter user's name, as a permission answer records who gave it: the name people
    read (a token login's user is "Anonymous Io", its username a hex string)."""
    user = getattr(session.handler, "current_user", None)
    name = getattr(user, "display_name", None) or getattr(user, "name", None) or \
        getattr(user, "username", None) or session.user
    return str(name)[:256]


async def _is_authorized(handler: Any, action: str) -> bool:
    """Ask Jupyter's authorizer now (never a cached answer), as jupyter_server's own handlers do."""
    return bool(await ensure_async(handler.authorizer.is_authorized(
        handler, handler.current_user, action, handler.auth_resource)))


def _spend(budget: RateLimiter) -> None:
    if not budget.allow():
        raise AgenstraError(ErrorCode.RATE_LIMITED, "Too many requests; wait a moment")


async def _authorize(session: FrontendSession, action: str) -> None:
    if not await _is_authorized(session.handler, action):
        raise AgenstraError(ErrorCode.UNAUTHORIZED, protocol.UNAUTHORIZED_MESSAGE)


class ClientsNamespace(socketio.AsyncNamespace):
    def __init__(
        self,
        registry: Registry,
        ready: Callable[[], Awaitable[None]],
        backoff: Backoff,
        limits: Limits,
        log: logging.Logger,
        check_host: Callable[[str], None] = lambda endpoint: None,
    ) -> None:
        super().__init__(protocol.CLIENTS_NAMESPACE)
        self._check_host = check_host  # the manager host allow-list, for sockets as for REST
        self._registry = registry
        self._ready = ready
        self._backoff = backoff
        self._limits = limits
        self._log = log
        self._trace = _emits(log, logging.DEBUG)  # the per-chat debug line
        self.sessions: dict[str, FrontendSession] = {}
        self._pool = ConnectionPool(registry, backoff, log)  # one socket per manager

    # -- connection ----------------------------------------------------------------------

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        user = _user_of(environ)
        if user is None:
            raise socketio.exceptions.ConnectionRefusedError(protocol.UNAUTHORIZED_MESSAGE)
        handler = environ["tornado.handler"]
        if not await _is_authorized(handler, "read"):
            metrics.ERRORS.labels(ErrorCode.UNAUTHORIZED).inc()
            raise socketio.exceptions.ConnectionRefusedError(protocol.UNAUTHORIZED_MESSAGE)
        limits = self._limits
        open_sockets = sum(1 for s in self.sessions.values() if s.user == user)
        if limits.sockets_per_user and open_sockets >= limits.sockets_per_user:
            metrics.ERRORS.labels(ErrorCode.RATE_LIMITED).inc()
            raise socketio.exceptions.ConnectionRefusedError("Too many connections")
        try:
            await self._ready()
        except AgenstraError as exc:  # e.g. the local manager cannot start: say why
            raise socketio.exceptions.ConnectionRefusedError(exc.message) from None
        metrics.FRONTENDS.inc()
        self.sessions[sid] = FrontendSession(
            sid, user, handler, RateLimiter(limits.logins_per_minute, 60.0),
            RateLimiter(limits.chats_per_minute, 60.0), RateLimiter(limits.events_per_minute, 60.0),
        )

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        session = self.sessions.pop(sid, None)
        if session is not None:
            metrics.FRONTENDS.dec()
            links, session.links = list(session.links.values()), {}
            await asyncio.gather(*(link.close() for link in links))

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        sid = args[0]
        handler = {
            ControllerEvent.SET_CLIENT: self._set_client,
            ControllerEvent.FORWARD: self._forward,
        }.get(event)
        try:
            session = self.sessions.get(sid)
            if session is None:
                raise AgenstraError(ErrorCode.UNAUTHORIZED, protocol.UNAUTHORIZED_MESSAGE)
            if event != ControllerEvent.FORWARD:  # a forward spends the budget of its event
                _spend(session.events)
            if handler is None:
                raise AgenstraError(ErrorCode.UNKNOWN_EVENT, "Unknown event")
            await handler(session, args[1] if len(args) > 1 else None)
            return protocol.ack_ok()
        except AgenstraError as exc:
            return await self._refuse(sid, exc.code, exc.message)
        except Exception:
            self._log.exception("Handling %r failed", event)
            return await self._refuse(sid, ErrorCode.INTERNAL, "Internal error")

    async def _refuse(self, sid: str, code: str, message: str) -> dict[str, Any]:
        metrics.ERRORS.labels(metrics.code_label(code)).inc()
        await self.emit(ControllerEvent.ERROR, protocol.error_payload(code, message), to=sid)
        return protocol.ack_error(code, message)

    # -- events --------------------------------------------------------------------------

    async def close_all(self) -> None:
        for sid in list(self.sessions):
            await self.on_disconnect(sid)

    async def close_links(self, client_id: str, agent_id: str | None = None) -> None:
        """Close every socket's links to a deleted client, or to one deleted agent of it."""
        closing = []
        for session in self.sessions.values():
            for key in [k for k in session.links if k[0] == client_id and agent_id in (None, k[1])]:
                closing.append(session.links.pop(key))
        await asyncio.gather(*(link.close() for link in closing))

    async def _set_client(self, session: FrontendSession, data: Any) -> None:
        await _authorize(session, "read")
        request: protocol.SetClientRequest = protocol.parse(protocol.SetClientRequest, data)
        if await self._registry.get_client(request.clientId) is None:
            raise AgenstraError(ErrorCode.UNKNOWN_CLIENT, "Unknown client")
        session.client_id = request.clientId
        await self.emit(
            ControllerEvent.CLIENT_SET,
            {"clientId": request.clientId, "message": "Client context set"},
            to=session.sid,
        )

    async def _forward(self, session: FrontendSession, data: Any) -> None:
        try:
            request: protocol.ForwardRequest = protocol.parse(protocol.ForwardRequest, data)
        except AgenstraError:
            _spend(session.events)  # junk costs too
            raise
        await _authorize(session, "read" if request.event in READ_EVENTS else "execute")
        limit = self._limits.max_message_bytes
        if limit and len(json.dumps(request.payload or {})) > limit:
            raise AgenstraError(ErrorCode.PAYLOAD_TOO_LARGE, f"Payload larger than {limit} bytes")
        if request.event == ManagerEvent.CHAT and not session.chats.allow():
            raise AgenstraError(ErrorCode.RATE_LIMITED, "Too many messages; wait a moment")
        if request.event not in (ManagerEvent.CHAT, ManagerEvent.LOGIN):  # logins: in _login
            _spend(session.events)
        if session.client_id is None:
            raise AgenstraError(ErrorCode.NO_CLIENT, "Send setClient first")
        payload = dict(request.payload or {})
        agent_id = request.agentId or payload.get("agentId")
        if not isinstance(agent_id, str) or not agent_id:
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD, "agentId is required")
        login = request.event == ManagerEvent.LOGIN
        # Checked before a link is opened for it.
        after = protocol.parse(protocol.ForwardedLoginPayload, payload).afterSeq if login else None
        # The server handles one socket's events in order, so a login and a chat never overtake.
        link = await self._link(session, session.client_id, agent_id)
        if login:
            await self._login(session, link, after)
            return
        if not link.wanted and request.event != ManagerEvent.LOGOUT:
            await self._login(session, link, None)
        payload.pop("password", None)
        if request.event == ManagerEvent.PERMISSION_RESPONSE:
            payload["user"] = _name_of(session)  # who answered: Jupyter says, not the frontend
        if request.event == ManagerEvent.CHAT and self._trace:
            self._log.debug("forward chat client=%s agent=%s correlationId=%s", link.client_id,
                           link.agent_id, payload.get("correlationId"))
        await link.send(request.event, payload)
        if request.event == ManagerEvent.LOGOUT:
            link.logged_out()

    async def _login(self, session: FrontendSession, link: ManagerLink, after: int | None) -> None:
        if not session.logins.allow():
            raise AgenstraError(ErrorCode.RATE_LIMITED, "Too many logins; wait a moment")
        await link.login(after)

    async def _link(self, session: FrontendSession, client_id: str, agent_id: str) -> ManagerLink:
        link = session.links.get((client_id, agent_id))
        if link is not None:
            return link
        # Checked before any connection: a made-up agent id must cost nothing upstream.
        client = await self._registry.get_client(client_id)
        if client is None:
            raise AgenstraError(ErrorCode.UNKNOWN_CLIENT, "Unknown client")
        if not client.local:
            self._check_host(client.endpoint)
        if not await self._registry.has_credentials(client_id, agent_id):
            raise AgenstraError(ErrorCode.NO_CREDENTIALS, "No stored credentials for this agent")
        await self._make_room(session)

        async def deliver(event: str, payload: dict[str, Any]) -> None:
            await self.emit(event, payload, to=session.sid)

        link = ManagerLink(client_id, agent_id, self._registry, deliver, self._backoff, self._log,
                           pool=self._pool)
        session.links[(client_id, agent_id)] = link  # counted from now on, before any await
        await link.open()
        if self.sessions.get(session.sid) is not session:  # the socket closed meanwhile
            session.links.pop((client_id, agent_id), None)
            await link.close()
            raise AgenstraError(ErrorCode.REMOTE_UNAVAILABLE, "The socket closed")
        return link

    async def _make_room(self, session: FrontendSession) -> None:
        """Refuse a link over the caps, after closing this socket's idle links (logged out,
        or refused) to make room: a frontend that logs out of an agent may open another."""
        if self._over_caps(session) is None:
            return
        idle = [key for key, link in session.links.items() if not link.wanted]
        await asyncio.gather(*(session.links.pop(key).close() for key in idle))
        if (reason := self._over_caps(session)) is not None:
            raise AgenstraError(ErrorCode.RATE_LIMITED, f"{reason}; log out of one first")

    def _over_caps(self, session: FrontendSession) -> str | None:
        limits = self._limits
        if limits.links_per_socket and len(session.links) >= limits.links_per_socket:
            return f"Too many agents open on this socket ({limits.links_per_socket})"
        user_links = sum(len(s.links) for s in self.sessions.values() if s.user == session.user)
        if limits.links_per_user and user_links >= limits.links_per_user:
            return f"Too many agents open for this user ({limits.links_per_user})"
        return None

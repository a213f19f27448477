"""Upstream links: a `ManagerLink` per (frontend socket, manager, agent), all of a manager's
links sharing one Socket.IO connection to it (`ManagerConnection`, DESIGN.md "One manager
socket, several agents"): a thousand frontends cost the manager one socket, not a thousand.

The connection reconnects with capped exponential backoff and jitter for as long as a link
uses it. After each reconnect it logs every wanted agent in again, with `afterSeq` the
lowest `seq` its links forwarded; each link drops any `chatMessage` at or below its own
last `seq`, so every frontend receives every message exactly once, in order.

A link that logs into an agent another link holds already logs it in again on the shared
socket: the manager then replays the history after the lower of the two positions before
it goes live again, and each link keeps only what it has not had. A link whose login is in
flight takes nothing until its `loginSuccess`, which it alone receives: everything after
that (its replay, then live traffic) is in order. Logins go one at a time per connection,
each until the manager acknowledges it (its history replayed): a `loginError` names no
agent, and two replays must not interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import socketio

from .. import protocol
from ..protocol import AgenstraError, ControllerEvent, ErrorCode, ManagerEvent
from ..socketio_tuned import InlineClient, JSONPacket
from . import metrics
from .registry import Registry

# deliver(event, payload): send a controller event to the link's frontend socket.
Deliver = Callable[[str, dict[str, Any]], Awaitable[None]]

LOGIN_TIMEOUT = 30.0
ACK_TIMEOUT = 30.0
MAX_TRACKED_CHATS = 1000  # chats awaiting their answer, per link


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    maximum: float = 10.0

    def delay(self, attempt: int) -> float:
        """Equal jitter: uniform in [c/2, c], c = min(max, initial * 2**attempt)."""
        ceiling = min(self.maximum, self.initial * 2 ** min(attempt, 30))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not crypto)


class ManagerLink:
    """One frontend socket's view of one agent of a manager: its wish to be logged in, the
    last `seq` it forwarded, and where its events go."""

    def __init__(
        self,
        client_id: str,
        agent_id: str,
        registry: Registry,
        deliver: Deliver,
        backoff: Backoff,
        log: logging.Logger,
        pool: ConnectionPool | None = None,
    ) -> None:
        self.client_id = client_id
        self.agent_id = agent_id
        self._deliver = deliver
        self._pool = pool if pool is not None else ConnectionPool(registry, backoff, log)
        self._connection: ManagerConnection | None = None
        # Login state: whether the frontend wants this agent logged in, the last seq it got.
        self.wanted = False
        self.last_seq = 0
        self.joining = False  # its login is in flight: nothing reaches it before the answer
        self.leaving = False  # it logged out: its logoutSuccess reaches it
        self._chats: dict[str, float] = {}  # correlation id -> when it was forwarded

    # -- public --------------------------------------------------------------------------

    async def open(self) -> None:
        """Join the manager's connection; return once it has made its first attempt."""
        self._connection = self._pool.connection(self.client_id)
        await self._connection.attach(self)

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.connected

    async def login(self, after_seq: int | None) -> None:
        """Log the agent in with its stored password; history after `after_seq` follows."""
        self.wanted = True
        self.last_seq = after_seq or 0
        if not self.connected:
            raise AgenstraError(ErrorCode.REMOTE_UNAVAILABLE, "Host unavailable; retrying")
        assert self._connection is not None
        # From now: while it waits its turn to log in, live traffic would move last_seq
        # past the history it is about to be sent.
        self.joining = True
        try:
            welcomed = await self._connection.login(self, after_seq)
        finally:
            self.joining = False
        if not welcomed:
            raise AgenstraError(ErrorCode.LOGIN_FAILED, protocol.LOGIN_ERROR_MESSAGE)

    async def send(self, event: str, payload: Any) -> None:
        if not self.connected:
            raise AgenstraError(ErrorCode.REMOTE_UNAVAILABLE, "Host unavailable; retrying")
        assert self._connection is not None
        payload = {**payload, "agentId": self.agent_id} if isinstance(payload, dict) else payload
        if event == ManagerEvent.PERMISSION_RESPONSE:
            await self._connection.call(event, payload, "The manager did not confirm the "
                                        "answer", "The manager refused the answer")
            return
        if event == ManagerEvent.LOGOUT:
            await self._connection.logout(self, payload)
            return
        if event != ManagerEvent.CHAT:
            await self._connection.emit(event, payload)
            return
        correlation = payload.get("correlationId") if isinstance(payload, dict) else None
        if isinstance(correlation, str):
            self._track_chat(correlation)
        try:
            # A chat counts as sent once the manager has stored it (its acknowledgement).
            await self._connection.call(event, payload, "The manager did not confirm the "
                                        "message; send it again (same correlationId)",
                                        "The manager refused the message")
        except AgenstraError:
            if isinstance(correlation, str):
                self._chats.pop(correlation, None)  # refused: no answer will take it out
            raise

    def _track_chat(self, correlation_id: str) -> None:
        """Remember when a chat left, for the turn-time metric; bounded, since an answer
        may never come (a manager restarted mid-turn)."""
        if len(self._chats) >= MAX_TRACKED_CHATS:
            self._chats.pop(next(iter(self._chats)))
        self._chats[correlation_id] = time.monotonic()

    def logged_out(self) -> None:
        self.wanted = False

    async def close(self) -> None:
        self.wanted = False
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.detach(self)

    # -- from the connection -------------------------------------------------------------

    async def deliver_state(self, event: str, payload: dict[str, Any]) -> None:
        await self._deliver(event, payload)

    async def on_event(self, event: str, payload: Any) -> None:
        if event == ManagerEvent.CHAT_MESSAGE and isinstance(payload, dict):
            seq = payload.get("seq")
            if isinstance(seq, int):
                if seq <= self.last_seq:
                    return  # already forwarded (before a reconnect, or another's replay)
                self.last_seq = seq
            sent = self._chats.pop(payload.get("correlationId", ""), None)
            if sent is not None and payload.get("from") == "agent":
                metrics.TURN_SECONDS.observe(time.monotonic() - sent)
            elif sent is not None:
                self._chats[payload["correlationId"]] = sent  # the user message: keep waiting
        elif event == ManagerEvent.LOGIN_ERROR:
            self.wanted = False
        elif event == ManagerEvent.LOGOUT_SUCCESS:
            self.wanted = False
        metrics.count_forwarded(event)
        await self._deliver(
            ControllerEvent.FORWARDED_EVENT,
            {"event": event, "payload": payload, "clientId": self.client_id,
             "agentId": self.agent_id},
        )


class ConnectionPool:
    """The controller's connections to managers, one per manager (client id), made on a
    link's first use and closed with its last link."""

    def __init__(self, registry: Registry, backoff: Backoff, log: logging.Logger) -> None:
        self._registry = registry
        self._backoff = backoff
        self._log = log
        self._connections: dict[str, ManagerConnection] = {}

    def connection(self, client_id: str) -> ManagerConnection:
        connection = self._connections.get(client_id)
        if connection is None or connection.closed:
            connection = self._connections[client_id] = ManagerConnection(
                client_id, self._registry, self._backoff, self._log, self._forget)
        return connection

    def _forget(self, connection: ManagerConnection) -> None:
        if self._connections.get(connection.client_id) is connection:
            del self._connections[connection.client_id]

    def __len__(self) -> int:
        return len(self._connections)


class ManagerConnection:
    """One Socket.IO connection to a manager, shared by every link to its agents."""

    def __init__(self, client_id: str, registry: Registry, backoff: Backoff,
                 log: logging.Logger, forget: Callable[[ManagerConnection], None]) -> None:
        self.client_id = client_id
        self._registry = registry
        self._backoff = backoff
        self._log = log
        self._forget = forget
        # aiohttp's default (4 MiB) would drop every larger answer, and the link with it.
        # handle_sigint=False: the client's own SIGINT handler cancels every task of the
        # loop and stops it, i.e. a Ctrl-C answered "n" would end the Jupyter server.
        self._sio = InlineClient(  # the handler only queues events for the frontends
            reconnection=False, handle_sigint=False, serializer=JSONPacket,
            websocket_extra_options={"max_msg_size": protocol.MAX_FRAME_BYTES},
        )
        self._sio.on("*", self._on_event, namespace=protocol.AGENTS_NAMESPACE)
        self._links: dict[str, dict[ManagerLink, None]] = {}  # agent id -> its links
        self._connected = asyncio.Event()
        self._awaiting_acks: set[asyncio.Future[Any]] = set()  # failed when the socket drops
        self._first_attempt = asyncio.Event()
        self.closed = False
        self._task: asyncio.Task[None] | None = None
        self._logins = asyncio.Lock()  # one at a time: a loginError names no agent
        self._login_result: asyncio.Future[bool] | None = None
        self._login_for: list[ManagerLink] = []  # who hears the loginSuccess in flight
        self._state: str | None = None  # for the links-by-state gauge
        self._closer: asyncio.Task[None] | None = None  # a close begun from the read loop

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- links ---------------------------------------------------------------------------

    async def attach(self, link: ManagerLink) -> None:
        self._links.setdefault(link.agent_id, {})[link] = None
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"link-{self.client_id}")
        await self._first_attempt.wait()

    async def detach(self, link: ManagerLink) -> None:
        links = self._links.get(link.agent_id, {})
        links.pop(link, None)
        if not links:
            self._links.pop(link.agent_id, None)
        if link in self._login_for:
            self._login_for.remove(link)
        if not self._links:
            await self.close()
        elif self.connected and not self._wanted(link.agent_id):
            with contextlib.suppress(Exception):  # nobody listens to it here any more
                await self._sio.emit(ManagerEvent.LOGOUT, {"agentId": link.agent_id},
                                     namespace=protocol.AGENTS_NAMESPACE)

    def _wanted(self, agent_id: str) -> list[ManagerLink]:
        return [link for link in self._links.get(agent_id, ()) if link.wanted]

    def _all_links(self) -> list[ManagerLink]:
        return [link for links in self._links.values() for link in links]

    # -- requests ------------------------------------------------------------------------

    async def login(self, link: ManagerLink, after_seq: int | None) -> bool:
        """Log `link`'s agent in on this socket; True once the manager welcomed it."""
        async with self._logins:
            others = [other.last_seq for other in self._wanted(link.agent_id)
                      if other is not link and not other.joining]
            return await self._send_login(link.agent_id, min([after_seq or 0, *others]), [link])

    async def _send_login(self, agent_id: str, after_seq: int,
                          listeners: list[ManagerLink]) -> bool:
        password = await self._registry.password(self.client_id, agent_id)
        if password is None:
            for link in listeners:
                link.wanted = False
            raise AgenstraError(ErrorCode.NO_CREDENTIALS, "No stored credentials for this agent")
        self._resolve_login(False)
        self._login_result = result = asyncio.get_running_loop().create_future()
        self._login_for = listeners
        for link in listeners:
            link.joining = True
        request = {"agentId": agent_id, "password": password, "afterSeq": after_seq}
        try:
            # Acknowledged once the manager has replayed the history and made the socket
            # live: only then may the next login on this socket start (its replay would
            # interleave with this one's).
            await self._acked(ManagerEvent.LOGIN, request, LOGIN_TIMEOUT)
        except (asyncio.TimeoutError, socketio.exceptions.SocketIOError, ConnectionError):
            pass  # welcomed all the same when its loginSuccess came (a long history)
        finally:
            for link in listeners:
                link.joining = False
            self._login_for = []
        return result.done() and result.result()

    def _resolve_login(self, success: bool) -> None:
        if self._login_result is not None and not self._login_result.done():
            self._login_result.set_result(success)

    async def logout(self, link: ManagerLink, payload: Any) -> None:
        """Log out upstream only when no other link wants the agent; else just this link."""
        if any(other is not link for other in self._wanted(link.agent_id)):
            await link.on_event(ManagerEvent.LOGOUT_SUCCESS, {"agentId": link.agent_id})
            return
        link.leaving = True  # its logoutSuccess is still to come
        await self.emit(ManagerEvent.LOGOUT, payload)

    async def emit(self, event: str, payload: Any) -> None:
        await self._sio.emit(event, payload, namespace=protocol.AGENTS_NAMESPACE)

    async def call(self, event: str, payload: Any, unconfirmed: str, refused: str) -> None:
        """An acknowledged request; the manager's refusal (its code) raised unchanged."""
        try:
            ack = await self._acked(event, payload, ACK_TIMEOUT)
        except (socketio.exceptions.SocketIOError, asyncio.TimeoutError, ConnectionError):
            raise AgenstraError(ErrorCode.REMOTE_UNAVAILABLE, unconfirmed) from None
        if not (isinstance(ack, dict) and ack.get("ok")):
            error = ack.get("error") if isinstance(ack, dict) else None
            raise AgenstraError.from_payload(error) or AgenstraError(
                ErrorCode.INVALID_PAYLOAD, refused)

    async def _acked(self, event: str, payload: Any, timeout: float) -> Any:
        """Emit and await the manager's acknowledgement: TimeoutError after `timeout`,
        ConnectionError as soon as the socket drops. One future per request, no task."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()

        def acked(*args: Any) -> None:
            if not answer.done():
                answer.set_result(args[0] if args else None)

        timer = loop.call_later(timeout, _fail, answer, asyncio.TimeoutError())
        self._awaiting_acks.add(answer)
        try:
            await self._sio.emit(event, payload, namespace=protocol.AGENTS_NAMESPACE,
                                 callback=acked)
            return await answer
        finally:
            timer.cancel()
            self._awaiting_acks.discard(answer)

    def _dropped(self) -> None:
        self._connected.clear()
        for answer in self._awaiting_acks:
            _fail(answer, ConnectionError("link dropped"))

    async def close(self) -> None:
        self.closed = True
        self._forget(self)  # no link joins it from now on
        if self._sio.handling():
            # Perhaps a manager's event led here (its frontend gone, the last link closed):
            # disconnecting waits for the read loop, which waits for that event's handling.
            self._closer = asyncio.create_task(self._disconnect())
            return
        await self._disconnect()

    async def _disconnect(self) -> None:
        # Disconnect first, gracefully: cancelling a task blocked in `wait()` would cancel
        # the client's own read loop and leave the websocket open on the manager's side.
        with contextlib.suppress(Exception):
            await self._sio.disconnect()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._sio.eio.disconnect(abort=True)  # if we stopped it mid-connect
        self._resolve_login(False)

    # -- connection loop -----------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        dropped = False  # frontends were told the link is down: they must hear it is back
        try:
            while not self.closed:
                if not await self._connect():
                    self._set_state("reconnecting")
                    attempt += 1
                    self._first_attempt.set()
                    await self._tell(ControllerEvent.REMOTE_RECONNECTING,
                                     {"clientId": self.client_id, "attempt": attempt})
                    await asyncio.sleep(self._backoff.delay(attempt))
                    continue
                await self._relogin()  # ready only once the wanted agents are logged in again
                if attempt or dropped:
                    metrics.RECONNECTS.inc()
                    await self._tell(ControllerEvent.REMOTE_RECONNECTED,
                                     {"clientId": self.client_id})
                dropped = False
                self._set_state("connected")
                attempt = 0
                self._connected.set()
                self._first_attempt.set()
                await self._sio.wait()
                self._dropped()
                self._resolve_login(False)
                if not self.closed:
                    dropped = True
                    await self._tell(ControllerEvent.REMOTE_DISCONNECTED,
                                     {"clientId": self.client_id})
        finally:
            self._set_state(None)
            self._dropped()
            self._first_attempt.set()

    async def _tell(self, event: str, payload: dict[str, Any]) -> None:
        for link in self._all_links():
            await link.deliver_state(event, payload)

    def _set_state(self, state: str | None) -> None:
        if state == self._state:
            return
        if self._state is not None:
            metrics.LINKS.labels(self._state).dec()
        if state is not None:
            metrics.LINKS.labels(state).inc()
        self._state = state

    async def _connect(self) -> bool:
        client = await self._registry.get_client(self.client_id)
        if client is None:
            return False
        try:
            await self._sio.connect(
                client.endpoint,
                namespaces=[protocol.AGENTS_NAMESPACE],
                auth={"apiKey": client.api_key},
                transports=["websocket"],
                wait_timeout=10,
            )
        except (socketio.exceptions.ConnectionError, OSError, asyncio.TimeoutError):
            return False
        return True

    async def _relogin(self) -> None:
        """Every agent a link wants, logged in again after the lowest seq its links have."""
        for agent_id in list(self._links):
            wanted = self._wanted(agent_id)
            if not wanted:
                continue
            async with self._logins:
                try:
                    await self._send_login(agent_id, min(link.last_seq for link in wanted),
                                           wanted)
                except AgenstraError as exc:
                    error = protocol.error_payload(exc.code, exc.message)
                    for link in wanted:
                        await link.deliver_state(ControllerEvent.ERROR, error)

    # -- upstream events -----------------------------------------------------------------

    async def _on_event(self, event: str, payload: Any = None) -> None:
        if event in (ManagerEvent.LOGIN_SUCCESS, ManagerEvent.LOGIN_ERROR):
            listeners = list(self._login_for)
            for link in listeners:
                link.joining = False  # what follows its answer is its own, in order
                await link.on_event(event, payload)
            self._resolve_login(event == ManagerEvent.LOGIN_SUCCESS)
            return
        agent_id = payload.get("agentId") if isinstance(payload, dict) else None
        if not isinstance(agent_id, str):
            # Names no agent (an `error`): it can be only one agent's when the socket
            # holds one; otherwise nobody's, rather than every frontend's.
            if len(self._links) != 1:
                self._log.debug("agenstra: %s without agentId from %s not forwarded",
                                event, self.client_id)
                return
            agent_id = next(iter(self._links))
        for link in list(self._links.get(agent_id, ())):
            if event == ManagerEvent.LOGOUT_SUCCESS and link.leaving:
                link.leaving = False
                await link.on_event(event, payload)
            elif link.wanted and not link.joining:
                await link.on_event(event, payload)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)

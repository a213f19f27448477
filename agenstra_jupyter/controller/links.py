"""Upstream links: one Socket.IO connection per (frontend socket, manager, agent).

A link reconnects with capped exponential backoff and jitter for as long as its frontend
socket is open. After each reconnect it logs its agent in again with `afterSeq` = the
last `seq` it forwarded, and it drops any `chatMessage` at or below that `seq`, so the
frontend receives every message exactly once, in order.
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
    def __init__(
        self,
        client_id: str,
        agent_id: str,
        registry: Registry,
        deliver: Deliver,
        backoff: Backoff,
        log: logging.Logger,
    ) -> None:
        self.client_id = client_id
        self.agent_id = agent_id
        self._registry = registry
        self._deliver = deliver
        self._backoff = backoff
        self._log = log
        # aiohttp's default (4 MiB) would drop every larger answer, and the link with it.
        # handle_sigint=False: the client's own SIGINT handler cancels every task of the
        # loop and stops it, i.e. a Ctrl-C answered "n" would end the Jupyter server.
        self._sio = socketio.AsyncClient(
            reconnection=False, handle_sigint=False,
            websocket_extra_options={"max_msg_size": protocol.MAX_FRAME_BYTES},
        )
        self._sio.on("*", self._on_event, namespace=protocol.AGENTS_NAMESPACE)
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        # Login state: whether the frontend wants this agent logged in, the last seq it got.
        self.wanted = False
        self.last_seq = 0
        self._login_result: asyncio.Future[bool] | None = None
        self._state: str | None = None  # for the links-by-state gauge
        self._chats: dict[str, float] = {}  # correlation id -> when it was forwarded

    # -- public --------------------------------------------------------------------------

    async def open(self) -> None:
        """Start connecting; return after the first attempt (whether or not it worked)."""
        self._task = asyncio.create_task(self._run(), name=f"link-{self.client_id}-{self.agent_id}")
        await self._first_attempt.wait()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def login(self, after_seq: int | None) -> None:
        """Log the agent in with its stored password; history after `after_seq` follows."""
        self.wanted = True
        self.last_seq = after_seq or 0
        if not self.connected:
            raise AgenstraError(ErrorCode.REMOTE_UNAVAILABLE, "Manager unavailable; retrying")
        if not await self._send_login():
            raise AgenstraError(ErrorCode.LOGIN_FAILED, protocol.LOGIN_ERROR_MESSAGE)

    async def send(self, event: str, payload: Any) -> None:
        if not self.connected:
            raise AgenstraError(ErrorCode.REMOTE_UNAVAILABLE, "Manager unavailable; retrying")
        if event == ManagerEvent.PERMISSION_RESPONSE:
            await self._call_answer(payload)  # its sender learns UNKNOWN_REQUEST from the ack
            return
        if event != ManagerEvent.CHAT:
            await self._sio.emit(event, payload, namespace=protocol.AGENTS_NAMESPACE)
            return
        correlation = payload.get("correlationId") if isinstance(payload, dict) else None
        if isinstance(correlation, str):
            self._track_chat(correlation)
        try:
            await self._call_chat(payload)
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

    async def _call_chat(self, payload: Any) -> None:
        """A chat counts as sent once the manager has stored it (its acknowledgement)."""
        try:
            ack = await self._until_disconnected(
                self._sio.call(ManagerEvent.CHAT, payload, namespace=protocol.AGENTS_NAMESPACE,
                               timeout=ACK_TIMEOUT)
            )
        except (socketio.exceptions.SocketIOError, asyncio.TimeoutError, ConnectionError):
            raise AgenstraError(
                ErrorCode.REMOTE_UNAVAILABLE,
                "The manager did not confirm the message; send it again (same correlationId)",
            ) from None
        if not (isinstance(ack, dict) and ack.get("ok")):
            error = ack.get("error") if isinstance(ack, dict) else None
            # The manager's own reason, carried unchanged (NOT_LOGGED_IN, ...).
            raise AgenstraError.from_payload(error) or AgenstraError(
                ErrorCode.INVALID_PAYLOAD, "The manager refused the message")

    async def _call_answer(self, payload: Any) -> None:
        """A permissionResponse, passing the manager's refusal (UNKNOWN_REQUEST: settled
        already) back to the frontend that answered."""
        try:
            ack = await self._until_disconnected(self._sio.call(
                ManagerEvent.PERMISSION_RESPONSE, payload, namespace=protocol.AGENTS_NAMESPACE,
                timeout=ACK_TIMEOUT))
        except (socketio.exceptions.SocketIOError, asyncio.TimeoutError, ConnectionError):
            raise AgenstraError(ErrorCode.REMOTE_UNAVAILABLE,
                                "The manager did not confirm the answer") from None
        if not (isinstance(ack, dict) and ack.get("ok")):
            error = ack.get("error") if isinstance(ack, dict) else None
            raise AgenstraError.from_payload(error) or AgenstraError(
                ErrorCode.INVALID_PAYLOAD, "The manager refused the answer")

    async def _until_disconnected(self, awaitable: Awaitable[Any]) -> Any:
        """Await `awaitable`, failing with ConnectionError as soon as the link drops."""
        call = asyncio.ensure_future(awaitable)
        dropped = asyncio.ensure_future(self._disconnected.wait())
        try:
            await asyncio.wait({call, dropped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            dropped.cancel()
        if not call.done():
            call.cancel()
            raise ConnectionError("link dropped")
        return call.result()

    def logged_out(self) -> None:
        self.wanted = False

    async def close(self) -> None:
        self._closed = True
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
            while not self._closed:
                if not await self._connect():
                    self._set_state("reconnecting")
                    attempt += 1
                    self._first_attempt.set()
                    await self._deliver(
                        ControllerEvent.REMOTE_RECONNECTING,
                        {"clientId": self.client_id, "attempt": attempt},
                    )
                    await asyncio.sleep(self._backoff.delay(attempt))
                    continue
                self._disconnected.clear()
                if self.wanted:  # ready only once the agent is logged in again
                    await self._relogin()
                if attempt or dropped:
                    metrics.RECONNECTS.inc()
                    await self._deliver(
                        ControllerEvent.REMOTE_RECONNECTED, {"clientId": self.client_id}
                    )
                dropped = False
                self._set_state("connected")
                attempt = 0
                self._connected.set()
                self._first_attempt.set()
                await self._sio.wait()
                self._connected.clear()
                self._disconnected.set()
                self._resolve_login(False)
                if not self._closed:
                    dropped = True
                    await self._deliver(
                        ControllerEvent.REMOTE_DISCONNECTED, {"clientId": self.client_id}
                    )
        finally:
            self._set_state(None)
            self._connected.clear()
            self._disconnected.set()
            self._first_attempt.set()

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
        try:
            await self._send_login()
        except AgenstraError as exc:
            error = protocol.error_payload(exc.code, exc.message)
            await self._deliver(ControllerEvent.ERROR, error)

    async def _send_login(self) -> bool:
        password = await self._registry.password(self.client_id, self.agent_id)
        if password is None:
            self.wanted = False
            raise AgenstraError(ErrorCode.NO_CREDENTIALS, "No stored credentials for this agent")
        loop = asyncio.get_running_loop()
        self._resolve_login(False)
        self._login_result = result = loop.create_future()
        request = {"agentId": self.agent_id, "password": password, "afterSeq": self.last_seq}
        await self._sio.emit(ManagerEvent.LOGIN, request, namespace=protocol.AGENTS_NAMESPACE)
        try:
            return await asyncio.wait_for(asyncio.shield(result), LOGIN_TIMEOUT)
        except asyncio.TimeoutError:
            return False

    def _resolve_login(self, success: bool) -> None:
        if self._login_result is not None and not self._login_result.done():
            self._login_result.set_result(success)

    # -- upstream events -----------------------------------------------------------------

    async def _on_event(self, event: str, payload: Any = None) -> None:
        if event == ManagerEvent.CHAT_MESSAGE and isinstance(payload, dict):
            seq = payload.get("seq")
            if isinstance(seq, int):
                if seq <= self.last_seq:
                    return  # already forwarded before a reconnect
                self.last_seq = seq
            sent = self._chats.pop(payload.get("correlationId", ""), None)
            if sent is not None and payload.get("from") == "agent":
                metrics.TURN_SECONDS.observe(time.monotonic() - sent)
            elif sent is not None:
                self._chats[payload["correlationId"]] = sent  # the user message: keep waiting
        elif event == ManagerEvent.LOGIN_SUCCESS:
            self._resolve_login(True)
        elif event == ManagerEvent.LOGIN_ERROR:
            self.wanted = False
            self._resolve_login(False)
        elif event == ManagerEvent.LOGOUT_SUCCESS:
            self.wanted = False
        metrics.FORWARDED.labels(metrics.event_label(event)).inc()
        await self._deliver(
            ControllerEvent.FORWARDED_EVENT,
            {"event": event, "payload": payload, "clientId": self.client_id,
             "agentId": self.agent_id},
        )

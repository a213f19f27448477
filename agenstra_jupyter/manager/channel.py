"""One agent's live side: who listens to it, its turn queue, and the turn being run.

Ordering rule: every message is persisted, then announced, under the channel lock; a
socket logging in replays history and joins the listeners under the same lock. So a
listener sees each message exactly once and in `seq` order, whatever races.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .. import protocol
from ..protocol import AgenstraError, ErrorCode, ManagerEvent
from . import metrics
from .approvals import DEFAULT_TIMEOUT, ApprovalBroker
from .bounds import QueueLimits, TurnLimits, fit_response
from .changes import FileWatch
from .permissions import PermissionAsk, Resolution
from .providers import Provider, ProviderError, Turn, TurnResult
from .runtimes import RuntimeFailure
from .store import Store

CANCELLED_MESSAGE = "Cancelled"
SHUTDOWN_MESSAGE = "Cancelled: the manager is shutting down"
NO_TURN_MESSAGE = "no turn is running"
STOP_GRACE = 30.0  # seconds a cancelled turn may take to end before a stop goes on


class Outbox(Protocol):
    """How the channel reaches sockets; implemented by the Socket.IO gateway."""

    async def to_agent(self, agent_id: str, event: str, payload: Any) -> None: ...
    async def to_socket(self, sid: str, event: str, payload: Any) -> None: ...
    async def join(self, sid: str, agent_id: str) -> None: ...
    async def leave(self, sid: str, agent_id: str) -> None: ...


@dataclass
class _QueuedTurn:
    message: str
    correlation_id: str
    stream: bool
    stored_at: float  # monotonic time the user message was stored
    size: int  # bytes counted against the queue limits while it waits
    cancelled: str | None = None  # why it must not run, once cancelled while waiting


def text_response(result: TurnResult) -> dict[str, Any]:
    return {**result.extra, "type": "text", "result": result.text}


def error_response(message: str, **extra: Any) -> dict[str, Any]:
    return {**extra, "type": "error", "result": message}


def _with_permissions(response: dict[str, Any], permissions: list[Any]) -> dict[str, Any]:
    """`response` with the permission parts its provider did not keep itself (one that
    awaited Turn.ask rather than TurnRecorder.ask)."""
    parts = response.get("parts")
    parts = parts if isinstance(parts, list) else []
    kept = {p.get("requestId") for p in parts if isinstance(p, dict)}
    missing = [p for p in permissions if p["requestId"] not in kept]
    return {**response, "parts": [*parts, *missing]} if missing else response


class _TurnEvents:
    """The chatEvents of one turn, numbered by `sequence` and sent in that order (see
    approvals.TurnEvents: `lock` is taken after the channel's lock, never before it)."""

    def __init__(self, agent_id: str, correlation_id: str, outbox: Outbox) -> None:
        self._agent_id = agent_id
        self._correlation_id = correlation_id
        self._outbox = outbox
        self._sequence = 0
        self.lock = asyncio.Lock()

    def make(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        self._sequence += 1
        return protocol.chat_event(self._agent_id, self._correlation_id, kind, payload,
                                   self._sequence)

    async def send(self, event: dict[str, Any]) -> None:
        await self._outbox.to_agent(self._agent_id, ManagerEvent.CHAT_EVENT, event)

    async def emit(self, kind: str, payload: dict[str, Any]) -> None:
        async with self.lock:
            await self.send(self.make(kind, payload))


class AgentChannel:
    def __init__(
        self,
        agent_id: str,
        store: Store,
        outbox: Outbox,
        provider_factory: Callable[[], Awaitable[Provider]],
        log: logging.Logger,
        limits: TurnLimits | None = None,
        queue_limits: QueueLimits | None = None,
        permission_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.agent_id = agent_id
        self._store = store
        self._outbox = outbox
        self._provider_factory = provider_factory
        self._provider: Provider | None = None
        self._log = log
        self._limits = limits or TurnLimits()
        self._queue_limits = queue_limits or QueueLimits()
        self._lock = asyncio.Lock()
        # Its requests are stored and sent under the lock that orders the history.
        self.approvals = ApprovalBroker(agent_id, store, self._lock, log, permission_timeout)
        self._queue: asyncio.Queue[_QueuedTurn | None] = asyncio.Queue()
        self._waiting: dict[str, _QueuedTurn] = {}  # queued, not yet started, by correlation id
        self._worker: asyncio.Task[None] | None = None
        self._watch: FileWatch | None = None  # made with the first provider (its config)
        self._current: tuple[str, asyncio.Task[TurnResult]] | None = None
        self._current_events: _TurnEvents | None = None  # of the running turn
        self._closing: str | None = None
        self._held: str | None = None
        self._stop_reason: str | None = None

    # -- listeners -----------------------------------------------------------------------

    async def subscribe(self, sid: str, after_seq: int | None, limit: int) -> None:
        """Replay history to `sid` (after `after_seq`, or the last `limit`) and the requests
        still waiting for an answer, then make it live."""
        async with self._lock:
            if after_seq is None:
                last = await self._store.last_seq(self.agent_id)
                after_seq = max(0, last - limit) if limit else 0
            async for page in self._store.iter_messages(self.agent_id, after_seq):
                for message in page:
                    await self._outbox.to_socket(sid, ManagerEvent.CHAT_MESSAGE, message)
            for event in await self.approvals.pending_events():
                await self._outbox.to_socket(sid, ManagerEvent.CHAT_EVENT, event)
            await self._outbox.join(sid, self.agent_id)

    async def unsubscribe(self, sid: str) -> None:
        await self._outbox.leave(sid, self.agent_id)

    # -- turns ---------------------------------------------------------------------------

    async def submit(self, message: str, correlation_id: str, stream: bool) -> dict[str, Any]:
        """Persist and announce the user's message, then queue its turn.

        The correlation id is an idempotency key: a chat sent again after a lost
        acknowledgement returns the message already stored and starts no second turn.
        A full queue refuses the chat (AgenstraError RATE_LIMITED) before anything is stored.
        """
        if self._closing:
            raise ProviderError(self._closing)
        size = len(message.encode())
        async with self._lock:
            try:
                self._queue_limits.admit(len(self._waiting), size)
            except AgenstraError:
                # Full; but a chat sent again is answered with what is stored, full or not.
                existing = await self._store.user_message(self.agent_id, correlation_id)
                if existing is not None:
                    return existing
                raise
            try:
                # One write checks the idempotency key and stores.
                announced, new = await self._store.append_user_message_once(
                    self.agent_id, correlation_id, message)
            except BaseException:
                self._queue_limits.release(size)
                raise
            if not new:
                self._queue_limits.release(size)
                return announced
            metrics.count_message("user")
            await self._outbox.to_agent(self.agent_id, ManagerEvent.CHAT_MESSAGE, announced)
            queued = _QueuedTurn(message, correlation_id, stream, time.monotonic(), size,
                                 cancelled=self._held)
            self._waiting[correlation_id] = queued
        metrics.TURNS_IN_FLIGHT.inc()
        self._queue.put_nowait(queued)
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name=f"turns-{self.agent_id}")
        return announced

    def cancel(self, correlation_id: str | None = None) -> bool:
        """Cancel the running turn, or the named one (running or queued); False if neither."""
        if self._current and correlation_id in (None, self._current[0]):
            self.approvals.cancel_turn(self._current[0], "user")
            self._current[1].cancel()
            return True
        queued = self._waiting.get(correlation_id) if correlation_id else None
        if queued is not None:
            queued.cancelled = CANCELLED_MESSAGE
        return queued is not None

    async def announce(
        self, sender: protocol.Sender, correlation_id: str, **content: Any
    ) -> dict[str, Any]:
        async with self._lock:
            return await self._persist_and_announce(sender, correlation_id, **content)

    async def _persist_and_announce(
        self, sender: protocol.Sender, correlation_id: str, **content: Any
    ) -> dict[str, Any]:
        message = await self._store.append_message(self.agent_id, sender, correlation_id, **content)
        metrics.count_message(sender)
        await self._outbox.to_agent(self.agent_id, ManagerEvent.CHAT_MESSAGE, message)
        return message

    async def _work(self) -> None:
        while (queued := await self._queue.get()) is not None:
            self._waiting.pop(queued.correlation_id, None)
            self._queue_limits.release(queued.size)
            self._log.debug("turn start agent=%s correlationId=%s", self.agent_id,
                           queued.correlation_id)
            try:
                # Capped whatever the provider returned: the message must fit every frame.
                response = fit_response(await self._answer(queued), self._limits)
                await self.announce("agent", queued.correlation_id, response=response)
            except Exception:
                # The store failed: the turn stays unanswered and is closed at next start.
                self._log.exception("Could not record the answer of agent %s", self.agent_id)
                response = {"type": "error"}
            finally:
                metrics.TURNS_IN_FLIGHT.dec()
            took = time.monotonic() - queued.stored_at
            metrics.TURN_SECONDS.observe(took)
            self._log.debug("turn end agent=%s correlationId=%s type=%s ms=%d", self.agent_id,
                           queued.correlation_id, response.get("type"), took * 1000)

    async def _answer(self, queued: _QueuedTurn) -> dict[str, Any]:
        if self._closing:
            return error_response(self._closing, cancelled=True)
        if queued.cancelled:
            return error_response(queued.cancelled, cancelled=True)
        self.approvals.begin_turn(queued.correlation_id)
        events = _TurnEvents(self.agent_id, queued.correlation_id, self._outbox)
        task = asyncio.create_task(self._run_provider(queued, events))
        self._current, self._current_events = (queued.correlation_id, task), events
        try:
            await asyncio.wait({task})
        finally:
            self._current = self._current_events = None
            stop_reason, self._stop_reason = self._stop_reason, None
            # Nothing may wait past its turn; the broker's parts are the record of a turn
            # that ended without the provider's (cancelled, failed).
            permissions = await self.approvals.end_turn(queued.correlation_id)
        extra: dict[str, Any] = {"parts": permissions} if permissions else {}
        if task.cancelled():
            reason = self._closing or stop_reason or CANCELLED_MESSAGE
            return error_response(reason, cancelled=True, **extra)
        exc = task.exception()
        if exc is None:
            return _with_permissions(text_response(task.result()), permissions)
        if isinstance(exc, (ProviderError, RuntimeFailure)):
            return error_response(str(exc), **extra)
        self._log.error("Turn of agent %s failed", self.agent_id, exc_info=exc)
        return error_response(f"The agent failed ({type(exc).__name__})", **extra)

    async def _run_provider(self, queued: _QueuedTurn, events: _TurnEvents) -> TurnResult:
        if self._provider is None:
            self._provider = await self._provider_factory()
        turn = Turn(queued.message, queued.correlation_id, queued.stream, events.emit,
                    self._limits, ask=self.approvals.asker(queued.correlation_id, events),
                    crowded=self.approvals.full)
        # Snapshots the workspace around the turn: filesChanged, and diffs for CLI agents.
        if self._watch is None:
            self._watch = FileWatch(config=self._provider.config, log=self._log)
        return await self._watch.run(self._provider, turn)

    async def ask_in_turn(self, ask: PermissionAsk) -> Resolution:
        """Ask on behalf of the running turn (a notebook tool the agent called): the card
        is one of the turn's, and its outcome one of the answer's parts. CONFLICT when no
        turn runs: a tool called outside a turn is refused."""
        if self._current is None or self._current_events is None:
            raise AgenstraError(ErrorCode.CONFLICT, NO_TURN_MESSAGE)
        return await self.approvals.ask(self._current[0], self._current_events, ask)

    # -- stop and shutdown ---------------------------------------------------------------

    async def hold(self, reason: str) -> None:
        """Start no turn until release(), while the agent's runtime is stopped.

        The waiting turns and any sent meanwhile end cancelled with `reason`; the running
        one is cancelled and waited for (its commands killed); the provider is closed.
        """
        self._held = reason
        for queued in self._waiting.values():
            queued.cancelled = reason
        if self._current:
            self._stop_reason = reason
            self.approvals.cancel_turn(self._current[0], "policy")
            task = self._current[1]
            task.cancel()
            _, pending = await asyncio.wait({task}, timeout=STOP_GRACE)
            if pending:
                self._log.warning("A turn of agent %s ignores its cancellation", self.agent_id)
        await self._close_provider()

    def release(self) -> None:
        self._held = None

    async def _close_provider(self) -> None:
        provider, self._provider = self._provider, None
        if provider is not None:
            try:
                await provider.close()
            except Exception:
                self._log.exception("Provider of agent %s did not close cleanly", self.agent_id)

    async def close(self, reason: str = SHUTDOWN_MESSAGE) -> None:
        """Cancel the running and queued turns (each still gets its final message)."""
        self._closing = reason
        if self._current:
            self.approvals.cancel_turn(self._current[0], "policy")
            self._current[1].cancel()
        if self._worker is not None:
            self._queue.put_nowait(None)
            await self._worker
        await self.approvals.cancel_all()
        await self._close_provider()

"""Approvals (DESIGN.md "Approvals"): an agent's permission requests, settled by its policy
or by a user, one broker per agent channel.

A request the policy does not settle is stored (the `permissionRequest` chatEvent as sent),
sent to every listener and awaited; the first answer wins, a request nobody answers
expires, and cancelling its turn cancels it. Every settlement is stored and announced as
`permissionResolved`, and kept for the turn's answer as a `permission` part.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from .. import protocol
from ..protocol import AgenstraError, ChatEventKind, ErrorCode
from .bounds import clip_diff, clip_text
from .permissions import (
    AskPermission,
    PermissionAsk,
    Resolution,
    permission_part,
    pick_option,
    policy_decision,
)
from .store import Store

DEFAULT_TIMEOUT = protocol.DEFAULT_PERMISSION_TIMEOUT
MAX_PENDING = 16  # requests one agent may have waiting; more are rejected by policy
MAX_TITLE = 1024
MAX_OPTIONS = 8
MAX_OPTION_ID = 128  # what a permissionResponse can name (PermissionResponseRequest)
MAX_OPTION_NAME = 256
MAX_PATHS = 32
MAX_PATH = 4096
MAX_DIFFS = 16
MAX_DIFF_TEXT = protocol.PERMISSION_DIFF_TEXT_BYTES  # as tool results are cut (base.py)
MAX_PARTS = 256  # permission parts one turn keeps for its answer
ALWAYS = {"allow_always": "allow", "reject_always": "reject"}


class TurnEvents(Protocol):
    """The running turn's chatEvents: `make` numbers one (the next `sequence`), `send` sends
    it to the agent's listeners, `emit` does both (under `lock`).

    `lock` is held from numbering to sending, so events go out in `sequence` order; whoever
    holds the channel's lock too takes it first (the broker does), never the other way.
    """

    lock: asyncio.Lock

    def make(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]: ...
    async def send(self, event: dict[str, Any]) -> None: ...
    async def emit(self, kind: str, payload: dict[str, Any]) -> None: ...


@dataclass
class _Pending:
    request_id: str
    correlation_id: str
    ask: PermissionAsk
    events: TurnEvents
    future: asyncio.Future[Resolution] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


def _text(value: Any, limit: int) -> str:
    return clip_text(value if isinstance(value, str) else "", limit)[0]


def bounded(ask: PermissionAsk) -> PermissionAsk:
    """`ask` cut to the sizes a request may take on the wire and in the database."""
    options = [
        {"optionId": o["optionId"], "name": _text(o.get("name"), MAX_OPTION_NAME),
         "kind": o["kind"]}
        for o in ask.options
        if isinstance(o.get("optionId"), str) and 0 < len(o["optionId"]) <= MAX_OPTION_ID
        and o.get("kind") in protocol.OPTION_KINDS
    ][:MAX_OPTIONS]
    diff = clip_diff(ask.diff, MAX_DIFF_TEXT, MAX_DIFFS)
    kind = ask.kind if ask.kind in protocol.PERMISSION_KINDS else "other"
    tool_call_id = _text(ask.tool_call_id, MAX_OPTION_ID) if ask.tool_call_id else None
    return replace(ask, title=_text(ask.title, MAX_TITLE), kind=kind, options=options,
                   paths=[_text(p, MAX_PATH) for p in ask.paths[:MAX_PATHS]],
                   diff=diff or None, tool_call_id=tool_call_id)


def request_payload(request_id: str, ask: PermissionAsk, expires_at: str) -> dict[str, Any]:
    payload: dict[str, Any] = {"requestId": request_id, "title": ask.title, "kind": ask.kind,
                               "options": ask.options, "expiresAt": expires_at}
    if ask.tool_call_id:
        payload["toolCallId"] = ask.tool_call_id
    if ask.paths:
        payload["paths"] = ask.paths
    if ask.diff:
        payload["diff"] = ask.diff
    return payload


def resolved_payload(resolution: Resolution, ask: PermissionAsk) -> dict[str, Any]:
    # The title and kind too: a request the policy settled was never shown, yet the
    # transcript says what it was.
    payload: dict[str, Any] = {"requestId": resolution.request_id,
                               "outcome": resolution.outcome, "by": resolution.by,
                               "title": ask.title, "toolKind": ask.kind}
    if resolution.option_id:
        payload["optionId"] = resolution.option_id
    if resolution.user:
        payload["user"] = resolution.user
    return payload


def stored_part(row: dict[str, Any]) -> dict[str, Any]:
    """A stored request's `permission` part (after a restart, from its row)."""
    payload = (row.get("event") or {}).get("payload") or {}
    ask = PermissionAsk(title=payload.get("title", ""), kind=payload.get("kind", "other"),
                        paths=payload.get("paths") or [],
                        tool_call_id=payload.get("toolCallId"))
    return permission_part(ask, Resolution(row["id"], row["state"], row["decided_by"] or "policy",
                                           row["option_id"], row["user"]))


def _expiry(seconds: float) -> str:
    moment = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ApprovalBroker:
    """Settles one agent's permission requests (see the module's docstring).

    `lock` is the channel's: a request is stored and sent under it, so a login, which
    replays history and the pending requests under it too, sees each request exactly once.
    """

    def __init__(self, agent_id: str, store: Store, lock: asyncio.Lock, log: logging.Logger,
                 timeout: float = DEFAULT_TIMEOUT, max_pending: int = MAX_PENDING) -> None:
        self.agent_id = agent_id
        self._store = store
        self._lock = lock
        self._log = log
        self._timeout = timeout
        self._max_pending = max_pending
        self._pending: dict[str, _Pending] = {}
        self._entering = 0  # requests past the bound check, not yet in _pending
        self._parts: dict[str, list[dict[str, Any]]] = {}  # by correlation id
        self._active: set[str] = set()  # turns begun and not yet ended, by correlation id
        self._cancelled: dict[str, str] = {}  # turns being cancelled: who cancelled them
        self._tasks: set[asyncio.Task[None]] = set()

    def asker(self, correlation_id: str, events: TurnEvents) -> AskPermission:
        """The `Turn.ask` of one turn."""
        async def ask(request: PermissionAsk) -> Resolution:
            return await self.ask(correlation_id, events, request)
        return ask

    def begin_turn(self, correlation_id: str) -> None:
        """The turn starts: its requests may wait for a user until end_turn."""
        self._active.add(correlation_id)

    def full(self) -> bool:
        """Whether a request the policy leaves open would be rejected now, as one too many
        (a provider need not prepare it: no paths judged in the sandbox)."""
        return len(self._pending) + self._entering >= self._max_pending

    def _open(self, correlation_id: str) -> bool:
        """Whether a request of the turn may still wait (begun, not ending or cancelled)."""
        return correlation_id in self._active and correlation_id not in self._cancelled

    def _cancelled_now(self, correlation_id: str, request_id: str,
                       request: PermissionAsk) -> Resolution:
        resolution = Resolution(request_id, "cancelled",
                                self._cancelled.get(correlation_id, "policy"))
        self._keep(correlation_id, request, resolution)
        return resolution

    # -- asking --------------------------------------------------------------------------

    async def ask(self, correlation_id: str, events: TurnEvents,
                  request: PermissionAsk) -> Resolution:
        request = bounded(request)
        request_id = str(uuid.uuid4())
        if not self._open(correlation_id):  # its turn ended or ends: nobody will answer
            resolution = self._cancelled_now(correlation_id, request_id, request)
            await events.emit(ChatEventKind.PERMISSION_RESOLVED,
                              resolved_payload(resolution, request))
            return resolution
        decision = await self._decision(request)
        # Checked and counted with no await between: requests made at once cannot all pass.
        if decision is None and self.full():
            self._log.warning("Agent %s has %d requests waiting: one more is rejected",
                              self.agent_id, self._max_pending)
            decision = "reject"
        if decision is not None:
            return await self._by_policy(correlation_id, events, request_id, request, decision)
        pending = _Pending(request_id, correlation_id, request, events)
        if not await self._register(pending):
            return pending.future.result()  # the turn ended meanwhile: settled as cancelled
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), self._timeout)
        except asyncio.TimeoutError:
            claimed = self._claim(request_id, "expired", "timeout")
            if claimed is not None:
                await self._finish(*claimed)
            return await pending.future
        except asyncio.CancelledError:
            # The provider withdrew it (its CLI exited, a control_cancel_request, a reset
            # connection); a user's cancel has settled it already through cancel_turn.
            self._settle_later(request_id, "cancelled",
                               self._cancelled.get(correlation_id, "policy"))
            raise

    async def _register(self, pending: _Pending) -> bool:
        """Store, number and send the request, then let it wait (True); or, if its turn
        ended or was cancelled while it was being decided, settle it as cancelled (False).

        Under the channel's lock (a login sees it once) and the events' lock (numbered and
        sent in order, the store write between). Checked under them with no await before
        the request joins `_pending`: cancel_turn and end_turn cannot slip in between.
        """
        request_id, correlation_id = pending.request_id, pending.correlation_id
        expires_at = _expiry(self._timeout)
        self._entering += 1
        try:
            async with self._lock, pending.events.lock:
                if not self._open(correlation_id):
                    resolution = self._cancelled_now(correlation_id, request_id, pending.ask)
                    pending.future.set_result(resolution)
                    await pending.events.send(pending.events.make(
                        ChatEventKind.PERMISSION_RESOLVED,
                        resolved_payload(resolution, pending.ask)))
                    return False
                event = pending.events.make(
                    ChatEventKind.PERMISSION_REQUEST,
                    request_payload(request_id, pending.ask, expires_at))
                await self._store.create_permission_request(request_id, self.agent_id,
                                                            correlation_id, event, expires_at)
                self._pending[request_id] = pending
                await pending.events.send(event)
                return True
        finally:
            self._entering -= 1

    async def _decision(self, request: PermissionAsk) -> str | None:
        """"allow" / "reject" when no user need be asked, else None."""
        if not request.options:
            return "reject"  # nothing a user could pick
        policy = await self._policy()
        # No rule is kept for "other" (see respond); one stored before is not used either.
        rule = None if request.kind == "other" else \
            await self._store.permission_rule(self.agent_id, request.kind)
        return policy_decision(policy, request, rule)

    async def _policy(self) -> str:
        agent = await self._store.get_agent(self.agent_id)
        return (agent.config if agent else {}).get("permissions",
                                                   protocol.DEFAULT_PERMISSION_POLICY)

    async def _by_policy(self, correlation_id: str, events: TurnEvents, request_id: str,
                         request: PermissionAsk, decision: str) -> Resolution:
        option_id = pick_option(request.options, decision)
        allowed = decision == "allow" and option_id is not None
        if not allowed:
            option_id = pick_option(request.options, "reject")
        resolution = Resolution(request_id, "allowed" if allowed else "rejected", "policy",
                                option_id)
        self._keep(correlation_id, request, resolution)
        await events.emit(ChatEventKind.PERMISSION_RESOLVED,
                          resolved_payload(resolution, request))
        return resolution

    # -- answering -----------------------------------------------------------------------

    async def respond(self, request_id: str, option_id: str, user: str | None) -> None:
        """A user's answer; AgenstraError if it is not one for a pending request."""
        pending = self._pending.get(request_id)
        if pending is None:
            raise AgenstraError(ErrorCode.UNKNOWN_REQUEST, "No such pending request")
        option = next((o for o in pending.ask.options if o["optionId"] == option_id), None)
        if option is None:
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD,
                                "optionId is not one of the request's options")
        allowed = option["kind"].startswith("allow")
        rule = ALWAYS.get(option["kind"])
        if rule is not None and pending.ask.kind == "other":
            # "other" lumps unrelated tools together (every MCP tool, ...): never remembered,
            # and the agent is told the *_once answer, so it does not remember it either.
            option_id = pick_option(pending.ask.options, rule) or option_id
            rule = None
        claimed = self._claim(request_id, "allowed" if allowed else "rejected", "user",
                              option_id, user)
        if claimed is None:
            raise AgenstraError(ErrorCode.UNKNOWN_REQUEST, "No such pending request")
        if rule is not None:  # stored before the agent hears, so it applies next
            await self._remember(pending.ask.kind, rule)
        await self._finish(*claimed)

    async def _remember(self, kind: str, rule: str) -> None:
        """Keep an always-answer for `kind` and settle the requests of that kind still
        waiting that the policy now settles with it. A rule that cannot be stored is
        logged: the answer stands."""
        try:
            await self._store.set_permission_rule(self.agent_id, kind, rule)
            policy = await self._policy()
        except Exception:
            self._log.exception("Could not remember the %s rule for %s of agent %s",
                                rule, kind, self.agent_id)
            return
        for request_id, other in list(self._pending.items()):
            decided = policy_decision(policy, other.ask, rule) if other.ask.kind == kind \
                else None
            if decided is None:
                continue  # another kind, or paths no rule may settle: still the user's
            option_id = pick_option(other.ask.options, decided)
            allowed = decided == "allow" and option_id is not None
            if not allowed:
                option_id = pick_option(other.ask.options, "reject")
            claimed = self._claim(request_id, "allowed" if allowed else "rejected", "policy",
                                  option_id)
            if claimed is not None:
                self._spawn(self._finish(*claimed))

    # -- cancelling ----------------------------------------------------------------------

    def cancel_turn(self, correlation_id: str, by: str = "user") -> None:
        """Cancel the turn's waiting requests now (their agent hears at once); the rest of
        the settling (store, announce) runs in the background."""
        self._cancelled.setdefault(correlation_id, by)
        for request_id in [r for r, p in self._pending.items()
                           if p.correlation_id == correlation_id]:
            self._settle_later(request_id, "cancelled", by)

    async def end_turn(self, correlation_id: str, by: str = "policy") -> list[dict[str, Any]]:
        """The turn is over: cancel what still waits; its permission parts, for its answer."""
        self.cancel_turn(correlation_id, by)
        await self.drain()
        # A request asked from now on is settled as cancelled at once (late ACP requests).
        self._active.discard(correlation_id)
        self._cancelled.pop(correlation_id, None)
        return self._parts.pop(correlation_id, [])

    async def cancel_all(self, by: str = "policy") -> None:
        for request_id in list(self._pending):
            self._settle_later(request_id, "cancelled", by)
        await self.drain()

    async def drain(self) -> None:
        """Wait for the settlements running in the background."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def pending_events(self) -> list[dict[str, Any]]:
        """The stored `permissionRequest` events still waiting, oldest first."""
        rows = await self._store.permission_requests(self.agent_id, pending=True)
        return [row["event"] for row in rows if row["id"] in self._pending]

    # -- settling ------------------------------------------------------------------------

    def _claim(self, request_id: str, outcome: str, by: str, option_id: str | None = None,
               user: str | None = None) -> tuple[_Pending, Resolution] | None:
        """Take the request out of the waiting ones (no await: the first claim wins)."""
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return None
        resolution = Resolution(request_id, outcome, by, option_id, user)
        self._keep(pending.correlation_id, pending.ask, resolution)
        return pending, resolution

    async def _finish(self, pending: _Pending, resolution: Resolution) -> None:
        """Store and announce a claimed settlement; the agent gets the answer first.

        Under the channel's lock, as the request was sent: a login replaying the pending
        requests either sees it settled (not replayed) or joins before the announcement.
        """
        if not pending.future.done():
            pending.future.set_result(resolution)
        try:
            async with self._lock:
                await self._store.settle_permission_request(
                    resolution.request_id, resolution.outcome, resolution.by,
                    resolution.option_id, resolution.user)
                await pending.events.emit(ChatEventKind.PERMISSION_RESOLVED,
                                          resolved_payload(resolution, pending.ask))
        except Exception:
            self._log.exception("Could not record permission request %s",
                                resolution.request_id)

    def _settle_later(self, request_id: str, outcome: str, by: str) -> None:
        claimed = self._claim(request_id, outcome, by)
        if claimed is not None:
            self._spawn(self._finish(*claimed))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _keep(self, correlation_id: str, ask: PermissionAsk, resolution: Resolution) -> None:
        if correlation_id not in self._active:
            return  # its turn's answer is out: nothing would collect the part
        parts = self._parts.setdefault(correlation_id, [])
        if len(parts) < MAX_PARTS:
            parts.append(permission_part(ask, resolution))


async def cancel_stored(store: Store) -> None:
    """After a restart nothing waits for the stored pending requests: cancel them all."""
    for row in await store.permission_requests(pending=True):
        await store.settle_permission_request(row["id"], "cancelled", "policy")

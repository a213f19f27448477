"""ApprovalBroker alone (DESIGN.md "Approvals"): the races a real server rarely shows.

A real SQLite store, the channel's own `_TurnEvents` and lock, the fake outbox of
test_channel.py; each interleaving is forced by the test (gates around the store), not by
timing. Claude Code's ControlChannel is flooded the same way, with the real broker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agenstra_jupyter.manager.approvals import MAX_PENDING, ApprovalBroker
from agenstra_jupyter.manager.channel import AgentChannel, _TurnEvents
from agenstra_jupyter.manager.permissions import PermissionAsk
from agenstra_jupyter.manager.providers.base import Turn, TurnRecorder
from agenstra_jupyter.manager.providers.cli_control import (
    MAX_PREPARING,
    ControlChannel,
    TurnClock,
)
from agenstra_jupyter.protocol import ChatEventKind, ManagerEvent

from .test_channel import AGENT, LOG, FakeOutbox, opened_store

OPTIONS = [{"optionId": "yes", "name": "Allow", "kind": "allow_once"},
           {"optionId": "always", "name": "Always", "kind": "allow_always"},
           {"optionId": "no", "name": "Reject", "kind": "reject_once"},
           {"optionId": "never", "name": "Never", "kind": "reject_always"}]
SOON = 5.0  # seconds: far below the broker's timeout in these tests


def edit(title: str = "Write x", kind: str = "edit") -> PermissionAsk:
    return PermissionAsk(title=title, kind=kind, options=[dict(o) for o in OPTIONS])


class Setup:
    def __init__(self, store: Any) -> None:
        self.store = store
        self.outbox = FakeOutbox(store)
        self.lock = asyncio.Lock()
        self.broker = ApprovalBroker(AGENT, store, self.lock, LOG, timeout=60)

    def events(self, correlation_id: str) -> _TurnEvents:
        return _TurnEvents(AGENT, correlation_id, self.outbox)

    def sent(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [p for e, p in self.outbox.broadcast
                if e == ManagerEvent.CHAT_EVENT and kind in (None, p["kind"])]

    async def waiting(self, count: int) -> list[dict[str, Any]]:
        return await _waiting(self.broker, count)


def with_setup(test: Callable[[Setup], Awaitable[None]]) -> Callable[[Path], Awaitable[None]]:
    """`test(setup)` as a test of its own, on a fresh store (no async fixtures here)."""
    async def run(tmp_path: Path) -> None:
        async with opened_store(tmp_path) as store:
            await test(Setup(store))
    run.__name__ = run.__qualname__ = test.__name__
    run.__doc__ = test.__doc__
    return run


@with_setup
async def test_a_request_asked_after_its_turn_ended_is_cancelled_at_once(setup: Setup) -> None:
    broker = setup.broker
    broker.begin_turn("t1")
    assert await broker.end_turn("t1") == []
    # A late ACP request_permission of the finished turn: nobody can answer it.
    resolution = await asyncio.wait_for(broker.ask("t1", setup.events("t1"), edit()), SOON)
    assert (resolution.outcome, resolution.by) == ("cancelled", "policy")
    assert await broker.pending_events() == []
    assert await setup.store.permission_requests(AGENT, pending=True) == []
    assert broker._parts == {}  # nothing kept for an answer that is already out
    assert not broker.full()


@with_setup
async def test_a_request_being_decided_when_its_turn_is_cancelled_never_waits(setup: Setup) -> None:
    broker = setup.broker
    broker.begin_turn("t2")
    asking = asyncio.ensure_future(broker.ask("t2", setup.events("t2"), edit()))
    await asyncio.sleep(0)  # it now reads the policy from the store
    broker.cancel_turn("t2", "user")
    resolution = await asyncio.wait_for(asking, SOON)
    assert (resolution.outcome, resolution.by) == ("cancelled", "user")
    assert setup.sent(ChatEventKind.PERMISSION_REQUEST) == []  # never put to anyone
    [settled] = setup.sent(ChatEventKind.PERMISSION_RESOLVED)
    assert settled["payload"]["outcome"] == "cancelled"
    [part] = await broker.end_turn("t2")
    assert part["outcome"] == "cancelled" and part["by"] == "user"


@with_setup
async def test_events_go_out_in_sequence_order_while_a_request_is_stored(setup: Setup) -> None:
    broker, store = setup.broker, setup.store
    writing, gate = asyncio.Event(), asyncio.Event()
    create = store.create_permission_request

    async def slow_create(*args: Any) -> None:
        writing.set()
        await gate.wait()
        await create(*args)

    store.create_permission_request = slow_create
    broker.begin_turn("t3")
    events = setup.events("t3")
    asking = asyncio.ensure_future(broker.ask("t3", events, edit()))
    await asyncio.wait_for(writing.wait(), SOON)
    # The provider keeps streaming while the request is being stored.
    streaming = asyncio.ensure_future(events.emit(ChatEventKind.ASSISTANT_DELTA, {"delta": "x"}))
    for _ in range(20):
        await asyncio.sleep(0)
    gate.set()
    await asyncio.wait_for(streaming, SOON)
    await setup.waiting(1)
    assert [(e["kind"], e["sequence"]) for e in setup.sent()] == [
        (ChatEventKind.PERMISSION_REQUEST, 1), (ChatEventKind.ASSISTANT_DELTA, 2)]
    broker.cancel_turn("t3")
    await asyncio.wait_for(asking, SOON)
    await broker.end_turn("t3")
    sequences = [e["sequence"] for e in setup.sent()]
    assert sequences == sorted(sequences) == [1, 2, 3]


async def test_a_login_racing_a_settlement_hears_of_it(tmp_path):
    """The request is replayed to a socket logging in and answered before it joins: the
    socket must still get the permissionResolved."""
    async with opened_store(tmp_path) as store:
        outbox = FakeOutbox(store)

        async def no_provider() -> Any:
            raise AssertionError("no turn runs here")

        channel = AgentChannel(AGENT, store, outbox, no_provider, LOG)
        broker = channel.approvals
        broker.begin_turn("c")
        asking = asyncio.ensure_future(
            broker.ask("c", _TurnEvents(AGENT, "c", outbox), edit()))
        [request] = await _waiting(broker, 1)
        request_id = request["payload"]["requestId"]

        answering: list[asyncio.Future[None]] = []

        async def answer_now(payload: Any) -> None:
            outbox.on_replay = None
            # Another socket answers right now (its own task: the login holds the lock).
            answering.append(asyncio.ensure_future(broker.respond(request_id, "yes", None)))
            # Until it is stored and announced, or (as it must) waits for the login's lock.
            await asyncio.wait({answering[0]}, timeout=1.0)

        outbox.on_replay = answer_now
        await channel.subscribe("late", None, 0)
        assert (await asyncio.wait_for(asking, SOON)).outcome == "allowed"
        await asyncio.wait_for(answering[0], SOON)
        for _ in range(50):
            await asyncio.sleep(0)
        late = [(p["kind"], p["payload"]["requestId"]) for e, p in outbox.inbox["late"]
                if e == ManagerEvent.CHAT_EVENT]
        assert late == [(ChatEventKind.PERMISSION_REQUEST, request_id),
                        (ChatEventKind.PERMISSION_RESOLVED, request_id)]
        await broker.end_turn("c")
        await channel.close()


async def _waiting(broker: ApprovalBroker, count: int) -> list[dict[str, Any]]:
    async def poll() -> list[dict[str, Any]]:
        while len(found := await broker.pending_events()) < count:
            await asyncio.sleep(0.01)
        return found
    return await asyncio.wait_for(poll(), SOON)


@with_setup
async def test_a_request_the_provider_withdraws_is_cancelled_by_policy(setup: Setup) -> None:
    # E.g. the CLI exited or crashed, or sent control_cancel_request: nobody cancelled it.
    broker = setup.broker
    broker.begin_turn("t4")
    asking = asyncio.ensure_future(broker.ask("t4", setup.events("t4"), edit()))
    [request] = await setup.waiting(1)
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    await broker.drain()
    [settled] = setup.sent(ChatEventKind.PERMISSION_RESOLVED)
    assert (settled["payload"]["outcome"], settled["payload"]["by"]) == ("cancelled", "policy")
    [row] = await setup.store.permission_requests(AGENT)
    assert row["id"] == request["payload"]["requestId"] and row["decided_by"] == "policy"
    [part] = await broker.end_turn("t4")
    assert part["by"] == "policy"


@with_setup
async def test_an_always_answer_settles_the_waiting_requests_of_its_kind(setup: Setup) -> None:
    broker = setup.broker
    broker.begin_turn("t5")
    events = setup.events("t5")
    asks = [asyncio.ensure_future(broker.ask("t5", events, request))
            for request in (edit("a"), edit("b"), edit("c"), edit("run", "execute"))]
    waiting = await setup.waiting(4)
    ids = {e["payload"]["title"]: e["payload"]["requestId"] for e in waiting}
    await broker.respond(ids["a"], "always", "ann")
    first, second, third = [await asyncio.wait_for(a, SOON) for a in asks[:3]]
    assert (first.outcome, first.by, first.option_id) == ("allowed", "user", "always")
    for other in (second, third):  # no second question for what the user allowed always
        assert (other.outcome, other.by, other.option_id) == ("allowed", "policy", "yes")
    [left] = await broker.pending_events()
    assert left["payload"]["title"] == "run"  # another kind still waits
    await broker.respond(ids["run"], "never", None)
    assert (await asks[3]).outcome == "rejected"
    assert await setup.store.permission_rule(AGENT, "edit") == "allow"
    assert await setup.store.permission_rule(AGENT, "execute") == "reject"
    await broker.end_turn("t5")


@with_setup
async def test_an_always_answer_stands_when_its_rule_cannot_be_stored(setup: Setup) -> None:
    broker = setup.broker

    async def broken(*args: Any) -> None:
        raise OSError("disk full")

    setup.store.set_permission_rule = broken
    broker.begin_turn("t6")
    asking = asyncio.ensure_future(broker.ask("t6", setup.events("t6"), edit()))
    [request] = await setup.waiting(1)
    await broker.respond(request["payload"]["requestId"], "always", None)  # no error
    resolution = await asyncio.wait_for(asking, SOON)
    assert (resolution.outcome, resolution.by) == ("allowed", "user")
    await broker.drain()
    [settled] = setup.sent(ChatEventKind.PERMISSION_RESOLVED)
    assert settled["payload"]["outcome"] == "allowed"
    await broker.end_turn("t6")


@with_setup
async def test_always_is_never_remembered_for_other_tools(setup: Setup) -> None:
    broker = setup.broker
    broker.begin_turn("t7")
    events = setup.events("t7")
    for always, once, outcome in [("always", "yes", "allowed"), ("never", "no", "rejected")]:
        asking = asyncio.ensure_future(broker.ask("t7", events, edit("mcp tool", "other")))
        [request] = await setup.waiting(1)
        await broker.respond(request["payload"]["requestId"], always, None)
        resolution = await asyncio.wait_for(asking, SOON)
        # Taken as a once-answer: the agent is told that too, so it keeps no rule either.
        assert (resolution.outcome, resolution.option_id) == (outcome, once)
        assert await setup.store.permission_rule(AGENT, "other") is None
    # The next "other" request is asked again, even with an old rule stored for it.
    await setup.store.set_permission_rule(AGENT, "other", "allow")
    asking = asyncio.ensure_future(broker.ask("t7", events, edit("another tool", "other")))
    await setup.waiting(1)
    await broker.end_turn("t7")
    assert (await asking).outcome == "cancelled"


class FakeCli:
    """The CLI's stdin as ControlChannel sees it: what it was sent."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    async def write(self, data: bytes) -> None:
        self.lines.append(json.loads(data))

    async def close_stdin(self) -> None:
        pass

    def answers(self) -> dict[str, dict[str, Any]]:
        return {m["response"]["request_id"]: m["response"] for m in self.lines
                if m.get("type") == "control_response"}


@with_setup
async def test_a_flood_of_cli_permission_prompts_stays_bounded(setup: Setup) -> None:
    broker = setup.broker
    broker.begin_turn("t8")
    events = setup.events("t8")
    turn = Turn("go", "t8", True, events.emit, ask=broker.asker("t8", events),
                crowded=broker.full)
    judging = {"now": 0, "most": 0, "calls": 0}

    async def judge(path: str) -> str | None:  # stands for a sandbox exec
        judging["calls"] += 1
        judging["now"] += 1
        judging["most"] = max(judging["most"], judging["now"])
        await asyncio.sleep(0.01)
        judging["now"] -= 1
        return path.rsplit("/", 1)[-1]

    async def read(path: str) -> str:
        await judge(path)
        return ""

    cli = FakeCli()
    control = ControlChannel(cli, TurnRecorder(turn), TurnClock(600), judge, read)
    flood = 200
    for n in range(flood):
        request = {"subtype": "can_use_tool", "tool_name": "Write", "tool_use_id": f"tu{n}",
                   "input": {"file_path": f"/w/f{n}.txt", "content": "x"}}
        for _ in range(2):  # each one sent twice: the copy is ignored
            await control.handle({"type": "control_request", "request_id": f"r{n}",
                                  "request": request})
    waiting = await setup.waiting(MAX_PENDING)

    async def answered(count: int) -> None:
        while len(cli.answers()) < count:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(answered(flood - MAX_PENDING), 30)
    assert judging["most"] <= MAX_PREPARING
    # Judged (and read): those that wait, plus those prepared while earlier ones were still
    # being decided (their store reads) when it filled; nowhere near one per request.
    assert judging["calls"] <= 4 * (MAX_PENDING + MAX_PREPARING) < flood
    assert len(await broker.pending_events()) == MAX_PENDING
    for request in waiting:
        allow = next(o["optionId"] for o in request["payload"]["options"]
                     if o["kind"] == "allow_once")
        await broker.respond(request["payload"]["requestId"], allow, None)
    await asyncio.wait_for(answered(flood), SOON)
    answers = cli.answers()
    behaviors = [a["response"]["behavior"] for a in answers.values()]
    assert behaviors.count("allow") == MAX_PENDING
    assert behaviors.count("deny") == flood - MAX_PENDING
    responses = [m for m in cli.lines if m.get("type") == "control_response"]
    assert len(responses) == flood  # one answer per request, none for the copies
    await control.close()
    await broker.end_turn("t8")

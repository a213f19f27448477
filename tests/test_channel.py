"""AgentChannel alone: a real SQLite store, a fake outbox, a provider the test steers.

No server, no sockets, no sleeps: each turn of `GatedProvider` runs until the test opens
its gate, so every interleaving below is chosen by the test, not by timing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from agenstra_jupyter import protocol
from agenstra_jupyter.manager.channel import (
    CANCELLED_MESSAGE,
    SHUTDOWN_MESSAGE,
    AgentChannel,
)
from agenstra_jupyter.manager.models import AgentRecord
from agenstra_jupyter.manager.providers import Provider, ProviderError, Turn, TurnResult
from agenstra_jupyter.manager.store import Store
from agenstra_jupyter.protocol import ManagerEvent
from agenstra_jupyter.secrets import SecretBox

AGENT = "agent-1"
LOG = logging.getLogger("test_channel")


class GatedProvider(Provider):
    """Answers `ok <message>` once the test opens that message's gate.

    `fail <text>` raises ProviderError(text), `crash` raises ValueError. Every turn emits one
    status event when it starts and sets `started[message]`.
    """

    name = "gated"
    description = "test"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gates: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.started: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.running: list[str] = []  # turns running now (never more than one)
        self.calls: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.closed = False

    async def run_turn(self, turn: Turn) -> TurnResult:
        self.calls.append(turn.message)
        self.running.append(turn.message)
        assert len(self.running) == 1, f"two turns at once: {self.running}"
        try:
            await turn.emit("status", {"message": f"started {turn.message}"})
            self.started[turn.message].set()
            await self.gates[turn.message].wait()
            if turn.message.startswith("fail "):
                raise ProviderError(turn.message[5:])
            if turn.message == "crash":
                raise ValueError("boom")
            await turn.emit("assistantDelta", {"delta": f"ok {turn.message}"})
            self.finished.append(turn.message)
            return TurnResult(f"ok {turn.message}", {"parts": []})
        except asyncio.CancelledError:
            self.cancelled.append(turn.message)
            raise
        finally:
            self.running.remove(turn.message)

    async def close(self) -> None:
        self.closed = True


class FakeOutbox:
    """Records what the channel sends and delivers it to the sockets that joined."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.members: set[str] = set()
        self.inbox: dict[str, list[tuple[str, Any]]] = defaultdict(list)
        self.broadcast: list[tuple[str, Any]] = []
        # Awaited before each replayed message / before a socket joins (to race with them).
        self.on_replay: Any = None
        self.on_join: Any = None

    async def to_agent(self, agent_id: str, event: str, payload: Any) -> None:
        assert agent_id == AGENT
        if event == ManagerEvent.CHAT_MESSAGE:
            # Persisted before announced: the store has it by the time anyone hears of it.
            stored = await self.store.messages(AGENT, payload["seq"] - 1, 1)
            assert stored == [payload], "announced before it was stored"
        self.broadcast.append((event, payload))
        for sid in self.members:
            self.inbox[sid].append((event, payload))

    async def to_socket(self, sid: str, event: str, payload: Any) -> None:
        if self.on_replay is not None:
            await self.on_replay(payload)
        self.inbox[sid].append((event, payload))

    async def join(self, sid: str, agent_id: str) -> None:
        if self.on_join is not None:
            await self.on_join(sid)
        self.members.add(sid)

    async def leave(self, sid: str, agent_id: str) -> None:
        self.members.discard(sid)

    def messages(self, sid: str | None = None) -> list[dict[str, Any]]:
        events = self.broadcast if sid is None else self.inbox[sid]
        return [p for e, p in events if e == ManagerEvent.CHAT_MESSAGE]

    def answers(self) -> dict[str, dict[str, Any]]:
        return {m["correlationId"]: m["response"] for m in self.messages() if m["from"] == "agent"}


@asynccontextmanager
async def opened_store(path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite:///{path / 'manager.sqlite'}", SecretBox(Fernet.generate_key()))
    await store.open()
    now = protocol.utc_now()
    await store.create_agent(AgentRecord(id=AGENT, name="a", provider="gated", runtime="process",
                                         password_hash="x", created_at=now, updated_at=now))
    try:
        yield store
    finally:
        await store.close()


class Harness:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.outbox = FakeOutbox(store)
        self.providers: list[GatedProvider] = []
        self.channel = AgentChannel(AGENT, store, self.outbox, self._make, LOG)

    async def _make(self) -> GatedProvider:
        provider = GatedProvider()
        self.providers.append(provider)
        return provider

    @property
    def provider(self) -> GatedProvider:
        return self.providers[-1]

    async def started(self, message: str) -> None:
        """Until the turn of `message` runs (its provider may not exist yet)."""
        async def poll() -> None:
            while not any(p.started[message].is_set() for p in self.providers):
                await asyncio.sleep(0)

        await asyncio.wait_for(poll(), 10)

    async def answered(self, correlation_id: str) -> dict[str, Any]:
        async def poll() -> dict[str, Any]:
            while correlation_id not in self.outbox.answers():
                await asyncio.sleep(0)
            return self.outbox.answers()[correlation_id]

        return await asyncio.wait_for(poll(), 10)

    def release(self, message: str) -> None:
        self.provider.gates[message].set()


@asynccontextmanager
async def channel_harness(path: Path) -> AsyncIterator[Harness]:
    async with opened_store(path) as store:
        harness = Harness(store)
        try:
            yield harness
        finally:
            await harness.channel.close()


async def test_turns_run_one_at_a_time_in_arrival_order(tmp_path):
    async with channel_harness(tmp_path) as harness:
        channel = harness.channel
        users = [await channel.submit(m, f"c-{m}", True) for m in ("a", "b", "c")]
        # The user messages are stored and announced at once, before any answer.
        assert [(u["seq"], u["text"], u["from"]) for u in users] == [
            (1, "a", "user"), (2, "b", "user"), (3, "c", "user")]
        await harness.started("a")
        for message in ("c", "b", "a"):  # opened in reverse: order still follows arrival
            harness.release(message)
        for message in ("a", "b", "c"):
            await harness.answered(f"c-{message}")
        assert harness.provider.calls == ["a", "b", "c"]
        stored = await harness.store.messages(AGENT)
        assert [(m["seq"], m["from"], m["correlationId"]) for m in stored] == [
            (1, "user", "c-a"), (2, "user", "c-b"), (3, "user", "c-c"),
            (4, "agent", "c-a"), (5, "agent", "c-b"), (6, "agent", "c-c")]
        assert harness.outbox.messages() == stored  # announced exactly as stored, in seq order
        assert stored[3]["response"] == {"type": "text", "result": "ok a", "parts": []}


async def test_a_turns_events_come_between_its_question_and_its_answer(tmp_path):
    async with channel_harness(tmp_path) as harness:
        await harness.channel.submit("a", "ca", True)
        await harness.started("a")
        harness.release("a")
        await harness.answered("ca")
        kinds = [(e, p.get("kind") or p.get("from")) for e, p in harness.outbox.broadcast]
        assert kinds == [(ManagerEvent.CHAT_MESSAGE, "user"), (ManagerEvent.CHAT_EVENT, "status"),
                         (ManagerEvent.CHAT_EVENT, "assistantDelta"),
                         (ManagerEvent.CHAT_MESSAGE, "agent")]
        events = [p for e, p in harness.outbox.broadcast if e == ManagerEvent.CHAT_EVENT]
        assert [(e["sequence"], e["correlationId"], e["agentId"]) for e in events] == [
            (1, "ca", AGENT), (2, "ca", AGENT)]


async def test_submit_is_idempotent_by_correlation_id(tmp_path):
    async with channel_harness(tmp_path) as harness:
        channel = harness.channel
        first = await channel.submit("hi", "same", True)
        again = await channel.submit("hi", "same", True)  # a resend after a lost ack
        other_text = await channel.submit("something else", "same", True)
        assert first == again == other_text  # the stored message, not a second one
        await harness.started("hi")
        harness.release("hi")
        await harness.answered("same")
        # A sentinel turn: had a second "hi" turn been queued, it would run before this one.
        await channel.submit("sentinel", "s", True)
        await harness.started("sentinel")
        harness.release("sentinel")
        await harness.answered("s")
        assert harness.provider.calls == ["hi", "sentinel"]
        assert [(m["from"], m["correlationId"]) for m in await harness.store.messages(AGENT)] == [
            ("user", "same"), ("agent", "same"), ("user", "s"), ("agent", "s")]
        # Even after its answer, the same id is still the same stored message.
        assert await channel.submit("hi", "same", True) == first


async def test_cancel_the_running_turn(tmp_path):
    async with channel_harness(tmp_path) as harness:
        channel = harness.channel
        await channel.submit("long", "c1", True)
        await channel.submit("next", "c2", True)
        await harness.started("long")
        assert channel.cancel("c1") is True
        assert await harness.answered("c1") == {"type": "error", "result": CANCELLED_MESSAGE,
                                                "cancelled": True}
        assert harness.provider.cancelled == ["long"]
        await harness.started("next")  # the queue goes on
        harness.release("next")
        assert (await harness.answered("c2"))["result"] == "ok next"


async def test_cancel_without_an_id_stops_whatever_runs(tmp_path):
    async with channel_harness(tmp_path) as harness:
        channel = harness.channel
        assert channel.cancel() is False  # nothing runs
        await channel.submit("long", "c1", True)
        await harness.started("long")
        assert channel.cancel() is True
        assert (await harness.answered("c1"))["cancelled"] is True


async def test_cancel_a_queued_turn_before_it_starts(tmp_path):
    async with channel_harness(tmp_path) as harness:
        channel = harness.channel
        await channel.submit("first", "c1", True)
        await channel.submit("queued", "c2", True)
        await channel.submit("third", "c3", True)
        await harness.started("first")
        assert channel.cancel("c2") is True
        harness.release("first")
        await harness.started("third")
        harness.release("third")
        answers = [await harness.answered(c) for c in ("c1", "c2", "c3")]
        assert answers[1] == {"type": "error", "result": CANCELLED_MESSAGE, "cancelled": True}
        assert [a["result"] for a in (answers[0], answers[2])] == ["ok first", "ok third"]
        assert harness.provider.calls == ["first", "third"]  # the provider never saw it
        stored = await harness.store.messages(AGENT)
        assert [m["correlationId"] for m in stored if m["from"] == "agent"] == ["c1", "c2", "c3"]


async def test_failures_become_short_error_answers_and_the_agent_goes_on(tmp_path):
    async with channel_harness(tmp_path) as harness:
        channel = harness.channel
        await channel.submit("fail quota exceeded", "f", True)
        await channel.submit("crash", "x", True)
        await channel.submit("fine", "ok", True)
        for message in ("fail quota exceeded", "crash", "fine"):
            await harness.started(message)
            harness.release(message)
        assert await harness.answered("f") == {"type": "error", "result": "quota exceeded"}
        # An unexpected exception is named, not shown (its text may hold anything).
        assert await harness.answered("x") == {"type": "error",
                                               "result": "The agent failed (ValueError)"}
        assert (await harness.answered("ok"))["result"] == "ok fine"


async def test_hold_cancels_running_and_waiting_turns_until_release(tmp_path):
    """Stopping an agent: nothing runs into a runtime that is going away."""
    async with channel_harness(tmp_path) as harness:
        channel = harness.channel
        await channel.submit("long", "c1", True)
        await channel.submit("waiting", "c2", True)
        await harness.started("long")
        first = harness.provider
        await channel.hold("Stopped by the user")
        assert first.closed and first.cancelled == ["long"]  # waited for, then closed
        await channel.submit("while stopped", "c3", True)
        stopped = {"type": "error", "result": "Stopped by the user", "cancelled": True}
        for correlation in ("c1", "c2", "c3"):
            assert await harness.answered(correlation) == stopped
        assert first.calls == ["long"] and len(harness.providers) == 1
        channel.release()
        await channel.submit("after", "c4", True)
        await harness.started("after")
        assert harness.provider is not first  # a fresh provider for the restarted agent
        harness.release("after")
        assert (await harness.answered("c4"))["result"] == "ok after"


async def test_close_answers_the_running_and_queued_turns_and_refuses_more(tmp_path):
    async with opened_store(tmp_path) as store:
        harness = Harness(store)
        channel = harness.channel
        await channel.submit("long", "c1", True)
        await channel.submit("queued", "c2", True)
        await harness.started("long")
        await channel.close()
        shutdown = {"type": "error", "result": SHUTDOWN_MESSAGE, "cancelled": True}
        assert harness.outbox.answers() == {"c1": shutdown, "c2": shutdown}
        assert harness.provider.calls == ["long"] and harness.provider.closed
        with pytest.raises(ProviderError):
            await channel.submit("late", "c3", True)
        assert [m["correlationId"] for m in await store.messages(AGENT)] == ["c1", "c2", "c1", "c2"]


async def test_close_of_an_idle_channel(tmp_path):
    async with opened_store(tmp_path) as store:
        channel = Harness(store).channel
        await channel.close()  # no worker, no provider: nothing to wait for
        with pytest.raises(ProviderError):
            await channel.submit("late", "c", True)


async def test_subscribe_replays_history_then_goes_live(tmp_path):
    async with channel_harness(tmp_path) as harness:
        channel = harness.channel
        for n in range(3):
            await channel.submit(f"m{n}", f"c{n}", True)
            await harness.started(f"m{n}")
            harness.release(f"m{n}")
            await harness.answered(f"c{n}")
        await channel.subscribe("all", None, 0)  # the whole history
        await channel.subscribe("tail", None, 2)  # the last two
        await channel.subscribe("after", 4, 2)  # afterSeq wins over the limit
        assert [m["seq"] for m in harness.outbox.messages("all")] == [1, 2, 3, 4, 5, 6]
        assert [m["seq"] for m in harness.outbox.messages("tail")] == [5, 6]
        assert [m["seq"] for m in harness.outbox.messages("after")] == [5, 6]
        await channel.unsubscribe("tail")
        await channel.submit("live", "live", True)
        await harness.started("live")
        harness.release("live")
        await harness.answered("live")
        assert [m["seq"] for m in harness.outbox.messages("all")] == list(range(1, 9))
        assert [m["seq"] for m in harness.outbox.messages("after")] == [5, 6, 7, 8]
        assert [m["seq"] for m in harness.outbox.messages("tail")] == [5, 6]  # left: no more


@pytest.mark.parametrize("moment", ["on_replay", "on_join"])
async def test_a_login_racing_an_answer_sees_every_message_once_in_order(tmp_path, moment):
    """The answer is stored while the history is being replayed, or just before the socket
    joins the listeners: it must arrive exactly once, after the replay, either way."""
    async with channel_harness(tmp_path) as harness:
        channel = harness.channel
        await channel.submit("old", "c0", True)
        await harness.started("old")
        harness.release("old")
        await harness.answered("c0")
        await channel.submit("racing", "c1", True)
        await harness.started("racing")

        async def answer_now(_: Any) -> None:
            setattr(harness.outbox, moment, None)
            harness.release("racing")  # the turn ends right now
            for _ in range(50):
                await asyncio.sleep(0)  # let it try to store and announce its answer

        setattr(harness.outbox, moment, answer_now)
        await channel.subscribe("late", None, 0)
        await harness.answered("c1")
        assert [m["seq"] for m in harness.outbox.messages("late")] == [1, 2, 3, 4]

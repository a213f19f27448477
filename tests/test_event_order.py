"""The order a manager socket's events run in (manager/ordering.py): per agent, so one
agent's slow event never holds another's on a shared socket, while a chat still never
overtakes its agent's login."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from types import SimpleNamespace

import pytest

from agenstra_jupyter.manager.auth import KeyGate
from agenstra_jupyter.manager.gateway import AgentsNamespace
from agenstra_jupyter.manager.ordering import (
    MAX_BYTES_IN_FLIGHT,
    MAX_EVENTS_IN_FLIGHT,
    InFlight,
    SocketOrder,
)
from agenstra_jupyter.protocol import AgenstraError, ErrorCode, ManagerEvent

from .helpers import AgentsClient


async def run(order: SocketOrder, lane: str | None, gate: asyncio.Event, log: list[str],
              name: str) -> None:
    async with order.turn(lane):
        log.append(f"{name} start")
        await gate.wait()
        log.append(f"{name} end")


async def test_lanes_run_apart_and_a_socket_wide_event_waits_for_all():
    order, log = SocketOrder(), []
    slow, quick, after = asyncio.Event(), asyncio.Event(), asyncio.Event()
    a1 = asyncio.ensure_future(run(order, "a", slow, log, "a1"))
    a2 = asyncio.ensure_future(run(order, "a", quick, log, "a2"))  # behind a1, its lane
    b1 = asyncio.ensure_future(run(order, "b", quick, log, "b1"))  # another lane: not
    wide = asyncio.ensure_future(run(order, None, after, log, "wide"))  # behind all three
    b2 = asyncio.ensure_future(run(order, "b", quick, log, "b2"))  # behind `wide`
    quick.set()
    await b1
    assert log == ["a1 start", "b1 start", "b1 end"]
    slow.set()
    await asyncio.gather(a1, a2)
    await asyncio.sleep(0)
    assert log[3:] == ["a1 end", "a2 start", "a2 end", "wide start"]
    after.set()
    await asyncio.gather(wide, b2)
    assert log[-3:] == ["wide end", "b2 start", "b2 end"]
    assert order.in_flight == 0 and not order._lanes and order._barrier is None


async def test_a_cancelled_event_does_not_stall_its_lane():
    order, log, never = SocketOrder(), [], asyncio.Event()
    first = asyncio.ensure_future(run(order, "a", never, log, "first"))
    waiting = asyncio.ensure_future(run(order, "a", asyncio.Event(), log, "waiting"))
    await asyncio.sleep(0)
    waiting.cancel()  # gave up while it waited: the lane's next event must not wait for it
    third_gate = asyncio.Event()
    third_gate.set()
    third = asyncio.ensure_future(run(order, "a", third_gate, log, "third"))
    await asyncio.sleep(0)
    first.cancel()
    await third
    assert log == ["first start", "third start", "third end"]


async def test_a_socket_floods_no_further_than_the_cap():
    order, gate = SocketOrder(), asyncio.Event()
    held = [asyncio.ensure_future(run(order, "a", gate, [], str(n)))
            for n in range(MAX_EVENTS_IN_FLIGHT)]
    await asyncio.sleep(0)
    with pytest.raises(AgenstraError) as refused:
        async with order.turn("b"):
            pass
    assert refused.value.code == ErrorCode.RATE_LIMITED
    gate.set()
    await asyncio.gather(*held)
    async with order.turn("b"):
        pass


def store_history(manager, agent_id: str, count: int) -> None:
    """`count` stored messages for an agent, written as another process would (WAL)."""
    with sqlite3.connect(manager.data_dir / "manager.sqlite") as db:
        db.executemany(
            "insert into messages (id, agent_id, seq, sender, text, correlation_id, "
            "created_at) values (?, ?, ?, 'user', ?, ?, '2026-01-01T00:00:00.000Z')",
            [(str(uuid.uuid4()), agent_id, n, "x" * 200, f"h{n}") for n in range(1, count + 1)])


async def test_a_long_replay_holds_only_its_own_agent(manager):
    """On one socket: agent `slow` logging in replays a long history; a chat for agent
    `quick` meanwhile is stored and acknowledged before that replay ends, and a chat for
    `slow` sent right behind its login comes after the whole replay, once."""
    quick = await manager.create_agent(name="quick", provider="echo")
    slow = await manager.create_agent(name="slow", provider="echo")
    store_history(manager, slow["id"], 5000)
    client = await AgentsClient().connect(manager)
    await client.login(quick)
    await client.emit(ManagerEvent.LOGIN, {"agentId": slow["id"], "password": slow["password"]})
    behind = asyncio.ensure_future(client.sio.call(
        ManagerEvent.CHAT, {"agentId": slow["id"], "message": "after the replay",
                            "correlationId": "s1"}, namespace="/agents", timeout=60))
    ack = await client.sio.call(ManagerEvent.CHAT, {"agentId": quick["id"], "message": "hi",
                                                    "correlationId": "q1"},
                                namespace="/agents", timeout=60)
    assert ack["ok"]
    replayed = [m for m in client.log.messages() if m["agentId"] == slow["id"]]
    assert len(replayed) < 5000  # acknowledged while the replay was still going
    assert (await behind)["ok"]
    await client.answer_to("s1")
    slow_messages = [m for m in client.log.messages() if m["agentId"] == slow["id"]]
    assert [m["seq"] for m in slow_messages] == list(range(1, 5003))  # in order, once
    assert slow_messages[5000]["correlationId"] == "s1"
    await client.close()


async def test_the_seed_flow_chat_right_behind_its_login(manager):
    """One agent per socket, no agentId on the chat, sent without waiting for the
    loginSuccess: it runs after the login, as before."""
    agent = await manager.create_agent(name="seed", provider="echo")
    client = await AgentsClient().connect(manager)
    await client.emit(ManagerEvent.LOGIN, {"agentName": "seed", "password": agent["password"]})
    await client.emit(ManagerEvent.CHAT, {"message": "at once", "correlationId": "c1"})
    answer = await client.answer_to("c1")
    assert answer["response"]["result"] == "Echo: at once"
    assert client.log.of(ManagerEvent.ERROR) == []
    await client.close()


async def test_what_waiting_events_hold_is_bounded_per_socket_and_in_all():
    total = InFlight(limit=3 * MAX_BYTES_IN_FLIGHT // 2)
    first, second = SocketOrder(total), SocketOrder(total)
    gate = asyncio.Event()

    async def hold(order: SocketOrder, size: int) -> None:
        async with order.turn("a", size):
            await gate.wait()

    held = asyncio.ensure_future(hold(first, MAX_BYTES_IN_FLIGHT))
    await asyncio.sleep(0)
    for order, size in ((first, 1), (second, MAX_BYTES_IN_FLIGHT)):  # this socket; all
        with pytest.raises(AgenstraError) as refused:
            async with order.turn("b", size):
                pass
        assert refused.value.code == ErrorCode.RATE_LIMITED
    gate.set()
    await held
    assert total.bytes == first.bytes == 0
    async with second.turn("b", MAX_BYTES_IN_FLIGHT):
        pass


async def test_a_login_whose_socket_went_meanwhile_leaves_nothing():
    """The socket closed while its password was checked: no login is kept for it."""
    checking = asyncio.Event()
    checked = asyncio.Event()

    class Service:
        outbox = None

        async def authenticate(self, *args):
            checking.set()
            await checked.wait()
            return SimpleNamespace(id="a1", name="a", owner=None)

    namespace = AgentsNamespace(Service(), KeyGate("k", 0), 100, 1024, logging.getLogger())
    namespace._callers["s1"] = await namespace._gate.identify("p", "k")
    login = asyncio.ensure_future(namespace._login("s1", {"agentId": "a1", "password": "x"}))
    await checking.wait()
    await namespace.on_disconnect("s1")
    checked.set()
    await login
    assert namespace._logged_in == {} and namespace._callers == {}


async def test_the_manager_reads_no_frame_larger_than_a_chat_needs(manager):
    """Events now wait in lanes while the socket is read on: a frame far over what a chat
    may carry (max_message_bytes, 256 KiB here) drops its socket, not just the event; a chat
    over the limit but within the frame is refused, and the socket stays."""
    agent = await manager.create_agent(name="big", provider="echo")
    attacker = await AgentsClient().connect(manager)
    await attacker.login(agent)
    refused = await attacker.sio.call(ManagerEvent.CHAT, {"message": "y" * 300_000},
                                      namespace="/agents", timeout=30)
    assert refused["error"]["code"] == ErrorCode.PAYLOAD_TOO_LARGE
    await attacker.emit(ManagerEvent.CHAT, {"message": "z" * (2 * 1024 * 1024)})
    for _ in range(300):
        if not attacker.sio.connected:
            break
        await asyncio.sleep(0.05)
    assert not attacker.sio.connected, "an oversize frame did not drop its socket"
    bystander = await AgentsClient().connect(manager)
    await bystander.login(agent)
    assert (await bystander.chat("still here"))["response"]["result"] == "Echo: still here"
    await bystander.close()

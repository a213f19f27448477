"""ManagerLink and Backoff alone: the link's Socket.IO client replaced by a scripted fake.

`FakeManager` plays the manager's side (up or down, login answers, acks, history) and each
link's client is a `FakeSocket` bound to it, so drops, refusals and reconnects happen
exactly when a test says, with no server and no sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import random
from types import SimpleNamespace
from typing import Any

import pytest
import socketio

from agenstra_jupyter.controller import links
from agenstra_jupyter.controller.links import Backoff, ConnectionPool, ManagerLink
from agenstra_jupyter.protocol import AgenstraError, ControllerEvent, ErrorCode, ManagerEvent

LOG = logging.getLogger("test_links")
FAST = Backoff(0.001, 0.002)


def chat_message(seq: int, sender: str = "agent", agent: str = "a1") -> dict[str, Any]:
    return {"id": f"m{seq}", "seq": seq, "agentId": agent, "from": sender,
            "correlationId": f"c{seq}", "timestamp": "t"}


class FakeManager:
    """The far side of every FakeSocket: what a manager would answer."""

    def __init__(self) -> None:
        self.up = True
        self.password = "pw"  # the one it accepts
        self.history: list[dict[str, Any]] = []
        self.emitted: list[tuple[str, Any]] = []
        self.connects: list[dict[str, Any]] = []
        self.acks: list[Any] = []  # what the next chat calls answer (default {ok: True})
        self.hang_calls = False
        self.login_gate: asyncio.Event | None = None  # logins wait for it when set
        self.sockets: list[FakeSocket] = []

    @property
    def socket(self) -> FakeSocket:
        return self.sockets[-1]

    def logins(self) -> list[dict[str, Any]]:
        return [p for e, p in self.emitted if e == ManagerEvent.LOGIN]


class FakeSocket:
    """Stands in for socketio.AsyncClient inside ManagerLink."""

    manager: FakeManager  # set by the fixture

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.handler: Any = None
        self.connected = False
        self._gone = asyncio.Event()
        self.eio = SimpleNamespace(disconnect=self._abort)
        self.manager.sockets.append(self)

    def handling(self) -> bool:
        return False  # the fake delivers from the test's own task

    def on(self, event: str, handler: Any, namespace: str | None = None) -> None:
        assert event == "*" and namespace == "/agents"
        self.handler = handler

    async def connect(self, url: str, **kwargs: Any) -> None:
        self.manager.connects.append({"url": url, **kwargs})
        if not self.manager.up:
            raise socketio.exceptions.ConnectionError("refused")
        self.connected = True
        self._gone.clear()

    async def emit(self, event: str, data: Any = None, namespace: str | None = None,
                   callback: Any = None) -> None:
        if callback is not None:  # acknowledged, as python-socketio calls it back
            await self._acknowledged(event, data, callback)
            return
        assert self.connected
        self.manager.emitted.append((event, data))
        if event == ManagerEvent.LOGIN:
            asyncio.get_running_loop().create_task(self._answer_login(data))

    async def _answer_login(self, request: dict[str, Any]) -> None:
        if request["password"] != self.manager.password:
            await self.from_manager(ManagerEvent.LOGIN_ERROR, {"message": "Invalid credentials",
                                                              "code": "LOGIN_FAILED"})
            return
        await self.from_manager(ManagerEvent.LOGIN_SUCCESS, {"agentId": request["agentId"]})
        for message in self.manager.history:
            if message["agentId"] == request["agentId"] and \
                    message["seq"] > (request.get("afterSeq") or 0):
                await self.from_manager(ManagerEvent.CHAT_MESSAGE, message)

    async def _acknowledged(self, event: str, data: Any, callback: Any) -> None:
        self.manager.emitted.append((event, data))
        answer = self.manager.acks[0] if self.manager.acks else {"ok": True}
        if event != ManagerEvent.LOGIN and isinstance(answer, Exception):  # the emit fails
            self.manager.acks.pop(0)
            raise answer
        asyncio.get_running_loop().create_task(self._ack(event, data, callback))

    async def _ack(self, event: str, data: Any, callback: Any) -> None:
        if event == ManagerEvent.LOGIN:  # acknowledged once its history is out
            if self.manager.login_gate is not None:
                await self.manager.login_gate.wait()
            await self._answer_login(data)
            callback()
            return
        if self.manager.hang_calls:
            return  # never acknowledged
        callback(self.manager.acks.pop(0) if self.manager.acks else {"ok": True})

    async def wait(self) -> None:
        await self._gone.wait()

    async def disconnect(self) -> None:
        self.drop()

    async def _abort(self, abort: bool = False) -> None:
        self.drop()

    def drop(self) -> None:
        """The connection ends (the manager died, the network went)."""
        self.connected = False
        self._gone.set()

    async def from_manager(self, event: str, payload: Any) -> None:
        await self.handler(event, payload)


class FakeRegistry:
    def __init__(self) -> None:
        self.clients = {"m1": SimpleNamespace(endpoint="http://manager:1", api_key="key-1")}
        self.passwords = {("m1", "a1"): "pw", ("m1", "a2"): "pw"}

    async def get_client(self, client_id: str) -> Any:
        return self.clients.get(client_id)

    async def password(self, client_id: str, agent_id: str) -> str | None:
        return self.passwords.get((client_id, agent_id))


class Frontend:
    """What the link delivered to its frontend socket, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def deliver(self, event: str, payload: dict[str, Any]) -> None:
        self.events.append((event, payload))

    def names(self) -> list[str]:
        return [e if e != ControllerEvent.FORWARDED_EVENT else p["event"]
                for e, p in self.events]

    def seqs(self) -> list[int]:
        return [p["payload"]["seq"] for e, p in self.events
                if e == ControllerEvent.FORWARDED_EVENT and p["event"] == ManagerEvent.CHAT_MESSAGE]

    async def until(self, predicate: Any) -> None:
        async def poll() -> None:
            while not predicate(self):
                await asyncio.sleep(0)

        await asyncio.wait_for(poll(), 5)


@pytest.fixture
def manager(monkeypatch) -> FakeManager:
    fake = FakeManager()
    FakeSocket.manager = fake
    monkeypatch.setattr(links, "InlineClient", FakeSocket)
    return fake


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


def make_link(registry: FakeRegistry, frontend: Frontend, client_id: str = "m1") -> ManagerLink:
    return ManagerLink(client_id, "a1", registry, frontend.deliver, FAST, LOG)


async def test_open_connects_with_the_key_and_login_replays_after_seq(manager, registry):
    manager.history = [chat_message(n) for n in (1, 2, 3, 4)]
    frontend = Frontend()
    link = make_link(registry, frontend)
    await link.open()
    assert link.connected
    (connect,) = manager.connects
    assert connect["url"] == "http://manager:1" and connect["auth"] == {"apiKey": "key-1"}
    assert connect["namespaces"] == ["/agents"]
    await link.login(2)
    assert manager.logins() == [{"agentId": "a1", "password": "pw", "afterSeq": 2}]
    await frontend.until(lambda f: f.seqs() == [3, 4])
    first = frontend.events[0]
    assert first == (ControllerEvent.FORWARDED_EVENT, {
        "event": ManagerEvent.LOGIN_SUCCESS, "payload": {"agentId": "a1"},
        "clientId": "m1", "agentId": "a1"})
    assert link.wanted and link.last_seq == 4
    await link.close()


async def test_a_refused_login_and_missing_credentials(manager, registry):
    frontend = Frontend()
    link = make_link(registry, frontend)
    await link.open()
    manager.password = "changed"
    with pytest.raises(AgenstraError) as refused:
        await link.login(None)
    assert refused.value.code == ErrorCode.LOGIN_FAILED
    assert refused.value.message == "Invalid credentials"
    assert link.wanted is False  # a refused login is not retried at reconnect
    del registry.passwords[("m1", "a1")]
    with pytest.raises(AgenstraError) as missing:
        await link.login(None)
    assert missing.value.code == ErrorCode.NO_CREDENTIALS
    assert len(manager.logins()) == 1  # nothing sent without a password
    await link.close()


async def test_messages_at_or_below_the_last_seq_are_never_forwarded_twice(manager, registry):
    manager.history = [chat_message(n) for n in (1, 2, 3)]
    frontend = Frontend()
    link = make_link(registry, frontend)
    await link.open()
    await link.login(None)
    await frontend.until(lambda f: f.seqs() == [1, 2, 3])
    for seq in (2, 3, 4, 4, 1, 5):  # replays and repeats from the manager
        await manager.socket.from_manager(ManagerEvent.CHAT_MESSAGE, chat_message(seq))
    assert frontend.seqs() == [1, 2, 3, 4, 5]
    # Events without a seq (transient chat events) pass through untouched.
    await manager.socket.from_manager(ManagerEvent.CHAT_EVENT, {"kind": "status"})
    assert frontend.names()[-1] == ManagerEvent.CHAT_EVENT
    await link.close()


async def test_a_drop_reconnects_and_is_ready_only_once_logged_in_again(manager, registry):
    manager.history = [chat_message(n) for n in (1, 2)]
    frontend = Frontend()
    link = make_link(registry, frontend)
    await link.open()
    await link.login(None)
    await frontend.until(lambda f: f.seqs() == [1, 2])
    manager.up = False
    manager.socket.drop()
    await frontend.until(lambda f: ControllerEvent.REMOTE_RECONNECTING in f.names())
    assert not link.connected
    with pytest.raises(AgenstraError) as away:
        await link.send(ManagerEvent.CHAT, {"message": "hi", "correlationId": "x"})
    assert away.value.code == ErrorCode.REMOTE_UNAVAILABLE
    manager.history.append(chat_message(3))  # answered while the link was down
    manager.up = True
    await frontend.until(lambda f: ControllerEvent.REMOTE_RECONNECTED in f.names())
    assert link.connected
    # Logged in again after the last seq it forwarded: the missed message, no repeat.
    assert manager.logins()[-1] == {"agentId": "a1", "password": "pw", "afterSeq": 2}
    assert frontend.seqs() == [1, 2, 3]
    names = frontend.names()
    tail = names[names.index(ControllerEvent.REMOTE_DISCONNECTED):]
    tail = [n for n in tail if n != ControllerEvent.REMOTE_RECONNECTING]
    assert tail == [ControllerEvent.REMOTE_DISCONNECTED, ManagerEvent.LOGIN_SUCCESS,
                    ManagerEvent.CHAT_MESSAGE, ControllerEvent.REMOTE_RECONNECTED]
    attempts = [p["attempt"] for e, p in frontend.events
                if e == ControllerEvent.REMOTE_RECONNECTING]
    assert attempts == list(range(1, len(attempts) + 1))
    await link.close()


async def test_a_first_attempt_that_fails_returns_and_keeps_retrying(manager, registry):
    manager.up = False
    frontend = Frontend()
    link = make_link(registry, frontend)
    await link.open()  # returns after the first attempt, failed or not
    assert not link.connected
    assert frontend.events[0] == (ControllerEvent.REMOTE_RECONNECTING,
                                  {"clientId": "m1", "attempt": 1})
    with pytest.raises(AgenstraError) as away:
        await link.login(None)
    assert away.value.code == ErrorCode.REMOTE_UNAVAILABLE
    assert link.wanted  # ... and the login happens as soon as the manager is back
    manager.up = True
    await frontend.until(lambda f: ManagerEvent.LOGIN_SUCCESS in f.names())
    await frontend.until(lambda f: ControllerEvent.REMOTE_RECONNECTED in f.names())
    assert manager.logins() == [{"agentId": "a1", "password": "pw", "afterSeq": 0}]
    await link.close()


async def test_an_unknown_client_never_connects(manager, registry):
    frontend = Frontend()
    link = make_link(registry, frontend, client_id="deleted")
    await link.open()
    assert not link.connected and manager.connects == []
    await link.close()


async def test_chat_acks_carry_the_managers_code(manager, registry):
    frontend = Frontend()
    link = make_link(registry, frontend)
    await link.open()
    await link.login(None)
    chat = {"message": "hi", "correlationId": "c"}
    await link.send(ManagerEvent.CHAT, chat)  # {ok: true}
    manager.acks = [
        {"ok": False, "error": {"code": ErrorCode.NOT_LOGGED_IN, "message": "Log in first"}},
        {"ok": False, "error": {"code": ErrorCode.PAYLOAD_TOO_LARGE, "message": "big"}},
        {"ok": False},  # an older manager: no code
        "garbage",
        socketio.exceptions.TimeoutError(),  # no ack in time
    ]
    codes = []
    for _ in range(5):
        with pytest.raises(AgenstraError) as refused:
            await link.send(ManagerEvent.CHAT, chat)
        codes.append(refused.value.code)
    assert codes == [ErrorCode.NOT_LOGGED_IN, ErrorCode.PAYLOAD_TOO_LARGE,
                     ErrorCode.INVALID_PAYLOAD, ErrorCode.INVALID_PAYLOAD,
                     ErrorCode.REMOTE_UNAVAILABLE]
    # Other events are emitted without waiting for an ack; every request names its agent
    # (the socket is the manager's, shared by every link to it).
    await link.send(ManagerEvent.CANCEL, {"correlationId": "c"})
    assert manager.emitted[-1] == (ManagerEvent.CANCEL, {"correlationId": "c", "agentId": "a1"})
    assert {p["agentId"] for e, p in manager.emitted if e == ManagerEvent.CHAT} == {"a1"}
    await link.close()


async def test_a_chat_in_flight_fails_at_once_when_the_link_drops(manager, registry):
    frontend = Frontend()
    link = make_link(registry, frontend)
    await link.open()
    manager.hang_calls = True  # the manager never acknowledges
    sending = asyncio.ensure_future(link.send(ManagerEvent.CHAT, {"message": "hi",
                                                                  "correlationId": "c"}))
    while not manager.emitted:
        await asyncio.sleep(0)
    manager.up = False
    manager.socket.drop()
    with pytest.raises(AgenstraError) as dropped:
        await asyncio.wait_for(sending, 5)  # not after ACK_TIMEOUT (30 s)
    assert dropped.value.code == ErrorCode.REMOTE_UNAVAILABLE
    await link.close()


async def test_close_stops_the_link_for_good(manager, registry):
    frontend = Frontend()
    link = make_link(registry, frontend)
    await link.open()
    await link.close()
    assert not link.connected and not manager.socket.connected
    delivered = len(frontend.events)
    manager.up = True
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(manager.connects) == 1 and len(frontend.events) == delivered
    # Closing says nothing to the frontend: it is the one that went away.
    assert ControllerEvent.REMOTE_DISCONNECTED not in frontend.names()


# -- one socket per manager ------------------------------------------------------------------


def pooled(registry: FakeRegistry, pool: ConnectionPool,
           agent: str) -> tuple[ManagerLink, Frontend]:
    frontend = Frontend()
    return ManagerLink("m1", agent, registry, frontend.deliver, FAST, LOG, pool=pool), frontend


async def test_the_links_to_one_manager_share_its_socket_and_keep_agents_apart(manager,
                                                                              registry):
    pool = ConnectionPool(registry, FAST, LOG)
    one, first = pooled(registry, pool, "a1")
    two, second = pooled(registry, pool, "a2")
    await one.open()
    await two.open()
    assert len(manager.sockets) == 1 and len(pool) == 1
    await one.login(None)
    await two.login(None)
    await manager.socket.from_manager(ManagerEvent.CHAT_MESSAGE, chat_message(7, agent="a2"))
    assert first.seqs() == [] and second.seqs() == [7]
    # An event naming no agent (an `error`) is nobody's on a socket holding two agents.
    await manager.socket.from_manager(ManagerEvent.ERROR, {"code": "X", "message": "?"})
    assert ManagerEvent.ERROR not in first.names() + second.names()
    assert [e for e in first.names() if e == ManagerEvent.LOGIN_SUCCESS] == [
        ManagerEvent.LOGIN_SUCCESS]  # its own welcome only, not the other agent's
    await one.close()  # nobody wants a1 here any more: logged out upstream
    assert manager.emitted[-1] == (ManagerEvent.LOGOUT, {"agentId": "a1"})
    assert manager.socket.connected
    await two.close()
    assert not manager.socket.connected and len(pool) == 0


async def test_a_second_frontend_of_an_agent_gets_its_history_and_the_first_loses_nothing(
        manager, registry):
    manager.history = [chat_message(n) for n in (1, 2, 3)]
    pool = ConnectionPool(registry, FAST, LOG)
    one, first = pooled(registry, pool, "a1")
    await one.open()
    await one.login(None)
    await first.until(lambda f: f.seqs() == [1, 2, 3])
    manager.history.append(chat_message(4))
    await manager.socket.from_manager(ManagerEvent.CHAT_MESSAGE, chat_message(4))
    two, second = pooled(registry, pool, "a1")
    await two.open()
    await two.login(2)
    # Logged in again after the lower position: the second gets 3 and 4, the first no repeat.
    assert manager.logins()[-1]["afterSeq"] == 2
    await second.until(lambda f: f.seqs() == [3, 4])
    assert first.seqs() == [1, 2, 3, 4]
    assert first.names().count(ManagerEvent.LOGIN_SUCCESS) == 1
    await manager.socket.from_manager(ManagerEvent.CHAT_MESSAGE, chat_message(5))
    assert first.seqs()[-1] == second.seqs()[-1] == 5
    # One logs out: the other keeps the agent, and nothing is sent upstream.
    sent = len(manager.emitted)
    await two.send(ManagerEvent.LOGOUT, {})
    assert second.names()[-1] == ManagerEvent.LOGOUT_SUCCESS and len(manager.emitted) == sent
    two.logged_out()
    await manager.socket.from_manager(ManagerEvent.CHAT_MESSAGE, chat_message(6))
    assert first.seqs()[-1] == 6 and second.seqs()[-1] == 5
    await one.close()
    await two.close()


async def test_a_link_waiting_its_turn_to_log_in_takes_no_live_traffic(manager, registry):
    """Else live messages would move its position past the history it is about to get."""
    manager.history = [chat_message(n) for n in (1, 2, 3)]
    pool = ConnectionPool(registry, FAST, LOG)
    one, first = pooled(registry, pool, "a1")
    busy, _ = pooled(registry, pool, "a2")
    two, second = pooled(registry, pool, "a1")
    for link in (one, busy, two):
        await link.open()
    await one.login(None)
    manager.login_gate = asyncio.Event()
    other_login = asyncio.ensure_future(busy.login(None))  # holds the socket's login turn
    joining = asyncio.ensure_future(two.login(0))
    await asyncio.sleep(0)
    manager.history.append(chat_message(4))
    await manager.socket.from_manager(ManagerEvent.CHAT_MESSAGE, chat_message(4))
    assert first.seqs() == [1, 2, 3, 4] and second.seqs() == []
    manager.login_gate.set()
    await other_login
    await joining
    assert second.seqs() == [1, 2, 3, 4]
    for link in (one, busy, two):
        await link.close()


async def test_a_reconnect_logs_each_wanted_agent_in_once(manager, registry):
    pool = ConnectionPool(registry, FAST, LOG)
    links = [pooled(registry, pool, agent) for agent in ("a1", "a1", "a2")]
    for link, _ in links:
        await link.open()
        await link.login(None)
    before = len(manager.logins())
    manager.socket.drop()
    await links[0][1].until(lambda f: ControllerEvent.REMOTE_RECONNECTED in f.names())
    assert sorted(p["agentId"] for p in manager.logins()[before:]) == ["a1", "a2"]
    for _, frontend in links:
        await frontend.until(lambda f: ControllerEvent.REMOTE_RECONNECTED in f.names())
    for link, _ in links:
        await link.close()


# -- Backoff -------------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_maximum_with_jitter_below_the_ceiling():
    backoff = Backoff(0.5, 10.0)
    chance = random.Random(13)
    for attempt in range(0, 40):
        ceiling = min(10.0, 0.5 * 2**attempt)
        for _ in range(20):
            random.seed(chance.random())
            assert ceiling / 2 <= backoff.delay(attempt) <= ceiling
    assert [min(10.0, 0.5 * 2**a) for a in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_backoff_bounds_exactly(monkeypatch):
    bounds: list[tuple[float, float]] = []
    monkeypatch.setattr(links.random, "uniform", lambda a, b: bounds.append((a, b)) or b)
    backoff = Backoff(0.5, 10.0)
    assert [backoff.delay(a) for a in (0, 1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert bounds[:3] == [(0.25, 0.5), (0.5, 1.0), (1.0, 2.0)]


def test_backoff_never_overflows_or_exceeds_its_maximum():
    backoff = Backoff(0.5, 10.0)
    for attempt in (31, 64, 1000, 10**9):
        assert 5.0 <= backoff.delay(attempt) <= 10.0


def test_backoff_spreads_retries():
    random.seed(7)
    delays = {Backoff(1.0, 8.0).delay(10) for _ in range(50)}
    assert len(delays) > 40  # jittered: a crowd of links does not retry in step

"""The `/agents` namespace of a real manager, through real Socket.IO clients."""

from __future__ import annotations

import pytest
import socketio

from agenstra_jupyter.protocol import (
    LOGIN_ERROR_MESSAGE,
    ChatEventKind,
    ErrorCode,
    ManagerEvent,
)

from .helpers import AgentsClient, assert_seq_complete


async def logged_in(manager, agent, after_seq=None) -> AgentsClient:
    client = await AgentsClient().connect(manager)
    await client.login(agent, after_seq)
    return client


async def test_connect_needs_the_api_key(manager):
    for key in ["", "wrong-key", manager.api_key + "x"]:
        client = AgentsClient()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(manager, api_key=key)
        assert client.log.of("connect_error") == [{"message": "Unauthorized"}]
    # The Authorization header works as well as the auth dict.
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(
        manager.url,
        namespaces=["/agents"],
        transports=["websocket"],
        headers={"Authorization": f"Bearer {manager.api_key}"},
    )
    assert sio.connected
    await sio.disconnect()


async def test_login_by_id_and_by_name_then_chat_in_order(manager):
    agent = await manager.create_agent(name="echo1", provider="echo")
    client = await AgentsClient().connect(manager)
    success = await client.login(agent)
    assert success == {"message": "Welcome, echo1!", "agentId": agent["id"], "agentName": "echo1"}

    answer = await client.chat("hello there", correlationId="c1")
    assert answer["response"] == {
        "type": "text",
        "result": "Echo: hello there",
        "parts": [],  # structured activity only: the text is stored once, as result
    }
    # user message (persisted), then the streamed events, then the agent message
    names = [name for name, _ in client.log.events if name != ManagerEvent.LOGIN_SUCCESS]
    assert names[0] == ManagerEvent.CHAT_MESSAGE and names[-1] == ManagerEvent.CHAT_MESSAGE
    assert set(names[1:-1]) == {ManagerEvent.CHAT_EVENT}
    user, agent_message = client.log.messages()
    assert user["from"] == "user" and user["text"] == "hello there"
    assert user["correlationId"] == agent_message["correlationId"] == "c1"
    assert_seq_complete([user, agent_message])
    events = client.log.of(ManagerEvent.CHAT_EVENT)
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["kind"] == ChatEventKind.ASSISTANT_DELTA for e in events)
    assert "".join(e["payload"]["delta"] for e in events) == "Echo: hello there"

    other = AgentsClient()
    await other.connect(manager)
    await other.emit(ManagerEvent.LOGIN, {"agentName": "echo1", "password": agent["password"]})
    await other.log.wait_count(ManagerEvent.LOGIN_SUCCESS, 1)
    await client.close()
    await other.close()


async def test_every_login_failure_looks_the_same(manager):
    agent = await manager.create_agent(name="a", provider="echo")
    attempts = [
        {"agentId": agent["id"], "password": "wrong"},
        {"agentName": "a", "password": agent["password"] + "x"},
        {"agentName": "nobody", "password": agent["password"]},
        {"agentId": "00000000-0000-0000-0000-000000000000", "password": agent["password"]},
        {"agentId": agent["id"], "agentName": "other", "password": agent["password"]},
        {"agentId": agent["id"], "password": "x" * 200},
    ]
    client = await AgentsClient().connect(manager)
    for attempt in attempts:
        await client.emit(ManagerEvent.LOGIN, attempt)
    errors = await client.log.wait_count(ManagerEvent.LOGIN_ERROR, len(attempts))
    assert errors == [{"message": LOGIN_ERROR_MESSAGE, "code": ErrorCode.LOGIN_FAILED}] * 6
    assert not client.log.of(ManagerEvent.LOGIN_SUCCESS)
    await client.emit(ManagerEvent.CHAT, {"message": "hi"})
    assert (await client.error())["code"] == ErrorCode.NOT_LOGGED_IN
    await client.close()


async def test_history_is_replayed_in_full_or_after_a_seq(manager):
    agent = await manager.create_agent(name="hist", provider="echo")
    first = await logged_in(manager, agent)
    for n in range(3):
        await first.chat(f"m{n}", stream=False)
    await first.close()

    full = await logged_in(manager, agent)
    history = await full.log.wait_count(ManagerEvent.CHAT_MESSAGE, 6)
    assert_seq_complete(history)
    assert [m.get("text") for m in history[::2]] == ["m0", "m1", "m2"]
    assert history == first.log.messages()  # the same ids, texts and timestamps

    partial = await logged_in(manager, agent, after_seq=4)
    replayed = await partial.log.wait_count(ManagerEvent.CHAT_MESSAGE, 2)
    assert [m["seq"] for m in replayed] == [5, 6]
    # Nothing else comes: a new turn's messages follow directly with seq 7 and 8.
    await partial.chat("next", stream=False)
    assert [m["seq"] for m in partial.log.messages()] == [5, 6, 7, 8]
    await full.close()
    await partial.close()


async def test_history_limit_replays_only_the_last_messages(start_manager):
    manager = start_manager(args=["--history-limit", "2"])
    agent = await manager.create_agent(name="lim", provider="echo")
    client = await logged_in(manager, agent)
    await client.chat("a", stream=False)
    await client.chat("b", stream=False)
    later = await logged_in(manager, agent)
    await later.chat("sentinel", stream=False)  # anything replayed too much comes before it
    assert [m["seq"] for m in later.log.messages()] == [3, 4, 5, 6]
    again = await logged_in(manager, agent, after_seq=0)  # afterSeq wins over the limit
    await again.log.wait_count(ManagerEvent.CHAT_MESSAGE, 4)
    for c in (client, later, again):
        await c.close()


async def test_two_sockets_both_receive_the_agents_traffic(manager):
    agent = await manager.create_agent(name="shared", provider="echo")
    alice = await logged_in(manager, agent)
    bob = await logged_in(manager, agent)
    await alice.chat("from alice")
    answer = await bob.answer_to(alice.log.messages()[0]["correlationId"])
    assert answer["response"]["result"] == "Echo: from alice"
    assert alice.log.messages() == bob.log.messages()
    assert bob.log.of(ManagerEvent.CHAT_EVENT) == alice.log.of(ManagerEvent.CHAT_EVENT)
    await alice.close()
    await bob.close()


async def test_concurrent_chats_are_queued_and_answered_in_order(manager):
    agent = await manager.create_agent(name="q", provider="echo", config={"delay": 0.2})
    client = await logged_in(manager, agent)
    for n in range(4):
        await client.emit(ManagerEvent.CHAT, {"message": f"n{n}", "correlationId": f"k{n}"})
    await client.answer_to("k3")
    answers = client.log.answers()
    assert [a["correlationId"] for a in answers] == ["k0", "k1", "k2", "k3"]
    assert [a["response"]["result"] for a in answers] == [f"Echo: n{n}" for n in range(4)]
    messages = client.log.messages()
    assert_seq_complete(messages)
    # No turn's events overlap another's: deltas arrive grouped by turn, in order.
    turns = [e["correlationId"] for e in client.log.of(ManagerEvent.CHAT_EVENT)]
    assert turns == sorted(turns)
    await client.close()


async def test_cancel_stops_the_running_turn_and_the_next_one_runs(manager):
    agent = await manager.create_agent(name="slow", provider="echo", config={"delay": 30})
    client = await logged_in(manager, agent)
    await client.emit(ManagerEvent.CHAT, {"message": "long", "correlationId": "run"})
    await client.emit(ManagerEvent.CHAT, {"message": "queued", "correlationId": "queued"})
    await client.log.wait_for(lambda log: log.of(ManagerEvent.CHAT_EVENT))
    await client.emit(ManagerEvent.CANCEL, {"correlationId": "queued"})
    await client.emit(ManagerEvent.CANCEL, {})
    cancelled = await client.answer_to("run", timeout=5)
    assert cancelled["response"]["type"] == "error"
    assert cancelled["response"]["result"] == "Cancelled"
    skipped = await client.answer_to("queued", timeout=5)
    assert skipped["response"]["result"] == "Cancelled"
    assert_seq_complete(client.log.messages())
    await client.close()


async def test_cancelled_turn_is_followed_by_a_normal_one(manager):
    agent = await manager.create_agent(name="sh", provider="shell")
    client = await logged_in(manager, agent)
    await client.emit(ManagerEvent.CHAT, {"message": "sleep 30", "correlationId": "s"})
    await client.log.wait_for(lambda log: log.of(ManagerEvent.CHAT_EVENT))
    await client.emit(ManagerEvent.CANCEL, {"correlationId": "s"})
    assert (await client.answer_to("s", timeout=5))["response"]["result"] == "Cancelled"
    answer = await client.chat("echo after")
    assert answer["response"]["type"] == "text"
    assert answer["response"]["result"] == "after\n[exit code 0]"
    await client.close()


async def test_logout_stops_the_traffic(manager):
    agent = await manager.create_agent(name="lo", provider="echo")
    watcher = await logged_in(manager, agent)
    talker = await logged_in(manager, agent)
    await watcher.emit(ManagerEvent.LOGOUT, {})
    assert (await watcher.log.wait_count(ManagerEvent.LOGOUT_SUCCESS, 1)) == [
        {"agentId": agent["id"]}
    ]
    await talker.chat("after logout")
    # The sentinel: a request of the watcher's own, answered after that turn was announced;
    # had the turn reached the watcher, it would have come before this answer.
    await watcher.emit(ManagerEvent.LOGOUT, {})
    assert (await watcher.error())["code"] == ErrorCode.NOT_LOGGED_IN
    after_logout = watcher.log.events[watcher.log.events.index(
        (ManagerEvent.LOGOUT_SUCCESS, {"agentId": agent["id"]})) + 1:]
    assert [name for name, _ in after_logout] == [ManagerEvent.ERROR]
    assert watcher.log.messages() == []
    await watcher.close()
    await talker.close()


@pytest.mark.parametrize(
    ("event", "payload", "code"),
    [
        (ManagerEvent.LOGIN, None, ErrorCode.INVALID_PAYLOAD),
        (ManagerEvent.LOGIN, "not an object", ErrorCode.INVALID_PAYLOAD),
        (ManagerEvent.LOGIN, {"password": "p"}, ErrorCode.INVALID_PAYLOAD),
        (ManagerEvent.LOGIN, {"agentName": "a"}, ErrorCode.INVALID_PAYLOAD),
        (ManagerEvent.LOGIN, {"agentName": 5, "password": "p"}, ErrorCode.INVALID_PAYLOAD),
        (
            ManagerEvent.LOGIN,
            {"agentName": "a", "password": "p", "afterSeq": -1},
            ErrorCode.INVALID_PAYLOAD,
        ),
        (
            ManagerEvent.LOGIN,
            {"agentName": "a", "password": "p", "afterSeq": "3"},
            ErrorCode.INVALID_PAYLOAD,
        ),
        (
            ManagerEvent.LOGIN,
            {"agentName": "a", "password": "p", "afterSeq": 2**63},
            ErrorCode.INVALID_PAYLOAD,
        ),
        (
            ManagerEvent.LOGIN,
            {"agentName": "a", "password": "p", "afterSeq": 10**22},
            ErrorCode.INVALID_PAYLOAD,
        ),
        (ManagerEvent.CHAT, {"message": "hi"}, ErrorCode.NOT_LOGGED_IN),
        (ManagerEvent.CHAT, {}, ErrorCode.INVALID_PAYLOAD),
        (ManagerEvent.CHAT, {"message": ["list"]}, ErrorCode.INVALID_PAYLOAD),
        (ManagerEvent.CHAT, {"message": ""}, ErrorCode.INVALID_PAYLOAD),
        (ManagerEvent.CHAT, {"message": "hi", "stream": "yes"}, ErrorCode.INVALID_PAYLOAD),
        (ManagerEvent.CANCEL, {"correlationId": 7}, ErrorCode.INVALID_PAYLOAD),
        (ManagerEvent.CANCEL, {}, ErrorCode.NOT_LOGGED_IN),
        (ManagerEvent.LOGOUT, [], ErrorCode.INVALID_PAYLOAD),
        ("deleteEverything", {}, ErrorCode.UNKNOWN_EVENT),
    ],
)
async def test_malformed_input_gets_an_error_and_changes_nothing(manager, event, payload, code):
    client = await AgentsClient().connect(manager)
    await client.emit(event, payload)
    error = await client.error()
    assert error["code"] == code and error["message"]
    async with manager.http() as http:
        assert (await http.get("/api/health")).json()["status"] == "ok"
    await client.close()


async def test_malformed_input_while_logged_in_changes_nothing(manager):
    agent = await manager.create_agent(name="m", provider="echo")
    client = await logged_in(manager, agent)
    await client.emit(ManagerEvent.CHAT, {"message": 42})
    await client.emit(ManagerEvent.CHAT, {"message": "x" * (256 * 1024 + 1)})
    errors = await client.log.wait_count(ManagerEvent.ERROR, 2)
    assert [e["code"] for e in errors] == [ErrorCode.INVALID_PAYLOAD, ErrorCode.PAYLOAD_TOO_LARGE]
    assert client.log.messages() == []
    async with manager.http() as http:
        assert (await http.get(f"/api/agents/{agent['id']}/messages")).json() == []
    # still logged in and working
    assert (await client.chat("fine"))["response"]["result"] == "Echo: fine"
    await client.close()


async def test_a_failing_turn_answers_with_an_error(manager):
    agent = await manager.create_agent(name="t", provider="shell", config={"timeout": 0.5})
    client = await logged_in(manager, agent)
    answer = await client.chat("sleep 5")
    assert answer["response"] == {
        "type": "error",
        "result": "The command timed out and was stopped",
    }
    failed = await client.chat("exit 3")
    assert failed["response"]["type"] == "text"
    assert failed["response"]["exitCode"] == 3
    await client.close()


async def test_one_socket_logged_into_several_agents_keeps_them_apart(manager):
    """DESIGN.md "One manager socket, several agents": requests name their agent by
    agentId (needed once the socket holds two), every event names its agent."""
    first = await manager.create_agent(name="multi1", provider="echo")
    second = await manager.create_agent(name="multi2", provider="echo")
    client = await logged_in(manager, first)
    await client.chat("before", correlationId="m0")  # one agent: agentId may be left out
    await client.login(second)
    await client.emit(ManagerEvent.CHAT, {"message": "whose?", "correlationId": "m1"})
    error = await client.error()
    assert error["code"] == ErrorCode.INVALID_PAYLOAD and "agentId" in error["message"]
    one = await client.chat("to one", correlationId="m2", agentId=first["id"])
    two = await client.chat("to two", correlationId="m3", agentId=second["id"])
    assert one["agentId"] == first["id"] and one["response"]["result"] == "Echo: to one"
    assert two["agentId"] == second["id"] and two["response"]["result"] == "Echo: to two"
    for message in client.log.messages():  # each agent's history and turns, its own name
        assert message["agentId"] == (second["id"] if message["correlationId"] == "m3"
                                      else first["id"])
    assert {e["agentId"] for e in client.log.of(ManagerEvent.CHAT_EVENT)
            if e["correlationId"] == "m3"} == {second["id"]}
    # An agent not logged into is refused; logging out of one leaves the other.
    stranger = await manager.create_agent(name="multi3", provider="echo")
    errors = len(client.log.of(ManagerEvent.ERROR))
    await client.emit(ManagerEvent.CHAT, {"message": "x", "agentId": stranger["id"]})
    await client.log.wait_count(ManagerEvent.ERROR, errors + 1)
    assert client.log.of(ManagerEvent.ERROR)[-1]["code"] == ErrorCode.NOT_LOGGED_IN
    await client.emit(ManagerEvent.LOGOUT, {"agentId": first["id"]})
    assert (await client.log.wait_count(ManagerEvent.LOGOUT_SUCCESS, 1))[-1] == {
        "agentId": first["id"]}
    again = await client.chat("only two now", correlationId="m4")
    assert again["agentId"] == second["id"]
    # Logging in again to an agent replays its history after afterSeq, once.
    before = len(client.log.messages())
    await client.login(second, after_seq=two["seq"])
    await client.log.wait_count(ManagerEvent.CHAT_MESSAGE, before + 2)
    replayed = client.log.messages()[before:]
    assert [m["correlationId"] for m in replayed] == ["m4", "m4"]
    answer = await client.chat("still once", correlationId="m5")
    assert [m["correlationId"] for m in client.log.messages()].count("m5") == 2  # user, agent
    assert answer["agentId"] == second["id"]
    await client.close()

"""The Python client against a real Jupyter server process with its real local manager."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import httpx
import pytest

from agenstra_jupyter.client import (
    AgenstraError,
    Agent,
    TurnError,
    _split,
    connect,
    discover_server,
)
from agenstra_jupyter.protocol import ChatEventKind, ErrorCode, ManagerEvent

from .conftest import start_jupyter, stop_jupyter
from .helpers import assert_seq_complete


@pytest.fixture(scope="module")
def client(jupyter_server):
    client = jupyter_server.client()
    yield client
    client.close()


def test_chat_and_history(jupyter_server, client):
    client.create_agent("c-echo", provider="echo")
    agent = client.agent("c-echo")
    assert agent.chat("hello") == "Echo: hello"
    assert agent.chat("again") == "Echo: again"
    assert [m["seq"] for m in agent.messages] == [1, 2, 3, 4]
    other = jupyter_server.client()  # a second frontend gets the history replayed
    replayed = other.agent("c-echo").messages
    assert replayed == agent.messages
    other.close()


def test_streaming_events_reach_listeners(client):
    client.create_agent("c-stream", provider="echo")
    agent = client.agent("c-stream")
    seen: list[tuple[str, dict]] = []
    agent.subscribe(lambda event, payload: seen.append((event, payload)))
    agent.chat("one two three")
    deltas = [p["payload"]["delta"] for e, p in seen
              if e == ManagerEvent.CHAT_EVENT and p["kind"] == ChatEventKind.ASSISTANT_DELTA]
    assert "".join(deltas) == "Echo: one two three" and len(deltas) == 4


async def test_awaitable_variants(client):
    agent = await client.aagent("assistant")
    assert await agent.achat("echo awaited") == "awaited\n[exit code 0]"


def test_two_agents_at_once(client):
    client.create_agent("c-a", provider="echo", config={"delay": 0.3})
    client.create_agent("c-b", provider="echo", config={"delay": 0.3})
    a, b = client.agent("c-a"), client.agent("c-b")
    answers: dict[str, str] = {}
    threads = [threading.Thread(target=lambda n=n, ag=ag: answers.__setitem__(n, ag.chat(n)))
               for n, ag in (("for a", a), ("for b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == {"for a": "Echo: for a", "for b": "Echo: for b"}
    assert all(m["agentId"] == a.id for m in a.messages)
    assert all(m["agentId"] == b.id for m in b.messages)


def test_errors_are_clear(client):
    with pytest.raises(AgenstraError, match="No agent named 'nobody'"):
        client.agent("nobody")
    client.create_agent("c-fail", provider="shell", config={"timeout": 0.5})
    with pytest.raises(TurnError, match="timed out"):
        client.agent("c-fail").chat("sleep 3")
    with pytest.raises(AgenstraError) as refused:
        client.create_agent("bad name", provider="echo")
    assert refused.value.code == ErrorCode.INVALID_PAYLOAD


def test_management_helpers(client):
    created = client.create_agent("c-managed", provider="echo")
    assert "password" not in created
    assert client.stop_agent("c-managed")["state"] == "stopped"
    assert client.start_agent("c-managed")["state"] == "running"
    assert [c["id"] for c in client.clients()] == ["local"]
    client.delete_agent("c-managed")
    assert "c-managed" not in [a["name"] for a in client.agents()]


def test_reconnects_after_the_controller_link_is_cut(jupyter_server, client):
    client.create_agent("c-cut", provider="echo")
    agent = client.agent("c-cut")
    agent.chat("before")
    talker = jupyter_server.client()
    talking = talker.agent("c-cut")
    client._loop.run(client._sio.eio.ws.close(), 10)  # the connection drops, no goodbye
    talking.chat("while away 1")
    talking.chat("while away 2")
    deadline = time.monotonic() + 30
    while len(agent.messages) < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert_seq_complete(agent.messages)
    assert [m.get("text") for m in agent.messages[::2]] == ["before", "while away 1",
                                                             "while away 2"]
    assert agent.chat("after") == "Echo: after"
    assert_seq_complete(agent.messages)
    talker.close()


def test_survives_a_manager_kill(jupyter_server, client):
    client.create_agent("c-kill", provider="echo")
    agent = client.agent("c-kill")
    agent.chat("first")
    os.kill(jupyter_server.manager_pid(), signal.SIGKILL)
    assert agent.chat("second", timeout=120) == "Echo: second"  # resent until stored once
    assert agent.chat("third") == "Echo: third"
    assert_seq_complete(agent.messages)
    assert [m.get("text") for m in agent.messages[::2]] == ["first", "second", "third"]


def test_discovery_from_environment_and_running_servers(jupyter_server, monkeypatch):
    assert _split("http://h:1/jp/?token=abc", "") .token == "abc"
    monkeypatch.setenv("AGENSTRA_URL", jupyter_server.full_url)
    monkeypatch.setenv("AGENSTRA_TOKEN", jupyter_server.token)
    info = discover_server()
    assert (info.url, info.base_url, info.token) == (jupyter_server.url, "/jp/",
                                                     jupyter_server.token)
    monkeypatch.delenv("AGENSTRA_URL")
    monkeypatch.delenv("AGENSTRA_TOKEN")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", jupyter_server.env["JUPYTER_RUNTIME_DIR"])
    found = discover_server()  # from the server's runtime file, as a kernel does
    assert (found.url.rstrip("/"), found.token) == (jupyter_server.url.replace(
        "127.0.0.1", found.url.split("//")[1].split(":")[0]), jupyter_server.token)


# -- interrupted, orphaned and refused clients ---------------------------------------------


def bounded(call, seconds: float = 15.0):
    """call() in a thread: its result or its exception; the test fails if it blocks longer."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test, whatever it is
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"blocked for more than {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def answer_to(agent, text: str, timeout: float = 10.0) -> dict:
    """The agent's answer to the user message `text`, once it is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        asked = [m["correlationId"] for m in agent.messages if m.get("text") == text]
        answers = [m for m in agent.messages
                   if m["from"] == "agent" and asked and m["correlationId"] == asked[0]]
        if answers:
            return answers[0]
        time.sleep(0.1)
    raise AssertionError(f"no answer to {text!r} within {timeout:g} s")


def test_ctrl_c_in_chat_cancels_the_turn(client):
    client.create_agent("c-interrupted", provider="echo", config={"delay": 30})
    agent = client.agent("c-interrupted")
    # What a kernel gets from "interrupt": SIGINT in the thread that runs the cell.
    threading.Timer(1.0, signal.pthread_kill, (threading.main_thread().ident,
                                               signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        agent.chat("never mind")
    answer = answer_to(agent, "never mind")["response"]
    assert answer["type"] == "error" and answer["result"].startswith("Cancelled")


def test_a_chat_that_times_out_cancels_the_turn(client):
    client.create_agent("c-slow", provider="echo", config={"delay": 30})
    agent = client.agent("c-slow")
    with pytest.raises(TimeoutError) as timed_out:
        agent.chat("too slow", timeout=1)
    answer = answer_to(agent, "too slow")["response"]
    assert answer["type"] == "error" and answer["result"].startswith("Cancelled")
    assert "the turn was cancelled" in str(timed_out.value)


def end(server, how: str) -> None:
    """Stop the server as a user does (it closes its sockets), or kill it as a crash does."""
    if how == "stopped":
        stop_jupyter(server)
        return
    manager = server.manager_pid()
    server.process.kill()
    server.process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.kill(manager, signal.SIGKILL)


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_chat_fails_fast_when_the_server_is_gone(tmp_path, how):
    server = start_jupyter(tmp_path)
    client = server.client()
    try:
        client.create_agent("gone", provider="echo", config={"delay": 30})
        agent = client.agent("gone")
        threading.Timer(1.0, end, (server, how)).start()
        with pytest.raises(AgenstraError) as in_flight:  # the answer can never come
            bounded(lambda: agent.chat("are you there?"), 30)
        with pytest.raises(AgenstraError) as later:  # nor can a new turn be sent
            bounded(lambda: agent.chat("anyone?"))
        for refused in (in_flight.value, later.value):
            assert refused.code == ErrorCode.REMOTE_UNAVAILABLE
            assert server.url in refused.message and "not reachable" in refused.message
        assert client.state == "reconnecting"  # it comes back if the server does
    finally:
        client.close()
        stop_jupyter(server)


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_a_new_server_token_is_reported_and_not_retried(tmp_path, how):
    def knocks() -> int:  # the server logs each refused socket handshake
        return (tmp_path / "jupyter.log").read_text().count("403 GET /jp/agenstra/socket.io/")

    first = start_jupyter(tmp_path)
    client = first.client()
    agent = client.agent("assistant")
    port = int(first.url.rsplit(":", 1)[1])
    end(first, how)
    second = start_jupyter(tmp_path, port=port)  # a new token, as after any restart
    try:
        deadline = time.monotonic() + 30
        while True:
            with pytest.raises(AgenstraError) as refused:
                bounded(lambda: agent.chat("echo hi"))
            if refused.value.code == ErrorCode.UNAUTHORIZED or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert refused.value.code == ErrorCode.UNAUTHORIZED
        assert "token" in refused.value.message and "connect(" in refused.value.message
        assert client.state == "disconnected"
        # Tornado logs a request after answering it: the refusal's line may lag the answer.
        deadline = time.monotonic() + 10
        while (refusals := knocks()) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert refusals >= 1
        time.sleep(7)  # longer than the longest reconnection delay
        assert knocks() == refusals  # it stopped knocking with the old token
    finally:
        client.close()
        stop_jupyter(second)


def test_connect_gives_a_client_for_the_asked_manager(jupyter_server, manager, monkeypatch):
    headers = {"Authorization": f"token {jupyter_server.token}"}
    registered = httpx.post(f"{jupyter_server.full_url}agenstra/api/clients", headers=headers,
                            json={"name": "elsewhere", "endpoint": manager.url,
                                  "apiKey": manager.api_key}, timeout=60)
    assert registered.status_code == 201, registered.text
    remote_id = registered.json()["id"]
    monkeypatch.setenv("AGENSTRA_URL", jupyter_server.full_url)
    monkeypatch.setenv("AGENSTRA_TOKEN", jupyter_server.token)
    local = connect()
    remote = connect(client_id=remote_id)
    try:
        assert local.client_id == "local" and remote.client_id == remote_id
        assert connect() is local and connect(client_id=remote_id) is remote
        remote.create_agent("far", provider="echo")
        assert remote.agent("far").chat("hi") == "Echo: hi"
        assert "far" not in [a["name"] for a in local.agents()]
        with pytest.raises(AgenstraError) as unknown:
            connect(client_id="no-such-manager")
        assert unknown.value.code == ErrorCode.UNKNOWN_CLIENT
    finally:
        for made in {id(c): c for c in (local, remote)}.values():
            made.close()


def test_duplicates_are_dropped_without_per_message_bookkeeping():
    """A long-lived kernel holds the transcript, and nothing else that grows with it."""
    agent = Agent(client=None, client_id="local", id="a", name="a")
    for seq in range(1, 2001):
        message = {"id": f"m{seq}", "seq": seq, "agentId": "a", "from": "user", "text": "x"}
        agent._receive(ManagerEvent.CHAT_MESSAGE, message)
        agent._receive(ManagerEvent.CHAT_MESSAGE, dict(message))  # a replay after a reconnect
    agent._receive(ManagerEvent.CHAT_MESSAGE, {"id": "other", "seq": 5, "from": "user"})
    assert [m["seq"] for m in agent.messages] == list(range(1, 2001))
    growing = {name: value for name, value in vars(agent).items()
               if name != "messages" and hasattr(value, "__len__") and len(value) > 10}
    assert growing == {}

"""The Python client against a real Jupyter server process with its real local manager."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from agenstra_jupyter.client import AgenstraError, TurnError, _split, discover_server
from agenstra_jupyter.protocol import ChatEventKind, ErrorCode, ManagerEvent

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

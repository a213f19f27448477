"""Fault suite: processes killed mid-work, sockets dropped at random, dockerd restarted.

Every run is bounded and stays on loopback. After each fault the database and the
frontends must agree: every announced message exists exactly once, in `seq` order.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agenstra_jupyter.client import TurnError

from .conftest import TEST_IMAGE, start_jupyter, stop_jupyter
from .helpers import assert_seq_complete


def wait_for(predicate, timeout: float = 60.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(step)
    raise AssertionError("timed out")


def manager_db(server) -> Path:
    return server.data_dir / "local-manager" / "manager.sqlite"


def check_database(server, agent_id: str) -> list[tuple]:
    with sqlite3.connect(manager_db(server)) as db:
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
        rows = db.execute("select seq, sender, correlation_id from messages where agent_id = ? "
                          "order by seq", (agent_id,)).fetchall()
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    users = [r[2] for r in rows if r[1] == "user"]
    answers = [r[2] for r in rows if r[1] == "agent"]
    assert len(users) == len(set(users)) and sorted(users) == sorted(answers)  # one each
    return rows


@pytest.fixture
def server(tmp_path):
    server = start_jupyter(tmp_path, {"AGENSTRA_CHAT_RATE": "0", "AGENSTRA_LOGIN_RATE": "0"})
    yield server
    stop_jupyter(server)


def test_manager_killed_during_a_burst_and_a_streaming_turn(server):
    clients = [server.client(), server.client()]
    clients[0].create_agent("burst", provider="echo", config={"delay": 0.02})
    clients[0].create_agent("stream", provider="echo", config={"delay": 20})
    bursting = [c.agent("burst") for c in clients]
    streaming = clients[0].agent("stream")
    answers: list[str] = []
    streaming.send("a long streamed answer that will be cut short")
    wait_for(lambda: streaming.messages)

    def burst(agent, tag):
        for n in range(15):
            try:
                answers.append(agent.chat(f"{tag}{n}", timeout=120))
            except TurnError as exc:  # the turn the kill cut short says so
                assert "Interrupted" in str(exc)
                answers.append(f"Echo: {tag}{n}")

    threads = [threading.Thread(target=burst, args=(a, t)) for a, t in zip(bursting, "ab",
                                                                           strict=True)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(answers) >= 4)  # the burst is under way ...
    os.kill(server.manager_pid(), signal.SIGKILL)  # ... and killed in its middle, mid-stream
    with sqlite3.connect(manager_db(server)) as db:  # what the dead manager had stored
        stored_at_kill = db.execute("select count(*) from messages where agent_id = ?",
                                    (bursting[0].id,)).fetchone()[0]
    answered_at_kill = len(answers)
    for thread in threads:
        thread.join(180)
    assert sorted(answers) == sorted(f"Echo: {t}{n}" for t in "ab" for n in range(15))
    rows = check_database(server, bursting[0].id)
    # The kill landed mid-burst: part of the burst was stored and answered before it, the
    # rest only by the restarted manager.
    assert 4 <= answered_at_kill < 30 and 8 <= stored_at_kill < len(rows) == 60, (
        answered_at_kill, stored_at_kill, len(rows))
    for agent in bursting:
        wait_for(lambda agent=agent: agent.last_seq == len(rows))
        assert [m["seq"] for m in agent.messages] == [r[0] for r in rows]
    stream_rows = check_database(server, streaming.id)
    wait_for(lambda: streaming.last_seq == len(stream_rows))
    interrupted = streaming.messages[-1]["response"]
    assert interrupted["type"] == "error" and interrupted.get("interrupted") is True
    for client in clients:
        client.close()


def test_controller_killed_and_restarted_keeps_registry_and_frontends(tmp_path):
    first = start_jupyter(tmp_path, {"AGENSTRA_CHAT_RATE": "0"})
    client = first.client()
    client.create_agent("keeper", provider="echo")
    agent = client.agent("keeper")
    assert agent.chat("before") == "Echo: before"
    port = int(first.url.rsplit(":", 1)[1])
    first.process.kill()  # the Jupyter server dies without cleaning up
    first.process.wait()
    wait_for(lambda: client.state == "reconnecting")
    second = start_jupyter(tmp_path, {"AGENSTRA_CHAT_RATE": "0"}, port=port,
                           token=first.token)
    try:
        wait_for(lambda: client.state == "connected", timeout=60)
        assert agent.chat("after", timeout=120) == "Echo: after"  # stored password still works
        assert_seq_complete(agent.messages)
        assert [m.get("text") for m in agent.messages[::2]] == ["before", "after"]
    finally:
        client.close()
        stop_jupyter(second)


@pytest.mark.timeout(600)
def test_random_socket_drops_during_ten_thousand_messages(server):
    talker, listener = server.client(), server.client()
    talker.create_agent("steady", provider="echo")
    speaking, hearing = talker.agent("steady"), listener.agent("steady")
    stop = threading.Event()
    drops = 0

    def drop_at_random():
        nonlocal drops
        chaos = random.Random(7)
        while not stop.wait(chaos.uniform(0.2, 1.0)):
            if listener.state == "connected":
                listener._loop.run(listener._sio.eio.ws.close(), 10)
                drops += 1

    dropper = threading.Thread(target=drop_at_random)
    dropper.start()
    try:
        for n in range(5000):  # a user message and an answer each: 10,000 messages
            speaking.send(f"m{n}")
            if n % 50 == 49:  # keep at most ~100 turns queued
                wait_for(lambda n=n: speaking.last_seq >= 2 * (n - 100), timeout=120, step=0.01)
        wait_for(lambda: speaking.last_seq == 10_000, timeout=300)
    finally:
        stop.set()
        dropper.join()
    wait_for(lambda: hearing.last_seq == 10_000, timeout=120)
    assert drops >= 5
    assert_seq_complete(hearing.messages)
    assert len({m["id"] for m in hearing.messages}) == 10_000
    rows = check_database(server, speaking.id)
    assert len(rows) == 10_000
    for client in (talker, listener):
        client.close()


@pytest.mark.docker
@pytest.mark.usefixtures("docker_available")
def test_docker_daemon_restarted_under_a_running_agent(server):
    client = server.client()
    client.create_agent("boxed", provider="shell", runtime="docker", image=TEST_IMAGE)
    agent = client.agent("boxed")
    assert agent.chat("echo before > f; cat f") == "before\n[exit code 0]"
    root = Path(os.environ.get("AGENSTRA_DOCKERD_ROOT", "/var/tmp/agenstra-dockerd"))
    pid = int((root / "dockerd.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=60)
    script = Path(__file__).parent.parent / "scripts" / "start-dockerd.sh"
    subprocess.run(["bash", str(script)], check=True, capture_output=True, timeout=120)
    # The container stopped with the daemon; the next turn starts it again.
    assert agent.chat("cat f", timeout=120) == "before\n[exit code 0]"
    client.delete_agent("boxed")
    client.close()

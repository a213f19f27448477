"""The manager as a process: ready line, options, SIGTERM, restarts on the same database."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time

from agenstra_jupyter.protocol import ManagerEvent

from .helpers import READY_PREFIX, AgentsClient, ManagerProcess, assert_seq_complete


def test_ready_line_generated_key_and_clean_sigterm(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENSTRA_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "agenstra_jupyter.manager.app", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    key_line = process.stdout.readline()
    ready_line = process.stdout.readline()
    assert key_line.startswith("agenstra-manager API key (generated for this run): ")
    key = key_line.rsplit(" ", 1)[1].strip()
    assert len(key) >= 32
    assert ready_line.startswith(READY_PREFIX + "http://127.0.0.1:")
    process.terminate()
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0
    assert READY_PREFIX not in out  # exactly one ready line
    assert key not in err  # the key is printed once, never logged
    assert (tmp_path / "manager.sqlite").exists()


def test_environment_variables_configure_the_manager(tmp_path):
    env = {**os.environ, "AGENSTRA_HOST": "127.0.0.1", "AGENSTRA_API_KEY": "k" * 20,
           "AGENSTRA_DB": f"sqlite:///{tmp_path / 'custom.db'}", "AGENSTRA_RUNTIME": "nope"}
    done = subprocess.run(
        [sys.executable, "-m", "agenstra_jupyter.manager.app", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=30,
    )
    assert done.returncode != 0 and "Unknown runtime 'nope'" in done.stderr
    assert (tmp_path / "custom.db").exists()
    # A command-line flag wins over the variable.
    manager = ManagerProcess(tmp_path / "m", api_key="k" * 20,
                             env={"AGENSTRA_RUNTIME": "nope"}, args=["--runtime", "process"])
    manager.start()
    assert manager.stop() == 0


def test_help_lists_the_options():
    done = subprocess.run(
        [sys.executable, "-m", "agenstra_jupyter.manager.app", "--help"],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0
    for flag in ["--host", "--port", "--api-key", "--db", "--runtime", "--history-limit"]:
        assert flag in done.stdout


async def test_restart_on_the_same_database_keeps_everything(start_manager, tmp_path):
    db = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    key = {"AGENSTRA_MANAGER_KEY_FILE": str(tmp_path / "shared.key")}  # it goes with the db
    first = start_manager("one", db=db, env=key)
    agent = await first.create_agent(name="keeper", provider="shell")
    client = await AgentsClient().connect(first)
    await client.login(agent)
    await client.chat("echo one")
    await client.close()
    assert first.stop() == 0

    second = start_manager("two", db=db, api_key=first.api_key, env=key)
    async with second.http() as http:
        agents = (await http.get("/api/agents")).json()
    assert [a["name"] for a in agents] == ["keeper"]
    again = await AgentsClient().connect(second)
    await again.login(agent)  # the same password still works
    history = await again.log.wait_count(ManagerEvent.CHAT_MESSAGE, 2)
    assert history == client.log.messages()
    await again.chat("echo two")
    assert_seq_complete(again.log.messages())
    await again.close()


async def test_sigterm_mid_turn_answers_it_and_closes_the_database(start_manager):
    manager = start_manager()
    agent = await manager.create_agent(name="busy", provider="echo", config={"delay": 30})
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    await client.emit(ManagerEvent.CHAT, {"message": "long", "correlationId": "t"})
    await client.log.wait_for(lambda log: log.of(ManagerEvent.CHAT_EVENT))
    answer_task = asyncio.ensure_future(client.answer_to("t", timeout=10))
    assert await asyncio.to_thread(manager.stop) == 0
    answer = await answer_task
    assert answer["response"]["type"] == "error"
    assert "shutting down" in answer["response"]["result"]
    with sqlite3.connect(manager.data_dir / "manager.sqlite") as db:
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
        rows = db.execute("select seq, sender from messages order by seq").fetchall()
    assert rows == [(1, "user"), (2, "agent")]
    await client.close()


async def test_sigkill_mid_turn_is_answered_at_the_next_start(start_manager, tmp_path):
    db = f"sqlite:///{tmp_path / 'crash.sqlite'}"
    key = {"AGENSTRA_MANAGER_KEY_FILE": str(tmp_path / "crash.key")}  # it goes with the db
    manager = start_manager("before", db=db, env=key)
    agent = await manager.create_agent(name="crash", provider="echo", config={"delay": 30})
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    await client.emit(ManagerEvent.CHAT, {"message": "doomed", "correlationId": "d"})
    await client.log.wait_for(lambda log: log.messages())
    manager.kill()
    await client.close()

    restarted = start_manager("after", db=db, api_key=manager.api_key, env=key)
    observer = await AgentsClient().connect(restarted)
    await observer.login(agent)
    user, answer = await observer.log.wait_count(ManagerEvent.CHAT_MESSAGE, 2)
    assert user["text"] == "doomed" and answer["correlationId"] == "d"
    assert answer["response"]["type"] == "error" and answer["response"]["interrupted"] is True
    await observer.close()


def test_a_manager_whose_supervisor_dies_stops_too(tmp_path):
    # A supervisor killed with SIGKILL cannot stop its manager: the manager notices.
    supervisor = subprocess.Popen(
        [sys.executable, "-c",
         "import os, subprocess, sys, time\n"
         "p = subprocess.Popen([sys.executable, '-m', 'agenstra_jupyter.manager.app',\n"
         f"    '--data-dir', {str(tmp_path)!r}, '--api-key', 'k' * 20,\n"
         "    '--parent-pid', str(os.getpid())], stdout=subprocess.PIPE, text=True)\n"
         "print(p.pid, flush=True); p.stdout.readline(); print('ready', flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True,
    )
    manager_pid = int(supervisor.stdout.readline())
    assert supervisor.stdout.readline().strip() == "ready"
    supervisor.kill()
    supervisor.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(manager_pid, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{manager_pid}/stat") as stat:
            if stat.read().split()[2] == "Z":
                break
        time.sleep(0.1)
    else:
        os.kill(manager_pid, signal.SIGKILL)
        raise AssertionError("the orphaned manager kept running")


async def test_a_chat_sent_twice_with_one_correlation_id_runs_once(manager):
    agent = await manager.create_agent(name="once", provider="echo")
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    first = await client.sio.call(ManagerEvent.CHAT, {"message": "hi", "correlationId": "same"},
                                  namespace="/agents", timeout=10)
    again = await client.sio.call(ManagerEvent.CHAT, {"message": "hi", "correlationId": "same"},
                                  namespace="/agents", timeout=10)
    assert first == again == {"ok": True, "id": first["id"], "seq": 1, "correlationId": "same"}
    await client.answer_to("same")
    await asyncio.sleep(0.3)
    assert [(m["seq"], m["from"]) for m in client.log.messages()] == [(1, "user"), (2, "agent")]
    await client.close()

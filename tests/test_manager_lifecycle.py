"""The manager as a process: ready line, options, SIGTERM, restarts on the same database."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import httpx

from agenstra_jupyter.controller.local import free_port
from agenstra_jupyter.protocol import ManagerEvent

from .conftest import start_jupyter, stop_jupyter
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
    # A sentinel turn: a second turn for "same", had one been queued, would come before it.
    await client.chat("sentinel", correlationId="sentinel")
    assert [(m["seq"], m["from"], m["correlationId"]) for m in client.log.messages()] == [
        (1, "user", "same"), (2, "agent", "same"), (3, "user", "sentinel"),
        (4, "agent", "sentinel")]
    await client.close()


def test_ctrl_c_answered_no_keeps_the_local_manager_and_its_turn(tmp_path):
    # JupyterLab in a terminal: Ctrl-C signals the terminal's whole process group, Jupyter
    # asks "Shut down this Jupyter server (y/[n])?", the user answers n. Nothing may stop.
    terminal, tty = pty.openpty()
    server = start_jupyter(tmp_path, stdin=tty)
    client = server.client()
    try:
        manager_pid = server.manager_pid()
        client.create_agent("slow", provider="echo", config={"delay": 4})
        answers: list[str] = []
        turn = threading.Thread(target=lambda: answers.append(client.agent("slow").chat("hi")))
        turn.start()
        time.sleep(1)  # the turn is running
        os.killpg(server.process.pid, signal.SIGINT)
        log = tmp_path / "jupyter.log"
        deadline = time.monotonic() + 10
        while "(y/[n])" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.write(terminal, b"n\n")
        turn.join(30)
        assert answers == ["Echo: hi"], (server.process.poll(), log.read_text()[-3000:])
        assert server.process.poll() is None
        assert server.manager_pid() == manager_pid, "the manager was restarted"
        assert client.agent("slow").chat("still there") == "Echo: still there"
    finally:
        client.close()
        stop_jupyter(server)
        os.close(terminal)
        os.close(tty)


def test_a_second_manager_on_one_data_dir_refuses_to_start(start_manager, tmp_path):
    first = start_manager("shared")
    second = subprocess.run(
        [sys.executable, "-m", "agenstra_jupyter.manager.app", "--data-dir", str(first.data_dir),
         "--api-key", "k" * 32, "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert second.returncode != 0
    assert f"in use by another agenstra-manager (pid {first.process.pid})" in second.stderr
    assert READY_PREFIX not in second.stdout
    health = httpx.get(f"{first.url}/api/health",
                       headers={"Authorization": f"Bearer {first.api_key}"})
    assert health.status_code == 200


def test_a_second_jupyter_server_on_one_data_dir_says_why_it_has_no_manager(tmp_path):
    (tmp_path / "one").mkdir()
    first = start_jupyter(tmp_path / "one")
    env = {**first.env, "JUPYTER_RUNTIME_DIR": str(tmp_path / "two-runtime")}
    token = "t" * 32
    second = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
         f"--port={free_port()}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
         "--ServerApp.port_retries=0"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = _server_url(second)
        answer = httpx.get(f"{url}agenstra/api/clients/local/agents",
                           headers={"Authorization": f"token {token}"}, timeout=60)
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "UNAVAILABLE"
        assert "in use by another agenstra-manager" in answer.json()["message"]
        client = first.client()  # the first server and its manager carry on untouched
        try:
            assert client.agent("assistant").chat("echo fine").startswith("fine")
        finally:
            client.close()
    finally:
        second.terminate()
        second.wait(30)
        stop_jupyter(first)


def _server_url(process: subprocess.Popen) -> str:
    """The URL a starting `jupyter server` prints (its port was chosen by the OS)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if "http://127.0.0.1:" in line:
            return line[line.index("http://127.0.0.1:"):].split("?")[0].strip()
    raise AssertionError("the second server did not start")

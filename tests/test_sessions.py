"""`agenstra-jupyter run`: record a notebook's agent turns, replay them, export conversations."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nbformat

from agenstra_jupyter.sessions import SESSION_VERSION, read_session

from .conftest import start_jupyter, stop_jupyter

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "reproducible-session.ipynb"


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agenstra_jupyter.runner", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def outputs(path: Path) -> str:
    """Every cell's outputs, as bytes would compare them."""
    book = nbformat.read(path, as_version=4)
    return json.dumps([c.get("outputs", []) for c in book.cells], sort_keys=True)


def server_args(server) -> list[str]:
    return ["--url", server.full_url, "--token", server.token]


def write_notebook(path: Path, *sources: str) -> Path:
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    book.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(book, path)
    return path


def test_record_then_replay_twice_gives_identical_outputs(jupyter_server, tmp_path):
    session = tmp_path / "s.jsonl"
    recorded = cli("run", NOTEBOOK, "--record", session, "-o", tmp_path / "a.ipynb",
                   *server_args(jupyter_server))
    assert recorded.returncode == 0, recorded.stderr
    assert "cell 1/6 done in" in recorded.stderr  # progress per code cell
    header, turns = read_session(session)
    assert header["version"] == SESSION_VERSION and header["notebook"].endswith(NOTEBOOK.name)
    assert [(t["agent"], t["prompt"]) for t in turns] == [
        ("scribe", "Summarise why reproducibility matters"),
        ("scribe", "List three steps to re-run a notebook"),
    ]
    assert turns[0]["provider"] == "echo"
    assert turns[0]["response"]["result"] == "Echo: Summarise why reproducibility matters"
    assert [e["kind"] for e in turns[0]["events"]] == ["assistantDelta"] * 5
    assert turns[0]["durationMs"] >= 0 and turns[0]["executionCount"]

    for name in ("b.ipynb", "c.ipynb"):  # no agent, no network: a fresh manager replays
        replayed = cli("run", NOTEBOOK, "--replay", session, "-o", tmp_path / name)
        assert replayed.returncode == 0, replayed.stderr
    assert outputs(tmp_path / "b.ipynb") == outputs(tmp_path / "c.ipynb")
    assert outputs(tmp_path / "b.ipynb") == outputs(tmp_path / "a.ipynb")


def test_a_changed_prompt_fails_the_replay_clearly(jupyter_server, tmp_path):
    session = tmp_path / "s.jsonl"
    assert cli("run", NOTEBOOK, "--record", session, *server_args(jupyter_server)).returncode == 0
    strict = cli("run", NOTEBOOK, "--replay", session, "-p", "topic", "speed")
    assert strict.returncode == 1
    message = strict.stderr.strip().splitlines()[-1]
    assert "cell 4/6 failed" in message and "'scribe'" in message
    assert "'Summarise why reproducibility matters'" in message
    assert "'Summarise why speed matters'" in message

    lenient = cli("run", NOTEBOOK, "--replay", session, "-p", "topic", "speed",
                  "--replay-mode", "lenient", "-o", tmp_path / "l.ipynb")
    assert lenient.returncode == 0, lenient.stderr
    book = outputs(tmp_path / "l.ipynb")
    assert "Echo: Summarise why speed matters" in book  # answered live by the echo agent
    assert "not in the recording" in book  # and the notebook says so


def test_parameters_cell_timeout_and_failing_cell(jupyter_server, tmp_path):
    out = tmp_path / "p.ipynb"
    run = cli("run", NOTEBOOK, "-p", "topic", "testing", "-o", out, *server_args(jupyter_server))
    assert run.returncode == 0, run.stderr
    assert "Echo: Summarise why testing matters" in outputs(out)
    failing = write_notebook(tmp_path / "f.ipynb", "x = 1", "y = 2", "1 / 0", "z = 3")
    failed = cli("run", failing, *server_args(jupyter_server))
    assert failed.returncode == 1
    assert "cell 3/4 failed: ZeroDivisionError" in failed.stderr
    slow = write_notebook(tmp_path / "t.ipynb", "import time", "time.sleep(30)")
    timed_out = cli("run", slow, "--timeout", "2", *server_args(jupyter_server))
    assert timed_out.returncode == 1 and "cell 2/2 failed: timed out" in timed_out.stderr


def test_a_killed_recording_leaves_a_readable_session(jupyter_server, tmp_path):
    notebook = write_notebook(
        tmp_path / "k.ipynb",
        "from agenstra_jupyter.client import connect\nclient = connect()\n"
        "names = [a['name'] for a in client.agents()]\n"
        "if 'k-echo' not in names:\n    client.create_agent('k-echo', provider='echo')\n"
        "agent = client.agent('k-echo')",
        "agent.chat('one')", "agent.chat('two')", "import time\ntime.sleep(120)")
    session = tmp_path / "k.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "agenstra_jupyter.runner", "run", str(notebook), "--record",
         str(session), *server_args(jupyter_server)],
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if session.exists() and len(read_session(session)[1]) == 2:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the runner and its kernel die mid-run
    process.wait()
    _, turns = read_session(session)
    assert [t["prompt"] for t in turns] == ["one", "two"]
    assert not list(tmp_path.glob(".k.jsonl.*"))  # no stray temporary file either


def test_export_then_replay_gives_the_same_answers(jupyter_server, tmp_path):
    client = jupyter_server.client()
    client.create_agent("x-echo", provider="echo")
    agent = client.agent("x-echo")
    answers = [agent.chat("first question"), agent.chat("second question")]
    client.close()
    notebook, session = tmp_path / "x.ipynb", tmp_path / "x.jsonl"
    exported = cli("export", "x-echo", "-o", notebook, "--session", session,
                   *server_args(jupyter_server))
    assert exported.returncode == 0, exported.stderr
    book = nbformat.read(notebook, as_version=4)
    assert [c.source for c in book.cells[2:]] == ["%%agent\nfirst question",
                                                  "%%agent\nsecond question"]
    assert answers[0] in json.dumps(book.cells[2].outputs)
    replayed = cli("run", notebook, "--replay", session, "-o", tmp_path / "y.ipynb")
    assert replayed.returncode == 0, replayed.stderr
    run_book = nbformat.read(tmp_path / "y.ipynb", as_version=4)
    texts = [c.outputs[0]["data"]["text/markdown"] for c in run_book.cells[2:]]
    assert texts == answers


def test_bad_session_files_are_refused(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "session", "version": 99}\n')
    run = cli("run", NOTEBOOK, "--replay", bad)
    assert run.returncode == 2 and "session format 99" in run.stderr
    bad.write_text("not json\n")
    assert cli("run", NOTEBOOK, "--replay", bad).returncode == 2


def test_a_run_without_url_leaves_the_users_running_server_alone(tmp_path):
    """The user's JupyterLab (server A) and the run share one environment: the same Jupyter
    data dir, controller data dir and manager database. The run is isolated all the same."""
    user = tmp_path / "user"
    user.mkdir()
    manager_db = f"sqlite:///{user / 'agenstra' / 'local-manager' / 'manager.sqlite'}"
    server = start_jupyter(user, {"JUPYTER_DATA_DIR": str(user), "AGENSTRA_DB": manager_db})
    try:
        mine = server.client()
        mine.agent("assistant").chat("echo before the run")

        def state() -> tuple:
            agents = [(a["id"], a["name"]) for a in mine.agents()]
            history = [m["id"] for m in mine.agent("assistant").messages]
            # Health is checked on its own schedule: what is registered must not change.
            clients = [{k: v for k, v in c.items() if k != "health"} for c in mine.clients()]
            return agents, history, clients, server.manager_pid()

        before = state()
        notebook = write_notebook(
            tmp_path / "iso.ipynb",
            "from agenstra_jupyter.client import connect\nclient = connect()\n"
            "client.create_agent('run-echo', provider='echo')\n"
            "print(client.agent('run-echo').chat('from the run'))\n"
            "client.agent('assistant').chat('echo from the run')")
        temp = tmp_path / "tmp"
        temp.mkdir()
        run = cli("run", notebook, "-o", tmp_path / "out.ipynb",
                  env={**server.env, "TMPDIR": str(temp)})
        assert run.returncode == 0, run.stderr
        assert "Echo: from the run" in outputs(tmp_path / "out.ipynb")
        assert state() == before  # agents, history, manager: as they were
        assert "run-echo" not in [a["name"] for a in mine.agents()]
        assert mine.agent("assistant").chat("echo after the run") == (
            "after the run\n[exit code 0]")  # A's manager still answers
        response = httpx.get(f"{server.full_url}agenstra/api/clients/local/agents",
                             headers={"Authorization": f"token {server.token}"})
        assert response.status_code == 200
        assert list(temp.iterdir()) == []  # the run's own data dir is gone

        kept = cli("run", notebook, "--keep-data", env={**server.env, "TMPDIR": str(temp)})
        assert kept.returncode == 0, kept.stderr
        (data,) = temp.iterdir()
        assert str(data) in kept.stderr and (data / "agenstra" / "controller.sqlite").exists()
        mine.close()
    finally:
        stop_jupyter(server)


def test_export_errors_are_one_line_and_exit_code_2(jupyter_server, tmp_path):
    out = ["-o", tmp_path / "e.ipynb", "--session", tmp_path / "e.jsonl"]
    nobody = cli("export", "nobody", *out, *server_args(jupyter_server))
    no_server = cli("export", "assistant", *out, env={
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "empty"), "AGENSTRA_URL": ""})
    gone = cli("export", "assistant", *out, "--url", "http://127.0.0.1:9/", "--token", "x")
    for failed, says in [(nobody, "No agent named 'nobody'"),
                         (no_server, "No Jupyter server found"),
                         (gone, "is not reachable")]:
        assert failed.returncode == 2, failed.stderr
        assert failed.stderr.startswith("agenstra-jupyter: ") and says in failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert not (tmp_path / "e.ipynb").exists()


def test_a_cancelled_turn_exports_and_replays_the_same(jupyter_server, tmp_path):
    client = jupyter_server.client()
    client.create_agent("x-slow", provider="echo", config={"delay": 30})
    agent = client.agent("x-slow")
    agent.send("never finished")
    wait = time.monotonic() + 20
    while not agent.messages and time.monotonic() < wait:
        time.sleep(0.05)
    agent.cancel()
    while len(agent.messages) < 2 and time.monotonic() < wait:
        time.sleep(0.05)
    assert agent.messages[-1]["response"]["result"] == "Cancelled"
    client.close()
    notebook, session = tmp_path / "c.ipynb", tmp_path / "c.jsonl"
    exported = cli("export", "x-slow", "-o", notebook, "--session", session,
                   *server_args(jupyter_server))
    assert exported.returncode == 0, exported.stderr
    cancelled = nbformat.read(notebook, as_version=4).cells[2]
    assert cancelled.outputs == [nbformat.v4.new_output(
        "stream", name="stderr", text="agenstra: Cancelled\n")]  # what %%agent prints
    replayed = cli("run", notebook, "--replay", session, "-o", tmp_path / "r.ipynb")
    assert replayed.returncode == 0, replayed.stderr
    assert nbformat.read(tmp_path / "r.ipynb", as_version=4).cells[2].outputs == (
        cancelled.outputs)


def test_progress_lines_use_one_counter_and_no_kernel_warning(jupyter_server, tmp_path):
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    book.cells = [nbformat.v4.new_markdown_cell("# not counted"),
                  *(nbformat.v4.new_code_cell(f"x = {i}") for i in range(3)),
                  nbformat.v4.new_markdown_cell("nor this"), nbformat.v4.new_code_cell("1 / 0")]
    path = tmp_path / "progress.ipynb"
    nbformat.write(book, path)
    run = cli("run", path, *server_args(jupyter_server))
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    expected = [rf"cell {n}/4 (…|done in \d+\.\ds)" for n in (1, 1, 2, 2, 3, 3, 4)]
    assert len(lines) == len(expected) + 1, run.stderr  # nothing else: no kernel warning
    for line, pattern in zip(lines[:-1], expected, strict=True):
        assert re.fullmatch(pattern, line), line
    assert lines[-1] == "agenstra-jupyter: cell 4/4 failed: ZeroDivisionError: division by zero"



def test_a_dying_kernel_is_reported_with_what_it_said(jupyter_server, tmp_path):
    """The kernel process's stderr stays out of the progress lines, but when the kernel dies
    its last words are in the error."""
    path = write_notebook(tmp_path / "dies.ipynb", "x = 1",
                          "import os\nos.write(2, b'kernel: out of luck\\n')\nos._exit(3)")
    run = cli("run", path, *server_args(jupyter_server))
    assert run.returncode == 1, run.stderr
    failure = run.stderr[run.stderr.index("agenstra-jupyter: cell 2/2 failed"):]
    assert "kernel: out of luck" in failure, run.stderr
    assert run.stderr.count("kernel: out of luck") == 1  # not also amid the progress lines

def test_exported_command_output_is_a_listing_and_replays_the_same(jupyter_server, tmp_path):
    client = jupyter_server.client()
    client.create_agent("x-shell", provider="shell")
    client.agent("x-shell").chat("printf '# one\\n*two*\\n'")
    client.close()
    notebook, session = tmp_path / "s.ipynb", tmp_path / "s.jsonl"
    exported = cli("export", "x-shell", "-o", notebook, "--session", session,
                   *server_args(jupyter_server))
    assert exported.returncode == 0, exported.stderr
    (shown,) = nbformat.read(notebook, as_version=4).cells[2].outputs
    assert shown["data"]["text/markdown"] == "```text\n# one\n*two*\n[exit code 0]\n```"
    assert "<h1" not in shown["data"]["text/html"] and "<pre" in shown["data"]["text/html"]
    replayed = cli("run", notebook, "--replay", session, "-o", tmp_path / "r.ipynb")
    assert replayed.returncode == 0, replayed.stderr
    (again,) = nbformat.read(tmp_path / "r.ipynb", as_version=4).cells[2].outputs
    assert again["data"] == shown["data"]

"""`agenstra-jupyter run`: record a notebook's agent turns, replay them, export conversations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat

from agenstra_jupyter.sessions import SESSION_VERSION, read_session

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
    assert "[1/6] cell 2" in recorded.stderr  # progress per cell
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
    assert "cell 5 failed" in message and "'scribe'" in message
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
    assert "cell 3 failed: ZeroDivisionError" in failed.stderr
    slow = write_notebook(tmp_path / "t.ipynb", "import time", "time.sleep(30)")
    timed_out = cli("run", slow, "--timeout", "2", *server_args(jupyter_server))
    assert timed_out.returncode == 1 and "cell 2 failed: timed out" in timed_out.stderr


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

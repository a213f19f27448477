"""The example notebooks, executed top to bottom by nbclient against a running server."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


def run(path: Path, server, monkeypatch, tmp_path) -> nbformat.NotebookNode:
    monkeypatch.setenv("AGENSTRA_URL", server.full_url)
    monkeypatch.setenv("AGENSTRA_TOKEN", server.token)
    book = nbformat.read(path, as_version=4)
    NotebookClient(book, kernel_name="python3", timeout=180, store_widget_state=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    return book


def text_of(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        for mime in ("text/plain", "text/markdown", "text/html"):
            parts.append(str(output.get("data", {}).get(mime, "")))
    return "\n".join(parts)


def cell_with(book, needle: str):
    return next(c for c in book.cells if c.cell_type == "code" and needle in c.source)


def test_quickstart(jupyter_server, monkeypatch, tmp_path):
    book = run(NOTEBOOKS / "quickstart.ipynb", jupyter_server, monkeypatch, tmp_path)
    assert "hello from the quickstart" in text_of(cell_with(book, "notes.chat"))
    widget_cell = cell_with(book, "ChatWidget(")
    (view,) = [o for o in widget_cell.outputs if "application/vnd.jupyter.widget-view+json"
               in o.get("data", {})]
    state = book.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert view["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] in state
    assert "hello from the quickstart" in json.dumps(state)  # the transcript is in the widget
    assert "| notes | shell |" in text_of(cell_with(book, "%agent list"))
    assert "one line" in text_of(cell_with(book, "%agent notes echo"))
    assert "a cell" in text_of(cell_with(book, "%%agent notes"))
    assert "[exit code 0]" in text_of(cell_with(book, "print(_."))
    for cell in book.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", output
            assert output.get("name") != "stderr" or "agenstra:" not in output.get("text", "")


def test_docker_notebook(jupyter_server, monkeypatch, tmp_path, docker_available):
    book = run(NOTEBOOKS / "docker-agent.ipynb", jupyter_server, monkeypatch, tmp_path)
    available = "Docker available: True" in text_of(book.cells[1])
    if available:
        assert "1000\n/workspace\nkept" in text_of(book.cells[2])
        assert "kept" in text_of(book.cells[3])
    else:
        assert "No Docker daemon" in text_of(book.cells[2])


def test_reproducible_session_notebook(jupyter_server, monkeypatch, tmp_path):
    book = run(NOTEBOOKS / "reproducible-session.ipynb", jupyter_server, monkeypatch, tmp_path)
    assert "Echo: Summarise why reproducibility matters" in text_of(cell_with(book, "answer ="))
    assert "Echo: List three steps" in text_of(cell_with(book, "%%agent"))
    assert text_of(cell_with(book, "len(_.split())")).strip() == "8"  # "Echo: List three ..."


def test_magic_errors_are_messages_not_tracebacks(jupyter_server, monkeypatch, tmp_path):
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell("%load_ext agenstra_jupyter"),
                  nbformat.v4.new_code_cell("%agent nobody hello"),
                  nbformat.v4.new_code_cell("%%agent\nno default agent yet"),
                  nbformat.v4.new_code_cell("%agent")]
    path = tmp_path / "errors.ipynb"
    nbformat.write(book, path)
    executed = run(path, jupyter_server, monkeypatch, tmp_path)
    messages = [text_of(cell) for cell in executed.cells[1:]]
    assert "agenstra: No agent named 'nobody'" in messages[0]
    assert "agenstra: No agent chosen" in messages[1]
    assert "agenstra: usage:" in messages[2]
    assert not any(o.output_type == "error" for c in executed.cells for o in c.outputs)


@pytest.mark.parametrize("name", ["quickstart", "docker-agent", "reproducible-session"])
def test_notebooks_are_committed_without_outputs(name):
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in book.cells if c.cell_type == "code")


def test_agent_use_confirms_and_then_plain_text_goes_to_that_agent(jupyter_server, monkeypatch,
                                                                    tmp_path):
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell(source) for source in (
        "%load_ext agenstra_jupyter\nfrom agenstra_jupyter.client import connect\n"
        "connect().create_agent('m-echo', provider='echo')",
        "%agent m-echo before use",  # no agent chosen: the first word names the agent
        "%agent use m-echo",
        "%agent some text",
        "%agent use nobody",
        "%agent still to m-echo",
    )]
    path = tmp_path / "use.ipynb"
    nbformat.write(book, path)
    executed = run(path, jupyter_server, monkeypatch, tmp_path)
    texts = [text_of(cell).strip() for cell in executed.cells[1:]]
    assert "Echo: before use" in texts[0]
    assert texts[1] == "Using agent m-echo"
    assert "Echo: some text" in texts[2]
    assert "agenstra: No agent named 'nobody'" in texts[3]
    assert "Echo: still to m-echo" in texts[4]  # a failed `use` keeps the agent chosen


def test_agent_magic_shows_command_output_as_a_listing(jupyter_server, monkeypatch, tmp_path):
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell(source) for source in (
        "%load_ext agenstra_jupyter\nfrom agenstra_jupyter.client import connect\n"
        "connect().create_agent('m-shell', provider='shell')",
        "%agent use m-shell",
        "%agent printf '# not a heading\\n*not emphasis*\\n'",
        "_",
    )]
    path = tmp_path / "listing.ipynb"
    nbformat.write(book, path)
    executed = run(path, jupyter_server, monkeypatch, tmp_path)
    (shown,) = executed.cells[2].outputs
    assert "<h1" not in shown.data["text/html"] and "<em>" not in shown.data["text/html"]
    assert "white-space:pre;" in shown.data["text/html"]
    assert shown.data["text/markdown"] == (
        "```text\n# not a heading\n*not emphasis*\n[exit code 0]\n```")
    assert "'# not a heading\\n*not emphasis*\\n[exit code 0]'" in text_of(executed.cells[3])

"""The notebook tools for a CLI preset: the real Claude Code CLI (the `claude` preset, its
MCP config handed over by the manager) against the fake Anthropic API, in a real Jupyter
server with its local manager and sandbox. Told by its scripted model, it reads a
notebook, inserts a cell and runs it in a real kernel; the insert and the run are asked
and allowed through the kernel-side client, and the answer carries the run's output.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from agenstra_jupyter.sessions import option_for

from .conftest import JupyterProcess, start_jupyter, stop_jupyter
from .fakes.mcp_driver import CELL_SOURCE
from .fakes.vendors import Reply, ToolUse, last_tool_result
from .helpers import CLI_BIN, SECRET, need_cli
from .test_notebook_tools_browser import PROJECT, notebook_file

pytestmark = pytest.mark.timeout(300)
TOOL = "mcp__agenstra__"


@pytest.fixture
def lab(tmp_path, vendor) -> Iterator[JupyterProcess]:
    need_cli("claude")
    (tmp_path / PROJECT).mkdir()
    (tmp_path / PROJECT / "analysis.ipynb").write_text(notebook_file("data = [1, 2, 3]"))
    path = f"{CLI_BIN}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    server = start_jupyter(tmp_path, {"PATH": path})
    yield server
    stop_jupyter(server)


def test_claude_code_reads_inserts_and_runs_a_cell_through_its_mcp_config(lab, vendor):
    vendor.side_request = lambda body: not (body or {}).get("tools")  # titles and the like
    vendor.script(
        Reply(tool=ToolUse(f"{TOOL}read_notebook", {"path": "analysis.ipynb"})),
        Reply(tool=ToolUse(f"{TOOL}insert_cell", {"path": "analysis.ipynb", "index": 1,
                                                  "source": CELL_SOURCE})),
        Reply(tool=ToolUse(f"{TOOL}run_cells", {"path": "analysis.ipynb", "cells": [1]})),
        Reply(answer=lambda body: "The run said: " + " ".join(
            last_tool_result(body).split())[-300:]),
    )
    client = lab.client()
    client.create_agent("coder", provider="cli", project=PROJECT, config={
        "preset": "claude", "loopbackPorts": [vendor.port],
        "env": {"ANTHROPIC_BASE_URL": vendor.url, "ANTHROPIC_API_KEY": SECRET,
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}})
    agent = client.agent("coder")
    asked: list[dict] = []

    def allow(request: dict) -> str | None:
        asked.append(request)
        return option_for(request, "allow")

    agent.on_permission(allow)
    answer = agent.chat("Add a cell that prints the sum of squares and run it", timeout=240)
    assert "14" in answer, answer
    assert [r["title"].split(":")[0] for r in asked] == [
        "Insert a code cell at position 1 of analysis.ipynb", "Run cell 1 of analysis.ipynb"]
    # Code for the user's kernel: once at a time, never "always".
    assert sorted(o["kind"] for o in asked[1]["options"]) == ["allow_once", "reject_once"]
    book = nbformat.read(lab.data_dir.parent / PROJECT / "analysis.ipynb", as_version=4)
    assert book.cells[1].source == CELL_SOURCE
    assert book.cells[1].outputs[0]["text"] == "14\n"
    # The tools reached the model as tool results; the token never did.
    requests = json.dumps([r.body for r in vendor.model_requests("/v1/messages")])
    assert "Inserted code cell 1" in requests and SECRET not in answer
    client.close()

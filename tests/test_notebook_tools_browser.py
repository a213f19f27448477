"""The notebook tools as a user meets them: JupyterLab in headless Chromium, a notebook open
with its kernel, an agent of the sidebar that reads it, inserts a cell and runs it through
the controller's MCP endpoint, each write and run approved from a card first.

The scripted side is the model only: the SDK-based fake ACP agent (`notebook PATH`,
tests/fakes/mcp_driver.py), or the real claude-agent-acp and Claude Code against the fake
Anthropic API. The MCP client, endpoint, relay, sandbox, kernel and JupyterLab are real.
Screenshots land in test-artifacts/labextension/.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .browser import (
    ARTIFACTS,
    PANEL,
    lab_env,
    lab_page,
    open_agent_form,
    open_panel,
    send,
    snap,
    wait_answer,
    wait_selected,
)
from .browser import jp_asyncio_loop as jp_asyncio_loop  # a fixture
from .browser import jp_server_cleanup as jp_server_cleanup  # a fixture
from .conftest import JupyterProcess, start_jupyter, stop_jupyter
from .fakes import ACP_AGENT_COMMAND
from .fakes.mcp_driver import CELL_SOURCE
from .fakes.vendors import Reply, ToolUse, last_tool_result
from .helpers import CLI_BIN, SECRET, need_cli

pytestmark = pytest.mark.timeout(300)

PROJECT = "study"
CARD = f"{PANEL} .jp-AgenstraChat-permission.jp-mod-pending"
LINE = f"{PANEL} .jp-AgenstraChat-permission.jp-mod-resolved"


def notebook_file(*sources: str) -> str:
    cells = [{"cell_type": "code", "execution_count": None, "id": f"cell{i}", "metadata": {},
              "outputs": [], "source": source} for i, source in enumerate(sources)]
    return json.dumps({"cells": cells, "metadata": {"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}, indent=1) + "\n"


@pytest.fixture
def lab(tmp_path) -> Iterator[JupyterProcess]:
    (tmp_path / PROJECT).mkdir()
    (tmp_path / PROJECT / "analysis.ipynb").write_text(notebook_file("data = [1, 2, 3]"))
    server = start_jupyter(tmp_path, lab_env(tmp_path))
    yield server
    stop_jupyter(server)


def cell_text(page, text: str):
    return page.locator(".jp-Notebook:visible .cm-content", has_text=text)


def open_project_notebook(page) -> None:
    """The project folder in the file browser; its notebook open with a running kernel."""
    page.locator(".jp-DirListing-item", has_text=PROJECT).dblclick()
    page.locator(".jp-BreadCrumbs", has_text=PROJECT).wait_for()
    page.locator(".jp-DirListing-item", has_text="analysis.ipynb").dblclick()
    cell_text(page, "data = [1, 2, 3]").wait_for()
    page.locator(".jp-NotebookPanel:visible .jp-Notebook-ExecutionIndicator"
                 "[data-status=idle]").wait_for()


def create_acp_agent(page, name: str, config: dict, ports: int | None = None) -> None:
    """An ACP agent on the project (the form is prefilled with the file browser's folder)."""
    open_panel(page)
    open_agent_form(page)
    page.fill(f"{PANEL} input[aria-label='Agent name']", name)
    page.select_option(f"{PANEL} select[aria-label=Provider]", "acp")
    if ports is not None:
        page.fill(f"{PANEL} input[aria-label='Loopback ports']", str(ports))
    page.fill(f"{PANEL} textarea[aria-label=Config]", json.dumps(config))
    page.click(f"{PANEL} button:has-text('Create')")
    wait_selected(page, f"{name} — {PROJECT}")


def allow(page, title_part: str) -> None:
    """Waits for the card asking `title_part…` and allows it once."""
    card = page.locator(CARD, has_text=title_part)
    card.wait_for()
    card.locator("button", has_text="Allow").first.click()
    card.wait_for(state="detached")


def test_an_agent_inserts_a_cell_and_runs_it_in_the_open_notebook(browser, lab):
    with lab_page(browser, lab, "notebook-tools") as page:
        open_project_notebook(page)

        create_acp_agent(page, "helper", {"command": ACP_AGENT_COMMAND})

        send(page, "notebook analysis.ipynb")
        # The insert asks first, showing the cell's source as added lines.
        card = page.locator(CARD)
        card.wait_for()
        assert "Insert a code cell" in card.inner_text()
        added = card.locator(".jp-AgenstraChat-diffLine[data-op='+']").all_inner_texts()
        assert added == [f"+{CELL_SOURCE}"], added
        page.wait_for_timeout(300)
        snap(page, "notebook-tools-insert-card")
        allow(page, "Insert a code cell")
        # Then the run, with the code it runs.
        run = page.locator(CARD)
        run.wait_for()
        assert CELL_SOURCE in run.inner_text()
        # Code for the user's kernel runs outside the sandbox: once at a time, never "always".
        assert run.locator("button").all_inner_texts() == ["Allow", "Reject"]
        snap(page, "notebook-tools-run-card")
        allow(page, "Run")

        answer = wait_answer(page, "notebook: inserted cell 1 ran:")
        assert "14" in answer.inner_text()
        lines = answer.locator(".jp-AgenstraChat-permission.jp-mod-resolved").all_inner_texts()
        assert len(lines) == 2 and all(line.startswith("Allowed by you") for line in lines)
        # The tool calls show in the transcript as any other tool does.
        tools = answer.locator(".jp-AgenstraChat-tool summary").evaluate_all(
            "nodes => nodes.map(n => n.firstChild.textContent)")
        assert tools == ["read_notebook", "insert_cell", "run_cells"], tools
        states = answer.locator(".jp-AgenstraChat-toolState").all_inner_texts()
        assert states == ["done", "done", "done"], states

        # The open notebook shows the agent's cell with its output, without a manual reload.
        page.locator(".lm-TabBar-tab", has_text="analysis.ipynb").click()
        cell_text(page, CELL_SOURCE).wait_for()
        output = page.locator(".jp-Notebook:visible .jp-OutputArea-output", has_text="14")
        output.wait_for()
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / "notebook-tools-notebook.png"))


@pytest.fixture
def live_lab(tmp_path) -> Iterator[JupyterProcess]:
    """JupyterLab with real-time collaboration (jupyter-collaboration's shared documents)."""
    (tmp_path / PROJECT).mkdir()
    (tmp_path / PROJECT / "analysis.ipynb").write_text(notebook_file("data = [1, 2, 3]"))
    server = start_jupyter(tmp_path, lab_env(tmp_path), collaborative=True)
    yield server
    stop_jupyter(server)


def test_with_collaboration_the_agents_cell_appears_live_and_the_users_typing_stays(
        browser, live_lab):
    with lab_page(browser, live_lab, "notebook-tools-live") as page:
        open_project_notebook(page)
        create_acp_agent(page, "helper", {"command": ACP_AGENT_COMMAND})
        send(page, "notebook analysis.ipynb")
        page.locator(CARD, has_text="Insert a code cell").wait_for()
        # While the agent waits, the user types in the first cell and does not save.
        page.locator(".lm-TabBar-tab", has_text="analysis.ipynb").click()
        first = cell_text(page, "data = [1, 2, 3]")
        first.click()
        page.keyboard.press("End")
        page.keyboard.type("  # typed meanwhile")
        allow(page, "Insert a code cell")
        # The agent's cell is in the open notebook at once: the turn has not even ended.
        page.locator(CARD, has_text="Run").wait_for()
        cell_text(page, CELL_SOURCE).wait_for()
        snap(page, "notebook-tools-live-inserted")
        allow(page, "Run")
        wait_answer(page, "notebook: inserted cell 1 ran:")
        page.locator(".jp-Notebook:visible .jp-OutputArea-output", has_text="14").wait_for()
        # Nothing reverted the notebook: the user's typing is still there, unsaved by them.
        cell_text(page, "data = [1, 2, 3]  # typed meanwhile").wait_for()
        page.wait_for_timeout(300)
        # The turn's filesChanged reloads no shared document, so no "unsaved changes" notice.
        assert page.locator(".Toastify__toast", has_text="changed on disk").count() == 0
        page.screenshot(path=str(ARTIFACTS / "notebook-tools-live-notebook.png"))
    # The room writes it to disk (a second after the last change, in place).
    path = Path(live_lab.data_dir).parent / PROJECT / "analysis.ipynb"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and CELL_SOURCE not in path.read_text():
        time.sleep(0.2)
    saved = json.loads(path.read_text())
    assert ["".join(c["source"]) for c in saved["cells"]] == ["data = [1, 2, 3]  # typed meanwhile",
                                                     CELL_SOURCE]


PLOT = ("import matplotlib.pyplot as plt\n"
        "xs = list(range(-5, 6))\n"
        "plt.plot(xs, [x ** 2 for x in xs])\n"
        "plt.title('x squared')\n"
        "plt.show()\n"
        "print('plotted', len(xs), 'points')")
CLAUDE_TIMEOUT_MS = 120_000  # claude-agent-acp starting Claude Code in its sandbox


@pytest.fixture
def claude_lab(tmp_path, vendor) -> Iterator[JupyterProcess]:
    need_cli("claude-agent-acp")
    (tmp_path / PROJECT).mkdir()
    (tmp_path / PROJECT / "analysis.ipynb").write_text(notebook_file("data = [1, 2, 3]"))
    path = f"{CLI_BIN}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    server = start_jupyter(tmp_path, {**lab_env(tmp_path), "PATH": path})
    yield server
    stop_jupyter(server)


def test_claude_plots_x_squared_in_the_open_notebook(browser, claude_lab, vendor):
    """The issue's user story: "add a cell that plots x² and run it", asked in the sidebar
    with the notebook open; the approvals show, the user allows, the cell and its plot
    appear in the open notebook, and the answer says what the run printed."""
    vendor.side_request = lambda body: not (body or {}).get("tools")  # titles and the like
    tool = "mcp__agenstra__"
    vendor.script(
        Reply(tool=ToolUse(f"{tool}read_notebook", {"path": "analysis.ipynb"})),
        Reply(tool=ToolUse(f"{tool}insert_cell", {"path": "analysis.ipynb", "index": 1,
                                                   "source": PLOT})),
        Reply(tool=ToolUse(f"{tool}run_cells", {"path": "analysis.ipynb", "cells": [1]})),
        Reply(answer=lambda body: "Done. The run said: " + " ".join(
            last_tool_result(body).split())[-300:]),
    )
    with lab_page(browser, claude_lab, "notebook-tools-claude") as page:
        open_project_notebook(page)

        create_acp_agent(page, "claude", {
            "command": ["claude-agent-acp"],
            "env": {"ANTHROPIC_BASE_URL": vendor.url, "ANTHROPIC_API_KEY": SECRET,
                    "CLAUDE_CODE_EXECUTABLE": str(CLI_BIN / "claude")}}, ports=vendor.port)

        send(page, "Add a cell that plots x² and run it")
        insert = page.locator(CARD)
        insert.wait_for(timeout=CLAUDE_TIMEOUT_MS)
        assert "Insert a code cell at position 1 of analysis.ipynb" in insert.inner_text()
        assert page.locator(CARD).count() == 1  # asked once: by the tool, not by Claude too
        snap(page, "notebook-tools-claude-insert")
        allow(page, "Insert a code cell")
        run = page.locator(CARD)
        run.wait_for(timeout=CLAUDE_TIMEOUT_MS)
        assert "Run cell 1 of analysis.ipynb" in run.inner_text()
        allow(page, "Run cell 1")

        answer = wait_answer(page, "Done. The run said:")
        assert "plotted 11 points" in answer.inner_text()
        page.locator(".lm-TabBar-tab", has_text="analysis.ipynb").click()
        cell_text(page, "plt.title('x squared')").wait_for()
        page.locator(".jp-Notebook:visible .jp-OutputArea-output img").wait_for()
        page.locator(".jp-Notebook:visible .jp-OutputArea-output",
                     has_text="plotted 11 points").wait_for()
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / "notebook-tools-claude-plot.png"))
        assert SECRET not in page.content()

"""The notebook tools as a user meets them: JupyterLab in headless Chromium, a notebook open
with its kernel, an agent of the sidebar that reads it, inserts a cell and runs it through
the controller's MCP endpoint, each write and run approved from a card first.

The SDK-based fake ACP agent (`notebook PATH`, tests/fakes/mcp_driver.py) is the scripted
model; the MCP client, endpoint, relay, sandbox, kernel and JupyterLab are real.
Screenshots land in test-artifacts/labextension/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

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


def allow(page, title_part: str) -> None:
    """Waits for the card asking `title_part…` and allows it once."""
    card = page.locator(CARD, has_text=title_part)
    card.wait_for()
    card.locator("button", has_text="Allow").first.click()
    card.wait_for(state="detached")


def test_an_agent_inserts_a_cell_and_runs_it_in_the_open_notebook(browser, lab):
    with lab_page(browser, lab, "notebook-tools") as page:
        # The project folder in the file browser; its notebook open with a running kernel.
        page.locator(".jp-DirListing-item", has_text=PROJECT).dblclick()
        page.locator(".jp-BreadCrumbs", has_text=PROJECT).wait_for()
        page.locator(".jp-DirListing-item", has_text="analysis.ipynb").dblclick()
        cell_text(page, "data = [1, 2, 3]").wait_for()
        page.locator(".jp-NotebookPanel:visible .jp-Notebook-ExecutionIndicator"
                     "[data-status=idle]").wait_for()

        open_panel(page)
        open_agent_form(page)
        page.fill(f"{PANEL} input[aria-label='Agent name']", "helper")
        page.select_option(f"{PANEL} select[aria-label=Provider]", "acp")
        page.fill(f"{PANEL} textarea[aria-label=Config]",
                  json.dumps({"command": ACP_AGENT_COMMAND}))
        page.click(f"{PANEL} button:has-text('Create')")
        wait_selected(page, f"helper — {PROJECT}")

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

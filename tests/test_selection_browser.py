""""Ask agent about selection" in real headless Chromium against a real JupyterLab server.

The user selects notebook cells, runs the command, and the next message carries them as a
"Context from the notebook …" section (labextension/src/selection.ts) that an echo agent
answers with; the user's bubble folds it. Screenshots land in test-artifacts/labextension/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .browser import (
    MESSAGES,
    PANEL,
    agent_id,
    find_in_palette,
    lab_env,
    lab_page,
    open_panel,
    rest,
    send,
    snap,
    wait_answer,
    wait_selected,
)
from .browser import jp_asyncio_loop as jp_asyncio_loop  # a fixture
from .browser import jp_server_cleanup as jp_server_cleanup  # a fixture
from .conftest import JupyterProcess, start_jupyter, stop_jupyter

pytestmark = pytest.mark.timeout(300)

FIRST = "data = [3, 1, 2]\nprint(sorted(data))"
SECOND = 'fence = "```"  # backticks in a cell\nlen(data) * 14'
CHIP = f"{PANEL} .jp-AgenstraChat-attachment"


@pytest.fixture
def lab(tmp_path) -> Iterator[JupyterProcess]:
    server = start_jupyter(tmp_path, lab_env(tmp_path))
    yield server
    stop_jupyter(server)


@pytest.fixture
def page(browser, lab, request) -> Iterator:
    with lab_page(browser, lab, request.node.name) as page:
        yield page


def write_notebook(root: Path, name: str) -> None:
    """Two code cells that ran: a printed stream and an execute_result."""
    def cell(cell_id: str, source: str, count: int, output: dict) -> dict:
        return {"cell_type": "code", "execution_count": count, "id": cell_id, "metadata": {},
                "outputs": [output], "source": source}
    notebook = {
        "cells": [
            cell("one", FIRST, 1, {"output_type": "stream", "name": "stdout",
                                   "text": "[1, 2, 3]\n"}),
            cell("two", SECOND, 2, {"output_type": "execute_result", "execution_count": 2,
                                    "metadata": {}, "data": {"text/plain": "42"}}),
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                    "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    (root / f"{name}.ipynb").write_text(json.dumps(notebook))


def select_cells(page, first: int, last: int) -> None:
    """Command mode on cell `first`, the selection extended down to `last`."""
    page.locator(".jp-Notebook .jp-Cell").nth(first).locator(".jp-InputPrompt").click()
    for _ in range(last - first):
        page.keyboard.press("Shift+ArrowDown")
    page.wait_for_function(
        "n => document.querySelectorAll('.jp-Notebook .jp-Cell.jp-mod-selected').length === n",
        arg=last - first + 1)


def test_ask_about_selected_cells(page, lab):
    write_notebook(Path(lab.data_dir).parent, "analysis")
    page.goto(f"{lab.full_url}lab/tree/analysis.ipynb")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    open_panel(page)
    wait_selected(page, "assistant")

    # With a notebook active the composer offers the button; it attaches the active cell.
    page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-InputPrompt").click()
    page.click(f"{PANEL} .jp-AgenstraChat-askSelection")
    assert page.locator(CHIP).inner_text().strip().startswith("1 cell from analysis.ipynb")
    page.click(f"{CHIP} [aria-label='Remove attached cells']")
    page.wait_for_selector(CHIP, state="detached")

    # The cell context menu has the command.
    page.locator(".jp-Notebook .jp-Cell").nth(0).locator(".jp-InputPrompt").click(button="right")
    page.locator(".lm-Menu-item", has_text="Ask agent about selection").wait_for()
    page.keyboard.press("Escape")

    # Both cells selected, the command from the palette: a chip, the composer focused.
    select_cells(page, 0, 1)
    find_in_palette(page, "Ask agent", "Ask agent about selection")
    page.keyboard.press("Enter")
    page.wait_for_selector(CHIP)
    assert page.locator(CHIP).inner_text().strip().startswith("2 cells from analysis.ipynb")
    box = page.locator(f"{PANEL} textarea[aria-label=Message]")
    page.wait_for_function("() => document.activeElement?.getAttribute('aria-label') === 'Message'")
    snap(page, "selection-attached")

    send(page, "what does this do?")
    answer = wait_answer(page, "what does this do?")
    page.wait_for_selector(CHIP, state="detached")  # sending clears it
    assert box.input_value() == ""

    # What the agent received: the framed cells, sources and outputs, then the question.
    path = f"agenstra/api/clients/local/agents/{agent_id(lab, 'assistant')}/messages"
    user, reply = rest(lab, path)[-2:]
    received = user["text"]
    assert received.startswith("Context from the notebook analysis.ipynb (cells 1-2):\n\n")
    assert received.endswith("\n\nEnd of context.\n\nwhat does this do?")
    assert FIRST in received and SECOND in received
    assert "# output:\n[1, 2, 3]\n" in received and "# output:\n42\n" in received
    assert "````python\n# cell 2" in received  # a fence the cell's ``` cannot close
    assert reply["response"]["result"] == f"Echo: {received}"
    assert "sorted(data)" in answer.inner_text()

    # The user's bubble folds the context under its first line; the question shows.
    bubble = page.locator(f"{MESSAGES}.jp-mod-user").last
    details = bubble.locator("details.jp-AgenstraChat-context")
    assert details.get_attribute("open") is None
    assert details.locator("summary").inner_text() == \
        "Context from the notebook analysis.ipynb (cells 1-2)"
    assert not details.locator("pre").is_visible()
    assert bubble.inner_text().strip().endswith("what does this do?")
    snap(page, "selection-sent")
    details.locator("summary").click()
    assert FIRST.splitlines()[1] in details.locator("pre").inner_text()
    snap(page, "selection-context-open")

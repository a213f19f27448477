"""Approvals, projects and live reload in the JupyterLab sidebar (real headless Chromium).

A real Jupyter server with its local manager; agents are created from the sidebar's form on
the folder the file browser shows. The SDK-based fake ACP agent (`approve`) asks to write
approved.txt with a diff and writes it only if allowed; a shell agent on the same project
rewrites notebooks. Screenshots land in test-artifacts/labextension/.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .browser import (
    ARTIFACTS,
    CONTRAST_JS,
    PANEL,
    lab_env,
    lab_page,
    open_agent_form,
    open_panel,
    send,
    snap,
    use_dark_theme,
    wait_answer,
    wait_selected,
)
from .browser import jp_asyncio_loop as jp_asyncio_loop  # a fixture
from .browser import jp_server_cleanup as jp_server_cleanup  # a fixture
from .conftest import JupyterProcess, start_jupyter, stop_jupyter
from .fakes import ACP_AGENT_COMMAND
from .fakes.vendors import Reply, ToolUse
from .helpers import CLI_BIN, SECRET, need_cli

pytestmark = pytest.mark.timeout(420)

CLAUDE_TIMEOUT_MS = 120_000  # claude-agent-acp starting Claude Code in its sandbox

PROJECT = "work/proj"
CARD = f"{PANEL} .jp-AgenstraChat-permission.jp-mod-pending"
LINE = f"{PANEL} .jp-AgenstraChat-permission.jp-mod-resolved"


def notebook(*sources: str) -> str:
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
              "outputs": [], "source": source} for i, source in enumerate(sources)]
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


@pytest.fixture
def lab(tmp_path) -> Iterator[JupyterProcess]:
    project = tmp_path / PROJECT
    project.mkdir(parents=True)
    (project / "approved.txt").write_text("old content\n")
    (project / "dirty.ipynb").write_text(notebook("user_cell = 1"))
    (project / "clean.ipynb").write_text(notebook("before = 1"))
    (project / "kernel.ipynb").write_text(notebook("kernel_cell = 1"))
    (project / "typed.ipynb").write_text(notebook("typed_cell = 1"))
    (tmp_path / "outside.txt").write_text("not part of the project\n")
    server = start_jupyter(tmp_path, lab_env(tmp_path))
    yield server
    stop_jupyter(server)


@pytest.fixture
def page(browser, lab, request) -> Iterator:
    with lab_page(browser, lab, request.node.name) as page:
        yield page


def root_of(server: JupyterProcess) -> Path:
    return Path(server.data_dir).parent


def open_document(page, server: JupyterProcess, path: str) -> None:
    """Opens a file from its URL: the file browser moves to its folder, as a user's would."""
    page.goto(f"{server.full_url}lab/tree/{path}")
    page.wait_for_selector(".jp-LabShell")
    page.locator(".lm-TabBar-tab", has_text=path.split("/")[-1]).first.wait_for()


def create_on_project(page, name: str, provider: str, config: dict | None = None) -> None:
    """The form offers the file browser's folder as the project; it is kept as offered."""
    open_agent_form(page)
    project = page.locator(f"{PANEL} input[aria-label=Project]")
    assert project.input_value() == PROJECT
    page.fill(f"{PANEL} input[aria-label='Agent name']", name)
    page.select_option(f"{PANEL} select[aria-label=Provider]", provider)
    if config is not None:
        page.fill(f"{PANEL} textarea[aria-label=Config]", json.dumps(config))
    page.click(f"{PANEL} button:has-text('Create')")
    wait_selected(page, f"{name} — {PROJECT}")  # the picker shows the agent's project


def editor_text(page, name: str) -> str:
    """The text the open file editor of `name` shows."""
    return page.evaluate(
        "name => [...document.querySelectorAll('.jp-MainAreaWidget')]"
        ".filter(w => w.querySelector('.jp-FileEditor'))"
        ".map(w => w.querySelector('.cm-content').innerText).join('\\n')", name)


def test_create_form_permissions_policy_note_and_a_refused_folder(page, lab):
    open_panel(page)
    open_agent_form(page)
    # At the Jupyter root the file browser offers no folder: a private workspace.
    assert page.locator(f"{PANEL} input[aria-label=Project]").input_value() == ""
    permissions = page.locator(f"{PANEL} select[aria-label=Permissions]")
    assert permissions.input_value() == "ask"
    assert permissions.locator("option").all_inner_texts() == ["ask", "workspace", "allow", "deny"]
    # A CLI preset that cannot ask says so, next to the policy that decides for it.
    page.select_option(f"{PANEL} select[aria-label=Provider]", "cli")
    note = page.locator(f"{PANEL} [data-approvals=policy]")
    page.fill(f"{PANEL} textarea[aria-label=Config]", '{"preset": "claude"}')
    assert note.count() == 0
    page.fill(f"{PANEL} textarea[aria-label=Config]", '{"preset": "codex"}')
    assert "This agent cannot ask before it acts: its policy decides" in note.inner_text()
    snap(page, "create-form-policy")

    # A folder outside the root: the controller's 400 shows in the form, nothing is created.
    page.select_option(f"{PANEL} select[aria-label=Provider]", "echo")
    page.fill(f"{PANEL} textarea[aria-label=Config]", "")
    page.fill(f"{PANEL} input[aria-label='Agent name']", "escapee")
    page.fill(f"{PANEL} input[aria-label=Project]", "../..")
    page.click(f"{PANEL} button:has-text('Create')")
    error = page.locator(f"{PANEL} .jp-AgenstraChat-formError")
    error.wait_for()
    assert error.inner_text().strip()  # the controller's 400 message, in the form
    assert "escapee" not in page.locator(f"{PANEL} select[aria-label=Agent]").inner_text()


def test_an_approval_with_its_diff_answered_by_keyboard_and_after_a_reload(page, lab):
    root = root_of(lab)
    target = root / PROJECT / "approved.txt"
    open_document(page, lab, f"{PROJECT}/approved.txt")
    page.locator(".jp-FileEditor .cm-content", has_text="old content").wait_for()
    open_panel(page)
    create_on_project(page, "fixer", "acp", {"command": ACP_AGENT_COMMAND})

    # The request: its title, kind, path, the diff as -/+ lines, a countdown, four buttons.
    send(page, "approve")
    card = page.locator(CARD)
    card.wait_for()
    assert "Write approved.txt" in card.locator(".jp-AgenstraChat-permissionTitle").inner_text()
    assert card.locator(".jp-AgenstraChat-permissionKind").inner_text().lower() == "edit"
    assert "approved.txt" in card.locator(".jp-AgenstraChat-permissionPaths").inner_text()
    removed = card.locator(".jp-AgenstraChat-diffLine[data-op='-']")
    added = card.locator(".jp-AgenstraChat-diffLine[data-op='+']")
    assert removed.all_inner_texts() == ["\u2212old content"]  # a real minus sign
    assert added.all_inner_texts() == ["+approved content"]
    assert re.search(r"expires in \d+ min", card.inner_text())
    buttons = card.locator("button")
    assert buttons.all_inner_texts() == ["Allow", "Always", "Reject", "Never"]
    page.wait_for_timeout(300)
    snap(page, "approval-card")
    assert target.read_text() == "old content\n"  # nothing happens before the answer

    # The card took the focus (the emptied composer was not being typed in): Tab, Enter.
    assert page.evaluate("() => document.activeElement?.classList.contains("
                         "'jp-AgenstraChat-permission')")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement?.textContent") == "Allow"
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # a visible focus ring
    page.keyboard.press("Enter")

    answer = wait_answer(page, "approve: yes file=written")
    assert target.read_text() == "approved content\n"
    # The stored answer shows the request settled, in one line, and no card is left.
    line = answer.locator(".jp-AgenstraChat-permission.jp-mod-resolved")
    # The controller recorded this page's user (its display name): here, "you".
    assert line.inner_text().strip() == "Allowed by you: Write approved.txt"
    me = page.evaluate("() => fetch('/jp/api/me').then(r => r.json())")["identity"]
    assert line.get_attribute("data-user") == me["display_name"], me
    assert page.locator(CARD).count() == 0
    # The open editor of the file reloaded (it had no unsaved changes): the agent's edit.
    page.locator(".jp-FileEditor .cm-content", has_text="approved content").wait_for()
    assert "old content" not in editor_text(page, "approved.txt")

    # A second request, then the page reloads: the card comes back and can be answered.
    send(page, "approve")
    page.locator(CARD).wait_for()
    first_id = page.locator(CARD).get_attribute("data-request-id")
    page.reload()
    page.wait_for_selector(".jp-LabShell")
    open_panel(page)
    wait_selected(page, f"fixer — {PROJECT}")
    card = page.locator(CARD)
    card.wait_for()
    assert page.locator(CARD).count() == 1  # the request was re-sent once, shown once
    assert card.get_attribute("data-request-id") == first_id
    card.locator("button", has_text="Reject").click()
    wait_answer(page, "approve: no file=untouched")
    lines = page.locator(LINE).all_inner_texts()
    assert len(lines) == 2 and re.fullmatch(r"Rejected by .+: Write approved\.txt", lines[1])
    assert target.read_text() == "approved content\n"

    # Dark theme: the settled lines and an open card stay readable.
    send(page, "approve")
    page.locator(CARD).wait_for()
    use_dark_theme(page)
    page.wait_for_timeout(300)
    snap(page, "approval-card-dark")
    ratios = page.evaluate(CONTRAST_JS, [
        f"{CARD} .jp-AgenstraChat-permissionTitle",
        f"{CARD} .jp-AgenstraChat-diffLine[data-op='+']",
        f"{CARD} .jp-AgenstraChat-diffLine[data-op='-']",
        LINE,
    ])
    assert all(ratio >= 4.5 for ratio in ratios.values()), ratios
    page.locator(CARD).locator("button", has_text="Reject").click()
    wait_answer(page, "file=untouched")


def open_notebook(page, name: str, text: str) -> None:
    """Opens a notebook of the file browser's folder without a kernel, saved (not dirty)."""
    page.locator(".jp-DirListing-item", has_text=name).dblclick()
    page.locator(".jp-Dialog button", has_text="No Kernel").click()
    cell_text(page, text).wait_for()
    # Opening it changed its metadata (an unsaved change): saved, it is the file again.
    page.locator(".jp-NotebookPanel:visible .jp-Notebook").click()
    page.keyboard.press("Control+s")
    page.locator(".lm-TabBar-tab.jp-mod-dirty", has_text=name).wait_for(state="detached")


def tab(page, name: str):
    return page.locator(".lm-TabBar-tab", has_text=name)


def cell_text(page, text: str):
    return page.locator(".jp-Notebook:visible .cm-content", has_text=text)


def test_changed_notebooks_reload_unless_they_hold_unsaved_edits(page, lab):
    root = root_of(lab)
    open_document(page, lab, f"{PROJECT}/approved.txt")  # the file browser shows the project
    open_notebook(page, "clean.ipynb", "before = 1")
    open_notebook(page, "dirty.ipynb", "user_cell = 1")
    # An unsaved edit in dirty.ipynb; clean.ipynb has none.
    cell_text(page, "user_cell = 1").click()
    page.keyboard.press("End")
    page.keyboard.type("  # mine")
    page.locator(".lm-TabBar-tab.jp-mod-dirty", has_text="dirty.ipynb").wait_for()
    assert page.locator(".lm-TabBar-tab.jp-mod-dirty", has_text="clean.ipynb").count() == 0
    open_panel(page)
    create_on_project(page, "rewriter", "shell")

    # The agent rewrites both notebooks on disk (its workspace is the project).
    send(page, "sed -i 's/before = 1/agent_cell = 2/' clean.ipynb && "
               "sed -i 's/user_cell = 1/agent_cell = 2/' dirty.ipynb")
    answer = wait_answer(page, "exit code 0")
    # The manager's before/after of each file: collapsed, "+n -m", the lines on click.
    diffs = answer.locator("details.jp-AgenstraChat-fileDiff")
    assert diffs.locator(".jp-AgenstraChat-diffPath").all_inner_texts() == [
        "clean.ipynb", "dirty.ipynb"]
    assert diffs.first.get_attribute("open") is None
    assert diffs.first.locator(".jp-AgenstraChat-diffCount").inner_text() == "+1 \u22121"
    diffs.first.locator("summary").click()
    assert "agent_cell = 2" in diffs.first.locator("[data-op='+']").inner_text()
    assert "agent_cell" in (root / PROJECT / "dirty.ipynb").read_text()

    # The clean one shows the agent's cells at once; the dirty one keeps the user's edit.
    notice = page.locator(".Toastify__toast, .jp-toast", has_text=(
        f"{PROJECT}/dirty.ipynb changed on disk; you have unsaved changes"))
    notice.first.wait_for()
    tab(page, "dirty.ipynb").click()
    cell_text(page, "user_cell = 1  # mine").wait_for()
    snap(page, "unsaved-notice")
    tab(page, "clean.ipynb").click()
    cell_text(page, "agent_cell = 2").wait_for()
    assert cell_text(page, "before = 1").count() == 0
    page.screenshot(path=str(ARTIFACTS / "reloaded-notebook.png"))
    # The reload saved nothing: the user's edit is still unsaved, the file is the agent's.
    assert "# mine" not in (root / PROJECT / "dirty.ipynb").read_text()
    assert page.locator(".lm-TabBar-tab.jp-mod-dirty", has_text="dirty.ipynb").count() == 1


def test_an_answer_from_another_tab_settles_the_card_in_both(browser, page, lab):
    """Two tabs show the same request (same requestId); either may answer it."""
    created = httpx.post(f"{lab.full_url}agenstra/api/clients/local/agents",
                         headers={"Authorization": f"token {lab.token}"},
                         json={"name": "shared", "provider": "acp",
                               "config": {"command": ACP_AGENT_COMMAND}})
    created.raise_for_status()
    with lab_page(browser, lab, "approvals-second-tab") as other:
        for tab_page in (page, other):
            open_panel(tab_page)
            tab_page.select_option(f"{PANEL} select[aria-label=Agent]", label="shared")
            wait_selected(tab_page, "shared")
        send(page, "approve")
        for tab_page in (page, other):
            tab_page.locator(CARD).wait_for()
        assert (page.locator(CARD).get_attribute("data-request-id")
                == other.locator(CARD).get_attribute("data-request-id"))
        other.locator(CARD).locator("button", has_text="Reject").click()
        # The tab that did not answer shows who did, without a reload.
        for tab_page in (page, other):
            wait_answer(tab_page, "approve: no file=untouched")
            line = tab_page.locator(LINE)
            assert re.fullmatch(r"Rejected by .+: Write approved\.txt", line.inner_text().strip())
            assert tab_page.locator(CARD).count() == 0


def open_with_kernel(page, name: str, text: str) -> None:
    """Opens a notebook of the file browser's folder with the default kernel, idle: JupyterLab
    wrote the kernel's metadata into it, so it is dirty though nobody touched it."""
    page.locator(".jp-DirListing-item", has_text=name).dblclick()
    page.locator(".jp-Dialog .jp-mod-accept").click()  # "Select Kernel": the default one
    cell_text(page, text).wait_for()
    page.locator(".jp-NotebookPanel:visible .jp-Notebook-ExecutionIndicator"
                 "[data-status=idle]").wait_for()
    page.locator(".lm-TabBar-tab.jp-mod-dirty", has_text=name).wait_for()


def test_a_notebook_dirty_only_by_its_kernel_reloads_one_typed_in_does_not(page, lab):
    root = root_of(lab)
    open_document(page, lab, f"{PROJECT}/approved.txt")  # the file browser shows the project
    open_with_kernel(page, "kernel.ipynb", "kernel_cell = 1")
    open_with_kernel(page, "typed.ipynb", "typed_cell = 1")
    cell_text(page, "typed_cell = 1").click()
    page.keyboard.press("End")
    page.keyboard.type("  # mine")
    # Both are dirty; only typed.ipynb holds the user's edit.
    for name in ("kernel.ipynb", "typed.ipynb"):
        assert page.locator(".lm-TabBar-tab.jp-mod-dirty", has_text=name).count() == 1
    open_panel(page)
    create_on_project(page, "rewriter", "shell")

    send(page, "sed -i 's/kernel_cell = 1/agent_cell = 2/' kernel.ipynb && "
               "sed -i 's/typed_cell = 1/agent_cell = 3/' typed.ipynb")
    wait_answer(page, "exit code 0")
    notice = page.locator(".Toastify__toast, .jp-toast", has_text=(
        f"{PROJECT}/typed.ipynb changed on disk; you have unsaved changes"))
    notice.first.wait_for()
    # The notebook only its kernel made dirty shows the agent's cell, no reload asked for;
    # its kernel is still the one it had.
    tab(page, "kernel.ipynb").click()
    cell_text(page, "agent_cell = 2").wait_for()
    assert cell_text(page, "kernel_cell = 1").count() == 0
    kernel = page.locator(".jp-NotebookPanel:visible .jp-KernelName, "
                          ".jp-NotebookPanel:visible .jp-Toolbar-kernelName")
    assert "Python 3" in kernel.first.inner_text()
    page.screenshot(path=str(ARTIFACTS / "reloaded-kernel-notebook.png"))
    # Only one notice: the one for the notebook the user typed in, which keeps the typing.
    assert page.locator(".Toastify__toast, .jp-toast", has_text="kernel.ipynb").count() == 0
    tab(page, "typed.ipynb").click()
    cell_text(page, "typed_cell = 1  # mine").wait_for()
    assert "agent_cell = 3" in (root / PROJECT / "typed.ipynb").read_text()
    assert "# mine" not in (root / PROJECT / "typed.ipynb").read_text()
    # The reload saved nothing: the agent's file is what the disk holds.
    assert "kernelspec" not in json.loads((root / PROJECT / "kernel.ipynb").read_text())["metadata"]


# -- the whole story with the real claude-agent-acp (issue #15) -------------------------------

FOLDER = "analysis"


def notebook_file(*sources: str) -> str:
    """A notebook as Jupyter writes it (one key a line): its diffs are a few lines."""
    cells = [{"cell_type": "code", "execution_count": None, "id": f"cell{i}", "metadata": {},
              "outputs": [], "source": source} for i, source in enumerate(sources)]
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5},
                      indent=1) + "\n"


@pytest.fixture
def claude_lab(tmp_path, vendor) -> Iterator[JupyterProcess]:
    """A user's Jupyter with a folder holding a notebook; the agent CLIs on its PATH."""
    need_cli("claude-agent-acp")
    (tmp_path / FOLDER).mkdir()
    (tmp_path / FOLDER / "report.ipynb").write_text(notebook_file("data = [1, 2, 3]"))
    path = f"{CLI_BIN}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    server = start_jupyter(tmp_path, {**lab_env(tmp_path), "PATH": path})
    yield server
    stop_jupyter(server)


def accept_kernel_dialog(page, timeout: float = 3000) -> None:
    """A restored notebook may ask for its kernel again: the default one."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.locator(".jp-Dialog .jp-mod-accept").click(timeout=timeout)
    except PlaywrightTimeout:
        pass


def script_change(vendor, notebook: Path, *sources: str) -> None:
    """The model's next turn: read the notebook, write it with `sources` as its cells."""
    vendor.script(
        Reply(tool=ToolUse("Read", {"file_path": str(notebook)})),
        Reply(tool=ToolUse("Write", {"file_path": str(notebook),
                                     "content": notebook_file(*sources)})),
        Reply(text=f"Done: the notebook has {len(sources)} cells."),
    )


def test_a_new_user_has_claude_change_their_open_notebook(browser, claude_lab, vendor):
    notebook = (root_of(claude_lab) / FOLDER / "report.ipynb").resolve()
    # Claude Code asks the model for a session title besides the turn's own requests.
    vendor.side_request = lambda body: not (body or {}).get("tools")
    with lab_page(browser, claude_lab, "flagship") as page:
        # The folder, opened in the file browser; its notebook, opened with a kernel.
        page.locator(".jp-DirListing-item", has_text=FOLDER).dblclick()
        page.locator(".jp-BreadCrumbs", has_text=FOLDER).wait_for()
        open_with_kernel(page, "report.ipynb", "data = [1, 2, 3]")

        # The agent, from the sidebar's form: the project is the folder the browser shows.
        open_panel(page)
        open_agent_form(page)
        assert page.locator(f"{PANEL} input[aria-label=Project]").input_value() == FOLDER
        page.fill(f"{PANEL} input[aria-label='Agent name']", "claude")
        page.select_option(f"{PANEL} select[aria-label=Provider]", "acp")
        page.fill(f"{PANEL} input[aria-label='Loopback ports']", str(vendor.port))
        page.fill(f"{PANEL} textarea[aria-label=Config]", json.dumps({
            "command": ["claude-agent-acp"],
            "env": {"ANTHROPIC_BASE_URL": vendor.url, "ANTHROPIC_API_KEY": SECRET,
                    "CLAUDE_CODE_EXECUTABLE": str(CLI_BIN / "claude")}}))
        page.click(f"{PANEL} button:has-text('Create')")
        wait_selected(page, f"claude — {FOLDER}")

        # The ask: the card shows the Write with its lines, and nothing is written before.
        script_change(vendor, notebook, "data = [1, 2, 3]", "total = sum(data)")
        send(page, "Add a cell that sums data")
        card = page.locator(CARD)
        card.wait_for(timeout=CLAUDE_TIMEOUT_MS)
        assert card.locator(".jp-AgenstraChat-permissionTitle").inner_text() == (
            "Write report.ipynb")
        assert card.locator(".jp-AgenstraChat-permissionKind").inner_text().lower() == "edit"
        added = card.locator(".jp-AgenstraChat-diffLine[data-op='+']").all_inner_texts()
        assert '+   "source": "total = sum(data)"' in added, added
        assert "total" not in notebook.read_text()
        page.wait_for_timeout(300)
        snap(page, "flagship-card")

        # claude-agent-acp's options; "Always Allow" would let the next edit through unasked.
        assert card.locator("button").all_inner_texts() == ["Always Allow", "Allow", "Reject"]

        # Long lines wrap in the narrow panel: the diff needs no scrolling sideways.
        assert page.evaluate("() => [...document.querySelectorAll("
                             "'#agenstra-chat .jp-AgenstraChat-diff pre')]"
                             ".every(pre => pre.scrollWidth <= pre.clientWidth)")

        # Answered by keyboard: the card has the focus; Tab goes through the options.
        assert page.evaluate("() => document.activeElement?.classList.contains("
                             "'jp-AgenstraChat-permission')")
        for name in ("Always Allow", "Allow"):
            page.keyboard.press("Tab")
            assert page.evaluate("() => document.activeElement?.textContent") == name
        page.keyboard.press("Enter")
        answer = wait_answer(page, "Done: the notebook has 2 cells.")
        line = answer.locator(".jp-AgenstraChat-permission.jp-mod-resolved")
        assert line.inner_text().strip() == "Allowed by you: Write report.ipynb"
        # Each tool call once, finished (the Write is announced again with its diff).
        states = answer.locator(".jp-AgenstraChat-toolState").all_inner_texts()
        assert states == ["done", "done"], states
        assert "total = sum(data)" in notebook.read_text()
        # The open notebook (dirty with its kernel's metadata only) shows the cell at once.
        tab(page, "report.ipynb").click()  # in front again (open_panel clicked the Launcher)
        cell_text(page, "total = sum(data)").wait_for()
        assert page.locator(CARD).count() == 0
        page.screenshot(path=str(ARTIFACTS / "flagship-notebook.png"))

        # A second change waits for its answer while the page reloads.
        script_change(vendor, notebook, "data = [1, 2, 3]", "total = sum(data)",
                      "print(total)")
        send(page, "Print the total")
        page.locator(CARD).wait_for(timeout=CLAUDE_TIMEOUT_MS)
        first_id = page.locator(CARD).get_attribute("data-request-id")
        page.reload()
        page.wait_for_selector(".jp-LabShell")
        accept_kernel_dialog(page)
        cell_text(page, "total = sum(data)").wait_for()
        open_panel(page)
        wait_selected(page, f"claude — {FOLDER}")
        card = page.locator(CARD)
        card.wait_for()
        assert page.locator(CARD).count() == 1 and card.get_attribute("data-request-id") == first_id
        assert '+   "source": "print(total)"' in card.locator(
            ".jp-AgenstraChat-diffLine[data-op='+']").all_inner_texts()
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / "flagship-reloaded-card.png"))
        assert "print(total)" not in notebook.read_text()
        card.locator("button", has_text=re.compile(r"^Allow$")).click()
        wait_answer(page, "Done: the notebook has 3 cells.")
        cell_text(page, "print(total)").wait_for()
        lines = page.locator(LINE).all_inner_texts()
        assert lines == ["Allowed by you: Write report.ipynb"] * 2, lines
        page.screenshot(path=str(ARTIFACTS / "flagship-second-change.png"))
        assert SECRET not in page.content()  # the key typed into the form never comes back

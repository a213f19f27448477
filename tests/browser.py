"""Helpers of the browser tests: JupyterLab in headless Chromium, driven by Playwright.

The browser test modules share these page helpers and constants, and the two fixtures that
replace pytest-jupyter's in-process server (import them into the module); the `browser`
fixture is in conftest.py.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from .conftest import JupyterProcess

CHROMIUM = os.environ.get("AGENSTRA_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "labextension"
# Flags that keep Chromium off the network this machine does not have.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PANEL = "#agenstra-chat"
MESSAGES = f"{PANEL} .jp-AgenstraChat-message[data-id]"
TIMEOUT_MS = 30_000
STATE_KEY = "@agenstra/jupyterlab:plugin:state"  # where the panel remembers its agent


@pytest.fixture
def jp_asyncio_loop() -> Iterator[None]:
    """Replaces pytest-jupyter's loop: Playwright runs its own loop in browser tests."""
    yield None


@pytest.fixture
def jp_server_cleanup() -> Iterator[None]:
    """No in-process Jupyter server in browser tests: they start real ones in subprocesses."""
    yield None


def browser_reason() -> str | None:
    if not shutil.which(CHROMIUM):
        return f"no Chromium at {CHROMIUM} (scripts/test.sh installs Debian's chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


def lab_env(root: Path) -> dict[str, str]:
    """Echo agents answer with what they got; JupyterLab keeps its state under `root`."""
    return {"AGENSTRA_DEFAULT_PROVIDER": "echo",
            "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"),
            "JUPYTERLAB_SETTINGS_DIR": str(root / "settings")}


@contextmanager
def lab_page(browser, server: JupyterProcess, name: str) -> Iterator:
    """JupyterLab, logged in, in a fresh browser context; a screenshot of it at the end."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    console: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}")
            if message.type in ("error", "warning") else None)
    try:
        page.goto(f"{server.full_url}lab?token={server.token}")
        page.wait_for_selector(".jp-LabShell")
        yield page
    except BaseException:
        print(failure_context(page, server, console))  # in the report of the failed test
        raise
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def failure_context(page, server: JupyterProcess, console: list[str]) -> str:
    """What a failed browser test needs to be understood from a CI log alone: the panel's
    text, the page's console errors and the end of the server's log."""
    try:
        panel = page.evaluate(f"() => document.querySelector('{PANEL}')?.innerText ?? ''")
    except Exception as exc:  # a closed page: say why
        panel = f"(unreadable: {exc})"
    log = Path(server.data_dir).parent / "jupyter.log"
    try:
        tail = log.read_text(errors="replace").splitlines()[-60:]
    except OSError:
        tail = [f"(no log at {log})"]
    return "\n".join(["--- the panel says:", panel[-2000:], "--- console:", *console[-20:],
                      "--- server log:", *tail])


def find_in_palette(page, query: str, label: str) -> None:
    """Open the command palette, type `query` and wait until it offers `label`.

    The palette is modal and closes whenever it loses the focus (a dialog closing gives the
    focus back, a notification appears): then it is opened again, a few times at most.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    item = page.locator(".lm-CommandPalette-item", has_text=label)
    for _ in range(5):
        page.keyboard.press("Escape")  # out of any text field (or a half-open palette) first
        page.keyboard.press("Control+Shift+C")
        try:
            page.locator(".lm-CommandPalette-input").fill(query, timeout=5000)
            item.first.wait_for(timeout=5000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"the command palette never offered {label!r}")


def use_dark_theme(page) -> None:
    """Switch JupyterLab to its dark theme through the command palette."""
    find_in_palette(page, "Use Theme: JupyterLab Dark", "Use Theme: JupyterLab Dark")
    page.keyboard.press("Enter")
    page.wait_for_selector("body[data-jp-theme-light='false']", state="attached")


def open_panel(page) -> None:
    """The keyboard shortcut (Alt+Shift+C) opens the panel; it connects on its own."""
    page.locator("#jp-main-dock-panel").click(position={"x": 5, "y": 5})
    page.keyboard.press("Alt+Shift+C")
    page.wait_for_selector(f"{PANEL}:visible")
    wait_state(page, "connected")


def wait_state(page, state: str) -> None:
    page.wait_for_selector(f'{PANEL} .jp-AgenstraChat-status[data-state="{state}"]')


def open_agent_form(page) -> None:
    """`+` is enabled once the manager's providers list has arrived."""
    page.click(f"{PANEL} [title='New agent'][aria-disabled='false']")
    page.wait_for_selector(f"{PANEL} form.jp-AgenstraChat-create")


def create_agent(page, name: str, provider: str = "echo", config: dict | None = None) -> None:
    open_agent_form(page)
    page.fill(f"{PANEL} input[aria-label='Agent name']", name)
    page.select_option(f"{PANEL} select[aria-label=Provider]", provider)
    if config is not None:
        page.fill(f"{PANEL} textarea[aria-label=Config]", json.dumps(config))
    page.click(f"{PANEL} button:has-text('Create')")
    wait_selected(page, name)


def wait_selected(page, agent_name: str) -> None:
    page.wait_for_function(
        "name => document.querySelector('#agenstra-chat select[aria-label=Agent]')"
        "?.selectedOptions[0]?.textContent === name", arg=agent_name)


def send(page, text: str) -> None:
    box = page.locator(f"{PANEL} textarea[aria-label=Message]")
    box.fill(text)
    box.press("Enter")


def wait_answer(page, text: str):
    """The agent's stored answer containing `text`."""
    answer = page.locator(f"{MESSAGES}.jp-mod-agent", has_text=text)
    answer.last.wait_for()
    return answer.last


def shown_ids(page) -> list[str]:
    return page.eval_on_selector_all(MESSAGES, "nodes => nodes.map(n => n.dataset.id)")


def rest(server: JupyterProcess, path: str) -> Any:
    response = httpx.get(f"{server.full_url}{path}",
                         headers={"Authorization": f"token {server.token}"})
    response.raise_for_status()
    return response.json()


def agent_id(server: JupyterProcess, name: str) -> str:
    agents = rest(server, "agenstra/api/clients/local/agents")
    return next(a["id"] for a in agents if a["name"] == name)


def stored_ids(server: JupyterProcess, agent_name: str) -> list[str]:
    """The agent's history as the controller's REST API returns it."""
    path = f"agenstra/api/clients/local/agents/{agent_id(server, agent_name)}/messages"
    return [m["id"] for m in rest(server, path)]


def workspace(server: JupyterProcess) -> dict:
    return rest(server, "lab/api/workspaces/default")


def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def snap(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator(PANEL).screenshot(path=str(ARTIFACTS / f"{name}.png"))



# The WCAG contrast ratio of each element's text against the background it is drawn on.
CONTRAST_JS = """selectors => {
  const rgba = c => {
    const v = c.match(/[\\d.]+/g).map(Number);
    return [v[0], v[1], v[2], v[3] ?? 1];
  };
  const backdrop = el => {
    for (; el; el = el.parentElement) {
      const c = rgba(getComputedStyle(el).backgroundColor);
      if (c[3] > 0.5) return c;
    }
    return [255, 255, 255, 1];
  };
  const luminance = c => c.slice(0, 3).map(v => {
    v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  }).reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const ratio = el => {
    const bg = backdrop(el), fg = rgba(getComputedStyle(el).color);
    const text = [0, 1, 2].map(i => fg[i] * fg[3] + bg[i] * (1 - fg[3]));
    const [hi, lo] = [luminance(text), luminance(bg)].sort((a, b) => b - a);
    return (hi + 0.05) / (lo + 0.05);
  };
  return Object.fromEntries(selectors.map(s => [s, ratio(document.querySelector(s))]));
}"""


def write_widget_notebook(root: Path, name: str, agent: str) -> str:
    """NAME.ipynb in the server's root with one cell that shows ChatWidget(agent); its path."""
    notebook = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "chat", "metadata": {},
                   "outputs": [], "source": "from agenstra_jupyter.widgets import ChatWidget\n"
                                            f"ChatWidget({agent!r})"}],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                    "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    (root / f"{name}.ipynb").write_text(json.dumps(notebook))
    return f"lab/tree/{name}.ipynb"

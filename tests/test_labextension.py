"""The JupyterLab sidebar in real headless Chromium (Playwright), against a real server.

Each test drives JupyterLab as a user would: the keyboard shortcut opens the panel, agents
are created in its form, messages are typed and sent with Enter. Screenshots of the panel
land in test-artifacts/labextension/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import JupyterProcess, start_jupyter, stop_jupyter
from .fakes import ACP_AGENT_COMMAND

CHROMIUM = os.environ.get("AGENSTRA_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "labextension"
# Flags that keep Chromium off the network this machine does not have.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PANEL = "#agenstra-chat"
MESSAGES = f"{PANEL} .jp-AgenstraChat-message[data-id]"
TIMEOUT_MS = 30_000
STATE_KEY = "@agenstra/jupyterlab:plugin:state"  # where the panel remembers its agent

pytestmark = pytest.mark.timeout(300)


def _browser_reason() -> str | None:
    if not shutil.which(CHROMIUM):
        return f"no Chromium at {CHROMIUM} (scripts/test.sh installs Debian's chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture
def jp_asyncio_loop() -> Iterator[None]:
    """Replaces pytest-jupyter's loop: Playwright runs its own loop here for the whole module."""
    yield None


@pytest.fixture
def jp_server_cleanup() -> Iterator[None]:
    """No in-process Jupyter server here: each test starts a real one in a subprocess."""
    yield None


@pytest.fixture(scope="module")
def browser() -> Iterator:
    reason = _browser_reason()
    if reason:
        if os.environ.get("AGENSTRA_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def lab_env(root: Path) -> dict[str, str]:
    """Echo agents answer with what they got; JupyterLab keeps its state under `root`."""
    return {"AGENSTRA_DEFAULT_PROVIDER": "echo",
            "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"),
            "JUPYTERLAB_SETTINGS_DIR": str(root / "settings")}


@pytest.fixture
def lab(tmp_path) -> Iterator[JupyterProcess]:
    server = start_jupyter(tmp_path, lab_env(tmp_path))
    yield server
    stop_jupyter(server)


@contextmanager
def lab_page(browser, server: JupyterProcess, name: str) -> Iterator:
    """JupyterLab, logged in, in a fresh browser context; a screenshot of it at the end."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{server.full_url}lab?token={server.token}")
        page.wait_for_selector(".jp-LabShell")
        yield page
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def use_dark_theme(page) -> None:
    """Switch JupyterLab to its dark theme through the command palette."""
    page.keyboard.press("Escape")  # out of any text field first
    page.keyboard.press("Control+Shift+C")
    palette = page.wait_for_selector(".lm-CommandPalette-input", state="visible")
    palette.fill("Use Theme: JupyterLab Dark")
    page.keyboard.press("Enter")
    page.wait_for_selector("body[data-jp-theme-light='false']", state="attached")


@pytest.fixture
def page(browser, lab, request) -> Iterator:
    with lab_page(browser, lab, request.node.name) as page:
        yield page


# -- helpers ---------------------------------------------------------------------------


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


# -- tests -----------------------------------------------------------------------------


def test_the_installed_package_ships_the_extension_enabled():
    import agenstra_jupyter

    listed = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"],
                            capture_output=True, text=True, check=True)
    line = next(line for line in (listed.stdout + listed.stderr).splitlines()
                if "@agenstra/jupyterlab" in line)
    assert "enabled" in line and "OK" in line and "agenstra_jupyter" in line
    (path,) = agenstra_jupyter._jupyter_labextension_paths()
    built = Path(agenstra_jupyter.__file__).parent / path["src"]
    assert json.loads((built / "package.json").read_text())["name"] == path["dest"]


def test_panel_opens_creates_an_agent_and_chats(page, lab):
    open_panel(page)
    wait_selected(page, "assistant")

    # A new agent, from the manager's providers list.
    create_agent(page, "helper")

    # Shift+Enter is a new line; Enter sends.
    box = page.locator(f"{PANEL} textarea[aria-label=Message]")
    box.fill("hello **sidebar**")
    box.press("Shift+Enter")
    box.type("second line")
    assert box.input_value() == "hello **sidebar**\nsecond line"
    assert page.locator(MESSAGES).count() == 0
    box.press("Enter")
    answer = wait_answer(page, "sidebar")
    assert answer.locator("strong").inner_text() == "sidebar"  # rendered markdown
    assert box.input_value() == ""
    user = page.locator(f"{MESSAGES}.jp-mod-user").last
    assert user.inner_text() == "hello **sidebar**\nsecond line"
    snap(page, "chat")

    # The last agent is remembered across a reload (JupyterLab saves it in the workspace).
    helper = agent_id(lab, "helper")
    wait_until(lambda: workspace(lab)["data"].get(STATE_KEY, {}).get("agentId") == helper)
    page.reload()
    page.wait_for_selector(".jp-LabShell")
    open_panel(page)
    wait_selected(page, "helper")
    wait_answer(page, "sidebar")
    assert len(shown_ids(page)) == 2

    # Deleting asks first, then the agent and its history are gone.
    page.click(f"{PANEL} [title='Delete agent']")
    page.click(".jp-Dialog button:has-text('Delete')")
    wait_selected(page, "assistant")
    assert "helper" not in page.locator(f"{PANEL} select[aria-label=Agent]").inner_text()

    # The palette offers the command.
    page.keyboard.press("Control+Shift+C")
    page.keyboard.type("Agent Chat")
    page.wait_for_selector(".lm-CommandPalette-item:has-text('Open Agent Chat')")
    page.keyboard.press("Escape")


def test_switching_managers(page, lab, start_manager):
    """A second manager registered by URL: its agents are picked and chatted with apart."""
    remote = start_manager("remote")
    response = httpx.post(f"{lab.full_url}agenstra/api/clients",
                          headers={"Authorization": f"token {lab.token}"},
                          json={"name": "remote", "endpoint": remote.url, "apiKey": remote.api_key})
    assert response.status_code == 201, response.text
    open_panel(page)
    page.select_option(f"{PANEL} select[aria-label=Manager]", label="remote")
    page.wait_for_selector(f"{PANEL} .jp-AgenstraChat-empty")  # no agents there yet
    create_agent(page, "far")
    send(page, "over there")
    wait_answer(page, "over there")

    page.select_option(f"{PANEL} select[aria-label=Manager]", label="local")
    wait_selected(page, "assistant")
    assert page.locator(MESSAGES).count() == 0  # the local agent's (empty) history
    page.select_option(f"{PANEL} select[aria-label=Manager]", label="remote")
    wait_selected(page, "far")
    wait_answer(page, "over there")
    assert len(shown_ids(page)) == 2


def test_bad_agent_form_input_is_explained_and_sends_nothing(page, lab):
    open_panel(page)
    open_agent_form(page)
    page.fill(f"{PANEL} input[aria-label='Agent name']", "ok-name")
    page.fill(f"{PANEL} textarea[aria-label=Config]", "{not json")
    page.click(f"{PANEL} button:has-text('Create')")
    assert page.locator(f"{PANEL} .jp-AgenstraChat-formError").inner_text() == (
        "Config must be JSON")
    # The manager's own refusal (a taken name) is shown as a notice.
    page.fill(f"{PANEL} input[aria-label='Agent name']", "assistant")
    page.fill(f"{PANEL} textarea[aria-label=Config]", "")
    page.click(f"{PANEL} button:has-text('Create')")
    notice = page.locator(f"{PANEL} .jp-AgenstraChat-notice")
    notice.wait_for()
    assert "assistant" in notice.inner_text()
    names = page.locator(f"{PANEL} select[aria-label=Agent] option").all_inner_texts()
    assert names == ["assistant"]


def test_agent_output_renders_inert(page, lab):
    open_panel(page)
    payload = ('<img src="x" onerror="window.__pwned = 1"> <script>window.__pwned = 2</script>'
               ' [click](javascript:window.__pwned=3) <a href="#" onclick="window.__pwned=4">a</a>'
               ' <iframe src="javascript:parent.__pwned=5"></iframe>')
    send(page, payload)
    answer = wait_answer(page, "click")
    page.wait_for_timeout(500)  # let any handler that survived fire
    assert page.evaluate("window.__pwned") is None
    assert answer.locator("script, iframe, [onerror], [onclick]").count() == 0
    assert answer.locator("a[href^='javascript']").count() == 0
    answer.locator("a", has_text="click").click()
    assert page.evaluate("window.__pwned") is None
    # The user's own message shows the text itself.
    assert page.locator(f"{MESSAGES}.jp-mod-user").last.inner_text() == payload
    snap(page, "inert")


def test_streaming_tool_calls_and_cancel(page, lab):
    """An ACP agent (the fake speaks the real protocol): live deltas, collapsed tools, cancel."""
    open_panel(page)
    create_agent(page, "acp", "acp", {"command": ACP_AGENT_COMMAND})

    send(page, "files")
    answer = page.locator(f"{MESSAGES}.jp-mod-agent").last
    answer.wait_for()
    tools = answer.locator("details.jp-AgenstraChat-tool")
    assert tools.count() == 2
    assert tools.first.get_attribute("open") is None  # collapsed until clicked
    assert "write outside" in tools.first.locator("summary").inner_text()
    tools.first.locator("summary").click()
    assert tools.first.locator("pre").first.is_visible()

    send(page, "slow")
    live = page.locator(f"{PANEL} .jp-AgenstraChat-message.jp-mod-live .jp-RenderedMarkdown")
    live.wait_for()
    first = len(live.inner_text())
    page.wait_for_function(
        "n => (document.querySelector('#agenstra-chat .jp-mod-live .jp-RenderedMarkdown')"
        "?.innerText.length ?? 0) > n", arg=first)  # it grows while we watch
    snap(page, "streaming")
    page.click(f"{PANEL} button:has-text('Cancel')")
    stopped = page.locator(f"{MESSAGES}.jp-mod-agent.jp-mod-error", has_text="ancel")
    stopped.wait_for()
    page.wait_for_selector(f"{PANEL} .jp-mod-live", state="detached")
    assert page.locator(f"{PANEL} button:has-text('Cancel')").count() == 0


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
READABLE = [f"{MESSAGES}.jp-mod-user", f"{MESSAGES}.jp-mod-agent p",
            f"{PANEL} textarea[aria-label=Message]", f"{PANEL} .jp-AgenstraChat-statusText"]


def test_readable_in_light_and_dark_themes(page, lab):
    open_panel(page)
    send(page, "how readable is this?")
    wait_answer(page, "readable")
    for theme in ("light", "dark"):
        if theme == "dark":
            use_dark_theme(page)
        ratios = page.evaluate(CONTRAST_JS, READABLE)
        low = {selector: round(r, 2) for selector, r in ratios.items() if r < 4.5}
        assert not low, f"text below WCAG AA contrast in the {theme} theme: {low}"
        snap(page, f"theme-{theme}")


def test_notebook_widget_message_appears_live_and_code_inserts(page, lab):
    notebook = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "chat", "metadata": {},
                   "outputs": [], "source": "from agenstra_jupyter.widgets import ChatWidget\n"
                                            "ChatWidget('assistant')"}],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                    "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    (Path(lab.data_dir).parent / "chat.ipynb").write_text(json.dumps(notebook))
    page.goto(f"{lab.full_url}lab/tree/chat.ipynb")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    open_panel(page)

    # Once the kernel is up, run the cell; type into the widget and press its Send button.
    page.locator(".jp-StatusBar-TextItem", has_text="| Idle").wait_for(timeout=60_000)
    page.locator(".jp-Notebook .jp-Cell").first.click()
    page.keyboard.press("Shift+Enter")
    widget_box = page.locator(".jp-OutputArea .widget-textarea textarea")
    widget_box.wait_for(timeout=60_000)
    widget_box.fill("from the notebook widget")
    page.locator(".jp-OutputArea button:has-text('Send')").click()
    # The sidebar, logged into the same agent, shows it live.
    page.locator(f"{MESSAGES}.jp-mod-user", has_text="from the notebook widget").wait_for()
    wait_answer(page, "from the notebook widget")
    snap(page, "from-notebook")

    # A code block of an answer goes into the notebook as a new cell.
    send(page, "Run this:\n```python\nprint(6 * 7)\n```")
    answer = wait_answer(page, "print")
    cells = page.locator(".jp-Notebook .jp-Cell .jp-InputArea-editor")
    before = cells.count()
    answer.locator("[title='Insert into notebook']").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-Notebook .jp-Cell .cm-content')]"
        ".some(n => n.textContent.includes('print(6 * 7)'))")
    assert cells.count() == before + 1
    # ... and Copy puts the code on the clipboard.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    answer.locator("[title='Copy']").click()
    assert page.evaluate("navigator.clipboard.readText()").strip() == "print(6 * 7)"


def test_unread_badge_while_panel_hidden(page, lab):
    open_panel(page)
    send(page, "first")
    wait_answer(page, "first")
    page.click("li[data-id='filebrowser']")  # another sidebar panel hides the chat
    page.wait_for_selector(f"{PANEL}", state="hidden")
    client = lab.client()
    try:
        client.agent("assistant").chat("while you were away")
    finally:
        client.close()
    tab = page.locator("li[data-id='agenstra-chat']")
    page.wait_for_selector("li[data-id='agenstra-chat'][data-unread='1']")
    assert "1 unread" in tab.get_attribute("title")

    # Still unread after a reload: how far the agent was read is kept in the workspace.
    key = f"local/{agent_id(lab, 'assistant')}"
    wait_until(lambda: workspace(lab)["data"].get(STATE_KEY, {}).get("read", {}).get(key) == 2)
    page.reload()
    page.wait_for_selector(".jp-LabShell")
    page.wait_for_selector("li[data-id='agenstra-chat'][data-unread='1']")
    tab.click()
    wait_answer(page, "while you were away")
    page.wait_for_selector("li[data-id='agenstra-chat']:not([data-unread])")


def test_killed_manager_reconnects_with_the_complete_transcript(page, lab):
    open_panel(page)
    send(page, "before the crash")
    wait_answer(page, "before the crash")

    os.kill(lab.manager_pid(), signal.SIGKILL)
    wait_state(page, "remote-down")
    assert "Manager unreachable" in page.locator(f"{PANEL} .jp-AgenstraChat-status").inner_text()
    snap(page, "manager-down")
    wait_state(page, "connected")  # the extension restarted it; the link logged back in

    send(page, "after the crash")
    wait_answer(page, "after the crash")
    ids = shown_ids(page)
    assert len(ids) == len(set(ids)) == 4
    assert ids == stored_ids(lab, "assistant")
    snap(page, "manager-back")


def test_server_restart_resumes_without_gap_or_duplicate(browser, tmp_path, request):
    """The browser's own socket drops; on reconnect it resumes after the last seq it holds."""
    server = start_jupyter(tmp_path, lab_env(tmp_path))
    try:
        with lab_page(browser, server, request.node.name) as page:
            open_panel(page)
            send(page, "one")
            wait_answer(page, "one")

            port = int(server.url.rsplit(":", 1)[1])
            stop_jupyter(server)
            wait_state(page, "reconnecting")
            snap(page, "server-down")
            server = start_jupyter(tmp_path, lab_env(tmp_path), port=port, token=server.token)
            # Sent by someone else while this browser was away.
            client = server.client()
            try:
                client.agent("assistant").chat("two, sent elsewhere")
            finally:
                client.close()
            wait_state(page, "connected")
            wait_answer(page, "two, sent elsewhere")
            send(page, "three")
            wait_answer(page, "three")
            ids = shown_ids(page)
            assert len(ids) == len(set(ids)) == 6
            assert ids == stored_ids(server, "assistant")
            snap(page, "server-back")
    finally:
        stop_jupyter(server)


class _ImageServer:
    """A web server on 127.0.0.1 that records every request: what agent output fetched."""

    SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="160" height="40">'
           b'<rect width="160" height="40" fill="teal"/><text x="10" y="26" fill="white">'
           b"loaded on click</text></svg>")

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        requests: list[str] = []
        self.requests = requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/svg+xml")
                self.send_header("Content-Length", str(len(_ImageServer.SVG)))
                self.end_headers()
                self.wfile.write(_ImageServer.SVG)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_remote_images_wait_for_a_click(page, lab):
    """Agent output loads no remote URL by itself (a zero-click leak): an image is a
    placeholder whose button loads it; other auto-loading HTML is stripped."""
    images = _ImageServer()
    try:
        open_panel(page)
        send(page, f"look ![the chart]({images.url}/leak.svg?data=secret) and"
                   f' <img src="{images.url}/raw.svg" alt="raw">'
                   f' <video poster="{images.url}/poster.svg"></video>'
                   f' <audio src="{images.url}/audio.mp3" autoplay></audio>'
                   f' <input type="image" src="{images.url}/input.svg">'
                   f' <div style="background:url({images.url}/bg.svg)">styled</div> done')
        answer = wait_answer(page, "styled")
        placeholders = answer.locator(".jp-AgenstraChat-image")
        assert placeholders.count() == 2
        assert placeholders.first.locator("code").inner_text() == (
            f"{images.url}/leak.svg?data=secret")
        assert "the chart" in placeholders.first.inner_text()
        page.wait_for_timeout(1000)  # time for any fetch to arrive
        assert images.requests == []
        assert answer.locator("img").count() == 0
        snap(page, "images-blocked")

        placeholders.first.locator("button", has_text="Load image").click()
        image = answer.locator("img[alt='the chart']")
        image.wait_for()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=image.element_handle())
        assert images.requests == ["/leak.svg?data=secret"]  # that one only, once asked
        assert answer.locator(".jp-AgenstraChat-image").count() == 1
        snap(page, "images-loaded")
    finally:
        images.close()

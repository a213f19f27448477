"""The JupyterLab sidebar in real headless Chromium (Playwright), against a real server.

Each test drives JupyterLab as a user would: the keyboard shortcut opens the panel, agents
are created in its form, messages are typed and sent with Enter. Screenshots of the panel
land in test-artifacts/labextension/.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agenstra_jupyter.client import TurnError

from .browser import (
    ARTIFACTS,
    CONTRAST_JS,
    MESSAGES,
    PANEL,
    STATE_KEY,
    agent_id,
    create_agent,
    find_in_palette,
    lab_env,
    lab_page,
    open_agent_form,
    open_panel,
    send,
    shown_ids,
    snap,
    stored_ids,
    use_dark_theme,
    wait_answer,
    wait_selected,
    wait_state,
    wait_until,
    workspace,
    write_widget_notebook,
)
from .browser import jp_asyncio_loop as jp_asyncio_loop  # a fixture
from .browser import jp_server_cleanup as jp_server_cleanup  # a fixture
from .conftest import JupyterProcess, start_jupyter, stop_jupyter
from .fakes import ACP_AGENT_COMMAND

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def lab(tmp_path) -> Iterator[JupyterProcess]:
    server = start_jupyter(tmp_path, lab_env(tmp_path))
    yield server
    stop_jupyter(server)


@pytest.fixture
def page(browser, lab, request) -> Iterator:
    with lab_page(browser, lab, request.node.name) as page:
        yield page


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
    page.wait_for_selector(".jp-Dialog", state="detached")
    find_in_palette(page, "Agent Chat", "Open Agent Chat")
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
    create_agent(page, "acp", "acp", {"command": ACP_AGENT_COMMAND, "permissions": "workspace"})

    send(page, "files")
    # Writing outside the workspace asks (the write inside is allowed by the policy).
    page.locator(f"{PANEL} .jp-AgenstraChat-permission.jp-mod-pending",
                 has_text="write outside").locator("button", has_text="Reject").click()
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


def test_notebook_widget_message_appears_live_and_code_inserts(page, lab):
    write_widget_notebook(Path(lab.data_dir).parent, "chat", "assistant")
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


# -- one server for the tests below: each adds agents of its own -----------------------------

TRANSCRIPT = f"{PANEL} .jp-AgenstraChat-transcript"
JUMP = f"{PANEL} .jp-AgenstraChat-jump"
AT_BOTTOM = ("() => { const n = document.querySelector('#agenstra-chat "
             ".jp-AgenstraChat-transcript'); return n.scrollHeight - n.scrollTop"
             " - n.clientHeight < 40; }")


@pytest.fixture(scope="module")
def shared_lab(tmp_path_factory) -> Iterator[JupyterProcess]:
    root = tmp_path_factory.mktemp("shared-lab")
    server = start_jupyter(root, lab_env(root))
    yield server
    stop_jupyter(server)


@pytest.fixture
def shared_page(browser, shared_lab, request) -> Iterator:
    with lab_page(browser, shared_lab, request.node.name) as page:
        open_panel(page)
        yield page


def scroll_of(page) -> dict:
    return page.eval_on_selector(TRANSCRIPT, "n => ({top: n.scrollTop, height: n.scrollHeight,"
                                             " view: n.clientHeight})")


def scroll_up(page, pixels: int = 600) -> None:
    """The user turns the mouse wheel over the transcript (once there is room to scroll)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.wait_for_function(AT_BOTTOM)
    page.wait_for_function(f"() => {{ const n = document.querySelector('{TRANSCRIPT}');"
                           f" return n.scrollHeight > n.clientHeight + {pixels}; }}")
    box = page.locator(TRANSCRIPT).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for attempt in range(3):  # a wheel turned while late markdown still renders may not count
        page.mouse.wheel(0, -pixels)
        try:
            page.wait_for_selector(JUMP, timeout=10_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    page.wait_for_timeout(300)  # the wheel's smooth scroll settles


def test_transcript_follows_the_answer_until_the_user_scrolls_up(shared_page, shared_lab):
    page = shared_page
    create_agent(page, "streamer", "echo", {"delay": 3})
    send(page, "a short first answer")
    wait_answer(page, "a short first answer")
    # The second answer streams for 3 s, far taller than the panel: the view stays at its end.
    send(page, "\n\n".join(f"paragraph {i} of a long answer" for i in range(60)))
    live = page.locator(f"{PANEL} .jp-mod-live")
    live.wait_for()
    samples = 0
    while live.count():
        page.wait_for_function(AT_BOTTOM, timeout=2000)  # back at the bottom after each delta
        samples += 1
        page.wait_for_timeout(150)
    wait_answer(page, "paragraph 59")
    page.wait_for_function(AT_BOTTOM)  # and after the stored answer rendered
    assert samples >= 5
    assert scroll_of(page)["height"] > 3 * scroll_of(page)["view"]
    assert page.locator(JUMP).count() == 0
    snap(page, "follow-streamed")

    # Scrolled up, the view stays where the user put it while more arrives.
    scroll_up(page)
    top = scroll_of(page)["top"]
    client = shared_lab.client()
    try:
        client.agent("streamer").chat("more, sent from elsewhere")
    finally:
        client.close()
    wait_answer(page, "more, sent from elsewhere")
    page.wait_for_timeout(300)
    assert scroll_of(page)["top"] == top
    assert page.locator(JUMP).is_visible()
    snap(page, "follow-scrolled-up")
    page.click(JUMP)
    page.wait_for_function(AT_BOTTOM)
    page.wait_for_selector(JUMP, state="detached")
    snap(page, "follow-jumped")


def test_shell_output_is_a_listing_and_code_lines_scroll(shared_page):
    page = shared_page
    create_agent(page, "sh", "shell")
    send(page, "sleep 2; ls -la /; printf '%0300d\\n' 0")
    # While it runs, the turn says for how long.
    page.wait_for_function(
        "() => /^running [1-9] s$/.test(document.querySelector("
        "'#agenstra-chat .jp-mod-live .jp-AgenstraChat-running')?.textContent ?? '')")
    snap(page, "shell-running")
    answer = wait_answer(page, "exit code 0")
    output = answer.locator("pre.jp-AgenstraChat-output")
    lines = output.inner_text().splitlines()
    assert lines[0].startswith("total") and len(lines) > 5
    assert any(line.startswith("drwx") and line.endswith(" tmp") for line in lines)
    assert lines[-1] == "[exit code 0]"
    assert answer.locator(".jp-RenderedMarkdown").count() == 0  # never read as markdown
    assert output.evaluate("n => n.scrollWidth > n.clientWidth")  # the long line scrolls
    snap(page, "shell-listing")

    # A code block of an agent's markdown scrolls its long lines too, and keeps its breaks.
    page.select_option(f"{PANEL} select[aria-label=Agent]", label="assistant")
    send(page, f"Code:\n```python\nx = '{'a' * 300}'\nprint(x)\n```")
    code = wait_answer(page, "print(x)").locator(".jp-RenderedMarkdown pre")
    assert code.evaluate("n => getComputedStyle(n).whiteSpace") == "pre"
    assert code.evaluate("n => n.scrollWidth > n.clientWidth")
    assert code.inner_text().splitlines()[1] == "print(x)"
    snap(page, "code-scrolls")


def test_create_form_fits_shows_examples_and_forgets_fixed_errors(shared_page):
    page = shared_page
    open_agent_form(page)
    form = f"{PANEL} form.jp-AgenstraChat-create"
    # The runtime select ends inside the form, its long label cut short before the arrow.
    fit = page.eval_on_selector(f"{form} select[aria-label=Runtime]", """s => ({
        right: s.getBoundingClientRect().right, title: s.title,
        formRight: s.closest('form').getBoundingClientRect().right,
        overflow: getComputedStyle(s).textOverflow})""")
    assert fit["right"] <= fit["formRight"] and fit["overflow"] == "ellipsis"
    assert fit["title"].startswith("process")
    # The config placeholder is the chosen provider's example.
    config = page.locator(f"{form} textarea[aria-label=Config]")
    page.select_option(f"{form} select[aria-label=Provider]", "openai")
    assert json.loads(config.get_attribute("placeholder")) == {
        "model": "gpt-4o-mini", "baseUrl": "https://api.openai.com/v1",
        "apiKeyEnv": "OPENAI_API_KEY"}
    snap(page, "create-form-openai")
    page.select_option(f"{form} select[aria-label=Provider]", "echo")
    assert json.loads(config.get_attribute("placeholder")) == {"delay": 1}

    # A problem is shown until the user changes what it was about.
    error = page.locator(f"{form} .jp-AgenstraChat-formError")
    page.fill(f"{form} input[aria-label='Agent name']", "formed")
    config.fill("{not json")
    page.click(f"{form} button:has-text('Create')")
    assert error.inner_text() == "Config must be JSON"
    snap(page, "create-form-error")
    config.fill('{"delay": 0}')
    assert error.count() == 0
    # The manager's refusal (a taken name) is shown in the form, where it is fixed.
    page.fill(f"{form} input[aria-label='Agent name']", "assistant")
    page.click(f"{form} button:has-text('Create')")
    error.wait_for()
    assert "exists already" in error.inner_text()
    assert page.locator(f"{PANEL} .jp-AgenstraChat-notice").count() == 0
    page.fill(f"{form} input[aria-label='Agent name']", "formed")
    assert error.count() == 0
    page.click(f"{form} button:has-text('Create')")
    wait_selected(page, "formed")
    page.wait_for_selector(form, state="detached")
    assert page.locator(f"{PANEL} [role=alert]").count() == 0


# Every kind of text the panel shows, on its own background, per agent view.
READABLE = {
    "status": f"{PANEL} .jp-AgenstraChat-statusText",
    "message box": f"{PANEL} textarea[aria-label=Message]",
    "send button": f"{PANEL} .jp-AgenstraChat-send",
    "notice": f"{PANEL} .jp-AgenstraChat-notice span",
}
READABLE_BY_AGENT = {
    "assistant": {"user message": f"{MESSAGES}.jp-mod-user",
                  "agent text": f"{MESSAGES}.jp-mod-agent p",
                  "code block": f"{MESSAGES} .jp-RenderedMarkdown pre",
                  "jump button": JUMP},
    "timed": {"command output": f"{MESSAGES} pre.jp-AgenstraChat-output",
              "error message": f"{MESSAGES}.jp-mod-error"},
    "tools": {"tool card": f"{PANEL} .jp-AgenstraChat-tool summary",
              "tool state": f"{PANEL} .jp-AgenstraChat-toolState",
              "tool detail": f"{PANEL} .jp-AgenstraChat-tool pre"},
}
READABLE_FORM = {
    "form label": f"{PANEL} form.jp-AgenstraChat-create label",
    "form hint": f"{PANEL} form .jp-AgenstraChat-hint",
    "form error": f"{PANEL} form .jp-AgenstraChat-formError",
    "create button": f"{PANEL} form button[type=submit]",
    "cancel button": f"{PANEL} form button[type=button]",
}


def low_contrast(page, selectors: dict[str, str]) -> dict[str, float]:
    for name, selector in selectors.items():
        assert page.locator(selector).count(), f"nothing to measure: {name}"
    ratios = page.evaluate(CONTRAST_JS, list(selectors.values()))
    return {name: round(ratios[s], 2) for name, s in selectors.items() if ratios[s] < 4.5}


def test_readable_in_light_and_dark_themes(shared_page, shared_lab):
    """WCAG AA (4.5:1) for every text/background pair of the panel, in both themes."""
    page = shared_page
    # A notice: a message to an agent deleted behind the panel's back is refused.
    create_agent(page, "doomed")
    httpx.delete(f"{shared_lab.full_url}agenstra/api/clients/local/agents/"
                 f"{agent_id(shared_lab, 'doomed')}",
                 headers={"Authorization": f"token {shared_lab.token}"}).raise_for_status()
    send(page, "anyone there?")
    page.locator(f"{PANEL} .jp-AgenstraChat-notice").wait_for()
    create_agent(page, "tools", "acp", {"command": ACP_AGENT_COMMAND, "permissions": "deny"})
    send(page, "files")
    page.locator(f"{MESSAGES} .jp-AgenstraChat-tool").first.wait_for()
    create_agent(page, "timed", "shell", {"timeout": 1})
    send(page, "ls /")
    wait_answer(page, "exit code 0")
    send(page, "sleep 5")
    page.locator(f"{MESSAGES}.jp-mod-error").wait_for()
    page.select_option(f"{PANEL} select[aria-label=Agent]", label="assistant")
    send(page, "Some `code` and a block:\n```\nprint('hi')\n```\n" + "\n\n".join(
        f"line {i}" for i in range(40)))
    wait_answer(page, "line 39")

    for theme in ("light", "dark"):
        if theme == "dark":
            use_dark_theme(page)
        low = {}
        for agent, selectors in READABLE_BY_AGENT.items():
            page.select_option(f"{PANEL} select[aria-label=Agent]", label=agent)
            page.locator(MESSAGES).first.wait_for()
            if agent == "assistant":
                wait_answer(page, "line 39")
                scroll_up(page)
            if agent == "tools":
                page.locator(f"{PANEL} .jp-AgenstraChat-tool summary").first.click()
            page.fill(f"{PANEL} textarea[aria-label=Message]", "typed, not sent")
            low |= low_contrast(page, {**READABLE, **selectors})
            snap(page, f"theme-{theme}-{agent}")
        open_agent_form(page)
        page.fill(f"{PANEL} input[aria-label='Agent name']", "x")
        page.fill(f"{PANEL} textarea[aria-label=Config]", "[]")
        page.click(f"{PANEL} form button:has-text('Create')")
        low |= low_contrast(page, READABLE_FORM)
        snap(page, f"theme-{theme}-form")
        page.click(f"{PANEL} form button:has-text('Cancel')")
        assert not low, f"text below WCAG AA contrast in the {theme} theme: {low}"


WIDGET = ".jp-OutputArea .widget-html-content"
READABLE_WIDGET = {
    "user bubble": f"{WIDGET} > div[style*='border-right']",
    "agent bubble": f"{WIDGET} > div[style*='border:1px'] :is(p, pre)",
    "error bubble": f"{WIDGET} > div[style*='border-left']",
}


def test_chat_widget_readable_in_light_and_dark_themes(browser, shared_lab, request):
    client = shared_lab.client()
    try:
        client.create_agent("bubbles", provider="shell", config={"timeout": 1})
        agent = client.agent("bubbles")
        agent.chat("echo hello from the widget")
        with pytest.raises(TurnError):
            agent.chat("sleep 5")  # timed out: an error bubble
    finally:
        client.close()
    write_widget_notebook(Path(shared_lab.data_dir).parent, "bubbles", "bubbles")
    with lab_page(browser, shared_lab, request.node.name) as page:
        page.goto(f"{shared_lab.full_url}lab/tree/bubbles.ipynb")
        page.locator(".jp-StatusBar-TextItem", has_text="| Idle").wait_for(timeout=60_000)
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.keyboard.press("Shift+Enter")
        page.locator(READABLE_WIDGET["error bubble"]).wait_for(timeout=60_000)
        for theme in ("light", "dark"):
            if theme == "dark":
                use_dark_theme(page)
            low = low_contrast(page, READABLE_WIDGET)
            page.locator(".jp-OutputArea").first.screenshot(
                path=str(ARTIFACTS / f"widget-contrast-{theme}.png"))
            assert not low, f"widget text below WCAG AA contrast in the {theme} theme: {low}"


def test_an_unreachable_manager_is_one_clear_state(shared_page, shared_lab, start_manager):
    """A manager that does not answer: the status line says so (not "Connected" next to a
    notice), and the empty panel says why + is disabled."""
    page = shared_page
    remote = start_manager("gone")
    headers = {"Authorization": f"token {shared_lab.token}"}
    clients = f"{shared_lab.full_url}agenstra/api/clients"
    registered = httpx.post(clients, headers=headers, json={
        "name": "gone", "endpoint": remote.url, "apiKey": remote.api_key})
    assert registered.status_code == 201, registered.text
    remote.kill()
    try:
        page.click(f"{PANEL} [title='Refresh managers and agents']")
        page.select_option(f"{PANEL} select[aria-label=Manager]", label="gone")
        wait_state(page, "remote-down")
        status = page.locator(f"{PANEL} .jp-AgenstraChat-status").inner_text()
        assert "Manager unreachable" in status and "Connected" not in status
        empty = page.locator(f"{PANEL} .jp-AgenstraChat-empty").inner_text()
        assert empty.startswith("Manager unreachable") and "create one" not in empty
        assert page.locator(f"{PANEL} [title='New agent'][aria-disabled='true']").count() == 1
        assert page.locator(f"{PANEL} .jp-AgenstraChat-notice").count() == 0
        snap(page, "manager-unreachable")
        # Another manager that answers: connected again, nothing left of that state.
        page.select_option(f"{PANEL} select[aria-label=Manager]", label="local")
        wait_state(page, "connected")
        page.wait_for_selector(f"{PANEL} .jp-AgenstraChat-empty", state="detached")
    finally:
        httpx.delete(f"{clients}/{registered.json()['id']}", headers=headers)

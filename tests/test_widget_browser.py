"""The ChatWidget in a notebook in JupyterLab, in headless Chromium (Playwright).

How its transcript scrolls (opens at the newest message, follows while at the bottom, stays
put when scrolled up, "Jump to latest"), when Cancel shows, how code blocks look. Screenshots
land in test-artifacts/labextension/widget-*.png.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .browser import ARTIFACTS, CONTRAST_JS, lab_env, lab_page, use_dark_theme, wait_until
from .browser import jp_asyncio_loop as jp_asyncio_loop  # a fixture
from .browser import jp_server_cleanup as jp_server_cleanup  # a fixture
from .conftest import JupyterProcess, start_jupyter, stop_jupyter

pytestmark = pytest.mark.timeout(300)

OUTPUT = ".jp-OutputArea"
SCROLLER = f"{OUTPUT} .agenstra-scroller"
BUBBLES = f"{SCROLLER} .agenstra-transcript > .widget-html"
JUMP = f"{SCROLLER} .agenstra-jump button"
CANCEL = f"{OUTPUT} button:has-text('Cancel')"
CODE = f"{BUBBLES} pre[style*='cell-editor']"  # a code block of an answer
# The newest content ends inside the visible part of the transcript.
AT_BOTTOM = """() => {
  const scroller = document.querySelector('.agenstra-scroller');
  const content = scroller.querySelector('.agenstra-transcript');
  return content.getBoundingClientRect().bottom - scroller.getBoundingClientRect().bottom < 2;
}"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[JupyterProcess]:
    root = tmp_path_factory.mktemp("widget-lab")
    server = start_jupyter(root, lab_env(root))
    yield server
    stop_jupyter(server)


@contextmanager
def widget_page(browser, lab: JupyterProcess, name: str, agent: str) -> Iterator:
    """A notebook showing ChatWidget(agent), its cell run."""
    notebook = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "w", "metadata": {},
                   "outputs": [], "source": "from agenstra_jupyter.widgets import ChatWidget\n"
                                            f"ChatWidget({agent!r})"}],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                    "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    (Path(lab.data_dir).parent / f"{name}.ipynb").write_text(json.dumps(notebook))
    with lab_page(browser, lab, name) as page:
        # A workspace of its own: no notebook of an earlier test is restored beside it.
        page.goto(f"{lab.full_url}lab/workspaces/{name}/tree/{name}.ipynb")
        page.locator(".jp-StatusBar-TextItem", has_text="| Idle").wait_for(timeout=60_000)
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.keyboard.press("Shift+Enter")
        page.locator(SCROLLER).wait_for(state="attached", timeout=60_000)
        yield page


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator(OUTPUT).first.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def send(page, text: str) -> None:
    page.locator(f"{OUTPUT} .widget-textarea textarea").fill(text)
    page.locator(f"{OUTPUT} button:has-text('Send')").click()


def lines(prefix: str, count: int = 12) -> str:
    return "\n\n".join(f"{prefix} line {i}" for i in range(count))


def view(page) -> dict:
    """Which bubble is at the top of the visible part, and where."""
    return page.eval_on_selector(SCROLLER, """scroller => {
      const top = scroller.getBoundingClientRect().top;
      const bubbles = [...scroller.querySelectorAll('.agenstra-transcript > .widget-html')];
      const index = bubbles.findIndex(b => b.getBoundingClientRect().bottom > top);
      return {index, offset: Math.round(bubbles[index].getBoundingClientRect().top - top)};
    }""")


def test_transcript_opens_at_the_newest_follows_and_stays_when_scrolled_up(browser, lab,
                                                                          request):
    client = lab.client()
    try:
        client.create_agent("scroll", provider="echo", config={"delay": 2})
        agent = client.agent("scroll")
        for turn in range(3):
            agent.send(lines(f"turn {turn}"))
        wait_until(lambda: len(agent.messages) == 6 and agent.messages[-1]["from"] == "agent")
        with widget_page(browser, lab, request.node.name, "scroll") as page:
            page.locator(BUBBLES).nth(5).wait_for()
            page.wait_for_function(AT_BOTTOM)  # opens at the newest message
            assert "turn 2 line 11" in page.locator(BUBBLES).last.inner_text()
            assert not page.locator(JUMP).is_visible()
            shot(page, "widget-opens-at-newest")

            # A streamed answer: the view stays at its end while it grows.
            send(page, lines("streamed", 30))
            page.locator(f"{BUBBLES} pre", has_text="Echo").first.wait_for()  # streaming
            samples = 0
            while page.locator(BUBBLES).count() < 8 or page.locator(
                    f"{BUBBLES}:last-child pre").count():
                page.wait_for_function(AT_BOTTOM, timeout=2000)
                samples += 1
                page.wait_for_timeout(100)
            page.wait_for_function(AT_BOTTOM)
            assert samples >= 5 and "streamed line 29" in page.locator(BUBBLES).last.inner_text()
            assert not page.locator(JUMP).is_visible()

            # Scrolled up, the view stays where the user put it while more arrives.
            box = page.locator(SCROLLER).bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.wheel(0, -500)
            page.locator(JUMP).wait_for(state="visible")
            page.wait_for_timeout(300)  # the wheel's smooth scroll settles
            before = view(page)
            agent.chat("from elsewhere")
            page.locator(BUBBLES).nth(9).wait_for()
            page.wait_for_timeout(300)
            assert view(page) == before
            assert page.locator(JUMP).is_visible()
            shot(page, "widget-scrolled-up")

            page.click(JUMP)
            page.wait_for_function(AT_BOTTOM)
            assert "Echo: from elsewhere" in page.locator(BUBBLES).last.inner_text()
            page.locator(JUMP).wait_for(state="hidden")
            shot(page, "widget-jumped")
    finally:
        client.close()


def test_cancel_shows_while_a_turn_runs_and_code_blocks_look_like_code(browser, lab, request):
    client = lab.client()
    try:
        client.create_agent("coder", provider="echo", config={"delay": 3})
    finally:
        client.close()
    with widget_page(browser, lab, request.node.name, "coder") as page:
        assert page.locator(CANCEL).count() == 1 and not page.locator(CANCEL).is_visible()
        long_line = "x = '" + "a" * 300 + "'"
        send(page, f"Code:\n```python\nimport os  # why\n{long_line}\nprint(x)\n```")
        page.locator(CANCEL).wait_for(state="visible")
        shot(page, "widget-running")
        code = page.locator(CODE)
        page.locator(CANCEL).wait_for(state="hidden")  # the answer is in: nothing to cancel
        code.wait_for()
        style = code.evaluate("""pre => {
          const s = getComputedStyle(pre);
          const keyword = [...pre.querySelectorAll('span')].find(n => n.textContent === 'import');
          return {whiteSpace: s.whiteSpace, background: s.backgroundColor, color: s.color,
                  keyword: keyword && getComputedStyle(keyword).color,
                  scrolls: pre.scrollWidth > pre.clientWidth};
        }""")
        assert style["whiteSpace"] == "pre" and style["scrolls"]  # the long line scrolls
        assert style["background"] not in ("rgba(0, 0, 0, 0)", "transparent")
        assert style["keyword"] and style["keyword"] != style["color"]  # highlighted
        assert code.inner_text().splitlines()[1:3] == [long_line, "print(x)"]
        assert page.eval_on_selector(SCROLLER, "n => n.scrollWidth <= n.clientWidth")
        shot(page, "widget-code")
        for theme in ("light", "dark"):
            if theme == "dark":
                use_dark_theme(page)
                shot(page, "widget-code-dark")
            ratio = page.evaluate(CONTRAST_JS, [CODE])[CODE]
            assert ratio >= 4.5, f"code text below WCAG AA in the {theme} theme: {ratio:.2f}"


def test_shell_output_reads_as_a_listing(browser, lab, request):
    client = lab.client()
    try:
        client.create_agent("lister", provider="shell")
    finally:
        client.close()
    with widget_page(browser, lab, request.node.name, "lister") as page:
        send(page, "ls -la /; printf '%0300d\\n' 0")
        output = page.locator(f"{BUBBLES} pre", has_text="exit code 0")
        output.wait_for(timeout=60_000)
        listing = output.inner_text().splitlines()
        assert listing[0].startswith("total") and len(listing) > 5
        assert any(line.startswith("drwx") and line.endswith(" tmp") for line in listing)
        assert listing[-2:] == ["0" * 300, "[exit code 0]"]
        assert page.locator(f"{BUBBLES} p", has_text="exit code").count() == 0  # no markdown
        assert output.evaluate("n => getComputedStyle(n).whiteSpace") == "pre"
        assert output.evaluate("n => n.scrollWidth > n.clientWidth")  # the long line scrolls
        assert page.eval_on_selector(SCROLLER, "n => n.scrollWidth <= n.clientWidth")
        shot(page, "widget-shell-listing")

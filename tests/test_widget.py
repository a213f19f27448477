"""ChatWidget driven headlessly through its comms, as the browser would drive it."""

from __future__ import annotations

import html
import itertools
import re
import threading
import time

import ipywidgets as widgets
import pytest

from agenstra_jupyter.client import AgenstraError, Agent
from agenstra_jupyter.protocol import ManagerEvent
from agenstra_jupyter.widgets import ChatWidget, bubble_html


def type_and_send(widget: ChatWidget, text: str) -> None:
    widget.input.comm.handle_msg({"content": {"data": {"method": "update",
                                                       "state": {"value": text}}},
                                  "buffers": []})
    click(widget.send_button)


def click(button) -> None:
    button.comm.handle_msg({"content": {"data": {"method": "custom",
                                                 "content": {"event": "click"}}},
                            "buffers": []})


def wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.05)
    raise AssertionError("timed out")


def bubbles(widget: ChatWidget) -> list[str]:
    return [child.value for child in widget.transcript.children]


@pytest.fixture(scope="module")
def client(jupyter_server):
    client = jupyter_server.client()
    yield client
    client.close()


def test_send_stream_and_final_answer(client):
    client.create_agent("w-echo", provider="echo", config={"delay": 1.0})
    widget = ChatWidget("w-echo", client=client)
    assert widget.picker.value == "w-echo" and "connected" in widget.status.value
    streamed: list[str] = []

    def follow(change):
        for child in change["new"]:
            if child not in change["old"]:
                child.observe(lambda c: streamed.append(c["new"]), names="value")

    widget.transcript.observe(follow, names="children")
    type_and_send(widget, "one two three four")
    assert widget.input.value == ""
    wait_for(lambda: len(widget.transcript.children) == 2
             and "Echo: one two three four" in bubbles(widget)[1]
             and "<pre" not in bubbles(widget)[1])
    user, answer = bubbles(widget)
    assert "one two three four" in user
    assert "<p>Echo: one two three four</p>" in answer  # rendered as markdown at the end
    growing = [v for v in streamed if "<pre" in v and "Echo" in v]
    assert len(growing) >= 3  # the live bubble was updated in place, delta by delta
    assert all(len(a) < len(b) for a, b in itertools.pairwise(growing))


def test_agent_html_is_rendered_inert(client):
    client.create_agent("w-xss", provider="echo")
    widget = ChatWidget("w-xss", client=client)
    payload = "<script>alert(1)</script><img src=x onerror=alert(2)> [a](javascript:alert(3))"
    type_and_send(widget, payload)
    answer = wait_for(lambda: len(widget.transcript.children) == 2
                      and "<pre" not in bubbles(widget)[1] and bubbles(widget)[1])
    assert "<script" not in answer and "<img" not in answer
    assert "&lt;script&gt;" in answer and 'href="javascript' not in answer
    assert "<script" not in bubbles(widget)[0] and "<img" not in bubbles(widget)[0]


def test_cancel_button_only_while_a_turn_runs(client):
    client.create_agent("w-slow", provider="echo", config={"delay": 30})
    widget = ChatWidget("w-slow", client=client)
    assert widget.cancel_button.layout.display == "none"  # nothing to cancel
    type_and_send(widget, "take your time")
    wait_for(lambda: len(widget.transcript.children) == 2)  # the answer is streaming
    assert widget.cancel_button.layout.display != "none"
    assert ChatWidget("w-slow", client=client).cancel_button.layout.display != "none"
    click(widget.cancel_button)
    wait_for(lambda: "Cancelled" in bubbles(widget)[-1] and "<pre" in bubbles(widget)[-1])
    assert widget.cancel_button.layout.display == "none"


def test_transcript_is_shared_and_restored(jupyter_server, client):
    client.create_agent("w-shared", provider="echo")
    widget = ChatWidget("w-shared", client=client)
    other = jupyter_server.client()  # another notebook, or the sidebar
    other.agent("w-shared").chat("sent elsewhere")
    wait_for(lambda: len(widget.transcript.children) == 2)
    assert "sent elsewhere" in bubbles(widget)[0]
    reopened = ChatWidget("w-shared", client=other)  # re-opening restores the history
    assert bubbles(reopened) == bubbles(widget)
    other.close()


def test_agent_picker_switches_transcripts(client):
    client.create_agent("w-one", provider="echo")
    client.create_agent("w-two", provider="echo")
    client.agent("w-one").chat("for one")
    widget = ChatWidget("w-two", client=client)
    assert widget.transcript.children == ()
    widget.picker.value = "w-one"
    assert len(widget.transcript.children) == 2 and "for one" in bubbles(widget)[0]


def test_sandbox_state_is_shown_under_the_header(client, monkeypatch):
    """Nothing while sandboxed; a warning when the operator turned it off; quiet on errors."""
    client.create_agent("w-sandbox", provider="echo", runtime="process")
    catalog = {"providers": [], "runtimes": [
        {"name": "process", "available": True, "default": True, "sandbox": "bwrap"}]}
    monkeypatch.setattr(client, "providers", lambda client_id=None: catalog)
    widget = ChatWidget("w-sandbox", client=client)
    assert widget.children[1] is widget.sandbox and widget.sandbox.value == ""

    catalog["runtimes"][0]["sandbox"] = "none"
    widget.use("w-sandbox")
    assert "without a sandbox (AGENSTRA_SANDBOX=none)" in widget.sandbox.value
    assert 'data-level="warning"' in widget.sandbox.value

    def unreachable(client_id=None):
        raise AgenstraError("REMOTE_UNAVAILABLE", "The manager is unreachable")

    monkeypatch.setattr(client, "providers", unreachable)
    widget.use("w-sandbox")
    assert widget.sandbox.value == ""


def test_a_message_that_cannot_be_sent_says_why(jupyter_server, client):
    client.create_agent("w-unsent", provider="echo")
    closing = jupyter_server.client()
    widget = ChatWidget("w-unsent", client=closing)
    closing.close()  # as the server going away, or refusing the token, leaves it
    type_and_send(widget, "hello?")
    assert "closed" in wait_for(lambda: widget.error.value, timeout=10)


class _OneAgentClient:
    """Just what a ChatWidget asks of its client, for one agent fed by hand."""

    state = "connected"

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def agents(self, client_id=None):
        return [{"id": self._agent.id, "name": self._agent.name, "runtime": "process"}]

    def providers(self, client_id=None):
        return {"providers": [], "runtimes": []}

    def agent(self, name):
        return self._agent

    def on_state(self, listener):
        pass


def test_switching_agents_does_not_hold_the_lock_while_logging_in():
    """The login may wait for the client's thread, where the old agent's events arrive:
    they must not wait for the login in turn."""
    old = Agent(client=None, client_id="local", id="a", name="a")
    new = Agent(client=None, client_id="local", id="b", name="b")
    logging_in, release = threading.Event(), threading.Event()

    class SlowLogin(_OneAgentClient):
        def agent(self, name):
            if name == "a":
                return old
            logging_in.set()
            release.wait(10)
            return new

    widget = ChatWidget("a", client=SlowLogin(old))
    switching = threading.Thread(target=widget.use, args=("b",))
    switching.start()
    try:
        assert logging_in.wait(10)
        message = {"id": "m1", "seq": 1, "agentId": "a", "from": "user", "text": "x"}
        delivered = threading.Thread(target=widget._on_event,
                                     args=(ManagerEvent.CHAT_MESSAGE, message))
        delivered.start()
        delivered.join(2)
        assert not delivered.is_alive()  # not stuck behind the login
    finally:
        release.set()
        switching.join(10)
    assert widget.agent is new and not switching.is_alive()


def test_replays_are_dropped_without_per_message_bookkeeping():
    """A widget open for days holds its bubbles, and nothing else that grows with them."""
    agent = Agent(client=None, client_id="local", id="a", name="a")
    widget = ChatWidget("a", client=_OneAgentClient(agent))
    for seq in range(1, 1001):
        message = {"id": f"m{seq}", "seq": seq, "agentId": "a", "from": "user", "text": "x"}
        agent._receive(ManagerEvent.CHAT_MESSAGE, message)
        widget._on_event(ManagerEvent.CHAT_MESSAGE, dict(message))  # shown already
    assert len(widget.transcript.children) == 1000
    ours = set(vars(widget)) - set(vars(widgets.VBox()))
    growing = [name for name in ours
               if hasattr(getattr(widget, name), "__len__") and len(getattr(widget, name)) > 10]
    assert growing == []


def agent_bubble(text: str) -> str:
    return bubble_html({"from": "agent", "response": {"type": "text", "result": text}})


def test_code_blocks_have_a_background_highlighting_and_scroll():
    bubble = agent_bubble("Run:\n```python\nimport os  # why\nprint('a' * 3)\n```\n"
                          "and\n```\nplain text\n```")
    python, plain = bubble.split("<pre")[1:]
    for block in (python, plain):
        assert "background:var(--jp-cell-editor-background" in block
        assert "white-space:pre;" in block and "overflow-x:auto" in block  # no wrapping
    keyword = '<span style="color:var(--jp-mirror-editor-keyword-color)">import</span>'
    assert keyword in python
    assert '<span style="color:var(--jp-mirror-editor-comment-color)"># why</span>' in python
    assert "<span" not in plain and "plain text" in plain  # no language, no colours


def test_code_blocks_stay_inert():
    bubble = agent_bubble("```html\n</code></pre><script>alert(1)</script>\n```\n"
                          "```python\nx = '<img src=x onerror=alert(2)>'\n```")
    assert "<script" not in bubble and "<img" not in bubble
    shown = html.unescape(re.sub(r"<[^>]*>", "", bubble))  # the text the page shows
    assert "</code></pre><script>alert(1)</script>" in shown
    assert "x = '<img src=x onerror=alert(2)>'" in shown
    assert bubble.count("<pre") == 2 and bubble.count("</pre>") == 2


def test_jump_to_latest_opens_a_fresh_scroll_box_around_the_same_transcript():
    agent = Agent(client=None, client_id="local", id="a", name="a")
    widget = ChatWidget("a", client=_OneAgentClient(agent))
    old = widget.scroller
    assert old in widget.children and widget.transcript in old.children
    assert "agenstra-scroller" in old._dom_classes
    click(widget.jump_button)
    assert widget.scroller is not old and widget.scroller in widget.children
    assert old not in widget.children and old.comm is None  # closed, not leaked
    assert widget.transcript in widget.scroller.children


def test_command_output_is_a_listing_not_markdown():
    listing = "total 8\ndrwxr-xr-x  2 root root 4096 *tmp*\n-rw-r--r--  1 root root   12 # x\n"
    bubble = bubble_html({"from": "agent", "response": {
        "type": "text", "format": "text", "result": listing + "[exit code 0]"}})
    assert "<p>" not in bubble and "<em>" not in bubble and "<h1" not in bubble
    assert "white-space:pre;" in bubble  # line for line, long lines scroll
    shown = html.unescape(re.sub(r"<[^>]*>", "", bubble))
    assert shown.endswith(listing + "[exit code 0]")


def test_a_shell_answer_streams_and_ends_as_a_listing(client):
    client.create_agent("w-shell", provider="shell")
    widget = ChatWidget("w-shell", client=client)
    type_and_send(widget, "printf 'one  *two*\\n# three\\n'")
    answer = wait_for(lambda: len(widget.transcript.children) == 2
                      and "exit code" in bubbles(widget)[1] and bubbles(widget)[1])
    assert "<p>" not in answer and "<h1" not in answer and "<em>" not in answer
    assert "one  *two*\n# three\n[exit code 0]" in html.unescape(answer)

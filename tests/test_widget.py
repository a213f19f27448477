"""ChatWidget driven headlessly through its comms, as the browser would drive it."""

from __future__ import annotations

import itertools
import time

import pytest

from agenstra_jupyter.client import AgenstraError
from agenstra_jupyter.widgets import ChatWidget


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


def test_cancel_button(client):
    client.create_agent("w-slow", provider="echo", config={"delay": 30})
    widget = ChatWidget("w-slow", client=client)
    type_and_send(widget, "take your time")
    wait_for(lambda: len(widget.transcript.children) == 2)  # the answer is streaming
    click(widget.cancel_button)
    wait_for(lambda: "Cancelled" in bubbles(widget)[-1] and "<pre" in bubbles(widget)[-1])


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
        raise AgenstraError("The manager is unreachable")

    monkeypatch.setattr(client, "providers", unreachable)
    widget.use("w-sandbox")
    assert widget.sandbox.value == ""

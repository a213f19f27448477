"""Approvals on the kernel side: the client's pending list, option picking, the ChatWidget's
card, the %agent prompt and the decisions headless runs record and replay.

The units first, fed by hand; then end to end against a real Jupyter server with its local
manager and the SDK fake ACP agent asking before it writes a file.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
from pathlib import Path

import nbformat
import pytest
from IPython.core.error import StdinNotImplementedError

from agenstra_jupyter import client as client_module
from agenstra_jupyter import magics
from agenstra_jupyter.client import AgenstraError, Agent
from agenstra_jupyter.protocol import (
    DEFAULT_PERMISSION_OPTIONS,
    ChatEventKind,
    ErrorCode,
    ManagerEvent,
)
from agenstra_jupyter.sessions import (
    PERMISSIONS_ENV,
    ReplayDecisions,
    option_for,
    permission_decisions,
    read_session,
)
from agenstra_jupyter.widgets import ChatWidget, bubble_html

from .conftest import start_jupyter, stop_jupyter
from .fakes import ACP_AGENT_COMMAND
from .test_sessions import cli, server_args, write_notebook

ACP_OPTIONS = [{"optionId": "yes", "name": "Allow", "kind": "allow_once"},
               {"optionId": "no", "name": "Reject", "kind": "reject_once"}]


def request_event(request_id: str, turn: str = "t1", title: str = "write note.txt",
                  kind: str = "edit", options: list | None = None, **extra) -> dict:
    payload = {"requestId": request_id, "title": title, "kind": kind,
               "options": options or ACP_OPTIONS, "paths": ["note.txt"],
               "expiresAt": "2026-12-01T16:00:00Z", **extra}
    return {"agentId": "a", "correlationId": turn, "kind": ChatEventKind.PERMISSION_REQUEST,
            "payload": payload, "sequence": 1}


def resolved_event(request_id: str, outcome: str = "allowed", turn: str = "t1",
                   **extra) -> dict:
    payload = {"requestId": request_id, "outcome": outcome, "by": "user",
               "optionId": "yes" if outcome == "allowed" else "no", **extra}
    return {"agentId": "a", "correlationId": turn, "kind": ChatEventKind.PERMISSION_RESOLVED,
            "payload": payload, "sequence": 2}


def answer(seq: int, turn: str = "t1", parts: list | None = None) -> dict:
    return {"id": f"m{seq}", "seq": seq, "agentId": "a", "from": "agent", "correlationId": turn,
            "response": {"type": "text", "result": "done", "parts": parts or []}}


def lone_agent() -> Agent:
    return Agent(client=None, client_id="local", id="a", name="a")


# -- the pending list -----------------------------------------------------------------------


def test_pending_requests_are_kept_once_and_cleared_on_resolution():
    agent = lone_agent()
    agent._receive(ManagerEvent.CHAT_EVENT, request_event("r1"))
    agent._receive(ManagerEvent.CHAT_EVENT, request_event("r1"))  # sent again after a login
    agent._receive(ManagerEvent.CHAT_EVENT, request_event("r2", turn="t2"))
    assert [r["requestId"] for r in agent.pending_permissions()] == ["r1", "r2"]
    assert agent.pending_permissions()[0]["correlationId"] == "t1"
    assert agent.pending_permissions()[0]["paths"] == ["note.txt"]

    agent._receive(ManagerEvent.CHAT_EVENT, resolved_event("r1"))
    assert [r["requestId"] for r in agent.pending_permissions()] == ["r2"]
    agent._receive(ManagerEvent.CHAT_EVENT, request_event("r1"))  # a late re-send: settled
    assert [r["requestId"] for r in agent.pending_permissions()] == ["r2"]

    # The turn's answer settles what is left of it (its parts name them).
    agent._receive(ManagerEvent.CHAT_MESSAGE, answer(1, turn="t2", parts=[
        {"kind": "permission", "requestId": "r2", "outcome": "cancelled", "by": "user"}]))
    assert agent.pending_permissions() == []


def test_pending_list_is_a_copy_and_bad_events_are_ignored():
    agent = lone_agent()
    agent._receive(ManagerEvent.CHAT_EVENT, request_event("r1"))
    agent.pending_permissions()[0]["title"] = "changed"
    assert agent.pending_permissions()[0]["title"] == "write note.txt"
    for junk in [{"kind": ChatEventKind.PERMISSION_REQUEST, "payload": "x"},
                 {"kind": ChatEventKind.PERMISSION_REQUEST, "payload": {"requestId": 3}},
                 {"kind": ChatEventKind.PERMISSION_RESOLVED, "payload": None}]:
        agent._receive(ManagerEvent.CHAT_EVENT, junk)
    assert [r["requestId"] for r in agent.pending_permissions()] == ["r1"]


def test_settled_ids_are_bounded():
    agent = lone_agent()
    for n in range(2000):
        agent._receive(ManagerEvent.CHAT_EVENT, request_event(f"r{n}"))
        agent._receive(ManagerEvent.CHAT_EVENT, resolved_event(f"r{n}"))
    assert agent.pending_permissions() == [] and len(agent._settled) <= 512


def test_allow_and_reject_of_an_unknown_request_say_so():
    agent = lone_agent()
    with pytest.raises(AgenstraError) as unknown:
        agent.allow("nope")
    assert unknown.value.code == ErrorCode.UNKNOWN_REQUEST
    agent._receive(ManagerEvent.CHAT_EVENT, request_event("r1", options=[
        {"optionId": "yes", "name": "Allow", "kind": "allow_once"}]))
    with pytest.raises(AgenstraError) as no_option:
        agent.reject("r1")
    assert no_option.value.code == ErrorCode.INVALID_PAYLOAD


class _FlakyClient:
    """Just what an Agent's answers need of its client: the first `failures` answers meet
    a brief link drop (the controller says its manager is away)."""

    connected = True

    def __init__(self, failures: int = 0) -> None:
        self.failures, self.sent = failures, []
        self._loop = client_module._LoopThread.get()

    async def _forward(self, event: str, agent: Agent, payload: dict) -> None:
        self.sent.append(payload)
        if len(self.sent) <= self.failures:
            raise AgenstraError(ErrorCode.REMOTE_UNAVAILABLE, "The manager is unreachable")


async def test_a_callbacks_answer_is_sent_again_over_a_brief_link_drop():
    flaky = _FlakyClient(failures=2)
    agent = Agent(client=flaky, client_id="local", id="a", name="a")
    agent._receive(ManagerEvent.CHAT_EVENT, request_event("r1"))
    await agent._dispatch([lambda request: "yes"], agent.pending_permissions()[0])
    assert flaky.sent == [{"requestId": "r1", "optionId": "yes"}] * 3


def test_a_turn_prompt_whose_answer_cannot_be_sent_does_not_kill_the_turn(monkeypatch,
                                                                           capsys):
    monkeypatch.setattr(client_module, "RESPOND_WAIT", 0.5)
    flaky = _FlakyClient(failures=10**6)
    agent = Agent(client=flaky, client_id="local", id="a", name="a")
    agent._receive(ManagerEvent.CHAT_EVENT, request_event("r1"))
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    inbox.put(agent.pending_permissions()[0])
    agent._serve(inbox, lambda request: "yes")  # the chat's wait goes on: no exception
    assert len(flaky.sent) > 1  # sent again before giving up
    assert "could not be sent" in capsys.readouterr().err


def test_a_plain_callback_may_block_without_freezing_the_client():
    """It runs in a worker thread: the client's loop goes on, and the callback may use the
    blocking API (which on the loop's own thread would refuse)."""
    flaky = _FlakyClient()
    agent = Agent(client=flaky, client_id="local", id="a", name="a")
    started, go = threading.Event(), threading.Event()

    def callback(request):
        started.set()
        go.wait(10)  # as input() would
        agent.respond(request["requestId"], "yes")
        return None

    agent.on_permission(callback)
    loop = flaky._loop
    loop.loop.call_soon_threadsafe(agent._receive, ManagerEvent.CHAT_EVENT, request_event("r1"))
    assert started.wait(10)
    loop.run(asyncio.sleep(0), 2)  # the loop answers while the callback blocks
    go.set()
    deadline = time.monotonic() + 10
    while not flaky.sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flaky.sent == [{"requestId": "r1", "optionId": "yes"}]


# -- picking options ------------------------------------------------------------------------


def test_option_picking_by_kind():
    full = {"options": list(DEFAULT_PERMISSION_OPTIONS)}
    assert option_for(full, "allow") == "allow_once"
    assert option_for(full, "allow", always=True) == "allow_always"
    assert option_for(full, "reject") == "reject_once"
    assert option_for(full, "reject", always=True) == "reject_always"
    only_always = {"options": [{"optionId": "x", "name": "Always", "kind": "allow_always"}]}
    assert option_for(only_always, "allow") == "x"  # the other of the pair
    assert option_for(only_always, "reject") is None
    assert option_for({"options": [{"kind": "allow_once"}, "junk"]}, "allow") is None


def test_recorded_decisions_match_by_kind_and_title_in_order():
    events = [request_event("r1")["payload"], resolved_event("r1")["payload"],
              request_event("r2", title="run ls", kind="execute")["payload"],
              resolved_event("r2", outcome="rejected")["payload"]]
    events = [{"kind": ChatEventKind.PERMISSION_REQUEST if "title" in e else
               ChatEventKind.PERMISSION_RESOLVED, "payload": e} for e in events]
    events.insert(2, {"kind": ChatEventKind.PERMISSION_RESOLVED,  # by policy, never asked
                      "payload": {"requestId": "p", "outcome": "allowed", "by": "policy"}})
    decisions = permission_decisions(events)
    assert decisions == [
        {"title": "write note.txt", "kind": "edit", "outcome": "allowed", "by": "user",
         "optionKind": "allow_once"},
        {"title": "run ls", "kind": "execute", "outcome": "rejected", "by": "user",
         "optionKind": "reject_once"}]
    replay = ReplayDecisions(decisions)
    other_options = [{"optionId": "ok", "name": "OK", "kind": "allow_once"},
                     {"optionId": "ko", "name": "No", "kind": "reject_once"}]
    fresh = lambda **kw: {"requestId": "new", "options": other_options, **kw}  # noqa: E731
    assert replay.answer(fresh(kind="edit", title="write other.txt")) is None  # no match
    assert replay.answer(fresh(kind="execute", title="run ls")) == "ko"
    assert replay.answer(fresh(kind="edit", title="write note.txt")) == "ok"
    assert replay.answer(fresh(kind="edit", title="write note.txt")) is None  # used once


def test_a_request_sent_again_after_a_login_is_recorded_once():
    agent = lone_agent()
    agent._turn_events["t1"] = events = []
    agent._receive(ManagerEvent.CHAT_EVENT, request_event("r1"))
    agent._receive(ManagerEvent.CHAT_EVENT, request_event("r1"))  # sent again after a login
    agent._receive(ManagerEvent.CHAT_EVENT, request_event("r2"))
    agent._receive(ManagerEvent.CHAT_EVENT, resolved_event("r1"))
    assert [(e["kind"], e["payload"]["requestId"]) for e in events] == [
        (ChatEventKind.PERMISSION_REQUEST, "r1"), (ChatEventKind.PERMISSION_REQUEST, "r2"),
        (ChatEventKind.PERMISSION_RESOLVED, "r1")]


@pytest.mark.parametrize(("recorded", "answered", "fails"), [
    ("expired", "rejected", False), ("cancelled", "rejected", False),
    ("rejected", "expired", False), ("allowed", "allowed", False),
    ("expired", "allowed", True), ("allowed", "rejected", True)])
async def test_the_replay_provider_asks_each_recorded_request_once_and_compares_allowed(
        tmp_path, recorded, answered, fails):
    """A recording made before the client kept one copy holds the request twice; a
    recorded expiry agrees with any refusal of this run, not with an allow."""
    from agenstra_jupyter.manager.models import AgentRecord
    from agenstra_jupyter.manager.permissions import Resolution
    from agenstra_jupyter.manager.providers.base import ProviderError, Turn
    from agenstra_jupyter.manager.providers.replay import ReplayProvider
    from agenstra_jupyter.sessions import SESSION_VERSION

    events = [request_event("r1"), request_event("r1"), resolved_event("r1", recorded)]
    turn_record = {"type": "turn", "agent": "a", "prompt": "write it",
                   "events": [{"kind": e["kind"], "payload": e["payload"]} for e in events],
                   "response": {"type": "text", "result": "done", "parts": []}}
    session = tmp_path / "session.jsonl"
    session.write_text(json.dumps({"type": "session", "version": SESSION_VERSION}) + "\n"
                       + json.dumps(turn_record) + "\n")
    asks = []

    async def ask(request):
        asks.append(request)
        return Resolution(request_id=f"n{len(asks)}", outcome=answered, by="user")

    async def emit(kind, payload):
        pass

    async def save_state(state):
        pass

    agent = AgentRecord(id="a", name="a", provider="replay", runtime="process",
                        password_hash="-", created_at="", updated_at="",
                        config={"session": str(session), "agent": "a", "mode": "strict"})
    provider = ReplayProvider(agent=agent, save_state=save_state)
    turn = Turn(message="write it", correlation_id="c", stream=True, emit=emit, ask=ask)
    if fails:
        with pytest.raises(ProviderError, match="Replay mismatch"):
            await provider.run_turn(turn)
    else:
        result = await provider.run_turn(turn)
        assert result.text == "done"
        assert [p["outcome"] for p in result.extra["parts"]] == [answered]
    assert [a.title for a in asks] == ["write note.txt"]  # asked once


# -- the %agent prompt ------------------------------------------------------------------------


def test_the_cell_prompt_names_the_request_and_maps_keys(monkeypatch, capsys):
    request = request_event("r1", options=list(DEFAULT_PERMISSION_OPTIONS),
                            diff=[{"path": "note.txt", "oldText": "a\n", "newText": "b\n"}])
    request = request["payload"]
    asked: list[str] = []
    typed = iter(["x", "A"])
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or next(typed))
    assert magics.prompt_permission(request) == "allow_always"
    assert asked[0] == ("Allow edit note.txt? [a]llow once / [A]lways / [r]eject / "
                        "[R]eject always ")
    shown = capsys.readouterr().out
    assert "the agent asks to edit: write note.txt" in shown and "-a\n+b" in shown
    assert "Type one of a, A, r, R" in shown


def test_the_cell_prompt_without_stdin_answers_as_a_headless_run(monkeypatch):
    def no_stdin(prompt):
        raise StdinNotImplementedError("no frontend")

    monkeypatch.setattr("builtins.input", no_stdin)
    request = request_event("r1")["payload"]
    monkeypatch.delenv(PERMISSIONS_ENV, raising=False)
    assert magics.prompt_permission(request) == "no"  # nobody to ask: reject
    monkeypatch.setenv(PERMISSIONS_ENV, "allow")
    assert magics.prompt_permission(request) == "yes"
    monkeypatch.setenv(PERMISSIONS_ENV, "deny")
    assert magics.prompt_permission(request) == "no"


# -- the ChatWidget's card ------------------------------------------------------------------


class _OneAgentClient:
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


def click(button) -> None:
    button.comm.handle_msg({"content": {"data": {"method": "custom",
                                                 "content": {"event": "click"}}},
                            "buffers": []})


def feed(agent: Agent, widget: ChatWidget, event: str, payload: dict) -> None:
    agent._receive(event, payload)
    widget._on_event(event, payload)


def test_widget_card_shows_the_request_answers_and_collapses(monkeypatch):
    agent = lone_agent()
    agent._receive(ManagerEvent.CHAT_EVENT, request_event("r0", turn="t0"))  # before the widget
    widget = ChatWidget("a", client=_OneAgentClient(agent))
    assert list(widget._cards) == ["r0"]
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(agent, "respond", lambda rid, oid: sent.append((rid, oid)))
    feed(agent, widget, ManagerEvent.CHAT_EVENT, request_event(
        "r1", diff=[{"path": "note.txt", "oldText": "old line\n", "newText": "<b>new</b>\n"}]))
    feed(agent, widget, ManagerEvent.CHAT_EVENT, request_event("r1"))  # re-sent: one card
    card = widget._cards["r1"]
    assert len([c for c in widget.transcript.children if c is card.widget]) == 1
    body = card.body.value
    assert "write note.txt" in body and "(edit)" in body and "note.txt" in body
    assert "-old line" in body and "+&lt;b&gt;new&lt;/b&gt;" in body and "<b>new" not in body
    assert [b.description for b in card.buttons] == ["Allow", "Reject"]
    assert [b.button_style for b in card.buttons] == ["success", "danger"]

    click(card.buttons[0])
    assert sent == [("r1", "yes")] and all(b.disabled for b in card.buttons)
    feed(agent, widget, ManagerEvent.CHAT_EVENT, resolved_event("r1", user="alice"))
    line = card.widget.children[0].value
    assert "Allowed by alice: write note.txt" in line and len(card.widget.children) == 1

    # The answer lists its requests itself: the card gives way to the line in the bubble.
    feed(agent, widget, ManagerEvent.CHAT_MESSAGE, answer(1, parts=[
        {"kind": "permission", "requestId": "r1", "title": "write note.txt",
         "toolKind": "edit", "paths": ["note.txt"], "outcome": "allowed", "by": "user",
         "optionId": "yes", "user": "alice"}]))
    assert "r1" not in widget._cards and card.widget not in widget.transcript.children
    assert "Allowed by alice: write note.txt" in widget.transcript.children[-1].value


def test_widget_card_answered_elsewhere_first(monkeypatch):
    agent = lone_agent()
    widget = ChatWidget("a", client=_OneAgentClient(agent))

    def settled(rid, oid):
        raise AgenstraError(ErrorCode.UNKNOWN_REQUEST, "No such pending request")

    monkeypatch.setattr(agent, "respond", settled)
    feed(agent, widget, ManagerEvent.CHAT_EVENT, request_event("r1"))
    card = widget._cards["r1"]
    click(card.buttons[1])
    assert "Already answered elsewhere" in card.note.value
    assert all(b.disabled for b in card.buttons)
    feed(agent, widget, ManagerEvent.CHAT_EVENT, resolved_event(
        "r1", outcome="expired", by="timeout"))
    assert "Expired: nobody answered (rejected)" in card.widget.children[0].value


def test_history_parts_render_as_one_line_each():
    bubble = bubble_html(answer(1, parts=[
        {"kind": "permission", "requestId": "r1", "title": "write <x>", "toolKind": "edit",
         "outcome": "rejected", "by": "policy"},
        {"kind": "permission", "requestId": "r2", "title": "read a", "toolKind": "read",
         "outcome": "allowed", "by": "user", "user": "bob"}]))
    assert "Rejected by policy: write &lt;x&gt;" in bubble
    assert "Allowed by bob: read a" in bubble and "<x>" not in bubble


# -- end to end: a real Jupyter server, its local manager, the fake ACP agent ----------------


@pytest.fixture(scope="module")
def client(jupyter_server):
    client = jupyter_server.client()
    yield client
    client.close()


def acp_agent(client, name: str, **config) -> Agent:
    client.create_agent(name, provider="acp", config={"command": ACP_AGENT_COMMAND, **config})
    return client.agent(name)


def approved_file(server, agent: Agent) -> Path:
    return server.data_dir / "local-manager" / "workspaces" / agent.id / "approved.txt"


def wait_for(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.05)
    raise AssertionError("timed out")


def chat_in_background(agent: Agent, message: str) -> tuple[threading.Thread, dict]:
    """A chat that blocks, as a cell's would, while the test answers from elsewhere."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["answer"] = agent.chat(message, timeout=120)
        except Exception as exc:  # reported by the test
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_on_permission_allowing_writes_the_file(jupyter_server, client):
    agent = acp_agent(client, "k-allow")
    seen: list[dict] = []
    agent.on_permission(lambda request: seen.append(request) or option_for(request, "allow"))
    assert agent.chat("approve", timeout=120) == "approve: yes file=written"
    assert approved_file(jupyter_server, agent).read_text() == "approved content\n"
    [request] = seen
    assert request["title"] == "Write approved.txt" and request["kind"] == "edit"
    assert [o["kind"] for o in request["options"]] == [
        "allow_once", "allow_always", "reject_once", "reject_always"]
    assert request["diff"][0]["newText"] == "approved content\n"
    assert request["expiresAt"] and request["correlationId"]
    assert agent.pending_permissions() == []
    [part] = [p for p in agent.messages[-1]["response"]["parts"] if p["kind"] == "permission"]
    assert (part["outcome"], part["by"], part["optionId"]) == ("allowed", "user", "yes")


def test_an_async_callback_and_one_that_leaves_it(client):
    agent = acp_agent(client, "k-async")
    left: list[str] = []

    async def later(request):
        await asyncio.sleep(0.2)
        return option_for(request, "reject")

    agent.on_permission(lambda request: left.append(request["requestId"]))  # None: not mine
    agent.on_permission(later)
    assert agent.chat("approve execute", timeout=120) == "approve: no file=untouched"
    assert len(left) == 1


def test_respond_reject_leaves_the_file_untouched(jupyter_server, client):
    agent = acp_agent(client, "k-reject")
    thread, outcome = chat_in_background(agent, "approve")
    [request] = wait_for(agent.pending_permissions)
    agent.reject(request["requestId"])
    thread.join(60)
    assert outcome == {"answer": "approve: no file=untouched"}
    assert not approved_file(jupyter_server, agent).exists()
    with pytest.raises(AgenstraError) as settled:  # settled: nothing to answer any more
        agent.respond(request["requestId"], "yes")
    assert settled.value.code == ErrorCode.UNKNOWN_REQUEST


def test_a_client_connecting_later_sees_and_answers_first(jupyter_server, client):
    agent = acp_agent(client, "k-race")
    thread, outcome = chat_in_background(agent, "approve")
    [request] = wait_for(agent.pending_permissions)
    later = jupyter_server.client()  # another frontend, logged in while the turn waits
    try:
        other = later.agent("k-race")
        [seen] = other.pending_permissions()  # sent again after the history
        assert seen["requestId"] == request["requestId"]
        assert seen["title"] == "Write approved.txt"
        other.allow(seen["requestId"])
        thread.join(60)
        assert outcome == {"answer": "approve: yes file=written"}
        wait_for(lambda: agent.pending_permissions() == [])
        with pytest.raises(AgenstraError) as second:
            agent.respond(request["requestId"], "no")
        assert second.value.code == ErrorCode.UNKNOWN_REQUEST
        assert approved_file(jupyter_server, agent).read_text() == "approved content\n"
    finally:
        later.close()


# -- end to end: notebooks run headlessly ----------------------------------------------------


def agent_notebook(path: Path, agent: str, prompt: str = "approve") -> Path:
    return write_notebook(path, "%load_ext agenstra_jupyter", f"%agent {agent} {prompt}")


def cell_output(path: Path) -> str:
    book = nbformat.read(path, as_version=4)
    return json.dumps(book.cells[-1].get("outputs", []))


@pytest.mark.parametrize(("flag", "said", "written"), [
    (["--permissions", "allow"], "approve: yes file=written", True),
    (["--permissions", "deny"], "approve: no file=untouched", False),
    ([], "approve: no file=untouched", False),  # deny unless told otherwise
])
def test_run_permissions_answer_the_turns_requests(jupyter_server, client, tmp_path, flag,
                                                   said, written):
    name = f"k-run-{len(flag) and flag[1]}"
    agent = acp_agent(client, name)
    notebook = agent_notebook(tmp_path / "n.ipynb", name)
    run = cli("run", notebook, "-o", tmp_path / "out.ipynb", *flag, *server_args(jupyter_server))
    assert run.returncode == 0, run.stderr
    assert said in cell_output(tmp_path / "out.ipynb")
    assert approved_file(jupyter_server, agent).exists() is written
    assert client.agent(name).pending_permissions() == []  # answered, nothing left waiting


def test_a_recorded_session_replays_its_decisions(jupyter_server, client, tmp_path):
    acp_agent(client, "k-rec")
    notebook = agent_notebook(tmp_path / "n.ipynb", "k-rec")
    session = tmp_path / "s.jsonl"
    recorded = cli("run", notebook, "--record", session, "--permissions", "allow",
                   "-o", tmp_path / "a.ipynb", *server_args(jupyter_server))
    assert recorded.returncode == 0, recorded.stderr
    _, [turn] = read_session(session)
    assert turn["permissions"] == [{"title": "Write approved.txt", "kind": "edit",
                                    "outcome": "allowed", "by": "user",
                                    "optionKind": "allow_once"}]

    # The replay asks again; the recorded "allow" answers it, not the default deny.
    replayed = cli("run", notebook, "--replay", session, "-o", tmp_path / "b.ipynb")
    assert replayed.returncode == 0, replayed.stderr
    assert cell_output(tmp_path / "b.ipynb") == cell_output(tmp_path / "a.ipynb")

    # No recorded decision of that title: the run's policy answers. Deny contradicts the
    # recording (strict replay fails, saying so); allow agrees with it.
    lines = session.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["permissions"][0]["title"] = "Write something else"
    session.write_text("\n".join([lines[0], json.dumps(edited)]) + "\n")
    denied = cli("run", notebook, "--replay", session, "-o", tmp_path / "c.ipynb")
    assert denied.returncode == 0, denied.stderr  # %agent shows a failed turn, as a line
    assert ("the recording allowed 'Write approved.txt', this run rejected it"
            in cell_output(tmp_path / "c.ipynb"))
    allowed = cli("run", notebook, "--replay", session, "--permissions", "allow",
                  "-o", tmp_path / "d.ipynb")
    assert allowed.returncode == 0, allowed.stderr
    assert cell_output(tmp_path / "d.ipynb") == cell_output(tmp_path / "a.ipynb")


def test_agent_magic_prompts_in_the_cell_and_sends_the_answer(jupyter_server, client):
    """A kernel whose frontend can type (allow_stdin): the request shows in the cell with
    an input box, and what is typed there answers it."""
    from jupyter_client.manager import start_new_kernel

    agent = acp_agent(client, "k-stdin")
    env = {**os.environ, "AGENSTRA_URL": jupyter_server.full_url,
           "AGENSTRA_TOKEN": jupyter_server.token}
    env.pop(PERMISSIONS_ENV, None)
    manager, kernel = start_new_kernel(env=env)
    prompts: list[str] = []
    shown: list[str] = []

    def typed(message) -> None:
        prompts.append(message["content"]["prompt"])
        kernel.input("x" if len(prompts) == 1 else "a")  # a wrong key first: asked again

    def output(message) -> None:
        content = message["content"]
        shown.append(content.get("text") or json.dumps(content.get("data", {})))

    try:
        reply = kernel.execute_interactive(
            "%load_ext agenstra_jupyter\n%agent k-stdin approve", allow_stdin=True,
            stdin_hook=typed, output_hook=output, timeout=120)
    finally:
        kernel.stop_channels()
        manager.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok"
    assert prompts == ["Allow edit approved.txt? [a]llow once / [A]lways / [r]eject / "
                       "[R]eject always "] * 2
    text = "".join(shown)
    assert "the agent asks to edit: Write approved.txt" in text and "+approved content" in text
    assert "approve: yes file=written" in text
    assert approved_file(jupyter_server, agent).read_text() == "approved content\n"


def test_create_agent_passes_project_and_permissions(jupyter_server, client):
    """`permissions` becomes the agent's policy (it answers, nobody is asked) and `project`
    the folder it works in."""
    root = jupyter_server.data_dir.parent  # the server's root directory
    (root / "kproj").mkdir()
    client.create_agent("k-proj", provider="acp", config={"command": ACP_AGENT_COMMAND},
                        project="kproj", permissions="allow")
    agent = client.agent("k-proj")
    assert agent.chat("approve", timeout=120) == "approve: yes file=written"
    assert (root / "kproj" / "approved.txt").read_text() == "approved content\n"
    [listed] = [a for a in client.agents() if a["name"] == "k-proj"]
    assert listed["project"] == "kproj"
    client.create_agent("k-deny", provider="acp", config={"command": ACP_AGENT_COMMAND},
                        permissions="deny")
    assert client.agent("k-deny").chat("approve", timeout=120) == "approve: no file=untouched"
    with pytest.raises(AgenstraError) as refused:
        client.create_agent("k-bad", provider="acp", config={"command": ACP_AGENT_COMMAND},
                            permissions="sometimes")
    assert refused.value.code == ErrorCode.INVALID_PAYLOAD
    assert "k-bad" not in [a["name"] for a in client.agents()]


def test_a_chat_waiting_on_an_unanswered_request_ends_when_it_expires(tmp_path):
    """Nobody answers: the chat neither hangs nor fails, the request expires (rejected)."""
    server = start_jupyter(tmp_path, {"AGENSTRA_PERMISSION_TIMEOUT": "2"})
    client = server.client()
    try:
        agent = acp_agent(client, "k-expire")
        resolved: list[dict] = []
        agent.subscribe(lambda event, payload: resolved.append(payload["payload"]) if (
            event == ManagerEvent.CHAT_EVENT
            and payload.get("kind") == ChatEventKind.PERMISSION_RESOLVED) else None)
        started = time.monotonic()
        assert agent.chat("approve", timeout=60) == "approve: no file=untouched"
        assert 1.5 < time.monotonic() - started < 30
        assert [(r["outcome"], r["by"]) for r in resolved] == [("expired", "timeout")]
        assert agent.pending_permissions() == []
        assert not approved_file(server, agent).exists()
    finally:
        client.close()
        stop_jupyter(server)

"""Approvals (DESIGN.md "Approvals"): ACP agents ask, users answer from any socket.

Real managers, the SDK-based fake ACP agent (`approve` asks to write approved.txt with a
diff and writes it only if allowed) and claude-agent-acp against the fake Anthropic API.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from agenstra_jupyter.manager.models import AgentRecord
from agenstra_jupyter.manager.providers.acp import AcpProvider
from agenstra_jupyter.manager.runtimes import ProcessRuntime
from agenstra_jupyter.protocol import ChatEventKind, ErrorCode, ManagerEvent

from .fakes import ACP_AGENT_COMMAND
from .fakes.vendors import Reply, ToolUse
from .helpers import (
    CLI_BIN,
    SECRET,
    WAIT,
    AgentsClient,
    FrontendClient,
    events_of,
    need_cli,
    permission_requests,
)

OPTIONS = [{"optionId": "yes", "name": "Allow", "kind": "allow_once"},
           {"optionId": "always", "name": "Always", "kind": "allow_always"},
           {"optionId": "no", "name": "Reject", "kind": "reject_once"},
           {"optionId": "never", "name": "Never", "kind": "reject_always"}]


async def acp_agent(manager, name: str, **config) -> dict:
    config.setdefault("command", ACP_AGENT_COMMAND)
    return await manager.create_agent(name=name, provider="acp", config=config)


async def logged_in(manager, agent: dict, after_seq: int | None = None) -> AgentsClient:
    client = await AgentsClient().connect(manager)
    await client.login(agent, after_seq)
    return client


async def respond(client: AgentsClient, request_id: str, option_id: str, **extra) -> dict:
    """Send a permissionResponse and return its acknowledgement."""
    return await client.sio.call(ManagerEvent.PERMISSION_RESPONSE,
                                 {"requestId": request_id, "optionId": option_id, **extra},
                                 namespace="/agents", timeout=WAIT)


async def asked(client: AgentsClient, correlation_id: str, count: int = 1,
                timeout: float = WAIT) -> list[dict]:
    """Wait until `client` has seen `count` permission requests of the turn."""
    return await client.log.wait_for(
        lambda _: len(permission_requests(client, correlation_id)) >= count
        and permission_requests(client, correlation_id), timeout)


async def resolved(client: AgentsClient, correlation_id: str, count: int = 1) -> list[dict]:
    def seen(_):
        found = [e["payload"] for e in events_of(client, correlation_id,
                                                 ChatEventKind.PERMISSION_RESOLVED)]
        return len(found) >= count and found
    return await client.log.wait_for(seen)


def stored_request(manager, request_id: str) -> tuple:
    with sqlite3.connect(manager.data_dir / "manager.sqlite") as db:
        return db.execute("select state, option_id, decided_by, user from permission_requests "
                          "where id = ?", (request_id,)).fetchone()


def permission_parts(answer: dict) -> list[dict]:
    return [p for p in answer["response"].get("parts", []) if p["kind"] == "permission"]


async def test_a_request_with_its_diff_is_answered_from_any_socket(manager):
    agent = await acp_agent(manager, "ap1")
    workspace = manager.data_dir / "workspaces" / agent["id"]
    one, two = await logged_in(manager, agent), await logged_in(manager, agent)

    # Rejected from the second socket: the file stays untouched.
    await one.emit(ManagerEvent.CHAT, {"message": "approve", "correlationId": "r"})
    [request] = await asked(one, "r")
    [seen_by_two] = await asked(two, "r")
    assert seen_by_two == request
    payload = request["payload"]
    assert payload["kind"] == "edit" and payload["title"] == "Write approved.txt"
    assert payload["toolCallId"] == "approve-1" and payload["paths"] == ["approved.txt"]
    assert payload["diff"] == [{"path": "approved.txt", "oldText": "old content\n",
                                "newText": "approved content\n"}]
    assert payload["options"] == OPTIONS
    expires = datetime.fromisoformat(payload["expiresAt"].replace("Z", "+00:00"))
    assert 500 < (expires - datetime.now(timezone.utc)).total_seconds() <= 600
    [tool_call] = events_of(one, "r", ChatEventKind.TOOL_CALL)[:1]
    assert tool_call["payload"]["diff"] == payload["diff"]  # the tool card shows the edit
    assert stored_request(manager, payload["requestId"]) == ("pending", None, None, None)
    assert await respond(two, payload["requestId"], "no") == {"ok": True}
    rejected = await one.answer_to("r")
    assert rejected["response"]["result"] == "approve: no file=untouched"
    assert not (workspace / "approved.txt").exists()
    assert await resolved(two, "r") == [{"requestId": payload["requestId"], "optionId": "no",
                                         "outcome": "rejected", "by": "user",
                                         "title": "Write approved.txt", "toolKind": "edit"}]
    [part] = permission_parts(rejected)
    assert part["requestId"] == payload["requestId"] and part["outcome"] == "rejected"
    assert part["toolKind"] == "edit" and part["by"] == "user"

    # A second answer to the settled request: UNKNOWN_REQUEST, nothing changes.
    late = await respond(one, payload["requestId"], "yes")
    assert late["ok"] is False and late["error"]["code"] == ErrorCode.UNKNOWN_REQUEST
    assert (await one.error())["code"] == ErrorCode.UNKNOWN_REQUEST
    assert stored_request(manager, payload["requestId"]) == ("rejected", "no", "user", None)

    # Allowed from the first socket: the file is written.
    await two.emit(ManagerEvent.CHAT, {"message": "approve", "correlationId": "a"})
    [request] = await asked(one, "a")
    assert await respond(one, request["payload"]["requestId"], "yes") == {"ok": True}
    allowed = await two.answer_to("a")
    assert allowed["response"]["result"] == "approve: yes file=written"
    assert (workspace / "approved.txt").read_text() == "approved content\n"
    assert permission_parts(allowed)[0]["outcome"] == "allowed"
    assert stored_request(manager, request["payload"]["requestId"])[:3] == (
        "allowed", "yes", "user")
    await one.close()
    await two.close()


async def test_always_answers_are_remembered_per_tool_kind(manager):
    agent = await acp_agent(manager, "ap2")
    client = await logged_in(manager, agent)
    await client.emit(ManagerEvent.CHAT, {"message": "approve", "correlationId": "1"})
    [request] = await asked(client, "1")
    await respond(client, request["payload"]["requestId"], "always")
    assert (await client.answer_to("1"))["response"]["result"] == "approve: always file=written"

    # The next edit is settled by the remembered rule: no request to answer.
    second = await client.chat("approve", correlationId="2")
    assert second["response"]["result"] == "approve: yes file=written"
    assert permission_requests(client, "2") == []
    [settled] = await resolved(client, "2")
    assert settled["by"] == "policy" and settled["outcome"] == "allowed"

    # Another kind is asked again; "never" is remembered as well.
    await client.emit(ManagerEvent.CHAT, {"message": "approve execute", "correlationId": "3"})
    [request] = await asked(client, "3")
    assert request["payload"]["kind"] == "execute"
    await respond(client, request["payload"]["requestId"], "never")
    assert (await client.answer_to("3"))["response"]["result"] == "approve: never file=untouched"
    fourth = await client.chat("approve execute", correlationId="4")
    assert fourth["response"]["result"] == "approve: no file=untouched"
    assert permission_requests(client, "4") == []
    await client.close()


async def test_the_agents_policy_settles_requests_without_the_user(manager):
    for policy, expected in [("deny", "approve: no file=untouched"),
                             ("allow", "approve: yes file=written"),
                             ("workspace", "approve: yes file=written")]:
        agent = await acp_agent(manager, f"pol-{policy}", permissions=policy)
        client = await logged_in(manager, agent)
        answer = await client.chat("approve", correlationId="p")
        assert answer["response"]["result"] == expected, policy
        assert permission_requests(client, "p") == []
        [settled] = await resolved(client, "p")
        assert settled["by"] == "policy"
        assert permission_parts(answer)[0]["by"] == "policy"
        await client.close()
    # `workspace` allows edits inside, but a command is still the user's to answer.
    client = await logged_in(manager, agent)
    await client.emit(ManagerEvent.CHAT, {"message": "approve execute", "correlationId": "x"})
    [request] = await asked(client, "x")
    await respond(client, request["payload"]["requestId"], "yes")
    assert (await client.answer_to("x"))["response"]["result"] == "approve: yes file=untouched"
    await client.close()


async def test_an_unanswered_request_expires_and_counts_as_rejected(start_manager):
    manager = start_manager(env={"AGENSTRA_PERMISSION_TIMEOUT": "1.5"})
    agent = await acp_agent(manager, "ap-exp")
    client = await logged_in(manager, agent)
    await client.emit(ManagerEvent.CHAT, {"message": "approve", "correlationId": "e"})
    [request] = await asked(client, "e")
    answer = await client.answer_to("e")
    assert answer["response"]["result"] == "approve: no file=untouched"  # the agent heard no
    [settled] = await resolved(client, "e")
    assert settled == {"requestId": request["payload"]["requestId"], "outcome": "expired",
                       "by": "timeout", "title": "Write approved.txt", "toolKind": "edit"}
    assert permission_parts(answer)[0]["outcome"] == "expired"
    late = await respond(client, request["payload"]["requestId"], "yes")
    assert late["error"]["code"] == ErrorCode.UNKNOWN_REQUEST
    assert stored_request(manager, request["payload"]["requestId"])[:3] == (
        "expired", None, "timeout")
    await client.close()


async def test_cancelling_the_turn_cancels_its_request(manager):
    agent = await acp_agent(manager, "ap-cancel")
    client = await logged_in(manager, agent)
    await client.emit(ManagerEvent.CHAT, {"message": "approve", "correlationId": "c"})
    [request] = await asked(client, "c")
    await client.emit(ManagerEvent.CANCEL, {"correlationId": "c"})
    answer = await client.answer_to("c")
    assert answer["response"]["type"] == "error" and answer["response"]["cancelled"] is True
    [settled] = await resolved(client, "c")
    assert settled["outcome"] == "cancelled" and settled["by"] == "user"
    [part] = permission_parts(answer)
    assert part["requestId"] == request["payload"]["requestId"]
    assert part["outcome"] == "cancelled"
    assert stored_request(manager, request["payload"]["requestId"])[0] == "cancelled"
    # The agent ended its turn itself: the session goes on.
    assert (await client.chat("count"))["response"]["result"] == "prompt number 2"
    await client.close()


async def test_a_pending_request_is_sent_again_after_the_history_at_each_login(manager):
    agent = await acp_agent(manager, "ap-login")
    first = await logged_in(manager, agent)
    await first.emit(ManagerEvent.CHAT, {"message": "approve", "correlationId": "l"})
    [request] = await asked(first, "l")
    await first.close()  # the page is reloaded

    second = await logged_in(manager, agent)
    [again] = await asked(second, "l")
    assert again == request  # the same event: requestId, sequence, payload
    events = second.log.events
    user = next(i for i, (name, p) in enumerate(events)
                if name == ManagerEvent.CHAT_MESSAGE and p["correlationId"] == "l")
    sent = next(i for i, (name, p) in enumerate(events)
                if name == ManagerEvent.CHAT_EVENT and p["kind"] == "permissionRequest")
    assert user < sent  # after the history
    # A login that replays no history still gets it; a socket only gets it once.
    third = await logged_in(manager, agent, after_seq=1)
    assert (await asked(third, "l")) == [request]
    await respond(third, request["payload"]["requestId"], "yes")
    assert (await second.answer_to("l"))["response"]["result"] == "approve: yes file=written"
    assert len(permission_requests(second, "l")) == 1
    # Settled: the next login has nothing to answer.
    fourth = await logged_in(manager, agent)
    await fourth.answer_to("l")
    assert permission_requests(fourth) == []
    for client in (second, third, fourth):
        await client.close()


async def test_a_manager_killed_with_a_pending_request_cancels_it_at_restart(start_manager,
                                                                               tmp_path):
    db = f"sqlite:///{tmp_path / 'crash.sqlite'}"
    key = {"AGENSTRA_MANAGER_KEY_FILE": str(tmp_path / "crash.key")}
    manager = start_manager("before", db=db, env=key)
    agent = await acp_agent(manager, "ap-crash")
    client = await logged_in(manager, agent)
    await client.emit(ManagerEvent.CHAT, {"message": "approve", "correlationId": "k"})
    [request] = await asked(client, "k")
    request_id = request["payload"]["requestId"]
    manager.kill()
    await client.close()

    restarted = start_manager("after", db=db, api_key=manager.api_key, env=key)
    observer = await logged_in(restarted, agent)
    _, answer = await observer.log.wait_count(ManagerEvent.CHAT_MESSAGE, 2)
    assert answer["response"]["type"] == "error" and answer["response"]["interrupted"] is True
    [part] = permission_parts(answer)
    assert part["requestId"] == request_id and part["outcome"] == "cancelled"
    assert part["title"] == "Write approved.txt" and part["toolKind"] == "edit"
    assert permission_requests(observer) == []  # nothing pending is sent again
    late = await respond(observer, request_id, "yes")
    assert late["error"]["code"] == ErrorCode.UNKNOWN_REQUEST
    with sqlite3.connect(tmp_path / "crash.sqlite") as conn:
        assert conn.execute("select state from permission_requests where id = ?",
                            (request_id,)).fetchone() == ("cancelled",)
    await observer.close()


async def test_bad_answers_get_an_error_code_and_change_nothing(manager):
    agent = await acp_agent(manager, "ap-bad")
    other = await acp_agent(manager, "ap-other")
    client = await logged_in(manager, agent)
    outsider = await logged_in(manager, other)
    stranger = await AgentsClient().connect(manager)  # logged into nothing
    await client.emit(ManagerEvent.CHAT, {"message": "approve", "correlationId": "b"})
    [request] = await asked(client, "b")
    request_id = request["payload"]["requestId"]

    async def refused(sender: AgentsClient, payload) -> str:
        ack = await sender.sio.call(ManagerEvent.PERMISSION_RESPONSE, payload,
                                    namespace="/agents", timeout=WAIT)
        assert ack["ok"] is False, ack
        return ack["error"]["code"]

    for payload in [{}, {"requestId": request_id}, {"optionId": "yes"},
                    {"requestId": request_id, "optionId": 1},
                    {"requestId": "x" * 129, "optionId": "yes"},
                    {"requestId": request_id, "optionId": "y" * 129},
                    {"requestId": request_id, "optionId": "yes", "user": "u" * 257},
                    {"requestId": request_id, "optionId": "maybe"},
                    {"requestId": request_id, "optionId": "allow_once"},  # not its option id
                    "yes"]:
        assert await refused(client, payload) == ErrorCode.INVALID_PAYLOAD, payload
    assert await refused(client, {"requestId": "no-such", "optionId": "yes"}) == \
        ErrorCode.UNKNOWN_REQUEST
    # Another agent's socket cannot answer it, nor can one logged into nothing, nor one
    # naming an agent it is not logged into.
    assert await refused(outsider, {"requestId": request_id, "optionId": "yes"}) == \
        ErrorCode.UNKNOWN_REQUEST
    assert await refused(stranger, {"requestId": request_id, "optionId": "yes"}) == \
        ErrorCode.NOT_LOGGED_IN
    assert await refused(client, {"requestId": request_id, "optionId": "yes",
                                  "agentId": other["id"]}) == ErrorCode.NOT_LOGGED_IN
    assert stored_request(manager, request_id) == ("pending", None, None, None)
    assert events_of(client, "b", ChatEventKind.PERMISSION_RESOLVED) == []
    # It is still answerable.
    assert await respond(client, request_id, "no", agentId=agent["id"]) == {"ok": True}
    assert (await client.answer_to("b"))["response"]["result"] == "approve: no file=untouched"
    for sio in (client, outsider, stranger):
        await sio.close()


async def test_waiting_requests_per_agent_are_bounded(manager):
    # 17 requests at once: 16 wait for the user, the one over the bound is rejected at once.
    agent = await acp_agent(manager, "ap-bound")
    client = await logged_in(manager, agent)
    await client.emit(ManagerEvent.CHAT, {"message": "flood 17", "correlationId": "f"})
    waiting = await asked(client, "f", 16, timeout=90)  # 17 paths judged in the sandbox
    [refused] = await resolved(client, "f")
    assert refused["outcome"] == "rejected" and refused["by"] == "policy"
    assert refused["requestId"] not in {r["payload"]["requestId"] for r in waiting}
    await asyncio.sleep(0.5)
    assert len(permission_requests(client, "f")) == 16
    for request in waiting:
        await respond(client, request["payload"]["requestId"], "yes")
    answer = await client.answer_to("f", timeout=60)
    assert answer["response"]["result"] == "no=1 yes=16"
    await client.close()


async def test_huge_titles_and_diffs_are_cut(manager):
    agent = await acp_agent(manager, "ap-big")
    client = await logged_in(manager, agent)
    await client.emit(ManagerEvent.CHAT, {"message": "approve big", "correlationId": "g"})
    [request] = await asked(client, "g")
    payload = request["payload"]
    assert len(payload["title"]) <= 1024 and payload["title"].endswith("[truncated]")
    [diff] = payload["diff"]
    for text in (diff["oldText"], diff["newText"]):
        assert len(text) <= 8 * 1024 and text.endswith("[truncated]")
    [tool_call] = events_of(client, "g", ChatEventKind.TOOL_CALL)[:1]
    assert len(tool_call["payload"]["diff"][0]["newText"]) <= 8 * 1024 + 20
    await respond(client, payload["requestId"], "no")
    assert (await client.answer_to("g"))["response"]["result"] == "approve: no file=untouched"
    await client.close()


async def test_stopping_or_deleting_the_agent_cancels_its_requests(manager):
    for action in ("stop", "delete"):
        agent = await acp_agent(manager, f"ap-{action}")
        client = await logged_in(manager, agent)
        await client.emit(ManagerEvent.CHAT, {"message": "approve", "correlationId": "s"})
        [request] = await asked(client, "s")
        async with manager.http() as http:
            if action == "stop":
                response = await http.post(f"/api/agents/{agent['id']}/stop")
            else:
                response = await http.delete(f"/api/agents/{agent['id']}")
            assert response.status_code in (200, 204), response.text
        [settled] = await resolved(client, "s")
        assert settled == {"requestId": request["payload"]["requestId"],
                           "outcome": "cancelled", "by": "policy",
                           "title": "Write approved.txt", "toolKind": "edit"}
        answer = await client.answer_to("s")
        assert answer["response"]["cancelled"] is True
        assert permission_parts(answer)[0]["outcome"] == "cancelled"
        if action == "stop":
            assert stored_request(manager, request["payload"]["requestId"])[0] == "cancelled"
        else:
            assert stored_request(manager, request["payload"]["requestId"]) is None
        await client.close()


async def test_claude_agent_acp_asks_before_writing(cli_manager, vendor):
    need_cli("claude-agent-acp")
    config = {"command": [str(CLI_BIN / "claude-agent-acp")],
              "env": {"ANTHROPIC_BASE_URL": vendor.url, "ANTHROPIC_API_KEY": SECRET,
                      "CLAUDE_CODE_EXECUTABLE": str(CLI_BIN / "claude")},
              "loopbackPorts": [vendor.port]}
    agent = await cli_manager.create_agent(name="claudeap", provider="acp", config=config)
    workspace = cli_manager.data_dir / "workspaces" / agent["id"]
    # Claude Code asks the model for a session title besides the turn's own requests.
    vendor.side_request = lambda body: not (body or {}).get("tools")
    vendor.script(
        Reply(tool=ToolUse("Write", {"file_path": str(workspace / "yes.txt"),
                                     "content": "allowed\n"})),
        Reply(text="Wrote it."),
        # An existing file: Claude Code reads it first; the card shows what a Write replaces.
        Reply(tool=ToolUse("Read", {"file_path": str(workspace / "no.txt")})),
        Reply(tool=ToolUse("Write", {"file_path": str(workspace / "no.txt"),
                                     "content": "refused\n"})),
        Reply(text="Could not write it."),
    )
    client = await logged_in(cli_manager, agent)
    await client.emit(ManagerEvent.CHAT, {"message": "write yes.txt", "correlationId": "y"})
    [request] = await client.log.wait_for(
        lambda _: permission_requests(client, "y"), timeout=90)
    payload = request["payload"]
    assert payload["kind"] == "edit", payload
    assert payload["paths"] == ["yes.txt"] and payload["title"] == "Write yes.txt"
    assert payload["diff"] == [{"path": "yes.txt", "oldText": "", "newText": "allowed\n"}]
    kinds = {o["kind"]: o["optionId"] for o in payload["options"]}
    assert "allow_once" in kinds and "reject_once" in kinds
    await respond(client, payload["requestId"], kinds["allow_once"])
    answer = await client.answer_to("y", timeout=90)
    assert answer["response"]["type"] == "text", answer
    assert (workspace / "yes.txt").read_text() == "allowed\n"
    assert permission_parts(answer)[0]["outcome"] == "allowed"

    (workspace / "no.txt").write_text("before\n")
    await client.emit(ManagerEvent.CHAT, {"message": "write no.txt", "correlationId": "n"})
    [request] = await client.log.wait_for(
        lambda _: permission_requests(client, "n"), timeout=90)
    assert request["payload"]["diff"] == [{"path": "no.txt", "oldText": "before\n",
                                           "newText": "refused\n"}]
    # The tool card shows the same before/after (the call announced again, same id).
    edits = [c["payload"].get("diff") for c in events_of(client, "n", ChatEventKind.TOOL_CALL)
             if c["payload"]["toolCallId"] == request["payload"]["toolCallId"]]
    assert edits[-1] == request["payload"]["diff"]
    await respond(client, request["payload"]["requestId"], kinds["reject_once"])
    answer = await client.answer_to("n", timeout=90)
    assert (workspace / "no.txt").read_text() == "before\n"
    assert permission_parts(answer)[0]["outcome"] == "rejected"
    await client.close()


def forwarded_events(client: FrontendClient, agent_id: str, kind: str) -> list[dict]:
    return [e for e in client.forwarded(agent_id, ManagerEvent.CHAT_EVENT) if e["kind"] == kind]


async def test_an_answer_through_the_controller_names_the_jupyter_user(jupyter):
    async with jupyter.http() as http:
        response = await http.post("/clients/local/agents", json={
            "name": "ctl-acp", "provider": "acp", "config": {"command": ACP_AGENT_COMMAND}})
        assert response.status_code == 201, response.text
        agent = response.json()
    frontend = await jupyter.frontend()
    watcher = await jupyter.frontend()  # a second page, logged in before the request
    assert await watcher.forward(ManagerEvent.LOGIN, agent["id"]) == {"ok": True}
    ack = await frontend.forward(ManagerEvent.CHAT, agent["id"],
                                 {"message": "approve", "correlationId": "j"})
    assert ack == {"ok": True}
    [request] = await frontend.log.wait_for(
        lambda _: forwarded_events(frontend, agent["id"], ChatEventKind.PERMISSION_REQUEST))
    assert request["payload"]["diff"][0]["newText"] == "approved content\n"
    # The frontend claims to be someone else: the controller says who answered.
    ack = await frontend.forward(ManagerEvent.PERMISSION_RESPONSE, agent["id"], {
        "requestId": request["payload"]["requestId"], "optionId": "yes", "user": "mallory"})
    assert ack == {"ok": True}
    answer = await frontend.answer_to(agent["id"], "j")
    assert answer["response"]["result"] == "approve: yes file=written"
    [settled] = await watcher.log.wait_for(
        lambda _: forwarded_events(watcher, agent["id"], ChatEventKind.PERMISSION_RESOLVED))
    session = jupyter.controller.gateway.sessions[frontend.sio.get_sid(namespace="/clients")]
    expected = session.handler.current_user.display_name  # the name people read
    assert settled["payload"]["user"] == expected and expected and expected != "mallory"
    assert settled["payload"]["outcome"] == "allowed" and settled["payload"]["by"] == "user"
    assert permission_parts(answer)[0]["user"] == expected
    # An answer to the settled request comes back as the manager's error.
    await frontend.forward(ManagerEvent.PERMISSION_RESPONSE, agent["id"], {
        "requestId": request["payload"]["requestId"], "optionId": "no"})
    error = await frontend.log.wait_for(
        lambda _: frontend.forwarded(agent["id"], ManagerEvent.ERROR))
    assert error[-1]["code"] == ErrorCode.UNKNOWN_REQUEST
    await frontend.close()
    await watcher.close()


def sandboxes_of(pid: int) -> set[int]:
    """The bwrap processes `pid` runs now (each agent command, each path judged)."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)
        except OSError:
            continue
        if fields[0].endswith("(bwrap") and int(fields[1].split()[1]) == pid:
            found.add(int(entry))
    return found


async def test_a_flood_of_requests_forks_few_sandboxes(manager):
    # 200 requests at once from untrusted agent code: a few are prepared at a time (a path
    # judged = one sandbox exec), none once 16 wait; the rest are refused at once.
    agent = await acp_agent(manager, "ap-flood")
    client = await logged_in(manager, agent)
    assert (await client.chat("count"))["response"]["result"] == "prompt number 1"
    pid = manager.process.pid
    baseline = len(sandboxes_of(pid))  # the agent itself
    seen: set[int] = set()
    most = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal most
        while not done.is_set():
            now = sandboxes_of(pid)
            seen.update(now)
            most = max(most, len(now) - baseline)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        await client.emit(ManagerEvent.CHAT, {"message": "flood 200", "correlationId": "f"})
        waiting = await asked(client, "f", 16, timeout=90)
        await resolved(client, "f", 200 - 16)
    finally:
        done.set()
        sampler.join()
    assert most <= 4, most  # MAX_PREPARING at a time
    # Those that wait, and a few prepared while earlier ones were being decided.
    assert len(seen) - baseline <= 2 * (16 + 4), len(seen)
    await asyncio.sleep(0.5)
    assert len(permission_requests(client, "f")) == 16
    for request in waiting:
        await respond(client, request["payload"]["requestId"], "yes")
    answer = await client.answer_to("f", timeout=60)
    assert answer["response"]["result"] == "no=184 yes=16"
    # The agent still answers.
    assert (await client.chat("count"))["response"]["result"] == "prompt number 3"
    await client.close()


def whole_file_write(path: str) -> SimpleNamespace:
    """An ACP tool call as claude-agent-acp's Write sends it: `oldText` null."""
    return SimpleNamespace(
        kind="edit", title=f"Write {path}", tool_call_id="w-1", raw_input={}, status="pending",
        locations=[SimpleNamespace(path=path)],
        content=[SimpleNamespace(type="diff", path=path, old_text=None, new_text="new\n")])


@pytest.mark.parametrize("path", [".env", ".git/config", "sub/.hidden/key", "cfg/config"])
async def test_a_hidden_files_text_is_not_read_before_anyone_agreed(sandbox_available,
                                                                    tmp_path, path):
    """A whole-file write to .git/config (remote URLs with tokens), .env, any hidden path,
    or through a directory link to one: the card shows it as a new text, nothing read."""
    runtime = ProcessRuntime(workspace_root=str(tmp_path / "ws"),
                             state_root=str(tmp_path / "agents"))
    agent = AgentRecord(id="h1", name="h1", provider="acp", runtime="process",
                        password_hash="-", created_at="", updated_at="")
    await runtime.start(agent)
    workspace = tmp_path / "ws" / "h1"
    for hidden in (".env", ".git/config", "sub/.hidden/key", "visible.txt"):
        (workspace / hidden).parent.mkdir(parents=True, exist_ok=True)
        (workspace / hidden).write_text(f"token-{SECRET}\n")
    (workspace / "cfg").symlink_to(workspace / ".git")
    provider = AcpProvider(agent=agent, runtime=runtime)
    options = [SimpleNamespace(option_id="yes", name="Allow", kind="allow_once")]

    ask = await provider.permission_ask(whole_file_write(f"{workspace}/{path}"), options)
    assert ask.inside_workspace and ask.paths == [path]
    assert ask.diff == [{"path": path, "oldText": "", "newText": "new\n"}]
    # The control: a visible file's text is shown as what the write replaces.
    ask = await provider.permission_ask(whole_file_write(f"{workspace}/visible.txt"), options)
    assert ask.diff == [{"path": "visible.txt", "oldText": f"token-{SECRET}\n",
                         "newText": "new\n"}]

"""Approvals for the CLI presets (DESIGN.md "Approvals"; issue #15, "CLI agents").

Claude Code asks through its stdio permission prompt: the real CLI, driven by the fake
Anthropic API in a real manager, sends `can_use_tool`, the manager puts it to the user as
a `permissionRequest`, and the answer decides whether the tool runs. Codex, Gemini,
opencode and cursor cannot ask in their non-interactive modes: the policy becomes their
own mode (checked on the argv, and for Gemini on the tools the real CLI offers the model).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from agenstra_jupyter.manager.providers.cli import PRESETS, CliProvider
from agenstra_jupyter.manager.providers.cli_control import TurnClock
from agenstra_jupyter.protocol import ChatEventKind, ManagerEvent

from .fakes.vendors import FakeVendor, Reply, ToolUse
from .helpers import SECRET, AgentsClient, events_of, need_cli, permission_requests
from .test_cli_providers import codex_files

MODEL_WAIT = 90


def claude_config(vendor: FakeVendor, **extra) -> dict:
    # No side requests (session titles, ...): each scripted reply answers a real turn step.
    env = {"ANTHROPIC_BASE_URL": vendor.url, "ANTHROPIC_API_KEY": SECRET,
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    return {"preset": "claude", "env": env, "loopbackPorts": [vendor.port], **extra}


async def claude_agent(manager, name: str, vendor: FakeVendor, **extra
                       ) -> tuple[AgentsClient, Path]:
    agent = await manager.create_agent(name=name, provider="cli",
                                       config=claude_config(vendor, **extra))
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    return client, manager.data_dir / "workspaces" / agent["id"]


async def next_request(client: AgentsClient, correlation_id: str, count: int = 1) -> dict:
    requests = await client.log.wait_for(
        lambda _: len(permission_requests(client, correlation_id)) >= count
        and permission_requests(client, correlation_id), timeout=MODEL_WAIT)
    return requests[count - 1]["payload"]


async def respond(client: AgentsClient, payload: dict, kind: str) -> None:
    option = next(o["optionId"] for o in payload["options"] if o["kind"] == kind)
    await client.emit(ManagerEvent.PERMISSION_RESPONSE,
                      {"requestId": payload["requestId"], "optionId": option})


def tool_results(vendor: FakeVendor) -> list[dict]:
    """The tool_result blocks the model received, oldest first."""
    found: dict[str, dict] = {}  # by tool_use_id: each request repeats the conversation
    for request in vendor.model_requests("/v1/messages"):
        for message in (request.body or {}).get("messages", []):
            content = message.get("content")
            for block in content if isinstance(content, list) else []:
                if block.get("type") == "tool_result":
                    found.setdefault(block["tool_use_id"], block)
    return list(found.values())


def result_text(block: dict) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return str(content)


def permission_parts(answer: dict) -> list[dict]:
    return [p for p in answer["response"].get("parts", []) if p["kind"] == "permission"]


# -- Claude Code: interactive ------------------------------------------------------------


async def test_claude_asks_before_writing_and_the_answer_decides(cli_manager, vendor):
    need_cli("claude")
    client, workspace = await claude_agent(cli_manager, "cla1", vendor)
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "notes.txt").write_text("old line\n")
    write = ToolUse("Write", {"file_path": str(workspace / "notes.txt"),
                              "content": "new line\n"})
    # Claude Code overwrites only a file it has read (reads inside the workspace never ask).
    read = ToolUse("Read", {"file_path": str(workspace / "notes.txt")})
    vendor.script(Reply(tool=read), Reply(tool=write), Reply(text="Wrote notes.txt."))
    await client.emit(ManagerEvent.CHAT, {"message": "update the notes", "correlationId": "a"})
    request = await next_request(client, "a")
    assert request["kind"] == "edit"
    assert request["paths"] == ["notes.txt"]
    assert request["diff"] == [{"path": "notes.txt", "oldText": "old line\n",
                                "newText": "new line\n"}]
    assert request["toolCallId"] == write.id
    assert "notes.txt" in request["title"]
    assert (workspace / "notes.txt").read_text() == "old line\n"  # nothing before the answer
    await respond(client, request, "allow_once")
    answer = await client.answer_to("a", timeout=MODEL_WAIT)
    assert answer["response"]["result"] == "Wrote notes.txt.", answer
    assert (workspace / "notes.txt").read_text() == "new line\n"
    read_result, result = tool_results(vendor)
    assert read_result["tool_use_id"] == read.id and "old line" in result_text(read_result)
    assert result["tool_use_id"] == write.id and not result.get("is_error")
    [part] = permission_parts(answer)
    assert part["outcome"] == "allowed" and part["by"] == "user"
    session = answer["response"]["sessionId"]

    # The next turn resumes the session and asks again; a rejection keeps the file away.
    refused = ToolUse("Write", {"file_path": str(workspace / "secret-plan.txt"),
                                "content": "nope\n"})
    vendor.script(Reply(tool=refused), Reply(text="I could not write it."))
    await client.emit(ManagerEvent.CHAT, {"message": "write the plan", "correlationId": "b"})
    request = await next_request(client, "b")
    assert request["paths"] == ["secret-plan.txt"]
    assert request["diff"] == [{"path": "secret-plan.txt", "oldText": "", "newText": "nope\n"}]
    await respond(client, request, "reject_once")
    answer = await client.answer_to("b", timeout=MODEL_WAIT)
    assert answer["response"]["result"] == "I could not write it."
    assert answer["response"]["sessionId"] == session  # streaming input resumes it too
    assert not (workspace / "secret-plan.txt").exists()
    denial = tool_results(vendor)[-1]
    assert denial["tool_use_id"] == refused.id and denial["is_error"] is True
    assert "rejected" in result_text(denial)
    [resolved] = [e["payload"] for e in events_of(client, "b",
                                                  ChatEventKind.PERMISSION_RESOLVED)]
    assert resolved["outcome"] == "rejected" and resolved["by"] == "user"
    await client.close()


async def test_claude_workspace_policy_allows_edits_inside_and_asks_for_the_rest(
        cli_manager, vendor, tmp_path):
    need_cli("claude")
    client, workspace = await claude_agent(cli_manager, "cla2", vendor,
                                           permissions="workspace")
    workspace.mkdir(parents=True, exist_ok=True)
    hidden = tmp_path / "outside"  # not in the agent's sandbox: the link dangles there
    hidden.mkdir()
    (workspace / "hidden").symlink_to(hidden)
    (workspace / "up").symlink_to(workspace.parent)  # the other agents' workspaces
    inside = ToolUse("Write", {"file_path": str(workspace / "inside.txt"), "content": "in\n"})
    attacks = [ToolUse("Write", {"file_path": str(workspace / "hidden" / "a.txt"),
                                 "content": "out\n"}),
               ToolUse("Write", {"file_path": str(workspace / "up" / "b.txt"),
                                 "content": "out\n"}),
               ToolUse("Write", {"file_path": f"{workspace}/../c.txt", "content": "up\n"}),
               ToolUse("Bash", {"command": "touch made-by-bash", "description": "make"})]
    vendor.script(Reply(tool=inside), *[Reply(tool=t) for t in attacks], Reply(text="Tried."))
    await client.emit(ManagerEvent.CHAT, {"message": "try everything", "correlationId": "w"})
    for count, kind in enumerate(["edit", "edit", "edit", "execute"], start=1):
        request = await next_request(client, "w", count)
        assert request["kind"] == kind, request
        await respond(client, request, "reject_once")
    answer = await client.answer_to("w", timeout=MODEL_WAIT)
    assert answer["response"]["result"] == "Tried.", answer
    assert (workspace / "inside.txt").read_text() == "in\n"  # allowed, nobody was asked
    assert list(hidden.iterdir()) == []
    assert not (workspace.parent / "b.txt").exists() and not (workspace.parent / "c.txt").exists()
    assert not (workspace / "made-by-bash").exists()
    asked = [r["payload"] for r in permission_requests(client, "w")]
    for request in asked[:3]:  # outside paths are shown as they are, never as inside ones
        assert request["paths"][0].startswith("/"), request
    assert "touch made-by-bash" in asked[3]["title"]
    outcomes = [(p["outcome"], p["by"]) for p in permission_parts(answer)]
    assert outcomes == [("allowed", "policy")] + [("rejected", "user")] * 4
    results = {r["tool_use_id"]: r for r in tool_results(vendor)}
    assert not results[inside.id].get("is_error")
    assert all(results[t.id]["is_error"] for t in attacks)
    await client.close()


async def test_claude_allow_policy_runs_tools_without_asking(cli_manager, vendor):
    need_cli("claude")
    client, workspace = await claude_agent(cli_manager, "cla3", vendor, permissions="allow")
    vendor.script(Reply(tool=ToolUse("Bash", {"command": "touch made-by-bash",
                                              "description": "make a file"})),
                  Reply(tool=ToolUse("Write", {"file_path": str(workspace / "w.txt"),
                                               "content": "w\n"})),
                  Reply(text="Done."))
    answer = await client.chat("go", correlationId="x", timeout=MODEL_WAIT)
    assert answer["response"]["result"] == "Done.", answer
    assert (workspace / "made-by-bash").exists() and (workspace / "w.txt").exists()
    assert permission_requests(client) == []
    await client.close()


async def test_claude_deny_policy_refuses_without_asking(cli_manager, vendor):
    need_cli("claude")
    client, workspace = await claude_agent(cli_manager, "cla4", vendor, permissions="deny")
    write = ToolUse("Write", {"file_path": str(workspace / "w.txt"), "content": "w\n"})
    vendor.script(Reply(tool=write), Reply(text="Refused."))
    answer = await client.chat("go", correlationId="x", timeout=MODEL_WAIT)
    assert answer["response"]["result"] == "Refused.", answer
    assert not (workspace / "w.txt").exists()
    assert permission_requests(client) == []
    [denial] = tool_results(vendor)
    assert denial["tool_use_id"] == write.id and denial["is_error"] is True
    await client.close()


async def test_cancelling_a_turn_that_waits_for_an_answer(cli_manager, vendor):
    need_cli("claude")
    client, workspace = await claude_agent(cli_manager, "cla5", vendor)
    vendor.script(Reply(tool=ToolUse("Bash", {"command": "touch never",
                                              "description": "wait"})))
    await client.emit(ManagerEvent.CHAT, {"message": "wait", "correlationId": "c"})
    request = await next_request(client, "c")
    await client.emit(ManagerEvent.CANCEL, {"correlationId": "c"})
    cancelled = await client.answer_to("c", timeout=MODEL_WAIT)
    assert cancelled["response"]["type"] == "error"
    assert cancelled["response"]["result"] == "Cancelled"
    [resolved] = [e["payload"] for e in events_of(client, "c",
                                                  ChatEventKind.PERMISSION_RESOLVED)]
    assert resolved["requestId"] == request["requestId"]
    assert resolved["outcome"] == "cancelled"
    assert not (workspace / "never").exists()
    assert not _processes_in(workspace)  # the CLI is gone, not left waiting on stdin
    vendor.script(Reply(text="next one"))
    answer = await client.chat("again", correlationId="d", timeout=MODEL_WAIT)
    assert answer["response"]["result"] == "next one"
    await client.close()


def _processes_in(directory: Path) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == str(directory):
                found.append(int(pid))
        except OSError:
            continue
    return found


# -- presets that cannot ask: the policy becomes their mode ------------------------------


def argv(preset: str, session: str | None = None, **config) -> list[str]:
    return PRESETS[preset].invocation("hi", session, {"preset": preset, **config}).argv


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_each_policy_picks_the_cli_mode():
    for policy, mode in [("ask", "default"), ("deny", "default"), ("workspace", "auto_edit"),
                         ("allow", "yolo")]:
        assert flag(argv("gemini", permissions=policy), "--approval-mode") == mode
    assert flag(argv("gemini"), "--approval-mode") == "default"  # ask is the default
    for policy, sandbox in [("ask", "read-only"), ("deny", "read-only"),
                            ("workspace", "workspace-write"), ("allow", "danger-full-access")]:
        assert flag(argv("codex", permissions=policy), "--sandbox") == sandbox
        # resume takes no --sandbox: the same mode goes in as a config override
        assert flag(argv("codex", "s1", permissions=policy), "-c") == f'sandbox_mode="{sandbox}"'
    assert "--auto" in argv("opencode", permissions="allow")
    assert "--auto" not in argv("opencode", permissions="workspace")
    assert "--force" in argv("cursor", permissions="allow")
    assert "--force" not in argv("cursor")


def test_claude_asks_unless_the_policy_settles_everything():
    asking = PRESETS["claude"].invocation("hi", None, {"preset": "claude"})
    assert asking.control and flag(asking.argv, "--permission-prompt-tool") == "stdio"
    assert flag(asking.argv, "--input-format") == "stream-json"
    assert "--permission-mode" not in asking.argv
    allow = PRESETS["claude"].invocation("hi", None, {"preset": "claude", "permissions": "allow"})
    assert not allow.control and "--permission-prompt-tool" not in allow.argv
    assert flag(allow.argv, "--permission-mode") == "bypassPermissions"
    assert allow.env == {"IS_SANDBOX": "1"}  # else refused when the sandbox runs as root
    deny = PRESETS["claude"].invocation("hi", None, {"preset": "claude", "permissions": "deny"})
    assert not deny.control and flag(deny.argv, "--permission-mode") == "dontAsk"


def test_an_explicit_cli_mode_wins_over_the_policy():
    assert flag(argv("gemini", permissions="allow", approvalMode="plan"),
                "--approval-mode") == "plan"
    assert flag(argv("codex", permissions="allow", sandbox="read-only"),
                "--sandbox") == "read-only"
    assert flag(argv("claude", permissions="deny", permissionMode="plan"),
                "--permission-mode") == "plan"


def test_opencode_rules_keep_it_to_what_the_policy_allows():
    def rules(policy: str) -> dict:
        call = PRESETS["opencode"].invocation("hi", None, {"preset": "opencode",
                                                           "permissions": policy})
        return json.loads(call.env["OPENCODE_PERMISSION"]) if call.env else {}
    asking = rules("ask")
    assert asking == rules("deny")  # nobody can be asked: what would ask is refused
    assert asking["*"] == "deny" and asking["read"] == "allow" and "edit" not in asking
    assert asking["external_directory"] == "deny"
    workspace = rules("workspace")
    assert workspace["edit"] == "allow" and workspace["*"] == "deny"
    assert workspace["external_directory"] == "deny"
    assert rules("allow") == {}


def test_bad_permission_configs_are_refused():
    for config in [{"permissions": "sometimes"}, {"permissions": 1},
                   {"approvalMode": ["yolo"]}, {"sandbox": 3}]:
        with pytest.raises(ValueError):
            CliProvider.validate_config({"preset": "gemini", **config})
    CliProvider.validate_config({"preset": "claude", "permissions": "workspace"})


async def test_the_turn_clock_stands_still_while_someone_is_asked():
    clock = TurnClock(0.3)
    with clock.asking():
        assert clock.remaining() is None
        await asyncio.sleep(0.5)  # longer than the whole budget
    assert 0.2 < clock.remaining() <= 0.3
    assert await clock.within(asyncio.sleep(0.05, "done")) == "done"
    with pytest.raises(asyncio.TimeoutError):
        await clock.within(asyncio.sleep(5))


async def test_providers_say_which_presets_ask(cli_manager):
    async with cli_manager.http() as http:
        offer = (await http.get("/api/providers")).json()
        response = await http.post("/api/agents", json={
            "name": "badperm", "provider": "cli",
            "config": {"preset": "claude", "permissions": "maybe"}})
        assert response.status_code == 400 and "permissions" in response.json()["message"]
        agents = (await http.get("/api/agents")).json()
    assert "badperm" not in json.dumps(agents)  # nothing was created
    cli = next(p for p in offer["providers"] if p["name"] == "cli")
    approvals = {p["name"]: p["approvals"] for p in cli["presets"]}
    assert approvals == {"claude": "interactive", "codex": "policy", "gemini": "policy",
                         "opencode": "policy", "cursor": "policy", "custom": "policy"}
    assert all(p["approvalsNote"] for p in cli["presets"])


def gemini_config(vendor: FakeVendor, **extra) -> dict:
    settings = json.dumps({"security": {"auth": {"selectedType": "gemini-api-key"}}})
    return {"preset": "gemini", "model": "gemini-2.5-flash",
            "env": {"GEMINI_API_KEY": SECRET, "GOOGLE_GEMINI_BASE_URL": vendor.url},
            "files": {".gemini/settings.json": settings}, "loopbackPorts": [vendor.port],
            **extra}


def offered_tools(vendor: FakeVendor) -> set[str]:
    names = set()
    for request in vendor.model_requests("streamGenerateContent"):
        for tool in (request.body or {}).get("tools") or []:
            names |= {f["name"] for f in tool.get("functionDeclarations") or []}
    return names


async def test_gemini_policy_decides_which_tools_the_model_gets(cli_manager, vendor):
    need_cli("gemini")
    offered = {}
    for policy in ("ask", "allow"):
        vendor.requests.clear()
        vendor.script(Reply(text=f"answer under {policy}"))
        agent = await cli_manager.create_agent(name=f"gem-{policy}", provider="cli",
                                               config=gemini_config(vendor, permissions=policy))
        client = await AgentsClient().connect(cli_manager)
        await client.login(agent)
        answer = await client.chat("hello", correlationId="g", timeout=MODEL_WAIT)
        assert answer["response"]["result"] == f"answer under {policy}", answer
        await client.close()
        offered[policy] = offered_tools(vendor)
    assert offered["ask"], "the CLI offered no tools at all: nothing was checked"
    assert "run_shell_command" not in offered["ask"]  # read-only tools only
    assert "write_file" not in offered["ask"]
    assert {"run_shell_command", "write_file"} <= offered["allow"]


def sandbox_modes(vendor: FakeVendor) -> list[str]:
    """The sandbox modes Codex told the model about, in the order it did."""
    found = []
    for request in vendor.model_requests("/v1/responses"):
        text = json.dumps(request.body)
        found += [mode for mode in ("read-only", "workspace-write", "danger-full-access")
                  if f"`sandbox_mode` is `{mode}`" in text]
    return found


async def test_codex_runs_in_the_sandbox_its_policy_picks(cli_manager, vendor):
    need_cli("codex")
    for policy, mode in [("ask", "read-only"), ("workspace", "workspace-write")]:
        vendor.requests.clear()
        vendor.script(Reply(text="first"), Reply(text="resumed"))
        config = {"preset": "codex", "env": {"MOCK_KEY": SECRET}, "files": codex_files(vendor),
                  "loopbackPorts": [vendor.port], "permissions": policy}
        agent = await cli_manager.create_agent(name=f"codex-{policy}", provider="cli",
                                               config=config)
        client = await AgentsClient().connect(cli_manager)
        await client.login(agent)
        first = await client.chat("hello", correlationId="a", timeout=MODEL_WAIT)
        assert first["response"]["result"] == "first", first
        second = await client.chat("again", correlationId="b", timeout=MODEL_WAIT)
        assert second["response"]["result"] == "resumed", second  # resume takes the override
        assert second["response"]["sessionId"] == first["response"]["sessionId"]
        await client.close()
        modes = sandbox_modes(vendor)
        assert modes and set(modes) == {mode}, modes

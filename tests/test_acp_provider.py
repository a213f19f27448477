"""The `acp` provider: a test agent built on the ACP SDK, and the real claude-agent-acp."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agenstra_jupyter.protocol import ChatEventKind, ManagerEvent

from .fakes import ACP_AGENT_COMMAND
from .fakes.vendors import Reply
from .helpers import CLI_BIN, SECRET, AgentsClient, answer_requests, events_of, need_cli


async def acp_agent(manager, name: str, **config) -> tuple[dict, AgentsClient]:
    config.setdefault("command", ACP_AGENT_COMMAND)
    agent = await manager.create_agent(name=name, provider="acp", config=config)
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    return agent, client


async def test_acp_streams_and_keeps_its_session(manager):
    _, client = await acp_agent(manager, "acp1")
    answer = await client.chat("hello", correlationId="h")
    assert answer["response"]["result"] == "Hello from ACP"
    pieces = [e["payload"]["delta"] for e in events_of(client, "h",
                                                        ChatEventKind.ASSISTANT_DELTA)]
    assert pieces == ["Hello ", "from ", "ACP"]
    assert (await client.chat("count"))["response"]["result"] == "prompt number 2"
    assert (await client.chat("count"))["response"]["result"] == "prompt number 3"
    await client.close()


async def test_acp_permissions_deny_writes_outside_the_workspace(manager):
    # `workspace` allows edits inside; the one outside is the user's to answer: rejected.
    agent, client = await acp_agent(manager, "acp2", permissions="workspace")
    answer, [asked] = await asyncio.gather(client.chat("files", correlationId="f"),
                                           answer_requests(client, "no", 1))
    assert answer["response"]["result"] == "outside=no inside=yes"
    assert asked["payload"]["paths"] == ["/etc/agenstra-test.txt"]
    assert asked["payload"]["kind"] == "edit"
    workspace = manager.data_dir / "workspaces" / agent["id"]
    assert (workspace / "note.txt").read_text() == "written inside\n"
    assert not Path("/etc/agenstra-test.txt").exists()
    calls = events_of(client, "f", ChatEventKind.TOOL_CALL)
    results = events_of(client, "f", ChatEventKind.TOOL_RESULT)
    assert [c["payload"]["toolCallId"] for c in calls] == ["outside", "inside"]
    assert [r["payload"]["result"] for r in results] == ["refused", "written inside\n"]
    resolved = [(e["payload"]["outcome"], e["payload"]["by"])
                for e in events_of(client, "f", ChatEventKind.PERMISSION_RESOLVED)]
    assert resolved == [("rejected", "user"), ("allowed", "policy")]
    await client.close()


async def test_acp_paths_are_judged_after_symlinks_and_commands_are_not_auto_approved(manager):
    _, client = await acp_agent(manager, "acp-escape", permissions="workspace")
    # An edit through a link leading out, any command, and a read whose path resolves
    # outside (the link's target) are not approved by the policy: the user is asked (and
    # rejects them); a symlink is never opened.
    answer, asked = await asyncio.gather(client.chat("escape"),
                                         answer_requests(client, "no", 3))
    assert [a["payload"]["kind"] for a in asked] == ["edit", "execute", "read"]
    assert answer["response"]["result"] == (
        "edit-via-link=no execute=no read-inside=no write-via-link=error read-link=error")
    await client.close()


async def test_acp_permission_policy_deny_refuses_everything(manager):
    _, client = await acp_agent(manager, "acp3", permissions="deny")
    answer = await client.chat("files")
    assert answer["response"]["result"] == "outside=no inside=no"
    await client.close()


async def test_acp_cancel_then_the_session_goes_on(manager):
    _, client = await acp_agent(manager, "acp4")
    await client.emit(ManagerEvent.CHAT, {"message": "slow", "correlationId": "s"})
    await client.log.wait_for(lambda _: events_of(client, "s", ChatEventKind.ASSISTANT_DELTA))
    await client.emit(ManagerEvent.CANCEL, {"correlationId": "s"})
    cancelled = await client.answer_to("s", timeout=10)
    assert cancelled["response"] == {"type": "error", "result": "Cancelled", "cancelled": True}
    # The agent ended the turn itself: same process, same session.
    assert (await client.chat("count"))["response"]["result"] == "prompt number 2"
    await client.close()


async def test_a_crashing_acp_agent_gives_an_error_turn_and_is_restarted(manager):
    _, client = await acp_agent(manager, "acp5")
    crashed = await client.chat("crash")
    assert crashed["response"]["type"] == "error"
    assert "The ACP agent failed" in crashed["response"]["result"]
    assert (await client.chat("hello"))["response"]["result"] == "Hello from ACP"
    await client.close()


async def test_acp_config_is_validated(manager):
    async with manager.http() as http:
        for config, message in [({}, "command"), ({"command": "agent"}, "command"),
                                ({"command": ["a"], "permissions": "maybe"}, "permissions")]:
            response = await http.post("/api/agents", json={"name": "bad", "provider": "acp",
                                                            "config": config})
            assert response.status_code == 400 and message in response.json()["message"]


async def test_real_claude_agent_acp_adapter(cli_manager, vendor):
    need_cli("claude-agent-acp")
    vendor.script(Reply(text="Answer through the ACP adapter."))
    config = {"command": [str(CLI_BIN / "claude-agent-acp")],
              "env": {"ANTHROPIC_BASE_URL": vendor.url, "ANTHROPIC_API_KEY": SECRET,
                      "CLAUDE_CODE_EXECUTABLE": str(CLI_BIN / "claude")},
              "loopbackPorts": [vendor.port]}
    agent = await cli_manager.create_agent(name="claudeacp", provider="acp", config=config)
    client = await AgentsClient().connect(cli_manager)
    await client.login(agent)
    answer = await client.chat("hello", correlationId="a", timeout=90)
    assert answer["response"]["type"] == "text", answer
    assert answer["response"]["result"] == "Answer through the ACP adapter."
    assert events_of(client, "a", ChatEventKind.ASSISTANT_DELTA)
    await client.close()

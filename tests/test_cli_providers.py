"""The `cli` provider with the real agent CLIs, each pointed at a fake model API on 127.0.0.1.

Only the model is fake (tests/fakes/vendors.py speaks each vendor's streaming format);
the CLIs are the released npm packages that scripts/test.sh installs. cursor-agent is on
no registry here: its preset is tested with tests/fakes/bin/cursor-agent, which replays
its documented output.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from agenstra_jupyter.protocol import ChatEventKind, ManagerEvent

from .fakes.vendors import FakeVendor, Reply, ToolUse
from .helpers import (
    CLI_BIN,
    FAKE_BIN,
    SECRET,
    AgentsClient,
    assert_seq_complete,
    events_of,
    need_cli,
)


def claude_config(vendor: FakeVendor, **extra) -> dict:
    return {"preset": "claude", "env": {"ANTHROPIC_BASE_URL": vendor.url,
                                        "ANTHROPIC_API_KEY": SECRET},
            "loopbackPorts": [vendor.port], **extra}


async def cli_agent(manager, name: str, config: dict) -> tuple[dict, AgentsClient]:
    agent = await manager.create_agent(name=name, provider="cli", config=config)
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    return agent, client


def deltas(client: AgentsClient, correlation_id: str) -> str:
    return "".join(e["payload"]["delta"]
                   for e in events_of(client, correlation_id, ChatEventKind.ASSISTANT_DELTA))


async def test_claude_streams_and_resumes_its_session(cli_manager, vendor):
    need_cli("claude")
    vendor.script(Reply(text="Hello from the model, streamed."), Reply(text="Second answer."))
    agent, client = await cli_agent(cli_manager, "claude1", claude_config(vendor))
    answer = await client.chat("say hello", correlationId="t1")
    assert answer["response"]["type"] == "text"
    assert answer["response"]["result"] == "Hello from the model, streamed."
    assert deltas(client, "t1") == answer["response"]["result"]
    pieces = events_of(client, "t1", ChatEventKind.ASSISTANT_DELTA)
    assert len(pieces) > 1  # really streamed, not one block
    sequences = [e["sequence"] for e in events_of(client, "t1")]
    assert sequences == sorted(sequences) == list(range(1, len(sequences) + 1))
    session = answer["response"]["sessionId"]
    assert session

    second = await client.chat("and again", correlationId="t2")
    assert second["response"]["result"] == "Second answer."
    assert second["response"]["sessionId"] == session  # resumed, not a new conversation
    prompt_texts = json.dumps(vendor.model_requests("/v1/messages")[-1].body["messages"])
    assert "say hello" in prompt_texts  # the resumed session carried the first turn
    async with cli_manager.http() as http:
        stored = (await http.get(f"/api/agents/{agent['id']}/messages")).json()
    assert_seq_complete(stored)
    assert stored == client.log.messages()  # the final answers are persisted as sent
    await client.close()


async def test_claude_tool_call_and_result(cli_manager, vendor):
    need_cli("claude")
    vendor.script(Reply(tool=ToolUse("Bash", {"command": "echo tool-output",
                                              "description": "print"})),
                  Reply(text="The command printed tool-output."))
    _, client = await cli_agent(cli_manager, "claude2", claude_config(vendor))
    answer = await client.chat("run it", correlationId="t")
    assert answer["response"]["result"] == "The command printed tool-output."
    (call,) = events_of(client, "t", ChatEventKind.TOOL_CALL)
    assert call["payload"]["name"] == "Bash"
    assert call["payload"]["args"]["command"] == "echo tool-output"
    (result,) = events_of(client, "t", ChatEventKind.TOOL_RESULT)
    assert result["payload"]["toolCallId"] == call["payload"]["toolCallId"]
    assert "tool-output" in result["payload"]["result"]
    kinds = [p["kind"] for p in answer["response"]["parts"]]
    assert kinds == ["toolCall", "toolResult"]  # tool events are stored; the text once, as result
    await client.close()


async def test_claude_api_error_is_a_short_error_turn(cli_manager, vendor):
    need_cli("claude")
    vendor.script(Reply(status=400, error_message="the fake model refuses this request"))
    _, client = await cli_agent(cli_manager, "claude3", claude_config(vendor))
    answer = await client.chat("too long", correlationId="e")
    assert answer["response"]["type"] == "error"
    assert "the fake model refuses this request" in answer["response"]["result"]
    assert len(answer["response"]["result"]) <= 300
    vendor.script(Reply(text="fine now"))
    assert (await client.chat("retry", correlationId="f"))["response"]["result"] == "fine now"
    await client.close()


async def test_claude_rate_limit_then_success(cli_manager, vendor):
    need_cli("claude")
    vendor.script(Reply(status=429, retry_after=0, error_message="slow down"),
                  Reply(text="after the retry"))
    _, client = await cli_agent(cli_manager, "claude4", claude_config(vendor))
    answer = await client.chat("hi", correlationId="r")
    assert answer["response"]["result"] == "after the retry"
    assert len(vendor.model_requests("/v1/messages")) >= 2
    await client.close()


async def test_claude_mid_stream_disconnect_ends_the_turn(cli_manager, vendor):
    need_cli("claude")
    vendor.script(Reply(text="this stream is cut off halfway", cut_after=4),
                  Reply(text="recovered"))
    _, client = await cli_agent(cli_manager, "claude5", claude_config(vendor, timeout=90))
    answer = await client.chat("hi", correlationId="d", timeout=120)
    # The CLI either retries (and gets the next reply) or reports the failure: never silence.
    if answer["response"]["type"] == "text":
        assert answer["response"]["result"].endswith("recovered")
    else:
        assert answer["response"]["result"]
    await client.close()


async def test_claude_cancel_mid_stream_kills_the_cli(cli_manager, vendor):
    need_cli("claude")
    vendor.script(Reply(text="a slow answer " * 20, chunk_delay=0.3), Reply(text="next"))
    agent, client = await cli_agent(cli_manager, "claude6", claude_config(vendor))
    await client.emit(ManagerEvent.CHAT, {"message": "slow", "correlationId": "s"})
    await client.log.wait_for(lambda _: events_of(client, "s", ChatEventKind.ASSISTANT_DELTA))
    await client.emit(ManagerEvent.CANCEL, {"correlationId": "s"})
    cancelled = await client.answer_to("s", timeout=10)
    assert cancelled["response"]["type"] == "error"
    assert cancelled["response"]["result"] == "Cancelled"
    workspace = cli_manager.data_dir / "workspaces" / agent["id"]
    assert not _processes_in(workspace)
    assert (await client.chat("go on", correlationId="n"))["response"]["result"] == "next"
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


async def test_provider_keys_never_reach_events_logs_or_rest(cli_manager, vendor):
    need_cli("claude")
    vendor.script(Reply(text="ok"))
    agent, client = await cli_agent(cli_manager, "claude7", claude_config(vendor))
    await client.chat("hi", correlationId="k")
    assert vendor.requests and any(
        SECRET in (r.headers.get("X-Api-Key", "") + r.headers.get("Authorization", ""))
        for r in vendor.requests)  # the key did reach the model API ...
    async with cli_manager.http() as http:
        rest = (await http.get(f"/api/agents/{agent['id']}")).text
        rest += (await http.get(f"/api/agents/{agent['id']}/messages")).text
    assert SECRET not in json.dumps(client.log.events)  # ... and nothing else
    assert SECRET not in rest and SECRET not in cli_manager.log()
    await client.close()


def codex_files(vendor: FakeVendor) -> dict:
    return {".codex/config.toml": (
        'model = "gpt-test"\nmodel_provider = "mock"\n[model_providers.mock]\n'
        f'name = "mock"\nbase_url = "{vendor.url}/v1"\nenv_key = "MOCK_KEY"\n'
        'wire_api = "responses"\nsupports_websockets = false\n')}


async def test_codex_answers_resumes_and_reports_failures(cli_manager, vendor):
    need_cli("codex")
    vendor.script(Reply(text="Codex says hi."), Reply(text="Codex again."),
                  Reply(status=400, error_message="bad request from the fake"))
    # config.files are written into the agent's private HOME: ~/.codex/config.toml.
    config = {"preset": "codex", "env": {"MOCK_KEY": SECRET}, "files": codex_files(vendor),
              "loopbackPorts": [vendor.port]}
    _, client = await cli_agent(cli_manager, "codex1", config)
    first = await client.chat("hello", correlationId="a")
    assert first["response"]["result"] == "Codex says hi."
    assert deltas(client, "a") == "Codex says hi."
    second = await client.chat("again", correlationId="b")
    assert second["response"]["result"] == "Codex again."
    assert second["response"]["sessionId"] == first["response"]["sessionId"]
    failed = await client.chat("break", correlationId="c")
    assert failed["response"]["type"] == "error"
    assert "bad request from the fake" in failed["response"]["result"]
    await client.close()


async def test_gemini_streams_deltas(cli_manager, vendor):
    need_cli("gemini")
    vendor.script(Reply(text="Gemini streams this."),
                  Reply(status=400, error_message="gemini refuses"))
    settings = json.dumps({"security": {"auth": {"selectedType": "gemini-api-key"}}})
    config = {"preset": "gemini", "model": "gemini-2.5-flash",
              "env": {"GEMINI_API_KEY": SECRET, "GOOGLE_GEMINI_BASE_URL": vendor.url},
              "files": {".gemini/settings.json": settings}, "loopbackPorts": [vendor.port]}
    _, client = await cli_agent(cli_manager, "gemini1", config)
    answer = await client.chat("hello", correlationId="g")
    assert answer["response"]["result"] == "Gemini streams this."
    assert len(events_of(client, "g", ChatEventKind.ASSISTANT_DELTA)) > 1
    failed = await client.chat("again", correlationId="h", timeout=120)
    assert failed["response"]["type"] == "error"
    await client.close()


async def test_cursor_preset_parses_the_documented_stream(cli_manager):
    _, client = await cli_agent(cli_manager, "cursor1", {"preset": "cursor"})
    answer = await client.chat("read the readme", correlationId="c")
    assert answer["response"]["result"] == "I'll read the file.\n\nResumed: False"
    (call,) = events_of(client, "c", ChatEventKind.TOOL_CALL)
    assert call["payload"] == {"toolCallId": "toolu_1", "name": "readToolCall",
                               "status": "pending", "args": {"path": "README.md"}}
    (result,) = events_of(client, "c", ChatEventKind.TOOL_RESULT)
    assert result["payload"]["result"] == {"content": "# readme"}
    again = await client.chat("more", correlationId="d")
    assert again["response"]["result"].endswith("Resumed: True")
    failed = await client.chat("fail", correlationId="e")
    assert failed["response"] == {"type": "error", "result":
                                  "The agent CLI failed: Error: not logged in (set CURSOR_API_KEY)"}
    await client.close()


async def test_cli_config_is_validated(cli_manager):
    async with cli_manager.http() as http:
        for config, message in [
            ({}, "preset"),
            ({"preset": "nope"}, "preset"),
            ({"preset": "custom"}, "command"),
            ({"preset": "claude", "env": {"A": 1}}, "env"),
            ({"preset": "claude", "files": {"../x": "y"}}, "relative"),
            ({"preset": "claude", "args": "--x"}, "args"),
        ]:
            response = await http.post("/api/agents", json={"name": "bad", "provider": "cli",
                                                            "config": config})
            assert response.status_code == 400 and message in response.json()["message"]
        offer = (await http.get("/api/providers")).json()
    cli = next(p for p in offer["providers"] if p["name"] == "cli")
    assert {p["name"] for p in cli["presets"]} >= {"claude", "codex", "gemini", "opencode",
                                                   "cursor", "custom"}
    if shutil.which("claude", path=str(CLI_BIN)):
        assert "claude" in cli["detected"]


async def test_custom_command_template(cli_manager):
    script = ("import json,sys; p=sys.stdin.read(); "
              "print(json.dumps({'type':'system','subtype':'init','session_id':'s1'})); "
              "print(json.dumps({'type':'assistant','message':{'id':'m','content':"
              "[{'type':'text','text':'custom: '+p}]}})); "
              "print(json.dumps({'type':'result','subtype':'success','is_error':False,"
              "'result':'custom: '+p,'session_id':'s1'}))")
    config = {"preset": "custom", "command": ["python3", "-c", script], "format": "claude",
              "network": "none"}
    _, client = await cli_agent(cli_manager, "custom1", config)
    answer = await client.chat("-rf /", correlationId="x")  # never taken as an option
    assert answer["response"]["result"] == "custom: -rf /"
    assert answer["response"]["sessionId"] == "s1"
    await client.close()


async def test_opencode_preset_parses_its_recorded_stream(cli_manager):
    # The real opencode ignored its provider's base URL here (it dialled api.openai.com), so
    # its preset is tested with a replay of the lines recorded in AGENT-PROTOCOLS.md.
    config = {"preset": "opencode", "binary": str(FAKE_BIN / "fake-opencode")}
    _, client = await cli_agent(cli_manager, "opencode1", config)
    answer = await client.chat("hello", correlationId="o")
    assert answer["response"]["result"] == "opencode answered (new)"
    (call,) = events_of(client, "o", ChatEventKind.TOOL_CALL)
    assert call["payload"]["args"] == {"command": "echo hi"}
    (result,) = events_of(client, "o", ChatEventKind.TOOL_RESULT)
    assert result["payload"]["result"] == "hi\n" and result["payload"]["isError"] is False
    again = await client.chat("more", correlationId="p")
    assert again["response"]["result"] == "opencode answered (resumed)"
    failed = await client.chat("fail", correlationId="q")
    assert failed["response"] == {"type": "error", "result": "Bad request: no such model"}
    await client.close()

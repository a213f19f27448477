"""The JSON-line readers of each agent CLI, fed the sample outputs of AGENT-PROTOCOLS.md.

No CLI runs here: each test feeds the documented lines (values filled in where the
reference elides them) to one parser and checks what the turn streams and keeps.
"""

# ruff: noqa: E501  (the sample lines are kept whole, as the CLIs print them)
from __future__ import annotations

import json
from typing import Any

from agenstra_jupyter.manager.providers import Turn, TurnRecorder
from agenstra_jupyter.manager.providers.cli_formats import (
    PARSERS,
    ClaudeParser,
    CodexParser,
    CursorParser,
    GeminiParser,
    OpencodeParser,
    OutputParser,
)


class Run:
    """One turn's recorder and parser, and every event the turn sent."""

    def __init__(self, parser: type[OutputParser]) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

        async def emit(kind: str, payload: dict[str, Any]) -> None:
            self.events.append((kind, payload))

        self.recorder = TurnRecorder(Turn("prompt", "c1", True, emit))
        self.parser = parser(self.recorder)

    async def feed(self, lines: str) -> Run:
        for line in lines.strip().splitlines():
            await self.parser.feed(json.loads(line))
        return self

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def deltas(self) -> str:
        return "".join(p["delta"] for k, p in self.events if k == "assistantDelta")

    def tool_parts(self) -> list[dict[str, Any]]:
        return [p for p in self.recorder.parts if p["kind"] != "text"]


# -- Claude Code -----------------------------------------------------------------------------

CLAUDE_TOOL_RUN = """
{"type":"system","subtype":"init","session_id":"302026d6-aaaa","cwd":"/w","model":"claude-sonnet-4-5","tools":["Bash"]}
{"type":"system","subtype":"status","status":"requesting","session_id":"302026d6-aaaa","uuid":"u1"}
{"type":"assistant","message":{"id":"msg_01","type":"message","role":"assistant","content":[{"type":"tool_use","id":"toolu_01","name":"Bash","input":{"command":"echo hi","description":"print"}}],"stop_reason":null},"parent_tool_use_id":null,"session_id":"302026d6-aaaa"}
{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_01","type":"tool_result","content":"hi","is_error":false}]},"parent_tool_use_id":null,"session_id":"302026d6-aaaa","tool_use_result":{"stdout":"hi","stderr":"","interrupted":false}}
{"type":"assistant","message":{"id":"msg_02","content":[{"type":"text","text":"All done."}]},"parent_tool_use_id":null,"session_id":"302026d6-aaaa"}
{"type":"result","subtype":"success","is_error":false,"api_error_status":null,"duration_ms":166,"num_turns":2,"result":"All done.","stop_reason":"end_turn","session_id":"302026d6-aaaa","total_cost_usd":0.000282,"usage":{"input_tokens":24,"output_tokens":14},"permission_denials":[],"terminal_reason":"completed"}
"""


async def test_claude_tool_call_result_and_final_text():
    run = await Run(ClaudeParser).feed(CLAUDE_TOOL_RUN)
    parser = run.parser
    assert parser.session_id == "302026d6-aaaa"
    assert parser.done and parser.error is None and parser.final_text == "All done."
    assert run.recorder.text == "All done."
    assert run.kinds() == ["toolCall", "toolResult", "assistantDelta"]
    assert run.tool_parts() == [
        {"kind": "toolCall", "toolCallId": "toolu_01", "name": "Bash", "status": "pending",
         "args": {"command": "echo hi", "description": "print"}},
        {"kind": "toolResult", "toolCallId": "toolu_01", "name": "Bash", "isError": False,
         "result": "hi"},
    ]


async def test_claude_partial_messages_are_not_repeated_by_the_full_line():
    # With --include-partial-messages the deltas come first, then the full assistant line.
    run = await Run(ClaudeParser).feed("""
{"type":"stream_event","event":{"type":"message_start","message":{"id":"msg_9"}},"session_id":"s"}
{"type":"stream_event","event":{"type":"content_block_start","index":0},"session_id":"s"}
{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"All "}},"session_id":"s"}
{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}},"session_id":"s"}
{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"done."}},"session_id":"s"}
{"type":"assistant","message":{"id":"msg_9","content":[{"type":"text","text":"All done."}]},"session_id":"s"}
{"type":"stream_event","event":{"type":"content_block_stop","index":0},"session_id":"s"}
{"type":"stream_event","event":{"type":"message_delta","delta":{"stop_reason":"end_turn"}},"session_id":"s"}
{"type":"stream_event","event":{"type":"message_stop"},"session_id":"s"}
{"type":"result","subtype":"success","is_error":false,"result":"All done.","session_id":"s"}
""")
    assert run.deltas() == "All done." and run.recorder.text == "All done."
    assert [p["delta"] for k, p in run.events if k == "assistantDelta"] == ["All ", "done."]


async def test_claude_separate_messages_get_a_blank_line_and_subagents_are_skipped():
    run = await Run(ClaudeParser).feed("""
{"type":"assistant","message":{"id":"m1","content":[{"type":"text","text":"First."}]},"session_id":"s"}
{"type":"assistant","message":{"id":"m2","content":[{"type":"text","text":"inner"}]},"parent_tool_use_id":"toolu_task","session_id":"s"}
{"type":"assistant","message":{"id":"m3","content":[{"type":"server_tool_use","id":"srv_1","name":"web_search","input":{"query":"q"}}]},"session_id":"s"}
{"type":"user","message":{"role":"user","content":[{"tool_use_id":"srv_1","type":"tool_result","content":[{"type":"text","text":"found "},{"type":"text","text":"it"}],"is_error":true}]},"session_id":"s"}
{"type":"assistant","message":{"id":"m4","content":[{"type":"text","text":"Second."}]},"session_id":"s"}
""")
    assert run.recorder.text == "First.\n\nSecond."
    assert "inner" not in run.deltas()
    call, result = run.tool_parts()
    assert call["name"] == "web_search" and call["args"] == {"query": "q"}
    assert result == {"kind": "toolResult", "toolCallId": "srv_1", "name": "web_search",
                      "isError": True, "result": "found it"}
    assert not run.parser.done  # no result line yet


async def test_claude_errors_are_read_from_is_error_not_subtype():
    api_error = await Run(ClaudeParser).feed(
        '{"type":"result","subtype":"success","is_error":true,"api_error_status":400,'
        '"result":"API Error: 400 bad request","session_id":"s"}')
    assert api_error.parser.done and api_error.parser.error == "API Error: 400 bad request"
    assert api_error.parser.final_text is None
    max_turns = await Run(ClaudeParser).feed(
        '{"type":"result","subtype":"error_max_turns","is_error":true,'
        '"errors":["Reached maximum number of turns (1)"],"session_id":"s"}')
    assert max_turns.parser.error == "Reached maximum number of turns (1)"
    bare = await Run(ClaudeParser).feed(
        '{"type":"result","subtype":"error_during_execution","is_error":true}')
    assert bare.parser.error == "error_during_execution"


async def test_claude_ignores_unknown_lines_and_fields():
    run = await Run(ClaudeParser).feed("""
{"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,"retry_delay_ms":500,"error_status":401,"error":"x"}
{"type":"rate_limit_event","whatever":true}
{"type":"system","subtype":"compact_boundary"}
{"type":"something_new","message":{"content":[{"type":"text","text":"no"}]}}
""")
    assert run.events == [] and not run.parser.done and run.parser.error is None


# -- Codex -----------------------------------------------------------------------------------

CODEX_RUN = """
{"type":"thread.started","thread_id":"01a21474-b63a-76b2-b0ea-3ebc1e230989"}
{"type":"turn.started"}
{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc 'echo hi'","aggregated_output":"","exit_code":null,"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc 'echo hi'","aggregated_output":"hi\\n","exit_code":0,"status":"completed"}}
{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"Hello."}}
{"type":"turn.completed","usage":{"input_tokens":200,"cached_input_tokens":40,"cache_write_input_tokens":0,"output_tokens":20,"reasoning_output_tokens":0}}
"""


async def test_codex_command_and_message():
    run = await Run(CodexParser).feed(CODEX_RUN)
    assert run.parser.session_id == "01a21474-b63a-76b2-b0ea-3ebc1e230989"
    assert run.parser.done and run.parser.error is None
    assert run.recorder.text == "Hello."
    assert run.tool_parts() == [
        {"kind": "toolCall", "toolCallId": "item_1", "name": "shell", "status": "in_progress",
         "args": {"command": "/bin/bash -lc 'echo hi'"}},
        {"kind": "toolResult", "toolCallId": "item_1", "name": "shell", "isError": False,
         "result": "hi\n"},
    ]


async def test_codex_failed_commands_other_items_and_retries():
    run = await Run(CodexParser).feed("""
{"type":"item.completed","item":{"id":"i1","type":"command_execution","command":"false","aggregated_output":"","exit_code":1,"status":"completed"}}
{"type":"item.completed","item":{"id":"i2","type":"command_execution","command":"rm","aggregated_output":"","exit_code":null,"status":"declined"}}
{"type":"item.completed","item":{"id":"i3","type":"file_change","changes":[{"path":"a.py","kind":"add"}],"status":"completed"}}
{"type":"item.completed","item":{"id":"i4","type":"mcp_tool_call","server":"nb","tool":"read_notebook","arguments":{"path":"x.ipynb"},"result":null,"error":{"message":"denied"},"status":"failed"}}
{"type":"item.started","item":{"id":"i5","type":"reasoning","text":"thinking"}}
{"type":"item.completed","item":{"id":"i6","type":"error","message":"Model metadata for `gpt-5` not found"}}
{"type":"error","message":"Reconnecting... 2/5"}
{"type":"item.completed","item":{"id":"i7","type":"agent_message","text":"One."}}
{"type":"item.completed","item":{"id":"i8","type":"agent_message","text":"Two."}}
{"type":"turn.failed","error":{"message":"{\\"error\\":\\"bad request\\"}"}}
""")
    results = {p["toolCallId"]: p for p in run.tool_parts() if p["kind"] == "toolResult"}
    assert results["i1"]["isError"] and results["i2"]["isError"]
    assert not results["i3"]["isError"]
    assert results["i4"] == {"kind": "toolResult", "toolCallId": "i4", "name": "read_notebook",
                             "isError": True, "result": "denied"}
    calls = {p["toolCallId"]: p for p in run.tool_parts() if p["kind"] == "toolCall"}
    assert calls["i3"]["args"] == [{"path": "a.py", "kind": "add"}]
    assert calls["i4"]["name"] == "read_notebook" and calls["i4"]["args"] == {"path": "x.ipynb"}
    statuses = [p["message"] for k, p in run.events if k == "status"]
    assert statuses == ["Model metadata for `gpt-5` not found", "Reconnecting... 2/5"]
    assert run.recorder.text == "One.\n\nTwo."
    assert run.parser.done and run.parser.error == '{"error":"bad request"}'


# -- Gemini ----------------------------------------------------------------------------------

GEMINI_RUN = """
{"type":"init","timestamp":"2026-01-01T00:00:00Z","session_id":"ad68461f-bbbb","model":"auto"}
{"type":"message","timestamp":"t","role":"user","content":"say hello"}
{"type":"tool_use","timestamp":"t","tool_name":"run_shell_command","tool_id":"run_shell_command__x_0","parameters":{"command":"echo hi","description":"run"}}
{"type":"tool_result","timestamp":"t","tool_id":"run_shell_command__x_0","status":"success","output":"hi"}
{"type":"message","timestamp":"t","role":"assistant","content":"Hello ","delta":true}
{"type":"message","timestamp":"t","role":"assistant","content":"there.","delta":true}
{"type":"result","timestamp":"t","status":"success","stats":{"total_tokens":110,"input_tokens":100,"output_tokens":10}}
"""


async def test_gemini_streams_deltas_and_tools():
    run = await Run(GeminiParser).feed(GEMINI_RUN)
    assert run.parser.session_id == "ad68461f-bbbb"
    assert run.parser.done and run.parser.error is None
    assert run.recorder.text == "Hello there." and "say hello" not in run.deltas()
    assert run.tool_parts() == [
        {"kind": "toolCall", "toolCallId": "run_shell_command__x_0", "name": "run_shell_command",
         "status": "pending", "args": {"command": "echo hi", "description": "run"}},
        {"kind": "toolResult", "toolCallId": "run_shell_command__x_0",
         "name": "run_shell_command", "isError": False, "result": "hi"},
    ]


async def test_gemini_failed_tool_warning_and_fatal_result():
    run = await Run(GeminiParser).feed("""
{"type":"message","role":"assistant","content":"Trying.","delta":true}
{"type":"tool_use","tool_name":"write_file","tool_id":"w1","parameters":{"file_path":"a"}}
{"type":"tool_result","tool_id":"w1","status":"error","error":{"type":"permission","message":"not allowed"}}
{"type":"message","role":"assistant","content":"Failed.","delta":true}
{"type":"error","severity":"warning","message":"Loop detected"}
{"type":"result","status":"error","error":{"type":"FatalTurnLimitedError","message":"Max session turns"},"stats":{}}
""")
    result = run.tool_parts()[1]
    assert result["isError"] and result["result"] == "not allowed"
    assert run.recorder.text == "Trying.\n\nFailed."  # the tool call separates the messages
    assert ("status", {"message": "Loop detected"}) in run.events
    assert run.parser.done and run.parser.error == "Max session turns"


# -- opencode --------------------------------------------------------------------------------

OPENCODE_RUN = """
{"type":"step_start","timestamp":1795639632333,"sessionID":"ses_abc","part":{"id":"prt_1","messageID":"msg_1","sessionID":"ses_abc","type":"step-start","snapshot":"x"}}
{"type":"tool_use","timestamp":1795639632400,"sessionID":"ses_abc","part":{"type":"tool","tool":"bash","callID":"call_1","state":{"status":"completed","input":{"command":"echo hi","description":"d"},"output":"hi\\n","metadata":{"exit":0,"truncated":false},"title":"echo hi","time":{"start":1,"end":2}}}}
{"type":"step_finish","timestamp":1795639632500,"sessionID":"ses_abc","part":{"type":"step-finish","reason":"tool-calls","tokens":{"total":110,"input":80,"output":10},"cost":0.0002025}}
{"type":"text","timestamp":1795639632600,"sessionID":"ses_abc","part":{"type":"text","text":"Hello.","time":{"start":1,"end":2}}}
{"type":"step_finish","timestamp":1795639632700,"sessionID":"ses_abc","part":{"type":"step-finish","reason":"stop"}}
"""


async def test_opencode_tool_and_text_and_no_final_line():
    run = await Run(OpencodeParser).feed(OPENCODE_RUN)
    assert OpencodeParser.has_final_line is False  # success is a clean exit
    assert run.parser.session_id == "ses_abc" and run.parser.error is None
    assert run.recorder.text == "Hello."
    assert run.tool_parts() == [
        {"kind": "toolCall", "toolCallId": "call_1", "name": "bash", "status": "completed",
         "args": {"command": "echo hi", "description": "d"}},
        {"kind": "toolResult", "toolCallId": "call_1", "name": "bash", "isError": False,
         "result": "hi\n"},
    ]


async def test_opencode_tool_error_and_api_error():
    run = await Run(OpencodeParser).feed("""
{"type":"tool_use","sessionID":"ses_x","part":{"type":"tool","tool":"edit","callID":"c2","state":{"status":"error","input":{"path":"a"},"error":"File not found"}}}
{"type":"error","timestamp":1,"sessionID":"ses_x","error":{"name":"APIError","data":{"message":"Bad request","statusCode":400,"isRetryable":false}}}
""")
    result = run.tool_parts()[1]
    assert result["isError"] and result["result"] == "File not found"
    assert run.parser.error == "Bad request"
    nameless = await Run(OpencodeParser).feed('{"type":"error","error":{"name":"ProviderInitError"}}')
    assert nameless.parser.error == "ProviderInitError"


# -- Cursor ----------------------------------------------------------------------------------

CURSOR_RUN = """
{"type":"system","subtype":"init","apiKeySource":"env","cwd":"/abs","session_id":"cur-1","model":"Claude 4 Sonnet","permissionMode":"default"}
{"type":"user","message":{"role":"user","content":[{"type":"text","text":"summarise"}]},"session_id":"cur-1"}
{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"I'll read the README.md file"}]},"session_id":"cur-1"}
{"type":"tool_call","subtype":"started","call_id":"toolu_1","tool_call":{"readToolCall":{"args":{"path":"README.md"}}},"session_id":"cur-1"}
{"type":"tool_call","subtype":"completed","call_id":"toolu_1","tool_call":{"readToolCall":{"args":{"path":"README.md"},"result":{"success":{"content":"# Title","isEmpty":false,"totalLines":54}}}},"session_id":"cur-1"}
{"type":"tool_call","subtype":"started","call_id":"toolu_2","tool_call":{"function":{"name":"grep","arguments":{"q":"x"}}},"session_id":"cur-1"}
{"type":"tool_call","subtype":"completed","call_id":"toolu_2","tool_call":{"function":{"name":"grep","arguments":{"q":"x"},"result":{"error":{"message":"no match"}}}},"session_id":"cur-1"}
{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"Done."}]},"session_id":"cur-1"}
{"type":"result","subtype":"success","duration_ms":5234,"is_error":false,"result":"I'll read the README.md fileDone.","session_id":"cur-1","request_id":"r"}
"""


async def test_cursor_documented_stream():
    run = await Run(CursorParser).feed(CURSOR_RUN)
    assert run.parser.session_id == "cur-1" and run.parser.done and run.parser.error is None
    assert run.parser.final_text == "I'll read the README.md fileDone."
    assert run.recorder.text == "I'll read the README.md file\n\nDone."
    assert "summarise" not in run.deltas()
    read_call, read_result, grep_call, grep_result = run.tool_parts()
    assert read_call["name"] == "readToolCall" and read_call["args"] == {"path": "README.md"}
    assert read_result["isError"] is False
    assert read_result["result"] == {"content": "# Title", "isEmpty": False, "totalLines": 54}
    assert grep_call["name"] == "grep" and grep_call["args"] == {"q": "x"}
    assert grep_result["isError"] is True and grep_result["name"] == "grep"


async def test_cursor_partial_output_is_not_doubled_by_its_repeat():
    run = await Run(CursorParser).feed("""
{"type":"assistant","message":{"content":[{"type":"text","text":"Hel"}]},"timestamp_ms":1,"session_id":"s"}
{"type":"assistant","message":{"content":[{"type":"text","text":"lo."}]},"timestamp_ms":2,"session_id":"s"}
{"type":"assistant","message":{"content":[{"type":"text","text":"Hello."}]},"session_id":"s"}
{"type":"assistant","message":{"content":[{"type":"text","text":"Next"}]},"timestamp_ms":3,"session_id":"s"}
{"type":"assistant","message":{"content":[{"type":"text","text":"Next"}]},"timestamp_ms":4,"model_call_id":"m","session_id":"s"}
{"type":"result","subtype":"success","is_error":true,"result":"quota","session_id":"s"}
""")
    assert run.recorder.text == "Hello.\n\nNext"
    assert run.parser.error == "quota" and run.parser.final_text is None


def test_every_parser_is_registered_by_its_name():
    assert {name: cls.__name__ for name, cls in PARSERS.items()} == {
        "claude": "ClaudeParser", "codex": "CodexParser", "gemini": "GeminiParser",
        "opencode": "OpencodeParser", "cursor": "CursorParser"}

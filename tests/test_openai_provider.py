"""The `openai` provider against a fake OpenAI-compatible Chat Completions server."""

from __future__ import annotations

import json

from agenstra_jupyter.protocol import ChatEventKind, ManagerEvent

from .fakes.vendors import Reply, ToolUse
from .helpers import SECRET, AgentsClient, events_of


async def openai_agent(manager, vendor, name="gpt", **config):
    config = {"model": "gpt-test", "baseUrl": f"{vendor.url}/v1",
              "env": {"OPENAI_API_KEY": SECRET}, **config}
    agent = await manager.create_agent(name=name, provider="openai", config=config)
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    return agent, client


async def test_streams_and_sends_the_conversation(manager, vendor):
    vendor.script(Reply(text="First answer, streamed."), Reply(text="Second."))
    _, client = await openai_agent(manager, vendor, system="Be brief.")
    first = await client.chat("question one", correlationId="a")
    assert first["response"]["result"] == "First answer, streamed."
    assert first["response"]["usage"]["total_tokens"] == 11
    pieces = events_of(client, "a", ChatEventKind.ASSISTANT_DELTA)
    assert len(pieces) > 1
    assert "".join(p["payload"]["delta"] for p in pieces) == "First answer, streamed."
    await client.chat("question two", correlationId="b")
    sent = vendor.model_requests("/chat/completions")[-1]
    assert sent.body["stream"] is True and sent.body["model"] == "gpt-test"
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "question one"},
        {"role": "assistant", "content": "First answer, streamed."},
        {"role": "user", "content": "question two"},
    ]
    assert sent.headers["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in json.dumps(client.log.events) and SECRET not in manager.log()
    await client.close()


async def test_history_is_bounded_by_turns(manager, vendor):
    _, client = await openai_agent(manager, vendor, historyTurns=1)
    for n in range(3):
        await client.chat(f"q{n}")
    sent = vendor.model_requests("/chat/completions")[-1].body["messages"]
    assert [m["content"] for m in sent] == ["q1", "ok", "q2"]
    await client.close()


async def test_rate_limit_and_server_errors_are_retried(manager, vendor):
    vendor.script(Reply(status=429, retry_after=0), Reply(status=503, retry_after=0),
                  Reply(text="third time lucky"))
    _, client = await openai_agent(manager, vendor)
    answer = await client.chat("hi", correlationId="r")
    assert answer["response"]["result"] == "third time lucky"
    statuses = [e["payload"]["message"] for e in events_of(client, "r", ChatEventKind.STATUS)]
    assert len(statuses) == 2 and all(s.startswith("retrying") for s in statuses)
    await client.close()


async def test_errors_end_the_turn_with_a_short_message(manager, vendor):
    vendor.script(Reply(status=400, error_message="model not found: gpt-test"),
                  *[Reply(status=500, retry_after=0)] * 3,
                  Reply(text="cut short", cut_after=2), Reply(text="never used"))
    _, client = await openai_agent(manager, vendor)
    bad = await client.chat("a")
    assert bad["response"] == {"type": "error", "result":
                               "The model API answered 400: model not found: gpt-test"}
    down = await client.chat("b")
    assert down["response"]["type"] == "error" and "HTTP 500" in down["response"]["result"]
    cut = await client.chat("c")
    assert cut["response"]["type"] == "error" and "lost" in cut["response"]["result"]
    await client.close()


async def test_unreachable_endpoint_and_tool_calls(manager, vendor):
    _, offline = await openai_agent(manager, vendor, name="offline",
                                    baseUrl="http://127.0.0.1:9/v1", maxRetries=1)
    answer = await offline.chat("hi")
    assert answer["response"]["type"] == "error" and "lost" in answer["response"]["result"]
    await offline.close()
    vendor.script(Reply(text="Let me check.", tool=ToolUse("get_weather", {"city": "Oslo"})))
    _, client = await openai_agent(manager, vendor)
    answer = await client.chat("weather?", correlationId="t")
    (call,) = events_of(client, "t", ChatEventKind.TOOL_CALL)
    assert call["payload"]["name"] == "get_weather"
    assert json.loads(call["payload"]["args"]) == {"city": "Oslo"}
    assert answer["response"]["result"] == "Let me check."
    await client.close()


async def test_cancel_a_slow_stream(manager, vendor):
    vendor.script(Reply(text="slow " * 50, chunk_delay=0.2), Reply(text="after"))
    _, client = await openai_agent(manager, vendor)
    await client.emit(ManagerEvent.CHAT, {"message": "go", "correlationId": "s"})
    await client.log.wait_for(lambda _: events_of(client, "s", ChatEventKind.ASSISTANT_DELTA))
    await client.emit(ManagerEvent.CANCEL, {})
    assert (await client.answer_to("s", timeout=5))["response"]["result"] == "Cancelled"
    assert (await client.chat("next"))["response"]["result"] == "after"
    await client.close()


async def test_config_is_validated(manager):
    async with manager.http() as http:
        for config, message in [({}, "model"), ({"model": "m", "baseUrl": "ftp://x"}, "baseUrl"),
                                ({"model": "m", "historyTurns": -1}, "historyTurns")]:
            response = await http.post("/api/agents", json={"name": "bad", "provider": "openai",
                                                            "config": config})
            assert response.status_code == 400 and message in response.json()["message"]

"""What one turn may cost (#13 items 1 and 3): capped answers, frames every tier accepts,
bounded queues, and cancel bookkeeping, against real managers and a real Jupyter server."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import httpx

from agenstra_jupyter.protocol import MAX_FRAME_BYTES, ChatEventKind, ErrorCode, ManagerEvent

from .helpers import WAIT, AgentsClient, FrontendClient

MIB = 2**20
TRUNCATED = "[truncated]"


def wire_size(value: object) -> int:
    """Bytes of `value` in a Socket.IO frame (python-socketio's JSON, non-ASCII escaped)."""
    return len(json.dumps(value, separators=(",", ":")))


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


async def scripted_agent(server, manager, name: str) -> tuple[str, dict]:
    """Register `manager` with the Jupyter server and create a `scripted` agent on it."""
    async with httpx.AsyncClient(base_url=f"{server.full_url}agenstra/api", timeout=WAIT,
                                 headers={"Authorization": f"token {server.token}"}) as http:
        client = await http.post("/clients", json={
            "name": f"{name}-{uuid.uuid4().hex[:6]}", "endpoint": manager.url,
            "apiKey": manager.api_key})
        assert client.status_code == 201, client.text
        client_id = client.json()["id"]
        agent = await http.post(f"/clients/{client_id}/agents",
                                json={"name": name, "provider": "scripted"})
        assert agent.status_code == 201, agent.text
    return client_id, agent.json()


async def frontend_for(server, client_id: str) -> FrontendClient:
    frontend = await FrontendClient().connect(server.url, server.token, server.base_url)
    assert await frontend.set_client(client_id) == {"ok": True}
    return frontend


def streamed_text(frontend: FrontendClient, agent_id: str) -> int:
    return sum(len(event["payload"]["delta"])
               for event in frontend.forwarded(agent_id, ManagerEvent.CHAT_EVENT)
               if event["kind"] == ChatEventKind.ASSISTANT_DELTA)


async def test_a_50mb_answer_leaves_every_tier_small_and_the_agent_usable(
    start_scripted_manager, jupyter_server
):
    manager = start_scripted_manager()
    client_id, agent = await scripted_agent(jupyter_server, manager, "flood")
    frontend = await frontend_for(jupyter_server, client_id)

    answer = await frontend.chat(agent["id"], "flood 50", "big")  # 50 MiB streamed
    response = answer["response"]
    assert response["result"].endswith(TRUNCATED) and response["truncated"] is True
    assert len(response["result"]) <= MIB and response["parts"] == []  # the text, once
    assert wire_size(answer) < 1.1 * MIB
    # Deltas stopped at the cap (the last one says "[truncated]").
    assert streamed_text(frontend, agent["id"]) <= MIB + len("\n[truncated]")

    after = await frontend.chat(agent["id"], "after", "next")  # the sentinel turn
    assert after["response"]["result"] == "ok after"
    peaks = {tier: peak_rss_mb(pid) for tier, pid in
             (("manager", manager.process.pid), ("jupyter", jupyter_server.process.pid))}
    print(f"peak RSS after a 50 MiB answer: {peaks}")
    assert all(peak < 300 for peak in peaks.values()), peaks
    await frontend.close()


async def test_an_answer_over_4mib_crosses_the_controller_link(
    start_scripted_manager, jupyter_server
):
    # aiohttp's default frame limit is 4 MiB; every tier uses MAX_FRAME_BYTES instead.
    manager = start_scripted_manager(env={"AGENSTRA_MAX_TURN_TEXT_BYTES": str(5 * MIB)})
    client_id, agent = await scripted_agent(jupyter_server, manager, "large")
    frontend = await frontend_for(jupyter_server, client_id)

    answer = await frontend.chat(agent["id"], "raw 4.5", "large")
    assert answer["response"]["result"] == "y" * int(4.5 * MIB)  # under the cap: uncut
    assert 4 * MIB < wire_size(answer) < MAX_FRAME_BYTES // 2
    after = await frontend.chat(agent["id"], "after", "next")
    assert after["response"]["result"] == "ok after"
    await frontend.close()


async def test_text_is_stored_once_and_text_and_parts_are_capped(start_scripted_manager):
    manager = start_scripted_manager()
    agent = await manager.create_agent(name="caps", provider="scripted")
    client = await AgentsClient().connect(manager)
    await client.login(agent)

    half = await client.chat("flood 0.5")
    assert len(half["response"]["result"]) == MIB // 2 and half["response"]["parts"] == []
    assert "truncated" not in half["response"]
    assert wire_size(half) < 0.6 * MIB  # not twice: result and a text part

    unstreamed = await client.chat("raw 3")  # a provider returning 3 MiB at once
    assert unstreamed["response"]["result"].endswith(TRUNCATED)
    assert wire_size(unstreamed) < 1.1 * MIB and unstreamed["response"]["truncated"] is True

    tools = await client.chat("tools 500")  # 500 calls and results of ~4 KiB each
    response = tools["response"]
    assert response["truncated"] is True and response["result"] == "done"
    assert 0 < len(response["parts"]) < 1000 and wire_size(response["parts"]) <= MIB
    sent = [e for e in client.log.of(ManagerEvent.CHAT_EVENT)
            if e["correlationId"] == tools["correlationId"]]
    assert wire_size(sent) < 1.1 * MIB  # tool events stop at the cap too
    await client.close()


async def test_an_oversized_stored_answer_is_truncated_on_replay(start_scripted_manager):
    manager = start_scripted_manager("old")
    agent = await manager.create_agent(name="old", provider="scripted")
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    answer = await client.chat("hello")
    await client.close()
    assert manager.stop() == 0
    # As an older version stored a big answer: 20 MiB of text, and again in its parts.
    big = "z" * (20 * MIB)
    response = {"type": "text", "result": big, "parts": [{"kind": "text", "text": big}]}
    with sqlite3.connect(manager.data_dir / "manager.sqlite") as db:
        db.execute("UPDATE messages SET response = ? WHERE id = ?",
                   (json.dumps(response), answer["id"]))

    manager = start_scripted_manager("old")
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    replayed = (await client.log.wait_count(ManagerEvent.CHAT_MESSAGE, 2))[1]
    assert replayed["id"] == answer["id"] and replayed["response"]["truncated"] is True
    assert replayed["response"]["result"].endswith(TRUNCATED)
    assert wire_size(replayed) < MAX_FRAME_BYTES // 2
    async with manager.http() as http:
        stored = (await http.get(f"/api/agents/{agent['id']}/messages")).json()
    assert stored[1] == replayed
    assert (await client.chat("again"))["response"]["result"] == "ok again"
    await client.close()


async def holding(client: AgentsClient, correlation_id: str) -> None:
    """Wait until the `hold` turn runs (it says so), so later chats are queued behind it."""
    await client.log.wait_for(lambda log: any(
        e["correlationId"] == correlation_id and e["kind"] == ChatEventKind.STATUS
        for e in log.of(ManagerEvent.CHAT_EVENT)))


async def send(client: AgentsClient, message: str, correlation_id: str) -> dict:
    """A chat whose acknowledgement says whether the manager took it."""
    return await client.sio.call(ManagerEvent.CHAT, {"message": message,
                                                     "correlationId": correlation_id},
                                 namespace="/agents", timeout=WAIT)


async def test_a_full_turn_queue_refuses_the_chat_and_stores_nothing(start_scripted_manager):
    manager = start_scripted_manager(env={"AGENSTRA_MAX_QUEUED_TURNS": "2"})
    agent = await manager.create_agent(name="queue", provider="scripted")
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    assert (await send(client, "hold", "h"))["ok"]
    await holding(client, "h")
    assert (await send(client, "q1", "q1"))["ok"] and (await send(client, "q2", "q2"))["ok"]

    refused = await send(client, "q3", "q3")
    assert refused["ok"] is False and refused["error"]["code"] == ErrorCode.RATE_LIMITED
    assert (await client.error())["code"] == ErrorCode.RATE_LIMITED
    async with manager.http() as http:
        stored = (await http.get(f"/api/agents/{agent['id']}/messages")).json()
    assert [m["correlationId"] for m in stored] == ["h", "q1", "q2"]  # q3: nothing stored

    await client.emit(ManagerEvent.CANCEL, {"correlationId": "q1"})  # queued: never runs
    await client.emit(ManagerEvent.CANCEL, {"correlationId": "h"})
    assert (await client.answer_to("h"))["response"]["result"] == "Cancelled"
    assert (await client.answer_to("q1"))["response"]["result"] == "Cancelled"
    assert (await client.answer_to("q2"))["response"]["result"] == "ok q2"
    again = await client.chat("q3", correlationId="q3")  # the refusal used up nothing
    assert again["response"]["result"] == "ok q3"
    await client.close()


async def test_queued_bytes_are_bounded_across_all_agents(start_scripted_manager):
    manager = start_scripted_manager(env={"AGENSTRA_MAX_QUEUED_BYTES": "300000"})
    clients = {}
    for name in ("a", "b"):
        agent = await manager.create_agent(name=name, provider="scripted")
        clients[name] = client = await AgentsClient().connect(manager)
        await client.login(agent)
        assert (await send(client, "hold", f"{name}-hold"))["ok"]
        await holding(client, f"{name}-hold")
    a, b = clients["a"], clients["b"]

    assert (await send(a, "x" * 200_000, "a1"))["ok"]
    refused = await send(b, "y" * 200_000, "b1")  # 400 kB queued in all: over the bound
    assert refused["ok"] is False and refused["error"]["code"] == ErrorCode.RATE_LIMITED

    await a.emit(ManagerEvent.CANCEL, {"correlationId": "a-hold"})
    assert (await a.answer_to("a1"))["response"]["result"] == "ok " + "x" * 200_000
    assert (await send(b, "y" * 200_000, "b1"))["ok"]  # a's turn left the queue
    await b.emit(ManagerEvent.CANCEL, {"correlationId": "b-hold"})
    assert (await b.answer_to("b1"))["response"]["result"] == "ok " + "y" * 200_000
    for client in clients.values():
        await client.close()


async def test_cancelling_an_id_that_is_not_queued_is_not_remembered(manager):
    agent = await manager.create_agent(name="later", provider="echo")
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    await client.emit(ManagerEvent.CANCEL, {"correlationId": "later"})  # nothing by that id
    answer = await client.chat("hello", correlationId="later")
    assert answer["response"]["result"] == "Echo: hello"
    await client.close()


def test_caps_count_wire_bytes_not_characters():
    from agenstra_jupyter.manager.bounds import MAX_STORED_MESSAGE, clip_text, fit_stored

    emoji = "\U0001F600" * MIB  # 4 bytes in UTF-8, 12 on the wire (a surrogate pair)
    clipped, cut = clip_text(emoji, MIB)
    assert cut and clipped.endswith(TRUNCATED) and MIB - 12 < wire_size(clipped) - 2 <= MIB
    assert clip_text("short", MIB) == ("short", False)
    stored = {"id": "1", "seq": 1, "from": "agent",
              "response": {"type": "text", "result": emoji, "parts": [{"kind": "x", "v": emoji}],
                           "usage": {"blob": emoji}}}
    fitted = fit_stored(stored)
    assert wire_size(fitted) < MAX_STORED_MESSAGE and fitted["response"]["truncated"] is True
    assert fitted["response"]["parts"] == [] and "usage" not in fitted["response"]

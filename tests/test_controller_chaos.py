"""Faults: the local manager killed mid-chat, frontends dropped, many connect cycles."""

from __future__ import annotations

import asyncio
import os
import signal

from agenstra_jupyter.protocol import ControllerEvent, ErrorCode, ManagerEvent

from .helpers import WAIT, FrontendClient, assert_seq_complete


async def wait_until(predicate, timeout: float = WAIT) -> None:
    async def poll() -> None:
        while not await predicate():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


async def send_until_stored(client: FrontendClient, agent_id: str, message: str,
                            correlation_id: str) -> int:
    """Send a chat; while the manager is away, send it again (same id): it is stored once."""
    attempts = 0
    while True:
        attempts += 1
        ack = await client.forward(ManagerEvent.CHAT, agent_id,
                                   {"message": message, "correlationId": correlation_id})
        if ack == {"ok": True}:
            return attempts
        assert ack["error"]["code"] == ErrorCode.REMOTE_UNAVAILABLE, ack
        await asyncio.sleep(0.1)


async def history(jupyter, agent_id: str) -> list[dict]:
    async with jupyter.http() as http:
        response = await http.get(f"/clients/local/agents/{agent_id}/messages")
        return response.json()


async def test_killing_the_local_manager_mid_chat_loses_and_duplicates_nothing(jupyter):
    async with jupyter.http() as http:
        agent = (await http.post("/clients/local/agents",
                                 json={"name": "steady", "provider": "echo"})).json()
    client = await jupyter.frontend()
    assert await client.forward(ManagerEvent.LOGIN, agent["id"]) == {"ok": True}
    local = jupyter.controller.local
    first_pid = local.pid
    retried = 0
    for n in range(30):
        if n == 10:
            os.kill(first_pid, signal.SIGKILL)
        retried += await send_until_stored(client, agent["id"], f"m{n}", f"k{n}") - 1
    await client.answer_to(agent["id"], "k29")
    assert local.pid != first_pid and local.restarts == 1
    assert retried > 0  # the kill really happened while chatting

    stored = await history(jupyter, agent["id"])
    received = client.messages(agent["id"])
    assert_seq_complete(stored)
    assert received == stored  # every stored message reached the frontend, once, in order
    users = [m for m in stored if m["from"] == "user"]
    assert [m["correlationId"] for m in users] == [f"k{n}" for n in range(30)]
    answers = {m["correlationId"] for m in stored if m["from"] == "agent"}
    assert answers == {f"k{n}" for n in range(30)}
    states = [name for name, _ in client.log.events
              if name.startswith("remote")]
    assert ControllerEvent.REMOTE_DISCONNECTED in states
    assert states[-1] == ControllerEvent.REMOTE_RECONNECTED
    await client.close()


async def test_a_dropped_frontend_resumes_with_after_seq(jupyter):
    agent = await jupyter.default_agent()
    talker = await jupyter.frontend()
    listener = await jupyter.frontend()
    assert await listener.forward(ManagerEvent.LOGIN, agent["id"]) == {"ok": True}
    await talker.chat(agent["id"], "echo before", "a")
    await listener.answer_to(agent["id"], "a")
    held = listener.messages(agent["id"])
    await listener.sio.eio.disconnect(abort=True)  # the network goes away, no goodbye
    for n in range(5):
        await talker.chat(agent["id"], f"echo during {n}", f"d{n}")

    resumed = await jupyter.frontend()
    after = held[-1]["seq"]
    assert await resumed.forward(ManagerEvent.LOGIN, agent["id"], {"afterSeq": after}) == {
        "ok": True}
    await talker.chat(agent["id"], "echo after", "z")
    await resumed.answer_to(agent["id"], "z")
    everything = held + resumed.messages(agent["id"])
    assert_seq_complete(everything)
    assert everything == await history(jupyter, agent["id"])
    for client in (talker, resumed):
        await client.close()


async def test_manager_unreachable_is_reported_and_retried(jupyter, start_manager):
    remote = start_manager("remote")
    async with jupyter.http() as http:
        client_id = (await http.post("/clients", json={
            "name": "remote", "endpoint": remote.url, "apiKey": remote.api_key})).json()["id"]
        agent = (await http.post(f"/clients/{client_id}/agents",
                                 json={"name": "far", "provider": "echo"})).json()
    remote.stop()
    client = await jupyter.frontend(client_id)
    ack = await client.forward(ManagerEvent.LOGIN, agent["id"])
    assert ack["error"]["code"] == ErrorCode.REMOTE_UNAVAILABLE
    reconnecting = await client.log.wait_count(ControllerEvent.REMOTE_RECONNECTING, 2)
    assert [r["attempt"] for r in reconnecting[:2]] == [1, 2]
    assert reconnecting[0]["clientId"] == client_id
    # The manager comes back on the same port: the link logs the agent in by itself.
    remote.start()
    await client.log.wait_count(ControllerEvent.REMOTE_RECONNECTED, 1)
    await client.log.wait_for(lambda _: client.forwarded(agent["id"],
                                                         ManagerEvent.LOGIN_SUCCESS))
    answer = await client.chat(agent["id"], "back", "b")
    assert answer["response"]["result"] == "Echo: back"
    await client.close()


async def test_connect_disconnect_cycles_leak_nothing(jupyter):
    agent = await jupyter.default_agent()
    gateway = jupyter.controller.gateway

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def cycle(login: bool) -> None:
        client = await jupyter.frontend()
        if login:
            assert await client.forward(ManagerEvent.LOGIN, agent["id"]) == {"ok": True}
        await client.close()

    def live_tasks() -> list[asyncio.Task]:
        # engine.io leaves each closed socket's ping timer to run out (ping_interval, 25 s):
        # bounded, not a leak, so not counted.
        return [t for t in asyncio.all_tasks() if "_send_ping" not in repr(t.get_coro())]

    await cycle(True)  # warm up pools and caches
    await asyncio.sleep(0.3)
    fds, tasks = open_fds(), len(live_tasks())
    for n in range(1000):
        await cycle(login=n % 5 == 0)
    await wait_until(lambda: _async_true(not gateway.sessions))
    await asyncio.sleep(0.5)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("link-")]
    assert len(live_tasks()) <= tasks + 2
    assert open_fds() <= fds + 5


async def _async_true(value: bool) -> bool:
    return value


async def test_local_manager_is_supervised_and_stopped_with_the_server(jupyter):
    await jupyter.default_agent()
    local = jupyter.controller.local
    first = local.pid
    os.kill(first, signal.SIGKILL)

    async def restarted() -> bool:
        if local.pid == first:
            return False
        async with jupyter.http() as http:
            return (await http.get("/clients/local/agents")).status_code == 200

    await wait_until(restarted)
    assert local.endpoint.endswith(f":{local.port}")  # same address: links find it again
    second = local.pid
    await jupyter.app.extension_manager.stop_all_extensions()
    await wait_until(lambda: _async_true(not _alive(second)), timeout=20)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False

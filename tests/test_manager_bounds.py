"""The manager's connection and auth bounds (issue #13 item 3): at most so many sockets,
connections that never log into /agents dropped, failed API keys throttled per peer. Each
refusal has a clear code and changes nothing."""

from __future__ import annotations

import asyncio
import json

import engineio
import httpx
import pytest
import socketio

from agenstra_jupyter.protocol import UNAUTHORIZED_MESSAGE, ErrorCode

from .helpers import WAIT, AgentsClient

THROTTLED = "Too many failed attempts; wait a moment"


async def eventually(attempt, timeout: float = WAIT):
    """Retry `attempt()` until it returns something truthy (a refusal lifting)."""
    async def poll():
        while not (result := await attempt()):
            await asyncio.sleep(0.1)
        return result

    return await asyncio.wait_for(poll(), timeout)


async def test_sockets_are_capped(start_manager):
    manager = start_manager(env={"AGENSTRA_MAX_SOCKETS": "2"})
    agent = await manager.create_agent(name="capped", provider="echo")
    held = [await AgentsClient().connect(manager) for _ in range(2)]
    with pytest.raises(socketio.exceptions.ConnectionError):
        await AgentsClient().connect(manager)
    async with httpx.AsyncClient() as http:  # what a refused handshake says
        refused = await http.get(f"{manager.url}/socket.io/", params={"EIO": "4",
                                                                      "transport": "polling"})
    assert refused.status_code == 503
    assert refused.json() == {"code": ErrorCode.RATE_LIMITED, "message": "Too many connections"}
    # The refusals changed nothing: the sockets held still work.
    for n, client in enumerate(held):
        await client.login(agent)
        assert (await client.chat(f"m{n}"))["response"]["result"] == f"Echo: m{n}"
    await held.pop().close()

    async def connects():
        try:
            return await AgentsClient().connect(manager)
        except socketio.exceptions.ConnectionError:
            return None

    held.append(await eventually(connects))  # room again once one closed
    for client in held:
        await client.close()


async def test_connections_that_never_log_in_are_dropped(start_manager):
    manager = start_manager(env={"AGENSTRA_HANDSHAKE_TIMEOUT": "0.5"})
    agent = await manager.create_agent(name="stays", provider="echo")
    sentinel = await AgentsClient().connect(manager)  # logs in: older than the others
    dropped = []
    for refused_key in (None, "wrong"):
        eio = engineio.AsyncClient()
        gone = asyncio.Event()
        eio.on("disconnect", lambda *_, gone=gone: gone.set())
        await eio.connect(manager.url, engineio_path="socket.io", transports=["websocket"])
        if refused_key:  # a namespace connect the manager refuses: the peer stays on
            await eio.send("0/agents," + json.dumps({"apiKey": refused_key}))
        dropped.append(gone)
    await asyncio.wait_for(asyncio.gather(*(gone.wait() for gone in dropped)), WAIT)
    # The socket that joined /agents stays, though it is older than both.
    await sentinel.login(agent)
    assert (await sentinel.chat("still"))["response"]["result"] == "Echo: still"
    await sentinel.close()


async def test_failed_api_keys_are_throttled_per_peer(start_manager):
    manager = start_manager(env={"AGENSTRA_AUTH_FAILURES_PER_SECOND": "1"})
    async with manager.http(api_key="wrong") as wrong, manager.http() as right:
        answers = [await wrong.get("/api/agents") for _ in range(4)]
        assert [a.status_code for a in answers] == [401, 429, 429, 429]
        assert answers[0].json() == {"code": ErrorCode.UNAUTHORIZED,
                                     "message": UNAUTHORIZED_MESSAGE}
        assert answers[-1].json() == {"code": ErrorCode.RATE_LIMITED, "message": THROTTLED}
        # Over its budget the peer's wrong keys get 429, but the right key still passes: a
        # local user failing on purpose cannot lock the controller out of its own manager.
        assert (await right.get("/api/agents")).json() == []
        await AgentsClient().connect(manager)
        assert (await wrong.get("/api/agents")).status_code == 429


async def test_failed_handshakes_are_throttled(start_manager):
    manager = start_manager(env={"AGENSTRA_AUTH_FAILURES_PER_SECOND": "1"})
    errors = []
    for _ in range(4):
        client = AgentsClient()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(manager, api_key="wrong")
        errors += client.log.of("connect_error")
    assert errors == [{"message": UNAUTHORIZED_MESSAGE}] + \
        [{"message": THROTTLED, "data": {"code": ErrorCode.RATE_LIMITED}}] * 3

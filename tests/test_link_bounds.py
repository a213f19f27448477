"""Bounds on the controller's upstream links (issue #13 item 2): a link per agent with stored
credentials only, at most so many per socket and per user, every frontend event
rate-limited, links to deleted clients and agents closed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import uuid
from types import SimpleNamespace

import pytest

from agenstra_jupyter.controller.links import Backoff, ManagerLink
from agenstra_jupyter.protocol import AgenstraError, ControllerEvent, ErrorCode, ManagerEvent

from .helpers import WAIT, FrontendClient

# Run `AGENSTRA_TEST_FORWARDS=10000 pytest tests/test_link_bounds.py` for the figure.
FORWARDS = int(os.environ.get("AGENSTRA_TEST_FORWARDS", "1500"))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def manager_sockets(manager) -> int:
    """The manager's own count of connected /agents sockets (its /metrics gauge)."""
    async with manager.http() as http:
        text = (await http.get("/metrics")).text
    return int(float(re.search(r"^agenstra_manager_sockets (\S+)$", text, re.M).group(1)))


async def wait_sockets(manager, count: int) -> None:
    async def poll() -> None:
        while await manager_sockets(manager) != count:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), WAIT)


# No rate limits here: every forward must reach the credentials check.
@pytest.mark.parametrize("controller_config", [{"event_rate": 0, "chat_rate": 0,
                                                "login_rate": 0}])
async def test_forwards_with_random_agent_ids_leave_fds_flat(jupyter):
    agent = await jupyter.default_agent()
    manager_pid = jupyter.controller.local.pid
    frontend = await jupyter.frontend()
    assert (await frontend.chat(agent["id"], "echo warm", "w"))["response"]["result"]
    before = open_fds(os.getpid()), open_fds(manager_pid)
    for n in range(FORWARDS):
        event = (ManagerEvent.CHAT, ManagerEvent.LOGIN, ManagerEvent.CANCEL)[n % 3]
        ack = await frontend.forward(event, str(uuid.uuid4()), {"message": "hi"})
        assert ack["error"]["code"] == ErrorCode.NO_CREDENTIALS, ack
    after = open_fds(os.getpid()), open_fds(manager_pid)
    print(f"{FORWARDS} forwards: fds (jupyter, manager) {before} -> {after}")
    assert after[0] <= before[0] + 5 and after[1] <= before[1] + 5, (before, after)
    (session,) = jupyter.controller.gateway.sessions.values()
    assert list(session.links) == [("local", agent["id"])]
    # Sentinel: the socket and its one real link still work.
    assert (await frontend.chat(agent["id"], "echo still here", "s"))["response"]["result"] \
        == "still here\n[exit code 0]"
    await frontend.close()


@pytest.mark.parametrize("controller_config", [{"max_links_per_socket": 2,
                                                "max_links_per_user": 3}])
async def test_links_are_capped_per_socket_and_per_user(jupyter):
    async with jupyter.http() as http:
        agents = [(await http.post("/clients/local/agents",
                                   json={"name": f"capped{n}", "provider": "echo"})).json()
                  for n in range(4)]
    a, b, c, d = (agent["id"] for agent in agents)
    first = await jupyter.frontend()
    assert await first.forward(ManagerEvent.LOGIN, a) == {"ok": True}
    assert await first.forward(ManagerEvent.LOGIN, b) == {"ok": True}
    refused = await first.forward(ManagerEvent.LOGIN, c)
    assert refused["error"]["code"] == ErrorCode.RATE_LIMITED, refused
    assert "log out" in refused["error"]["message"]
    second = await jupyter.frontend()
    assert await second.forward(ManagerEvent.LOGIN, c) == {"ok": True}  # 3 for this user
    refused = await second.forward(ManagerEvent.LOGIN, d)
    assert refused["error"]["code"] == ErrorCode.RATE_LIMITED, refused
    # A link logged out of makes room: it is closed for the next agent.
    assert await first.forward(ManagerEvent.LOGOUT, b) == {"ok": True}
    await first.log.wait_for(lambda _: first.forwarded(b, ManagerEvent.LOGOUT_SUCCESS))
    assert await first.forward(ManagerEvent.LOGIN, d) == {"ok": True}
    sessions = jupyter.controller.gateway.sessions.values()
    assert sorted(sorted(key[1] for key in s.links) for s in sessions) == \
        sorted([sorted([a, d]), [c]])
    # The refusals changed nothing: every admitted link still answers.
    assert (await first.chat(a, "to a", "ca"))["response"]["result"] == "Echo: to a"
    assert (await first.chat(d, "to d", "cd"))["response"]["result"] == "Echo: to d"
    assert (await second.chat(c, "to c", "cc"))["response"]["result"] == "Echo: to c"
    for frontend in (first, second):
        await frontend.close()


@pytest.mark.parametrize("controller_config", [{"event_rate": 5, "chat_rate": 0}])
async def test_every_frontend_event_is_rate_limited(jupyter):
    agent = await jupyter.default_agent()
    client = await FrontendClient().connect(jupyter.url, jupyter.token, jupyter.base_url)
    acks = [await client.set_client("local")]
    acks += [await client.forward(ManagerEvent.CANCEL, agent["id"], {}) for _ in range(6)]
    codes = [ack.get("error", {}).get("code") for ack in acks]
    assert codes[:5] == [None] * 5, acks  # setClient and cancels share the budget
    assert codes[5:] == [ErrorCode.RATE_LIMITED] * 2, acks
    assert (await client.call("whatever", {}))["error"]["code"] == ErrorCode.RATE_LIMITED
    await client.close()


async def test_deleting_an_agent_or_its_client_closes_every_link_to_it(jupyter, start_manager):
    remote = start_manager("doomed")
    client, first = await jupyter.remote_agent(remote, "first")
    async with jupyter.http() as http:
        second = (await http.post(f"/clients/{client['id']}/agents",
                                  json={"name": "second", "provider": "echo"})).json()
    frontends = [await jupyter.frontend(client["id"]) for _ in range(2)]
    for frontend in frontends:
        for agent in (first, second):
            assert await frontend.forward(ManagerEvent.LOGIN, agent["id"]) == {"ok": True}
    await wait_sockets(remote, 1)  # four links, one socket: the manager's, shared
    async with jupyter.http() as http:
        deleted = await http.delete(f"/clients/{client['id']}/agents/{first['id']}")
        assert deleted.status_code == 204
        sessions = list(jupyter.controller.gateway.sessions.values())
        assert len(sessions) == 2
        for session in sessions:  # both sockets' links to `first` closed, and only those
            assert [key[1] for key in session.links] == [second["id"]]
        await wait_sockets(remote, 1)
        answer = await frontends[0].chat(second["id"], "still", "s")
        assert answer["response"]["result"] == "Echo: still"
        gone = await frontends[1].forward(ManagerEvent.CHAT, first["id"], {"message": "x"})
        assert gone["error"]["code"] == ErrorCode.NO_CREDENTIALS
        assert (await http.delete(f"/clients/{client['id']}")).status_code == 204
    await wait_sockets(remote, 0)
    for frontend in frontends:
        assert not frontend.log.of(ControllerEvent.REMOTE_RECONNECTING)
        await frontend.close()


async def test_refused_chats_are_not_remembered(jupyter, start_manager):
    remote = start_manager("strict", env={"AGENSTRA_MAX_MESSAGE_BYTES": "100"})
    client, agent = await jupyter.remote_agent(remote)
    frontend = await jupyter.frontend(client["id"])
    for n in range(20):
        ack = await frontend.forward(ManagerEvent.CHAT, agent["id"],
                                     {"message": "x" * 200, "correlationId": f"big{n}"})
        assert ack["error"]["code"] == ErrorCode.PAYLOAD_TOO_LARGE, ack
    assert (await frontend.chat(agent["id"], "small", "ok"))["response"]["result"] == \
        "Echo: small"
    (session,) = jupyter.controller.gateway.sessions.values()
    (link,) = session.links.values()
    assert link._chats == {}  # refused: no answer will ever come to take them out
    await frontend.close()


async def test_a_link_closed_by_the_handling_of_its_managers_event_closes(start_manager):
    """The connection's events are handled in its read loop (InlineClient). A frontend
    gone while one is delivered closes its links from inside that handling (through a
    gather, as the gateway does); the connection's close waits for the read loop, so it
    must not be waited for there, or the connection would hang open for good."""
    remote = start_manager("closing")
    agent = await remote.create_agent(name="a", provider="echo")

    class Registry:
        async def get_client(self, client_id: str) -> object:
            return SimpleNamespace(endpoint=remote.url, api_key=remote.api_key)

        async def password(self, client_id: str, agent_id: str) -> str:
            return agent["password"]

    closed = asyncio.Event()

    async def deliver(event: str, payload: dict) -> None:
        if payload.get("event") == ManagerEvent.CHAT_MESSAGE:
            await asyncio.gather(link.close())
            closed.set()

    link = ManagerLink("m", agent["id"], Registry(), deliver, Backoff(0.01, 0.02),
                       logging.getLogger("test"))
    await link.open()
    await link.login(None)
    connection = link._pool.connection("m")
    with contextlib.suppress(AgenstraError):  # closed before the chat's ack could arrive
        await link.send(ManagerEvent.CHAT, {"message": "hi", "correlationId": "c1"})
    await asyncio.wait_for(closed.wait(), WAIT)
    await asyncio.wait_for(connection._closer, WAIT)  # the close ran to its end
    assert connection.closed and connection._task.done()

"""The controller's `/clients` namespace in a real Jupyter server with its real local manager."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import socketio

from agenstra_jupyter.protocol import ControllerEvent, ErrorCode, ManagerEvent

from .conftest import start_jupyter, stop_jupyter
from .helpers import FrontendClient, assert_seq_complete, login_cookie, stored_secrets


async def test_only_authenticated_same_origin_sockets_connect(jupyter):
    cookie = await login_cookie(jupyter)
    refused = [
        (None, {}),
        ("wrong", {}),
        (None, {"Cookie": cookie, "Origin": "http://evil.example"}),  # cross-site request
    ]
    for token, headers in refused:
        client = FrontendClient()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(jupyter.url, token, jupyter.base_url, headers=headers)
    # The browser's way: the login cookie from the page's own origin.
    browser = await FrontendClient().connect(
        jupyter.url, None, jupyter.base_url, headers={"Cookie": cookie, "Origin": jupyter.url}
    )
    assert await browser.set_client() == {"ok": True}
    await browser.close()
    # The Authorization header works too (websocket transport).
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(jupyter.url, socketio_path="jp/agenstra/socket.io", namespaces=["/clients"],
                      transports=["websocket"],
                      headers={"Authorization": f"token {jupyter.token}"})
    assert sio.connected
    await sio.disconnect()


async def test_set_client_then_chat_with_the_default_agent(jupyter):
    agent = await jupyter.default_agent()
    assert agent["name"] == "assistant" and agent["provider"] == "shell"
    assert agent["credentials"] is True
    client = await FrontendClient().connect(jupyter.url, jupyter.token, jupyter.base_url)
    assert await client.set_client("local") == {"ok": True}
    assert client.log.of(ControllerEvent.CLIENT_SET) == [
        {"clientId": "local", "message": "Client context set"}
    ]
    assert await client.forward(ManagerEvent.LOGIN, agent["id"]) == {"ok": True}
    answer = await client.chat(agent["id"], "echo hello from jupyter", "c1")
    assert answer["response"]["result"] == "hello from jupyter\n[exit code 0]"
    forwarded = client.log.of(ControllerEvent.FORWARDED_EVENT)
    assert [f["event"] for f in forwarded] == [
        ManagerEvent.LOGIN_SUCCESS, ManagerEvent.CHAT_MESSAGE, ManagerEvent.CHAT_EVENT,
        ManagerEvent.CHAT_MESSAGE,
    ]
    assert all(f["clientId"] == "local" and f["agentId"] == agent["id"] for f in forwarded)
    assert_seq_complete(client.messages(agent["id"]))
    await client.close()


async def test_a_forward_with_agent_id_logs_in_first(jupyter):
    agent = await jupyter.default_agent()
    client = await jupyter.frontend()
    answer = await client.chat(agent["id"], "echo auto", "c1")  # no explicit login
    assert answer["response"]["result"] == "auto\n[exit code 0]"
    assert client.forwarded(agent["id"], ManagerEvent.LOGIN_SUCCESS)
    await client.close()


async def test_two_agents_over_one_socket_never_mix(jupyter):
    async with jupyter.http() as http:
        response = await http.post("/clients/local/agents",
                                   json={"name": "echoer", "provider": "echo"})
        echo = response.json()
    shell = await jupyter.default_agent()
    client = await jupyter.frontend()
    for agent in (echo, shell):
        assert await client.forward(ManagerEvent.LOGIN, agent["id"]) == {"ok": True}
    await asyncio.gather(
        *(client.forward(ManagerEvent.CHAT, echo["id"], {"message": f"e{n}",
                                                         "correlationId": f"e{n}"})
          for n in range(3)),
    )
    for n in range(3):
        await client.forward(ManagerEvent.CHAT, shell["id"], {"message": f"echo s{n}",
                                                              "correlationId": f"s{n}"})
    await client.answer_to(echo["id"], "e2")
    await client.answer_to(shell["id"], "s2")
    echo_messages = client.messages(echo["id"])
    shell_messages = client.messages(shell["id"])
    assert {m["agentId"] for m in echo_messages} == {echo["id"]}
    assert {m["agentId"] for m in shell_messages} == {shell["id"]}
    assert_seq_complete(echo_messages)
    assert_seq_complete(shell_messages)
    assert all("Echo:" in m["response"]["result"] for m in echo_messages if m["from"] == "agent")
    for event in client.forwarded(echo["id"], ManagerEvent.CHAT_EVENT):
        assert event["agentId"] == echo["id"]
    await client.close()


async def test_login_after_seq_gets_only_what_was_missed(jupyter):
    agent = await jupyter.default_agent()
    first = await jupyter.frontend()
    await first.chat(agent["id"], "echo one", "a")
    await first.chat(agent["id"], "echo two", "b")
    await first.close()
    later = await jupyter.frontend()
    assert await later.forward(ManagerEvent.LOGIN, agent["id"], {"afterSeq": 2}) == {"ok": True}
    # A sentinel turn: its messages come after the whole replay, so anything replayed that
    # should not have been (seq 1, 2, a duplicate) would be in the list before them.
    await later.chat(agent["id"], "echo sentinel", "sentinel")
    assert [(m["seq"], m["correlationId"]) for m in later.messages(agent["id"])] == [
        (3, "b"), (4, "b"), (5, "sentinel"), (6, "sentinel")]
    await later.close()


@pytest.mark.parametrize(
    ("event", "payload", "code"),
    [
        (ControllerEvent.SET_CLIENT, {"clientId": "nope"}, ErrorCode.UNKNOWN_CLIENT),
        (ControllerEvent.SET_CLIENT, {}, ErrorCode.INVALID_PAYLOAD),
        (ControllerEvent.SET_CLIENT, "local", ErrorCode.INVALID_PAYLOAD),
        (ControllerEvent.FORWARD, {"event": "chat", "agentId": "x"}, ErrorCode.NO_CLIENT),
        ("whatever", {}, ErrorCode.UNKNOWN_EVENT),
    ],
)
async def test_bad_requests_get_an_error_event_and_a_failed_ack(jupyter, event, payload, code):
    client = await FrontendClient().connect(jupyter.url, jupyter.token, jupyter.base_url)
    ack = await client.call(event, payload)
    assert ack["ok"] is False and ack["error"]["code"] == code
    (error,) = await client.log.wait_count(ControllerEvent.ERROR, 1)
    assert error == {"code": code, "message": ack["error"]["message"]}
    await client.close()


@pytest.mark.parametrize(
    ("request_body", "code"),
    [
        ({"event": "chat"}, ErrorCode.INVALID_PAYLOAD),  # no agentId
        ({"event": "", "agentId": "x"}, ErrorCode.INVALID_PAYLOAD),
        ({"event": "chat", "agentId": 5}, ErrorCode.INVALID_PAYLOAD),
        ({"event": "chat", "agentId": "x", "payload": "text"}, ErrorCode.INVALID_PAYLOAD),
        ({"event": "login", "agentId": "x", "payload": {"afterSeq": -2}},
         ErrorCode.INVALID_PAYLOAD),
        ({"event": "login", "agentId": "not-an-agent-we-know"}, ErrorCode.NO_CREDENTIALS),
    ],
)
async def test_bad_forwards(jupyter, request_body, code):
    client = await jupyter.frontend()
    ack = await client.call(ControllerEvent.FORWARD, request_body)
    assert ack["ok"] is False and ack["error"]["code"] == code, ack
    await client.close()


async def test_login_failure_and_rate_limit(jupyter):
    agent = await jupyter.default_agent()
    # Credentials the manager refuses (the stored password of another agent).
    controller = jupyter.controller
    await controller.registry.save_password("local", agent["id"], agent["name"], "not-it")
    client = await jupyter.frontend()
    ack = await client.forward(ManagerEvent.LOGIN, agent["id"])
    assert ack == {"ok": False, "error": {"code": ErrorCode.LOGIN_FAILED,
                                          "message": "Invalid credentials"}}
    assert client.forwarded(agent["id"], ManagerEvent.LOGIN_ERROR)
    codes = []
    for _ in range(40):
        ack = await client.forward(ManagerEvent.LOGIN, agent["id"])
        codes.append(ack["error"]["code"])
    assert codes[-1] == ErrorCode.RATE_LIMITED and ErrorCode.LOGIN_FAILED in codes
    await client.close()


@pytest.fixture(scope="module")
def chatty_server(tmp_path_factory):
    """A Jupyter server process logging everything, and its local manager too, to one file."""
    server = start_jupyter(tmp_path_factory.mktemp("chatty"), args=[
        "--ServerApp.log_level=DEBUG", "--ControllerApp.log_level=DEBUG",
        "--ControllerApp.manager_args=--log-level=DEBUG"])
    yield server
    stop_jupyter(server)


async def test_secrets_never_reach_frontends_or_logs(chatty_server):
    """No agent password or manager API key in events, REST views, the registry file or the
    log: the Jupyter server's own output (controller) and its local manager's, read from the
    file both write to, as an operator would (pytest's caplog never sees traitlets loggers)."""
    server = chatty_server
    log_path = server.data_dir.parent / "jupyter.log"
    client = await FrontendClient().connect(server.url, server.token, server.base_url)
    assert await client.set_client("local") == {"ok": True}
    async with httpx.AsyncClient(base_url=f"{server.full_url}agenstra/api", timeout=30,
                                 headers={"Authorization": f"token {server.token}"}) as http:
        agent = next(a for a in (await http.get("/clients/local/agents")).json()
                     if a["name"] == "assistant")
        answer = await client.chat(agent["id"], "echo hi", "secrets-c")
        assert answer["response"]["result"] == "hi\n[exit code 0]"
        rest = [(await http.get(path)).text for path in (
            "/clients", "/clients/local", "/clients/local/agents",
            f"/clients/local/agents/{agent['id']}",
            f"/clients/local/agents/{agent['id']}/messages")]
    await client.close()
    secrets = stored_secrets(server.data_dir)  # the agent's password, the manager's key
    assert len(secrets) >= 2
    log = log_path.read_text()
    # The file really holds both tiers' logs of this very turn, so a leak would be in it.
    assert "forward chat client=local" in log and "correlationId=secrets-c" in log
    assert f"turn start agent={agent['id']} correlationId=secrets-c" in log
    seen = json.dumps(client.log.events) + "".join(rest) + log
    assert [s for s in secrets if s in seen] == []
    stored = (server.data_dir / "controller.sqlite").read_bytes()
    assert [s for s in secrets if s.encode() in stored] == []


async def test_the_managers_refusal_reaches_the_frontend_with_its_own_code(jupyter,
                                                                          start_manager):
    remote = start_manager("small", env={"AGENSTRA_MAX_MESSAGE_BYTES": "1000"})
    client, agent = await jupyter.remote_agent(remote)
    frontend = await jupyter.frontend(client["id"])
    ack = await frontend.forward(ManagerEvent.CHAT, agent["id"],
                                 {"message": "x" * 2000, "correlationId": "big"})
    assert ack["ok"] is False
    assert ack["error"]["code"] == ErrorCode.PAYLOAD_TOO_LARGE  # not INVALID_PAYLOAD
    await frontend.close()


async def test_reconnected_means_logged_in_again(jupyter, start_manager):
    remote = start_manager("bouncy")
    client, agent = await jupyter.remote_agent(remote)
    frontend = await jupyter.frontend(client["id"])
    assert (await frontend.chat(agent["id"], "before", "b"))["response"]["result"] == \
        "Echo: before"
    remote.kill()
    await frontend.log.wait_for(
        lambda log: log.of(ControllerEvent.REMOTE_DISCONNECTED), timeout=30)
    remote.start()  # same port, same data
    await frontend.log.wait_for(
        lambda log: log.of(ControllerEvent.REMOTE_RECONNECTED), timeout=60)
    ack = await frontend.forward(ManagerEvent.CHAT, agent["id"],
                                 {"message": "right after", "correlationId": "a"})
    assert ack == {"ok": True}  # at once: the link is ready when it says it is
    assert (await frontend.answer_to(agent["id"], "a"))["response"]["result"] == \
        "Echo: right after"
    await frontend.close()


def test_the_per_chat_debug_line_is_built_only_when_a_handler_shows_it():
    """traitlets' loggers stay at DEBUG and filter in their handlers: the gateway asks the
    handlers, so an INFO server builds no record per chat and a --debug one still logs it."""
    import logging

    from agenstra_jupyter.controller.gateway import _emits

    log = logging.getLogger("agenstra-test-emits")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    handler = logging.StreamHandler()
    log.addHandler(handler)
    try:
        handler.setLevel(logging.INFO)
        assert not _emits(log, logging.DEBUG) and _emits(log, logging.INFO)
        handler.setLevel(logging.DEBUG)
        assert _emits(log, logging.DEBUG)
        log.setLevel(logging.INFO)  # the logger itself drops it
        assert not _emits(log, logging.DEBUG)
        child = log.getChild("child")  # a child propagates to its parent's handlers
        child.setLevel(logging.DEBUG)
        handler.setLevel(logging.NOTSET)
        assert _emits(child, logging.DEBUG)
    finally:
        log.removeHandler(handler)


async def test_a_frontend_that_reads_slowly_gets_the_answers_text_whole_and_merged(jupyter):
    """A streamed answer of 30,000 words to a frontend that does not read meanwhile: the
    controller merges the turn's deltas it holds for that socket rather than piling them
    up, and once it reads, the frontend has the whole text once, in order, the answer
    last."""
    import socket as sockets

    from .helpers import SlowReader

    async with jupyter.http() as http:
        agent = (await http.post("/clients/local/agents",
                                 json={"name": "streamer", "provider": "echo"})).json()
    client = await SlowReader.connect(jupyter.url, f"{jupyter.base_url}agenstra/socket.io/",
                                      f"&token={jupyter.token}", "/clients")
    sio = jupyter.controller.sio
    websocket = sio.eio.sockets[sio.manager.eio_sid_from_sid(client.sid, "/clients")] \
        .corked_websocket
    websocket.tornado_handler.ws_connection.stream.socket.setsockopt(
        sockets.SOL_SOCKET, sockets.SO_SNDBUF, 4096)  # the link is slow from the start

    async def acked(ack_id: int, data: dict) -> None:
        client.send(f"42/clients,{ack_id}" + json.dumps(["forward", data] if "event" in data
                                                        else ["setClient", data]))
        while not (frame := await client.read()).startswith(f"43/clients,{ack_id}"):
            pass
        assert json.loads(frame[len(f"43/clients,{ack_id}"):]) == [{"ok": True}], frame

    await acked(1, {"clientId": "local"})
    await acked(2, {"event": ManagerEvent.LOGIN, "agentId": agent["id"]})
    words = [f"w{n}" for n in range(30_000)]
    await acked(3, {"event": ManagerEvent.CHAT, "agentId": agent["id"], "payload": {
        "message": " ".join(words), "stream": True, "correlationId": "slow"}})
    async with jupyter.http() as http:  # the turn ends while the frontend reads nothing
        for _ in range(600):
            stored = (await http.get(f"/clients/local/agents/{agent['id']}/messages")).json()
            if any(m["from"] == "agent" for m in stored):
                break
            await asyncio.sleep(0.1)
    deltas, sequences = [], []
    while True:
        frame = await asyncio.wait_for(client.read(), 30)
        if not frame.startswith("42/clients,"):
            continue
        name, forwarded = json.loads(frame[len("42/clients,"):])
        assert name == ControllerEvent.FORWARDED_EVENT
        inner = forwarded["payload"]
        if forwarded["event"] == ManagerEvent.CHAT_EVENT and inner["kind"] == "assistantDelta":
            deltas.append(inner["payload"]["delta"])
            sequences.append(inner["sequence"])
        elif forwarded["event"] == ManagerEvent.CHAT_MESSAGE and inner["from"] == "agent":
            break
    await client.close()
    assert "".join(deltas) == "Echo: " + " ".join(words)
    assert sequences == sorted(set(sequences))  # rising: merged ones leave gaps
    assert len(deltas) < len(words) / 2  # what waited for the slow frontend was merged

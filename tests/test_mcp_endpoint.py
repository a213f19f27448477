"""The notebook tools' MCP endpoint (DESIGN.md "Notebook tools (MCP)"): tokens, auth, listeners.

A real `jupyter server` subprocess with the extension and its local manager; the MCP SDK's
own client over real HTTP, on the Jupyter port and on the MCP-only UNIX socket. Tokens are
minted by the controller when an agent with a project is created; the test reads one the
way only the owner of the controller's data can (its database and key), as an agent's
runtime is handed it. As an attacker: no token, a wrong, a revoked or the Jupyter token, a
browser page, a big body, other paths on the socket.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import httpx2
import nbformat
import pytest
import sqlalchemy
from cryptography.fernet import Fernet
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from agenstra_jupyter.controller import registry as registry_module
from agenstra_jupyter.controller.registry import GrantRecord, Registry
from agenstra_jupyter.protocol import ChatEventKind, ManagerEvent
from agenstra_jupyter.secrets import SecretBox

from .conftest import JupyterProcess, start_jupyter, stop_jupyter
from .helpers import WAIT, FrontendClient, login_cookie

MARK = secrets.token_hex(6)
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "attacker", "version": "1"}}}
MCP_HEADERS = {"Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
REFUSED = {"error": "Unauthorized"}  # one answer, whatever is wrong with the credential


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> JupyterProcess:
    root = tmp_path_factory.mktemp("mcp")
    for project in ("proj", "other"):
        (root / project).mkdir()
        (root / project / f"{project}-{MARK}.txt").write_text(project)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    nbformat.write(notebook, root / "proj" / "nb.ipynb")
    server = start_jupyter(root)
    yield server
    stop_jupyter(server)


def root_of(server: JupyterProcess) -> Path:
    return server.data_dir.parent


def mcp_url(server: JupyterProcess) -> str:
    return f"{server.full_url}agenstra/mcp"


def socket_of(server: JupyterProcess) -> Path:
    return server.data_dir / "mcp.sock"


# The sandboxed agent's view of the socket: a relayed loopback port, any port number.
SOCKET_URL = "http://127.0.0.1:8765/jp/agenstra/mcp"


def rest(server: JupyterProcess) -> httpx.Client:
    return httpx.Client(base_url=f"{server.full_url}agenstra/api", timeout=60,
                        headers={"Authorization": f"token {server.token}"})


def create_agent(server: JupyterProcess, name: str, project: str | None = "proj",
                 provider: str = "echo") -> dict:
    body = {"name": name, "provider": provider}
    if project is not None:
        body["project"] = project
    with rest(server) as http:
        response = http.post("/clients/local/agents", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def delete_agent(server: JupyterProcess, agent: dict) -> None:
    with rest(server) as http:
        assert http.delete(f"/clients/local/agents/{agent['id']}").status_code == 204


def stored_token(server: JupyterProcess, agent_id: str) -> str | None:
    """The agent's token as only the controller's owner can read it: decrypted."""
    with sqlite3.connect(server.data_dir / "controller.sqlite") as db:
        row = db.execute("SELECT token FROM notebook_grants WHERE agent_id = ?",
                         (agent_id,)).fetchone()
    if row is None:
        return None
    return SecretBox.from_key_file(server.data_dir / "controller.key").decrypt(row[0])


@asynccontextmanager
async def mcp_session(url: str, token: str, uds: Path | None = None
                      ) -> AsyncIterator[ClientSession]:
    """The SDK's own client, initialized, with the agent's bearer token."""
    transport = httpx2.AsyncHTTPTransport(uds=str(uds)) if uds else None
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                  transport=transport, timeout=120) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                yield session


def text_of(result) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


@pytest.fixture(scope="module")
def agent(server) -> dict:
    return create_agent(server, "mcp-a")


@pytest.fixture(scope="module")
def token(server, agent) -> str:
    token = stored_token(server, agent["id"])
    assert token is not None
    return token


# -- the tools, with the agent's token -------------------------------------------------------


@pytest.mark.parametrize("listener", ["jupyter", "socket"])
async def test_the_agents_token_lists_the_notebook_tools(server, token, listener):
    url, uds = (mcp_url(server), None) if listener == "jupyter" else (SOCKET_URL,
                                                                       socket_of(server))
    async with mcp_session(url, token, uds) as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
    assert {"list_files", "read_notebook", "insert_cell", "run_cells"} <= names


async def test_the_2026_protocol_is_served_with_the_same_token(server, token):
    # Per-request MCP (no initialize handshake): each request carries its own token too.
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                  timeout=60) as http:
        transport = streamable_http_client(mcp_url(server), http_client=http)
        async with Client(transport, mode="2026-07-28") as client:
            listing = await client.call_tool("list_files", {})
    assert not listing.is_error and f"proj-{MARK}.txt" in text_of(listing)
    refused = await refusals(server, {"MCP-Protocol-Version": "2026-07-28"})
    assert refused.status_code == 401 and refused.json() == REFUSED


async def test_a_tool_runs_for_the_tokens_agent_in_its_project(server, token):
    other = create_agent(server, "mcp-other", project="other")
    other_token = stored_token(server, other["id"])
    assert other_token is not None and other_token != token
    async with mcp_session(SOCKET_URL, token, socket_of(server)) as session:
        mine = text_of(await session.call_tool("list_files", {}))
        up = await session.call_tool("list_files", {"path": ".."})
    async with mcp_session(mcp_url(server), other_token) as session:
        theirs = text_of(await session.call_tool("list_files", {}))
    assert f"proj-{MARK}.txt" in mine and "nb.ipynb" in mine and f"other-{MARK}" not in mine
    assert f"other-{MARK}.txt" in theirs and f"proj-{MARK}" not in theirs
    assert up.is_error and f"other-{MARK}" not in text_of(up)
    delete_agent(server, other)


async def test_a_write_outside_a_turn_is_refused_and_changes_nothing(server, token):
    path = root_of(server) / "proj" / "nb.ipynb"
    before = path.read_bytes()
    async with mcp_session(mcp_url(server), token) as session:
        result = await session.call_tool("insert_cell", {"path": "nb.ipynb", "index": 0,
                                                         "source": "print('agent')"})
    assert result.is_error
    assert "no turn" in text_of(result).lower()
    assert path.read_bytes() == before


# -- attackers: one 401 for every bad credential -----------------------------------------------


async def refusals(server: JupyterProcess, headers: dict, uds: Path | None = None,
                   params: dict | None = None) -> httpx.Response:
    transport = httpx.AsyncHTTPTransport(uds=str(uds)) if uds else None
    url = SOCKET_URL if uds else mcp_url(server)
    async with httpx.AsyncClient(transport=transport, timeout=30) as http:
        return await http.post(url, json=INIT, params=params,
                               headers={**MCP_HEADERS, **headers})


async def test_every_bad_credential_gets_the_same_401(server):
    revoked_agent = create_agent(server, "mcp-revoked")
    revoked = stored_token(server, revoked_agent["id"])
    assert revoked is not None
    delete_agent(server, revoked_agent)
    assert stored_token(server, revoked_agent["id"]) is None  # the row is gone
    cookie = await login_cookie(server)
    attempts = {
        "none": {},
        "wrong": {"Authorization": f"Bearer {secrets.token_urlsafe(32)}"},
        "revoked": {"Authorization": f"Bearer {revoked}"},
        "jupyter bearer": {"Authorization": f"Bearer {server.token}"},
        "jupyter token": {"Authorization": f"token {server.token}"},
        "jupyter cookie": {"Cookie": cookie},
        "not bearer": {"Authorization": f"Basic {revoked}"},
    }
    for name, headers in attempts.items():
        for uds in (None, socket_of(server)):
            response = await refusals(server, headers, uds)
            assert response.status_code == 401, (name, uds, response.text)
            assert response.json() == REFUSED, name
    query = await refusals(server, {}, params={"token": server.token})
    assert query.status_code == 401 and query.json() == REFUSED


async def test_the_revoked_agents_sdk_client_is_refused(server):
    doomed = create_agent(server, "mcp-doomed")
    token = stored_token(server, doomed["id"])
    async with mcp_session(mcp_url(server), token) as session:
        assert (await session.list_tools()).tools  # works while the agent exists
        delete_agent(server, doomed)
        with pytest.raises(MCPError):  # the SDK does not say the status: the next line does
            await session.list_tools()
    response = await refusals(server, {"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and response.json() == REFUSED


async def test_an_agent_without_a_project_gets_no_token(server):
    plain = create_agent(server, "mcp-plain", project=None)
    assert stored_token(server, plain["id"]) is None
    delete_agent(server, plain)


async def test_a_browser_page_cannot_call_the_tools(server, token):
    for uds in (None, socket_of(server)):
        response = await refusals(server, {"Authorization": f"Bearer {token}",
                                           "Origin": "http://evil.example"}, uds)
        assert response.status_code == 403, response.text


async def test_the_socket_answers_only_loopback_hosts(server, token):
    for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example:80"):
        response = await refusals(server, {"Authorization": f"Bearer {token}", "Host": host},
                                  socket_of(server))
        assert response.status_code == 421, (host, response.text)
    ok = await refusals(server, {"Authorization": f"Bearer {token}", "Host": "localhost:9"},
                        socket_of(server))
    assert ok.status_code == 200, ok.text



async def test_no_event_stream_is_held_open(server, token):
    """Stateless, the endpoint never sends a message of its own: a GET (the spec's
    stream) is answered 405 at once instead of holding a connection for nothing."""
    for uds in (None, socket_of(server)):
        transport = httpx.AsyncHTTPTransport(uds=str(uds)) if uds else None
        async with httpx.AsyncClient(transport=transport, timeout=10) as http:
            response = await http.get(SOCKET_URL if uds else mcp_url(server), headers={
                "Authorization": f"Bearer {token}", "Accept": "text/event-stream"})
            unauthorized = await http.get(SOCKET_URL if uds else mcp_url(server),
                                          headers={"Authorization": "Bearer " + "x" * 43})
        assert response.status_code == 405, response.text
        assert "POST" in response.headers["Allow"]
        assert unauthorized.status_code == 401  # the token is checked first

async def test_request_bodies_are_bounded(server, token):
    async def post(content, headers: dict) -> int | None:
        """The status, or None when the server dropped the connection (read nothing)."""
        async with httpx.AsyncClient(timeout=60) as http:
            try:
                response = await http.post(mcp_url(server), content=content,
                                           headers={**MCP_HEADERS, **headers})
            except httpx.TransportError:
                return None
            return response.status_code

    async def declared(headers: str) -> bytes:
        """Only the head of a request that says it is 64 MiB: the answer comes at once."""
        port = int(server.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST {server.base_url}agenstra/mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {64 << 20}\r\n"
                     f"{headers}\r\n".encode())
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), WAIT)
        writer.close()
        return status

    bearer = {"Authorization": f"Bearer {token}"}
    # Refused on its headers, before a byte of it is read, with or without a token.
    for headers in (f"Authorization: Bearer {token}\r\n", ""):
        assert (await declared(headers)).startswith(b"HTTP/1.1 413"), headers

    async def chunks():  # no Content-Length at all: tornado must stop reading by itself
        for _ in range(6):
            yield b" " * (1024 * 1024)

    assert await post(b"[" + b" " * (5 << 20) + b"]", bearer) in (413, None)
    assert await post(chunks(), bearer) in (400, 413, None)
    async with mcp_session(mcp_url(server), token) as session:  # and it still serves
        assert (await session.list_tools()).tools


# -- the socket ----------------------------------------------------------------------------------


async def test_the_socket_is_private_and_serves_nothing_but_the_tools(server):
    path = socket_of(server)
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert path.stat().st_uid == os.getuid()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    auth = {"Authorization": f"token {server.token}"}
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(path)),
                                 base_url="http://127.0.0.1:8765", timeout=30) as http:
        for target in ("/jp/api/status", "/jp/api/contents", "/jp/agenstra/api/clients",
                       "/jp/", "/jp/lab", "/api/status", "/jp/agenstra/mcp/../api/status"):
            response = await http.get(target, headers=auth)
            assert response.status_code == 404, (target, response.status_code)


# -- secrets ---------------------------------------------------------------------------------------


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and not path.is_socket()]


async def test_the_token_is_never_shown_logged_or_stored_in_clear(server, agent, token):
    with rest(server) as http:
        response = http.post("/clients/local/agents", json={
            "name": "mcp-shown", "provider": "echo", "project": "proj"})
        shown = [response.text, http.get("/clients/local/agents").text,
                 http.get(f"/clients/local/agents/{agent['id']}").text,
                 http.get(f"/clients/local/agents/{response.json()['id']}").text]
    created = stored_token(server, response.json()["id"])
    assert created is not None
    async with mcp_session(mcp_url(server), token) as session:  # calls that log something
        await session.call_tool("list_files", {"path": "../.."})
        await session.call_tool("read_notebook", {"path": "missing.ipynb"})
    await refusals(server, {"Authorization": f"Bearer {token}x"})
    for text in shown:
        assert token not in text and created not in text
    log = (root_of(server) / "jupyter.log").read_text(errors="replace")
    assert token not in log and created not in log
    for path in files_under(server.data_dir):  # the registry, its WAL, the manager's data
        data = path.read_bytes()
        assert token.encode() not in data and created.encode() not in data, path


# -- asks: in the agent's running turn ---------------------------------------------------------


async def test_a_write_asks_the_user_in_the_agents_running_turn(server, token,
                                                               sandbox_available):
    shell = create_agent(server, "mcp-shell", provider="shell")
    shell_token = stored_token(server, shell["id"])
    frontend = await FrontendClient().connect(server.url, server.token, server.base_url)
    assert await frontend.set_client("local") == {"ok": True}
    assert await frontend.forward(ManagerEvent.CHAT, shell["id"], {
        "message": "sleep 60", "correlationId": "busy"}) == {"ok": True}
    path = root_of(server) / "proj" / "nb.ipynb"

    def requests() -> list[dict]:
        return [e for e in frontend.forwarded(shell["id"], ManagerEvent.CHAT_EVENT)
                if e["kind"] == ChatEventKind.PERMISSION_REQUEST]

    async def answer(count: int, option_kind: str) -> dict:
        [*_, request] = await frontend.log.wait_for(
            lambda _: len(requests()) >= count and requests(), timeout=WAIT)
        payload = request["payload"]
        option = next(o for o in payload["options"] if o["kind"] == option_kind)
        assert await frontend.forward(ManagerEvent.PERMISSION_RESPONSE, shell["id"], {
            "requestId": payload["requestId"], "optionId": option["optionId"]}) == {"ok": True}
        return payload

    await frontend.log.wait_for(lambda _: [  # the turn runs (the shell said so)
        e for e in frontend.forwarded(shell["id"], ManagerEvent.CHAT_EVENT)
        if e["correlationId"] == "busy" and e["kind"] == ChatEventKind.STATUS], timeout=WAIT)
    async with mcp_session(SOCKET_URL, shell_token, socket_of(server)) as session:
        before = path.read_bytes()
        # Another agent on the same project cannot ask in this agent's turn: its own token
        # names its own agent, which runs no turn.
        async with mcp_session(mcp_url(server), token) as intruder:
            result = await intruder.call_tool("insert_cell", {
                "path": "nb.ipynb", "index": 0, "source": "print('intruder')"})
        assert result.is_error and "no turn" in text_of(result).lower()
        assert not requests() and path.read_bytes() == before
        call = asyncio.ensure_future(session.call_tool("insert_cell", {
            "path": "nb.ipynb", "index": 0, "source": f"print('no-{MARK}')"}))
        asked = await answer(1, "reject_once")
        rejected = await asyncio.wait_for(call, WAIT)
        assert rejected.is_error and "rejected" in text_of(rejected)
        assert path.read_bytes() == before
        assert asked["kind"] == "edit" and "nb.ipynb" in asked["paths"]
        call = asyncio.ensure_future(session.call_tool("insert_cell", {
            "path": "nb.ipynb", "index": 0, "source": f"print('yes-{MARK}')"}))
        await answer(2, "allow_once")
        allowed = await asyncio.wait_for(call, WAIT)
        assert not allowed.is_error, text_of(allowed)
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].source == f"print('yes-{MARK}')"
    # An agent that goes away while its user is asked leaves no request waiting.
    async with mcp_session(SOCKET_URL, shell_token, socket_of(server)) as session:
        call = asyncio.ensure_future(session.call_tool("delete_cell", {
            "path": "nb.ipynb", "cell": 0}))
        [*_, request] = await frontend.log.wait_for(
            lambda _: len(requests()) >= 3 and requests(), timeout=WAIT)
        call.cancel()
    asked_id = request["payload"]["requestId"]

    def resolved() -> list[dict]:
        return [e["payload"] for e in frontend.forwarded(shell["id"], ManagerEvent.CHAT_EVENT)
                if e["kind"] == ChatEventKind.PERMISSION_RESOLVED
                and e["payload"]["requestId"] == asked_id]

    [settled] = await frontend.log.wait_for(lambda _: resolved(), timeout=WAIT)
    assert settled["outcome"] == "cancelled"
    assert nbformat.read(path, as_version=4).cells[0].source == f"print('yes-{MARK}')"
    # One agent's calls at once are bounded (8 by default): the next is refused at once.
    async with mcp_session(SOCKET_URL, shell_token, socket_of(server)) as session:
        waiting = [asyncio.ensure_future(session.call_tool("delete_cell", {
            "path": "nb.ipynb", "cell": 0})) for _ in range(8)]
        await frontend.log.wait_for(lambda _: len(requests()) >= 3 + 8, timeout=WAIT)
        extra = await asyncio.wait_for(session.call_tool("list_files", {}), WAIT)
        assert extra.is_error and "Too many tool calls" in text_of(extra)
        for call in waiting:
            call.cancel()
    await frontend.forward(ManagerEvent.CANCEL, shell["id"], {"correlationId": "busy"})
    await frontend.close()
    delete_agent(server, shell)


# -- off -------------------------------------------------------------------------------------------


async def test_with_the_tools_off_there_is_no_endpoint_and_no_token(tmp_path):
    (tmp_path / "proj").mkdir()
    off = start_jupyter(tmp_path, extra_env={"AGENSTRA_NOTEBOOK_TOOLS": "false"})
    try:
        agent = create_agent(off, "mcp-off")
        assert stored_token(off, agent["id"]) is None
        assert not socket_of(off).exists()
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(mcp_url(off), json=INIT, headers={
                **MCP_HEADERS, "Authorization": f"token {off.token}"})  # past Jupyter's auth
        assert response.status_code == 404
    finally:
        stop_jupyter(off)


# -- the registry's grants -------------------------------------------------------------------


async def test_a_registry_from_before_the_tools_gains_grants_and_keeps_its_clients(tmp_path):
    path = tmp_path / "controller.sqlite"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # what the first release created: version 1, no grants
        registry_module.clients.create(conn)
        registry_module.credentials.create(conn)
        conn.exec_driver_sql("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.exec_driver_sql("INSERT INTO schema_version VALUES (1)")
    engine.dispose()
    box = SecretBox(Fernet.generate_key())
    registry = Registry(f"sqlite:///{path}", box)
    await registry.open()
    try:
        client = await registry.add_client("remote", "http://127.0.0.1:9", "key")
        token = registry.new_token()
        await registry.save_grant(token, client.id, "agent-1", "/work/proj")
        assert await registry.grant(token) == GrantRecord(client.id, "agent-1", "/work/proj")
        assert await registry.grant(token + "x") is None
        again = registry.new_token()  # a new grant for the same agent replaces the old one
        await registry.save_grant(again, client.id, "agent-1", "/work/proj")
        assert await registry.grant(token) is None and await registry.grant(again)
        assert token.encode() not in path.read_bytes()
        await registry.delete_client(client.id)  # its agents' grants go with it
        assert await registry.grant(again) is None
        assert not await registry.revoke_grant(client.id, "agent-1")
    finally:
        await registry.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchone() == \
            (len(registry.migrations),)

"""Notebook tools, the manager's side (DESIGN.md "Notebook tools (MCP)"): the controller's
token handed to project agents, the relay from inside their sandbox to the controller's
MCP-only socket, and the tools' asks in the agent's running turn.

Real managers, the real bubblewrap sandbox (and Docker), real SQLite. A tornado HTTP server
on a UNIX socket stands in for the controller's MCP listener and records what reached it;
the MCP SDK's own server stands in for it where a real agent CLI must use the tools. Agents:
the shell provider (curl inside the sandbox), the SDK-based fake ACP agent (`mcp-servers`
answers what session/new gave it), a stand-in Claude Code (tests/fakes/bin) and the real
Claude Code and claude-agent-acp against the fake Anthropic API. Last, the whole way: a
real Jupyter server, its local manager and a sandboxed agent calling the real endpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine
from sqlalchemy import text as sql
from tornado import httpserver, netutil, web

from agenstra_jupyter.db import _migrate
from agenstra_jupyter.manager.models import AgentRecord
from agenstra_jupyter.manager.notebook_tools import MCP_SANDBOX_PORT, NotebookTools
from agenstra_jupyter.manager.providers.cli import CliProvider
from agenstra_jupyter.manager.runtimes import Runtime
from agenstra_jupyter.manager.store import Store, migrations, seal_config
from agenstra_jupyter.protocol import ManagerEvent
from agenstra_jupyter.secrets import SecretBox

from .conftest import TEST_IMAGE, start_jupyter, stop_jupyter
from .fakes import ACP_AGENT_COMMAND
from .fakes.vendors import Reply, ToolUse, last_tool_result
from .helpers import (
    CLI_BIN,
    FAKE_BIN,
    SECRET,
    WAIT,
    AgentsClient,
    FrontendClient,
    ManagerProcess,
    database_bytes,
    events_of,
    need_cli,
    permission_requests,
)

BASE_URL = "/jp/"
MCP_URL = f"http://127.0.0.1:{MCP_SANDBOX_PORT}/jp/agenstra/mcp"
STAND_IN_ANSWER = "stand-in-mcp-answer"
DOCKER_OWNER = 4321  # Docker projects belong to a non-root user (see test_projects.py)


def token() -> str:
    return secrets.token_urlsafe(32)


class StandInMcp:
    """An HTTP server on a UNIX socket (0600), as the controller's MCP-only listener, in a
    thread of its own: it records each request's method, path, Host and Authorization, and
    answers JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(WAIT)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        recorded = self.requests

        class Handler(web.RequestHandler):
            def check_xsrf_cookie(self) -> None:
                pass

            def _record(self) -> None:
                headers = self.request.headers
                recorded.append({"method": self.request.method, "path": self.request.path,
                                 "host": headers.get("Host"),
                                 "authorization": headers.get("Authorization")})
                self.set_header("Content-Type", "application/json")
                self.finish(json.dumps({"answer": STAND_IN_ANSWER}))

            def get(self) -> None:
                self._record()

            def post(self) -> None:
                self._record()

        async def start() -> None:
            server = httpserver.HTTPServer(web.Application([(r"/.*", Handler)]))
            server.add_socket(netutil.bind_unix_socket(str(self.path), mode=0o600))

        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)


@pytest.fixture
def mcp_dir() -> Iterator[Path]:
    """A short folder for the socket (UNIX socket paths are limited to ~108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="mcp-", dir="/tmp"))
    os.chmod(path, 0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def stand_in(mcp_dir) -> Iterator[StandInMcp]:
    server = StandInMcp(mcp_dir / "mcp.sock")
    yield server
    server.close()


@pytest.fixture
def projects(tmp_path) -> Path:
    root = tmp_path / "root"
    (root / "proj").mkdir(parents=True)
    return root


@pytest.fixture
def tools_manager(start_manager, stand_in, projects) -> ManagerProcess:
    """A manager with the stand-in's socket, as the local manager a Jupyter server starts."""
    path = os.pathsep.join([str(FAKE_BIN), str(Path(sys.executable).parent),
                            os.environ["PATH"]])
    return start_manager("m", env={
        "AGENSTRA_MCP_SOCKET": str(stand_in.path), "AGENSTRA_MCP_BASE_URL": BASE_URL,
        "AGENSTRA_PROJECT_ROOTS": str(projects), "PATH": path})


async def create(manager: ManagerProcess, name: str, provider: str = "shell",
                 grant: str | None = None, project: Path | None = None,
                 **body: Any) -> dict[str, Any]:
    if grant is not None:
        body["notebookTools"] = {"token": grant}
    if project is not None:
        body["project"] = str(project)
    return await manager.create_agent(name=name, provider=provider, **body)


async def run(manager: ManagerProcess, agent: dict[str, Any], command: str,
              timeout: float = 60) -> dict[str, Any]:
    client = await AgentsClient().connect(manager)
    try:
        await client.login(agent)
        return await client.chat(command, timeout=timeout)
    finally:
        await client.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- the relay and the hand-over -------------------------------------------------------------


async def test_a_sandboxed_agent_reaches_the_tools_and_nothing_else(
        sandbox_available, tools_manager, stand_in, projects):
    grant = token()
    agent = await create(tools_manager, "sh", grant=grant, project=projects / "proj")
    other = free_port()
    with socket.create_server(("127.0.0.1", other)):  # a host service it must not reach
        answer = await run(tools_manager, agent, (
            'echo "url=$AGENSTRA_MCP_URL"; test -n "$AGENSTRA_MCP_TOKEN" && echo has-token; '
            'curl -s -m 10 -H "Authorization: Bearer $AGENSTRA_MCP_TOKEN" '
            '-X POST -d "{}" "$AGENSTRA_MCP_URL"; echo; '
            f'curl -s -m 3 http://127.0.0.1:{tools_manager.port}/api/health; '
            'echo "manager=$?"; '
            f'curl -s -m 3 http://127.0.0.1:{other}/; echo "other=$?"; '
            f'curl -s -m 3 http://127.0.0.1:{MCP_SANDBOX_PORT + 1}/; echo "next=$?"'))
    text = answer["response"]["result"]
    assert f"url={MCP_URL}" in text, text
    assert "has-token" in text and STAND_IN_ANSWER in text, text
    # Refused (curl 7: connection refused): nothing of the host's loopback but the relay.
    for name in ("manager", "other", "next"):
        assert f"{name}=7" in text, text
    assert stand_in.requests == [{"method": "POST", "path": "/jp/agenstra/mcp",
                                  "host": f"127.0.0.1:{MCP_SANDBOX_PORT}",
                                  "authorization": f"Bearer {grant}"}]


async def test_the_tools_come_on_top_of_the_agents_own_loopback_ports(
        sandbox_available, tools_manager, stand_in, projects):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        listener.setblocking(False)
        agent = await create(tools_manager, "ports", grant=token(), project=projects / "proj",
                             config={"loopbackPorts": [port]})
        text = (await run(tools_manager, agent, (
            f'curl -s -m 3 -o /dev/null http://127.0.0.1:{port}/; echo "own=$?"; '
            'curl -s -m 10 -d "{}" "$AGENSTRA_MCP_URL"')))["response"]["result"]
    # Its own port is relayed (connected, then nothing answers: 28 or 52, never 7).
    assert "own=7" not in text and STAND_IN_ANSWER in text, text
    assert len(stand_in.requests) == 1


async def test_only_project_agents_with_a_token_get_the_tools(
        sandbox_available, tools_manager, stand_in, projects, tmp_path):
    (projects / "p2").mkdir()
    no_token = await create(tools_manager, "no-token", project=projects / "p2")
    private = await create(tools_manager, "private", grant=token())  # no project: ignored
    probe = (f'echo "url=[$AGENSTRA_MCP_URL] token=[$AGENSTRA_MCP_TOKEN]"; '
             f'curl -s -m 3 http://127.0.0.1:{MCP_SANDBOX_PORT}/jp/agenstra/mcp; echo "rc=$?"')
    for agent in (no_token, private):
        text = (await run(tools_manager, agent, probe))["response"]["result"]
        assert "url=[] token=[]" in text and "rc=7" in text, (agent["name"], text)
    assert stand_in.requests == []


async def test_a_manager_without_the_socket_hands_nothing_over(
        sandbox_available, start_manager, projects):
    manager = start_manager("plain", env={"AGENSTRA_PROJECT_ROOTS": str(projects)})
    agent = await create(manager, "sh", grant=token(), project=projects / "proj")
    text = (await run(manager, agent, 'echo "url=[$AGENSTRA_MCP_URL]"'))["response"]["result"]
    assert "url=[]" in text, text
    async with manager.http() as http:
        assert (await http.get("/api/health")).json()["notebookTools"] is False
        providers = (await http.get("/api/providers")).json()["providers"]
        assert not any(p["notebookTools"] for p in providers)


async def test_health_and_providers_say_who_gets_the_tools(tools_manager):
    async with tools_manager.http() as http:
        assert (await http.get("/api/health")).json()["notebookTools"] is True
        offered = {p["name"]: p for p in (await http.get("/api/providers")).json()["providers"]}
    assert offered["acp"]["notebookTools"] is True
    assert offered["cli"]["notebookTools"] is True
    assert {p["name"] for p in offered["cli"]["presets"] if p["notebookTools"]} == \
        {"claude", "codex", "gemini"}
    assert offered["echo"]["notebookTools"] is False
    assert offered["shell"]["notebookTools"] is False


async def test_the_tools_port_cannot_be_claimed_as_a_loopback_port(tools_manager, projects):
    async with tools_manager.http() as http:
        response = await http.post("/api/agents", json={
            "name": "claim", "provider": "shell", "project": str(projects / "proj"),
            "config": {"loopbackPorts": [MCP_SANDBOX_PORT]}})
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "INVALID_PAYLOAD"
        assert str(MCP_SANDBOX_PORT) in response.json()["message"]
        for grant in ("short", "x" * 40 + "!"):  # not a token the controller mints
            response = await http.post("/api/agents", json={
                "name": "bad", "provider": "shell", "notebookTools": {"token": grant}})
            assert response.status_code == 400, response.text
            assert response.json()["code"] == "INVALID_PAYLOAD"
        assert (await http.get("/api/agents")).json() == []


async def test_the_token_is_never_shown_logged_or_stored_in_clear(
        sandbox_available, tools_manager, stand_in, projects):
    grant = token()
    created = await create(tools_manager, "sh", grant=grant, project=projects / "proj")
    assert grant not in json.dumps(created)
    await run(tools_manager, created, 'curl -s -m 10 -H "Authorization: Bearer '
              '$AGENSTRA_MCP_TOKEN" -d "{}" "$AGENSTRA_MCP_URL"')
    assert stand_in.requests[-1]["authorization"] == f"Bearer {grant}"  # it was handed over
    async with tools_manager.http() as http:
        views = [(await http.get("/api/agents")).text,
                 (await http.get(f"/api/agents/{created['id']}")).text,
                 (await http.get(f"/api/agents/{created['id']}/messages")).text,
                 (await http.post(f"/api/agents/{created['id']}/restart")).text]
    for view in views:
        assert grant not in view
    assert "notebook" not in json.dumps(json.loads(views[0])[0]["config"])
    tools_manager.stop()
    assert grant not in tools_manager.log() + "".join(tools_manager.stdout_lines)
    assert grant.encode() not in database_bytes(tools_manager.data_dir / "manager.sqlite")


async def test_the_token_survives_a_restart_sealed(
        sandbox_available, start_manager, stand_in, projects):
    env = {"AGENSTRA_MCP_SOCKET": str(stand_in.path), "AGENSTRA_MCP_BASE_URL": BASE_URL,
           "AGENSTRA_PROJECT_ROOTS": str(projects)}
    manager = start_manager("r", env=env)
    grant = token()
    agent = await create(manager, "sh", grant=grant, project=projects / "proj")
    manager.stop()
    again = start_manager("r", env=env)
    await run(again, agent, 'curl -s -m 10 -H "Authorization: Bearer $AGENSTRA_MCP_TOKEN" '
              '-d "{}" "$AGENSTRA_MCP_URL"')
    assert stand_in.requests[-1]["authorization"] == f"Bearer {grant}"


@pytest.mark.docker
async def test_a_docker_agent_reaches_the_tools_through_its_relay(
        docker_available, tools_manager, stand_in, projects):
    project = projects / "dproj"
    project.mkdir()
    subprocess.run(["chown", f"{DOCKER_OWNER}:{DOCKER_OWNER}", str(project)], check=True)
    grant = token()
    agent = await create(tools_manager, "dsh", grant=grant, project=project, runtime="docker",
                         image=TEST_IMAGE)
    try:
        # busybox's wget crashes in this image: HTTP by hand over nc.
        text = (await run(tools_manager, agent, (
            'echo "url=$AGENSTRA_MCP_URL"; printf "POST /jp/agenstra/mcp HTTP/1.0\\r\\n'
            f'Host: 127.0.0.1:{MCP_SANDBOX_PORT}\\r\\nAuthorization: Bearer %s\\r\\n'
            'Content-Length: 2\\r\\n\\r\\n{}" "$AGENSTRA_MCP_TOKEN" | '
            f'nc -w 10 127.0.0.1 {MCP_SANDBOX_PORT}; echo; '
            f'nc -w 3 127.0.0.1 {tools_manager.port} </dev/null; echo "manager=$?"'
        )))["response"]["result"]
    finally:
        async with tools_manager.http() as http:
            await http.delete(f"/api/agents/{agent['id']}")
    assert f"url={MCP_URL}" in text and STAND_IN_ANSWER in text, text
    assert "manager=0" not in text, text
    assert stand_in.requests[-1] == {"method": "POST", "path": "/jp/agenstra/mcp",
                                     "host": f"127.0.0.1:{MCP_SANDBOX_PORT}",
                                     "authorization": f"Bearer {grant}"}


# -- ACP and CLI agents ----------------------------------------------------------------------


def digest(grant: str) -> str:
    return hashlib.sha256(f"Bearer {grant}".encode()).hexdigest()[:16]


async def test_acp_session_new_gets_the_tools_as_an_http_server(
        sandbox_available, tools_manager, projects):
    grant = token()
    agent = await create(tools_manager, "acp", "acp", grant=grant, project=projects / "proj",
                         config={"command": ACP_AGENT_COMMAND})
    text = (await run(tools_manager, agent, "mcp-servers"))["response"]["result"]
    assert text == f"http agenstra {MCP_URL} {digest(grant)}"


async def test_acp_agents_that_take_no_http_servers_get_none(
        sandbox_available, tools_manager, projects):
    (projects / "p2").mkdir()
    no_http = await create(tools_manager, "acp-old", "acp", grant=token(),
                           project=projects / "proj",
                           config={"command": ACP_AGENT_COMMAND,
                                   "env": {"FAKE_ACP_NO_MCP_HTTP": "1"}})
    no_token = await create(tools_manager, "acp-none", "acp", project=projects / "p2",
                            config={"command": ACP_AGENT_COMMAND})
    for agent in (no_http, no_token):
        assert (await run(tools_manager, agent, "mcp-servers"))["response"]["result"] == "none"


async def test_claude_code_gets_an_owner_only_mcp_config(
        sandbox_available, tools_manager, stand_in, projects):
    grant = token()
    agent = await create(tools_manager, "claude", "cli", grant=grant, project=projects / "proj",
                         config={"preset": "claude", "binary": str(FAKE_BIN / "fake-claude-mcp"),
                                 "permissions": "allow", "network": "none"})
    answer = await run(tools_manager, agent, "hello")
    assert answer["response"]["type"] == "text", answer
    report = json.loads(answer["response"]["result"])
    assert report["mode"] == "0o600"
    assert report["type"] == "http" and report["url"] == MCP_URL == report["envUrl"]
    assert report["tokenMatches"] is True and report["tokenOnCommandLine"] is False
    assert report["allowedTools"] == "mcp__agenstra"
    assert report["status"] == 200 and STAND_IN_ANSWER in report["body"]
    assert stand_in.requests[-1]["authorization"] == f"Bearer {grant}"
    # In the agent's private HOME, outside its project.
    home = tools_manager.data_dir / "agents" / agent["id"] / "home"
    config = Path(report["mcpConfig"])
    assert config.is_relative_to(home), (config, home)
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert not any(grant in p.read_text(errors="replace")
                   for p in (projects / "proj").rglob("*") if p.is_file())


class HandingRuntime(Runtime):
    """A runtime that only records the private files a provider writes."""

    name = "handing"
    description = "records private files"

    def __init__(self, tools: NotebookTools, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.notebook_tools = tools
        self.written: dict[str, str] = {}

    def mcp_sockets(self, agent: AgentRecord) -> dict[int, str]:
        return self.notebook_tools.relays(agent)

    async def write_private_file(self, agent: AgentRecord, path: str, content: str) -> str:
        self.written[path] = content
        return f"/home/x/{path}"


async def test_codex_and_gemini_presets_get_their_mcp_config():
    """The argv and files each preset is given (unit level: their CLIs reach no model here)."""
    grant = token()
    runtime = HandingRuntime(NotebookTools("/run/x/mcp.sock", "/jp"))
    calls = {}
    for preset in ("codex", "gemini", "opencode", "claude"):
        agent = AgentRecord(id=preset, name=preset, provider="cli", runtime="process",
                            password_hash="", created_at="", updated_at="",
                            config={"preset": preset, "files": {
                                ".gemini/settings.json": '{"theme": "dark"}'}},
                            project="/p", notebook_token=grant)
        provider = CliProvider(agent=agent, runtime=runtime)
        call = provider.preset.invocation("hi", "s-1", agent.config)
        calls[preset] = (await provider._with_notebook_tools(call)).argv
    assert calls["codex"][:6] == [
        "codex", "exec", "-c", f'mcp_servers.agenstra.url="{MCP_URL}"',
        "-c", 'mcp_servers.agenstra.bearer_token_env_var="AGENSTRA_MCP_TOKEN"']
    assert calls["codex"][6:8] == ["-c", 'mcp_servers.agenstra.default_tools_approval_mode='
                                         '"approve"']
    assert calls["codex"][8:10] == ["resume", "s-1"]
    assert calls["claude"][:5] == ["claude", "--mcp-config", "/home/x/.agenstra/claude-mcp.json",
                                   "--allowedTools", "mcp__agenstra"]
    assert not any(grant in arg for argv in calls.values() for arg in argv)
    settings = json.loads(runtime.written[".gemini/settings.json"])
    assert settings["theme"] == "dark"  # the agent's own settings are kept
    assert settings["mcpServers"]["agenstra"] == {
        "httpUrl": MCP_URL, "headers": {"Authorization": f"Bearer {grant}"}, "trust": True}
    assert json.loads(runtime.written[".agenstra/claude-mcp.json"]) == {"mcpServers": {
        "agenstra": {"type": "http", "url": MCP_URL,
                     "headers": {"Authorization": f"Bearer {grant}"}}}}
    assert calls["opencode"][0] == "opencode" and len(runtime.written) == 2


# -- the tools' asks -------------------------------------------------------------------------


ASK = {"title": "Edit cell 2 of analysis.ipynb", "kind": "edit", "paths": ["analysis.ipynb"],
       "diff": [{"path": "analysis.ipynb", "oldText": "x = 1", "newText": "x = 2"}],
       "toolCallId": "mcp-call-1"}


async def test_a_tool_asks_in_the_running_turn(sandbox_available, tools_manager, projects):
    agent = await create(tools_manager, "asker", grant=token(), project=projects / "proj")
    client = await AgentsClient().connect(tools_manager)
    try:
        await client.login(agent)
        await client.emit(ManagerEvent.CHAT, {"message": "sleep 8", "correlationId": "turn-1"})
        await client.log.wait_for(lambda log: any(
            e["correlationId"] == "turn-1" for e in log.of(ManagerEvent.CHAT_EVENT)))
        async with tools_manager.http() as http:
            asking = asyncio.ensure_future(
                http.post(f"/api/agents/{agent['id']}/permissions", json=ASK, timeout=WAIT))
            requests = await client.log.wait_for(lambda _: permission_requests(client, "turn-1"))
            payload = requests[0]["payload"]
            assert payload["title"] == ASK["title"] and payload["kind"] == "edit"
            assert payload["paths"] == ["analysis.ipynb"] and payload["diff"] == ASK["diff"]
            assert payload["toolCallId"] == "mcp-call-1"
            assert [o["kind"] for o in payload["options"]] == [
                "allow_once", "allow_always", "reject_once", "reject_always"]
            await client.emit(ManagerEvent.PERMISSION_RESPONSE, {
                "requestId": payload["requestId"], "optionId": "allow_once"})
            response = await asking
        assert response.status_code == 200, response.text
        assert response.json() == {"outcome": "allowed"}
        answer = await client.answer_to("turn-1", timeout=30)
    finally:
        await client.close()
    parts = [p for p in answer["response"]["parts"] if p.get("kind") == "permission"]
    assert [(p["requestId"], p["outcome"], p["by"]) for p in parts] == [
        (payload["requestId"], "allowed", "user")]
    resolved = events_of(client, "turn-1", "permissionResolved")
    assert resolved and resolved[0]["payload"]["outcome"] == "allowed"


async def test_a_policy_settles_a_tools_ask_without_the_user(
        sandbox_available, tools_manager, projects):
    agent = await create(tools_manager, "trusting", grant=token(), project=projects / "proj",
                         config={"permissions": "deny"})
    client = await AgentsClient().connect(tools_manager)
    try:
        await client.login(agent)
        await client.emit(ManagerEvent.CHAT, {"message": "sleep 5", "correlationId": "t"})
        await client.log.wait_for(lambda log: any(
            e["correlationId"] == "t" for e in log.of(ManagerEvent.CHAT_EVENT)))
        async with tools_manager.http() as http:
            response = await http.post(f"/api/agents/{agent['id']}/permissions",
                                       json={**ASK, "kind": "execute"})
        assert response.json() == {"outcome": "rejected"}
        assert permission_requests(client) == []  # nobody was asked
    finally:
        await client.close()



RUN = {"title": "Run cell 1 of analysis.ipynb: print(1)", "kind": "execute",
       "paths": ["analysis.ipynb"], "outsideSandbox": True}


async def test_code_for_the_users_kernel_is_asked_whatever_the_policy(
        sandbox_available, tools_manager, projects):
    """The user's kernel is outside every sandbox: `allow` does not let a run pass unasked,
    and the card offers no "always" (so no answer lets later runs pass either)."""
    agent = await create(tools_manager, "trusted", grant=token(), project=projects / "proj",
                         config={"permissions": "allow"})
    client = await running_turn(tools_manager, agent, "run-1", 8)
    try:
        async with tools_manager.http() as http:
            asking = asyncio.ensure_future(
                http.post(f"/api/agents/{agent['id']}/permissions", json=RUN, timeout=WAIT))
            requests = await client.log.wait_for(lambda _: permission_requests(client, "run-1"))
            payload = requests[0]["payload"]
            assert [o["kind"] for o in payload["options"]] == ["allow_once", "reject_once"]
            await client.emit(ManagerEvent.PERMISSION_RESPONSE, {
                "requestId": payload["requestId"], "optionId": "allow_once"})
            assert (await asking).json() == {"outcome": "allowed"}
            # The same agent's sandboxed commands still pass unasked under `allow`.
            sandboxed = await http.post(f"/api/agents/{agent['id']}/permissions",
                                        json={**RUN, "outsideSandbox": False}, timeout=WAIT)
            assert sandboxed.json() == {"outcome": "allowed"}
    finally:
        await client.close()
    assert len(permission_requests(client, "run-1")) == 1
    denied = await create(tools_manager, "denied", grant=token(), project=projects / "proj",
                          config={"permissions": "deny"})
    client = await running_turn(tools_manager, denied, "run-2", 5)
    try:
        async with tools_manager.http() as http:
            response = await http.post(f"/api/agents/{denied['id']}/permissions", json=RUN,
                                       timeout=WAIT)
        assert response.json() == {"outcome": "rejected"}  # deny refuses it unasked
        assert permission_requests(client, "run-2") == []
    finally:
        await client.close()

async def running_turn(manager: ManagerProcess, agent: dict[str, Any],
                       correlation_id: str, seconds: int) -> AgentsClient:
    """A logged-in client whose agent runs a turn (`sleep`) now."""
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    await client.emit(ManagerEvent.CHAT, {"message": f"sleep {seconds}",
                                          "correlationId": correlation_id})
    await client.log.wait_for(lambda log: any(
        e["correlationId"] == correlation_id for e in log.of(ManagerEvent.CHAT_EVENT)))
    return client


async def test_tools_asks_are_bounded_and_end_with_their_turn(
        sandbox_available, tools_manager, projects):
    agent = await create(tools_manager, "flood", grant=token(), project=projects / "proj")
    client = await running_turn(tools_manager, agent, "t", 30)
    try:
        async with tools_manager.http() as http:
            url = f"/api/agents/{agent['id']}/permissions"
            waiting = [asyncio.ensure_future(http.post(url, json={**ASK, "title": f"ask {n}"}))
                       for n in range(16)]
            await client.log.wait_for(lambda _: len(permission_requests(client)) == 16)
            one_more = await http.post(url, json=ASK)  # over MAX_PENDING: rejected at once
            assert one_more.json() == {"outcome": "rejected"}
            await client.emit(ManagerEvent.CANCEL, {"correlationId": "t"})
            outcomes = [(await answer).json() for answer in waiting]
        assert outcomes == [{"outcome": "cancelled"}] * 16
        answer = await client.answer_to("t", timeout=30)
    finally:
        await client.close()
    parts = [p for p in answer["response"]["parts"] if p.get("kind") == "permission"]
    assert sorted(p["outcome"] for p in parts) == ["cancelled"] * 16 + ["rejected"]


async def test_a_caller_that_hangs_up_cancels_its_ask(sandbox_available, tools_manager,
                                                     projects):
    agent = await create(tools_manager, "hangup", grant=token(), project=projects / "proj")
    client = await running_turn(tools_manager, agent, "t", 20)
    try:
        async with tools_manager.http() as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(f"/api/agents/{agent['id']}/permissions", json=ASK,
                                timeout=httpx.Timeout(WAIT, read=2.0))
        resolved = await client.log.wait_for(
            lambda _: events_of(client, "t", "permissionResolved"))
        assert resolved[0]["payload"]["outcome"] == "cancelled"
        assert permission_requests(client)[0]["payload"]["requestId"] == \
            resolved[0]["payload"]["requestId"]
    finally:
        await client.emit(ManagerEvent.CANCEL, {"correlationId": "t"})
        await client.close()


async def test_a_tools_ask_outside_a_turn_is_refused(tools_manager, projects):
    agent = await create(tools_manager, "idle", grant=token(), project=projects / "proj")
    async with tools_manager.http() as http:
        url = f"/api/agents/{agent['id']}/permissions"
        response = await http.post(url, json=ASK)  # never logged in: no channel
        assert response.status_code == 409, response.text
        assert response.json() == {"code": "CONFLICT", "message": "no turn is running"}
        client = await AgentsClient().connect(tools_manager)
        try:
            await client.login(agent)
            await client.chat("true")
            response = await http.post(url, json=ASK)  # a channel, its turn over
            assert response.status_code == 409 and response.json()["code"] == "CONFLICT"
        finally:
            await client.close()
        response = await http.post("/api/agents/no-such-agent/permissions", json=ASK)
        assert response.status_code == 404 and response.json()["code"] == "NOT_FOUND"
        for bad in ({**ASK, "kind": "bogus"}, {"kind": "edit"}, {**ASK, "paths": "a"}):
            response = await http.post(url, json=bad)
            assert response.status_code == 400 and response.json()["code"] == "INVALID_PAYLOAD"
        response = await http.post(url, json=ASK, headers={"Authorization": "Bearer wrong"})
        assert response.status_code == 401


# -- the store -------------------------------------------------------------------------------


async def test_a_version_4_database_gets_a_sealed_token_column(tmp_path):
    box = SecretBox(Fernet.generate_key())
    path = tmp_path / "v4.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        _migrate(conn, migrations(box)[:4])  # the release before the notebook tools
        conn.execute(sql("alter table agents drop column notebook_token"))  # v1 made it
        conn.execute(sql(
            "insert into agents (id, name, provider, runtime, config, description, "
            "password_hash, state, provider_state, created_at, updated_at, project) values "
            "('a', 'old', 'acp', 'process', :config, '', 'h', 'running', '{}', 't', 't', '/p')"),
            {"config": json.dumps(seal_config(box, {"command": ["x"]}))})
    engine.dispose()
    grant = token()
    store = Store(f"sqlite:///{path}", box)
    await store.open()
    try:
        old = await store.get_agent("a")
        assert (old.project, old.notebook_token) == ("/p", None)
        await store.create_agent(AgentRecord(
            id="b", name="new", provider="acp", runtime="process", password_hash="h",
            created_at="t", updated_at="t", project="/p", notebook_token=grant))
        assert (await store.get_agent("b")).notebook_token == grant
        assert grant not in repr(await store.get_agent("b"))
        assert "notebook" not in json.dumps((await store.get_agent("b")).to_wire())
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        version = db.execute("select version from schema_version").fetchone()
        assert version == (len(migrations(box)),)
        sealed = db.execute("select notebook_token from agents where id = 'b'").fetchone()[0]
    assert grant not in sealed and box.decrypt(sealed) == grant
    assert grant.encode() not in database_bytes(path)


# -- real agents against a real MCP server ---------------------------------------------------


class SdkMcpStandIn:
    """The MCP SDK's own server (one tool, `ping`) on a UNIX socket, served by uvicorn in a
    thread: what a real agent CLI must be able to use through its relay. It records the
    Authorization header of every request."""

    def __init__(self, path: Path) -> None:
        import uvicorn
        from mcp.server.mcpserver import MCPServer
        from mcp.server.transport_security import TransportSecuritySettings

        self.authorizations: list[str | None] = []
        self.calls: list[str] = []
        server = MCPServer("agenstra")

        @server.tool()
        def ping(word: str) -> str:
            """Answer pong and the word."""
            self.calls.append(word)
            return f"pong-{word}"

        app = server.streamable_http_app(
            streamable_http_path="/jp/agenstra/mcp", stateless_http=True, json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))

        async def recording(scope, receive, send):
            if scope["type"] == "http":
                headers = dict(scope.get("headers") or [])
                value = headers.get(b"authorization")
                self.authorizations.append(value.decode() if value else None)
            await app(scope, receive, send)

        self._server = uvicorn.Server(uvicorn.Config(recording, uds=str(path),
                                                     log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        for _ in range(200):
            if self._server.started:
                return
            threading.Event().wait(0.05)
        raise RuntimeError("the MCP stand-in did not start")

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(WAIT)


@pytest.fixture
def sdk_mcp(mcp_dir) -> Iterator[SdkMcpStandIn]:
    server = SdkMcpStandIn(mcp_dir / "sdk.sock")
    yield server
    server.close()


def agent_cli_manager(start_manager, sdk_mcp_path: Path, projects: Path) -> ManagerProcess:
    path = f"{CLI_BIN}:{FAKE_BIN}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    return start_manager("cli", env={
        "AGENSTRA_MCP_SOCKET": str(sdk_mcp_path), "AGENSTRA_MCP_BASE_URL": BASE_URL,
        "AGENSTRA_PROJECT_ROOTS": str(projects), "PATH": path})


@pytest.mark.parametrize(("provider", "policy"), [("cli", "allow"), ("cli", "ask"),
                                                  ("acp", "allow"), ("acp", "ask")])
async def test_claude_code_calls_the_notebook_tools(
        sandbox_available, start_manager, sdk_mcp, mcp_dir, projects, vendor, provider, policy):
    """The real Claude Code (the `claude` preset, and claude-agent-acp over ACP) against the
    fake Anthropic API, which makes it call the tool; the tool's answer comes back. Under
    "ask" Claude Code does not ask for the tools itself (`--allowedTools`, and through
    claude-agent-acp session/new `_meta`): they ask the user when they act."""
    need_cli("claude" if provider == "cli" else "claude-agent-acp")
    manager = agent_cli_manager(start_manager, mcp_dir / "sdk.sock", projects)
    grant = token()
    vendor.side_request = lambda body: not any(
        tool.get("name") == "mcp__agenstra__ping" for tool in (body or {}).get("tools", []))
    vendor.script(Reply(tool=ToolUse("mcp__agenstra__ping", {"word": "w1"})),
                  Reply(answer=lambda body: f"the tool said {last_tool_result(body)}"))
    env = {"ANTHROPIC_BASE_URL": vendor.url, "ANTHROPIC_API_KEY": SECRET}
    config: dict[str, Any] = {"env": env, "loopbackPorts": [vendor.port],
                              "permissions": policy}
    if provider == "cli":
        config["preset"] = "claude"
    else:
        config["command"] = [str(CLI_BIN / "claude-agent-acp")]
    agent = await create(manager, "claude", provider, grant=grant, project=projects / "proj",
                         config=config)
    client = await AgentsClient().connect(manager)
    try:
        await client.login(agent)
        answer = await client.chat("ping the tool", timeout=120)
    finally:
        await client.close()
    assert permission_requests(client) == []
    assert answer["response"]["type"] == "text", answer
    assert "the tool said" in answer["response"]["result"], answer
    assert "pong-w1" in answer["response"]["result"], answer
    assert sdk_mcp.calls == ["w1"]
    assert set(sdk_mcp.authorizations) == {f"Bearer {grant}"}


# -- the whole way: Jupyter, its local manager, a sandboxed agent ----------------------------


MCP_CURL = ('curl -s -m 30 -H "Authorization: Bearer $AGENSTRA_MCP_TOKEN" '
            '-H "Content-Type: application/json" '
            '-H "Accept: application/json, text/event-stream" -d {body} "$AGENSTRA_MCP_URL"')


async def test_a_jupyter_agent_reaches_the_servers_tools_and_not_the_server(
        sandbox_available, tmp_path):
    (tmp_path / "proj").mkdir()
    server = start_jupyter(tmp_path)
    try:
        with httpx.Client(base_url=f"{server.full_url}agenstra/api", timeout=60,
                          headers={"Authorization": f"token {server.token}"}) as http:
            created = http.post("/clients/local/agents", json={
                "name": "tools", "provider": "shell", "project": "proj"})
            assert created.status_code == 201, created.text
        agent = created.json()
        initialize = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "sandboxed", "version": "1"}}})
        listing = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        port = server.url.rsplit(":", 1)[1]
        command = (f"{MCP_CURL.format(body=repr(initialize))}; echo; "
                   f"{MCP_CURL.format(body=repr(listing))}; echo; "
                   f'curl -s -m 3 http://127.0.0.1:{port}/jp/api/status; echo "jupyter=$?"; '
                   f'curl -s -m 3 -H "Authorization: Bearer $AGENSTRA_MCP_TOKEN" '
                   f'http://127.0.0.1:{MCP_SANDBOX_PORT}/jp/api/contents; echo "other=$?"')
        frontend = await FrontendClient().connect(server.url, server.token, server.base_url)
        try:
            assert await frontend.set_client("local") == {"ok": True}
            answer = await frontend.chat(agent["id"], command, "e2e")
        finally:
            await frontend.close()
    finally:
        stop_jupyter(server)
    first, listed, rest = answer["response"]["result"].split("\n", 2)
    assert json.loads(first)["result"]["serverInfo"]["name"] == "agenstra", first
    names = {tool["name"] for tool in json.loads(listed)["result"]["tools"]}
    assert {"list_files", "read_notebook", "insert_cell", "run_cells"} <= names, listed
    # The Jupyter server itself is out of reach (refused), and through the relay only the
    # tools answer: Jupyter's other routes are not on the MCP-only socket.
    assert rest.startswith("jupyter=7\n"), rest
    assert "404: Not Found" in rest and "other=0" in rest, rest


def tool_named(vendor, part: str) -> str | None:
    """The name a CLI gave the model for the tool whose name holds `part` (its MCP naming)."""
    for request in vendor.requests:
        for name in re.findall(r'"name":\s*"([^"]+)"', json.dumps(request.body)):
            if part in name:
                return name
    return None


@pytest.mark.parametrize("policy", ["allow", "ask"])
@pytest.mark.parametrize("preset", ["codex", "gemini"])
async def test_codex_and_gemini_call_the_notebook_tools(
        sandbox_available, start_manager, sdk_mcp, mcp_dir, projects, vendor, preset, policy):
    """The real Codex and Gemini CLIs against the fake model APIs: the tool is listed to the
    model (so the CLI connected, with the token), and a call of it is answered, under "ask"
    too (neither CLI can ask: the tools ask the user themselves)."""
    need_cli(preset)
    manager = agent_cli_manager(start_manager, mcp_dir / "sdk.sock", projects)
    config: dict[str, Any] = {"preset": preset, "loopbackPorts": [vendor.port],
                              "permissions": policy}
    if preset == "codex":
        config.update(env={"MOCK_KEY": SECRET}, files={".codex/config.toml": (
            'model = "gpt-test"\nmodel_provider = "mock"\n[model_providers.mock]\n'
            f'name = "mock"\nbase_url = "{vendor.url}/v1"\nenv_key = "MOCK_KEY"\n'
            'wire_api = "responses"\nsupports_websockets = false\n')})
    else:
        config.update(model="gemini-2.5-flash",
                      env={"GEMINI_API_KEY": SECRET, "GOOGLE_GEMINI_BASE_URL": vendor.url},
                      files={".gemini/settings.json": json.dumps(
                          {"security": {"auth": {"selectedType": "gemini-api-key"}}})})
    grant = token()
    agent = await create(manager, preset, "cli", grant=grant, project=projects / "proj",
                         config=config)
    client = await AgentsClient().connect(manager)
    try:
        await client.login(agent)
        first = await client.chat("hello", timeout=120)
        assert first["response"]["type"] == "text", first
        name = tool_named(vendor, "ping")
        assert name is not None, [r.path for r in vendor.requests]
        # Codex lists MCP tools in a namespace of their server; Gemini names them flat.
        namespace = "mcp__agenstra" if preset == "codex" else None
        assert preset == "codex" or name == "mcp_agenstra_ping"
        vendor.script(Reply(tool=ToolUse(name, {"word": "w2"}, namespace=namespace)),
                      Reply(text="tool used"))
        second = await client.chat("ping the tool", timeout=120)
    finally:
        await client.close()
    assert second["response"]["type"] == "text", second
    assert sdk_mcp.calls == ["w2"]
    assert set(sdk_mcp.authorizations) == {f"Bearer {grant}"}
    if preset == "gemini":  # its settings (config.files' first) now hold the token: 0600
        settings = manager.data_dir / "agents" / agent["id"] / "home" / ".gemini" / \
            "settings.json"
        assert stat.S_IMODE(settings.stat().st_mode) == 0o600

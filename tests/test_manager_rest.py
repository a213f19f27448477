"""The manager's REST API over real HTTP."""

from __future__ import annotations

import json
import sqlite3

import pytest

from agenstra_jupyter.manager.rest import MAX_PAGE_BYTES
from agenstra_jupyter.protocol import ErrorCode

from .helpers import AgentsClient


async def test_every_route_needs_the_api_key(manager):
    routes = [("GET", "/api/health"), ("GET", "/api/providers"), ("GET", "/api/agents"),
              ("POST", "/api/agents"), ("GET", "/api/agents/x"), ("DELETE", "/api/agents/x"),
              ("POST", "/api/agents/x/start"), ("GET", "/api/agents/x/messages"),
              ("GET", "/api/nowhere")]
    for key in ["", "wrong"]:
        async with manager.http(api_key=key) as http:
            for method, path in routes:
                response = await http.request(method, path)
                assert response.status_code == 401, (method, path)
                assert response.json() == {"message": "Unauthorized",
                                           "code": ErrorCode.UNAUTHORIZED}


async def test_create_returns_the_password_once_and_stores_only_a_hash(manager):
    created = await manager.create_agent(name="a1", provider="echo", description="demo",
                                         config={"env": {"OPENAI_API_KEY": "sk-secret"}})
    password = created.pop("password")
    assert len(password) >= 16
    assert created["name"] == "a1" and created["runtime"] == "process"
    assert created["state"] == "running" and created["description"] == "demo"
    assert created["config"] == {"env": {"OPENAI_API_KEY": "********"}}
    async with manager.http() as http:
        fetched = (await http.get(f"/api/agents/{created['id']}")).json()
        listed = (await http.get("/api/agents")).json()
    assert fetched == created and listed == [created]
    assert "password" not in fetched and "password_hash" not in fetched
    with sqlite3.connect(manager.data_dir / "manager.sqlite") as db:
        (stored,) = db.execute("select password_hash from agents").fetchone()
        dump = "\n".join(db.iterdump())
    assert stored.startswith("$2b$") and password not in dump


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "name"),
        ({"name": "bad name", "provider": "echo"}, "name"),
        ({"name": "-x", "provider": "echo"}, "name"),
        ({"name": "x" * 65, "provider": "echo"}, "name"),
        ({"name": "ok", "provider": "gpt-9"}, "Unknown provider"),
        ({"name": "ok", "provider": "echo", "runtime": "vm"}, "Unknown runtime"),
        ({"name": "ok", "provider": "echo", "config": []}, "config"),
        ({"name": "ok", "provider": "echo", "config": {"delay": "soon"}}, "delay"),
        ({"name": "ok", "provider": "echo", "config": {"x": "y" * 20000}}, "config"),
        ({"name": 7, "provider": "echo"}, "name"),
        ([1, 2], "object"),
    ],
)
async def test_create_rejects_bad_input_with_400(manager, body, message):
    async with manager.http() as http:
        response = await http.post("/api/agents", json=body)
        assert response.status_code == 400
        assert message in response.json()["message"]
        assert (await http.get("/api/agents")).json() == []


async def test_bad_json_duplicate_names_and_unknown_ids(manager):
    await manager.create_agent(name="dup", provider="echo")
    async with manager.http() as http:
        bad = await http.post("/api/agents", content=b"{nope")
        assert bad.status_code == 400 and bad.json()["message"] == "Body must be JSON"
        dup = await http.post("/api/agents", json={"name": "dup", "provider": "shell"})
        assert dup.status_code == 409 and "exists" in dup.json()["message"]
        assert dup.json()["code"] == "CONFLICT"
        missing = "00000000-0000-0000-0000-000000000000"
        for method, path in [("GET", ""), ("DELETE", ""), ("POST", "/start"),
                             ("POST", "/stop"), ("POST", "/restart"), ("GET", "/messages")]:
            response = await http.request(method, f"/api/agents/{missing}{path}")
            assert response.status_code == 404, (method, path)
            assert response.json() == {"message": "No such agent", "code": "NOT_FOUND"}
        assert (await http.get("/api/elsewhere")).json()["code"] == "NOT_FOUND"
        assert len((await http.get("/api/agents")).json()) == 1


async def test_start_stop_restart_and_delete(manager):
    agent = await manager.create_agent(name="life", provider="shell")
    async with manager.http() as http:
        base = f"/api/agents/{agent['id']}"
        assert (await http.post(f"{base}/stop")).json()["state"] == "stopped"
        assert (await http.post(f"{base}/start")).json()["state"] == "running"
        assert (await http.post(f"{base}/restart")).json()["state"] == "running"
        client = await AgentsClient().connect(manager)
        await client.login(agent)
        await client.chat("echo data > kept.txt")
        workspace = manager.data_dir / "workspaces" / agent["id"]
        assert (workspace / "kept.txt").read_text() == "data\n"
        assert (await http.delete(base)).status_code == 204
        assert (await http.get(base)).status_code == 404
        assert not workspace.exists()
        assert (await http.get(f"{base}/messages")).status_code == 404
        await client.close()
    with sqlite3.connect(manager.data_dir / "manager.sqlite") as db:
        assert db.execute("select count(*) from messages").fetchone() == (0,)


async def test_a_stopped_agent_starts_again_when_spoken_to(manager):
    agent = await manager.create_agent(name="lazy", provider="shell")
    async with manager.http() as http:
        await http.post(f"/api/agents/{agent['id']}/stop")
        client = await AgentsClient().connect(manager)
        await client.login(agent)
        assert (await client.chat("echo up"))["response"]["result"] == "up\n[exit code 0]"
        assert (await http.get(f"/api/agents/{agent['id']}")).json()["state"] == "running"
        await client.close()


async def test_messages_page_with_after_and_limit(manager):
    agent = await manager.create_agent(name="pages", provider="echo")
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    for n in range(3):
        await client.chat(f"m{n}", stream=False)
    await client.close()
    async with manager.http() as http:
        url = f"/api/agents/{agent['id']}/messages"
        everything = (await http.get(url)).json()
        assert [m["seq"] for m in everything] == [1, 2, 3, 4, 5, 6]
        assert everything == client.log.messages()
        page = (await http.get(url, params={"after": 2, "limit": 3})).json()
        assert [m["seq"] for m in page] == [3, 4, 5]
        for bad in [{"after": "-1"}, {"limit": "x"}, {"after": "1.5"}]:
            response = await http.get(url, params=bad)
            assert response.status_code == 400 and "an integer from 0" in response.json()["message"]


async def test_health_and_providers(manager):
    async with manager.http() as http:
        health = (await http.get("/api/health")).json()
        assert health["status"] == "ok" and health["agents"] == 0
        offer = (await http.get("/api/providers")).json()
    providers = {p["name"]: p for p in offer["providers"]}
    assert {"echo", "shell"} <= set(providers)
    assert "streaming" in providers["echo"]["capabilities"]
    for info in providers.values():  # the create form's starting point: a valid config
        assert isinstance(info["example"], dict)
    runtimes = {r["name"]: r for r in offer["runtimes"]}
    assert runtimes["process"]["default"] is True and runtimes["process"]["available"] is True
    assert runtimes["docker"]["default"] is False


def test_every_providers_example_config_is_valid():
    from agenstra_jupyter.manager import providers

    for cls in (providers.EchoProvider, providers.ShellProvider, providers.CliProvider,
                providers.AcpProvider, providers.OpenAIProvider, providers.ReplayProvider):
        cls.validate_config(dict(cls.example))
        assert cls.info()["example"] == cls.example
    assert providers.OpenAIProvider.example["apiKeyEnv"] == "OPENAI_API_KEY"


async def test_an_unanswering_docker_daemon_never_holds_the_manager_up(start_manager):
    import asyncio
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts, never answers: the SDK waits for its version reply
    manager = start_manager(env={"AGENSTRA_DOCKER_HOST":
                                 f"tcp://127.0.0.1:{silent.getsockname()[1]}"})
    async with manager.http() as http:
        providers = asyncio.ensure_future(http.get("/api/providers", timeout=120))
        await asyncio.sleep(0.5)  # the catalogue is now waiting on the daemon
        health = await http.get("/api/health", timeout=10)  # the loop still answers
        assert health.status_code == 200
        assert not providers.done()
        providers.cancel()
    silent.close()


@pytest.mark.parametrize("value", [str(2**63), "1" * 23, "\u00b2", "\u0663", "-1", "1e3", ""])
async def test_page_parameters_out_of_range_are_refused(manager, value):
    agent = await manager.create_agent(name="paged", provider="echo")
    async with manager.http() as http:
        for name in ("after", "limit"):
            response = await http.get(f"/api/agents/{agent['id']}/messages",
                                      params={name: value})
            assert response.status_code == 400, (name, value, response.text)
            assert response.json()["code"] == "INVALID_PAYLOAD"
        largest = await http.get(f"/api/agents/{agent['id']}/messages",
                                 params={"after": str(2**63 - 1)})
        assert largest.status_code == 200 and largest.json() == []


async def test_a_page_of_history_is_bounded_in_bytes(start_manager):
    # Eight turns of a 4 MB message (and its 1 MiB answer): 40 MB, over one page's budget.
    manager = start_manager(env={"AGENSTRA_MAX_MESSAGE_BYTES": str(5 * 10**6)})
    agent = await manager.create_agent(name="big", provider="echo")
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    for n in range(8):
        await client.chat(str(n) * 4_000_000, correlationId=f"big-{n}")
    await client.close()
    async with manager.http() as http:
        url = f"/api/agents/{agent['id']}/messages"
        first = (await http.get(url)).json()
        assert 1 <= len(first) < 16
        assert len(json.dumps(first)) <= MAX_PAGE_BYTES
        rest = (await http.get(url, params={"after": first[-1]["seq"]})).json()
    assert [m["seq"] for m in first + rest] == list(range(1, 17))  # nothing lost

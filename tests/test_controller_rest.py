"""The controller's REST API under {base_url}agenstra/api/, with Jupyter's auth."""

from __future__ import annotations

import sqlite3

import pytest

from agenstra_jupyter.protocol import ErrorCode, ManagerEvent

from .helpers import AgentsClient, login_cookie


async def test_auth_is_required(jupyter):
    for token in [None, "wrong"]:
        async with jupyter.http(token=token) as http:
            for method, path in [("GET", "/clients"), ("POST", "/clients"),
                                 ("GET", "/clients/local/agents"),
                                 ("DELETE", "/clients/local")]:
                response = await http.request(method, path)
                assert response.status_code == 403, (method, path)
                assert response.json()["code"] == ErrorCode.UNAUTHORIZED


async def test_cookie_posts_need_xsrf(jupyter):
    cookie = await login_cookie(jupyter)
    async with jupyter.http(token=None, headers={"Cookie": cookie}) as http:
        assert (await http.get("/clients")).status_code == 200
        refused = await http.post("/clients/local/agents", json={"name": "x", "provider": "echo"})
        assert refused.status_code == 403


async def test_local_client_is_registered_and_cannot_be_removed(jupyter):
    async with jupyter.http() as http:
        (local,) = (await http.get("/clients")).json()
        assert local["id"] == "local" and local["local"] is True
        assert "apiKey" not in local and "api_key" not in local
        assert (await http.get("/clients/local")).json() == local
        response = await http.delete("/clients/local")
        assert response.status_code == 400 and "cannot be removed" in response.json()["message"]
        unknown = await http.get("/clients/nope")
        assert unknown.status_code == 404 and unknown.json()["code"] == "UNKNOWN_CLIENT"


async def test_register_a_remote_manager(jupyter, start_manager):
    remote = start_manager("remote")
    async with jupyter.http() as http:
        bad = [
            ({"name": "r", "endpoint": "ftp://h", "apiKey": "k"}, "http(s)"),
            ({"name": "r", "endpoint": "http://user:pw@127.0.0.1:1", "apiKey": "k"},
             "credentials"),
            ({"name": "r", "endpoint": "http://127.0.0.1:1?x=1", "apiKey": "k"}, "query"),
            ({"name": "r", "endpoint": remote.url}, "apiKey"),
            ({"name": "r r", "endpoint": remote.url, "apiKey": "k"}, "name"),
            ({"name": "r", "endpoint": remote.url, "apiKey": "wrong"}, "rejected this API key"),
        ]
        for body, message in bad:
            response = await http.post("/clients", json=body)
            assert response.status_code == 400, body
            assert message in response.json()["message"], response.json()
        unreachable = await http.post(
            "/clients", json={"name": "gone", "endpoint": "http://127.0.0.1:9", "apiKey": "k"}
        )
        assert unreachable.status_code == 502
        assert unreachable.json()["code"] == ErrorCode.REMOTE_UNAVAILABLE

        created = await http.post(
            "/clients", json={"name": "remote", "endpoint": remote.url, "apiKey": remote.api_key}
        )
        assert created.status_code == 201
        client = created.json()
        assert client["endpoint"] == remote.url and client["local"] is False
        again = await http.post(
            "/clients", json={"name": "remote", "endpoint": remote.url, "apiKey": remote.api_key}
        )
        assert again.status_code == 409 and again.json()["code"] == "CONFLICT"

        agent = (await http.post(f"/clients/{client['id']}/agents",
                                 json={"name": "far", "provider": "echo"})).json()
        assert "password" not in agent and agent["credentials"] is True
        frontend = await jupyter.frontend(client["id"])
        answer = await frontend.chat(agent["id"], "over there", "c1")
        assert answer["response"]["result"] == "Echo: over there"
        await frontend.close()

        assert (await http.delete(f"/clients/{client['id']}")).status_code == 204
        assert [c["id"] for c in (await http.get("/clients")).json()] == ["local"]
    stored = (jupyter.controller.local.data_dir.parent / "controller.sqlite").read_bytes()
    assert remote.api_key.encode() not in stored


async def test_agents_through_the_controller(jupyter):
    async with jupyter.http() as http:
        base = "/clients/local/agents"
        bad = await http.post(base, json={"name": "bad name", "provider": "echo"})
        assert bad.status_code == 400
        unknown = await http.post(base, json={"name": "x", "provider": "nope"})
        assert unknown.status_code == 400 and "Unknown provider" in unknown.json()["message"]
        created = await http.post(base, json={"name": "helper", "provider": "echo"})
        assert created.status_code == 201
        agent = created.json()
        assert "password" not in agent
        dup = await http.post(base, json={"name": "helper", "provider": "echo"})
        assert dup.status_code == 409 and dup.json()["code"] == "CONFLICT"  # the manager's
        url = f"{base}/{agent['id']}"
        assert (await http.get(url)).json()["name"] == "helper"
        assert (await http.post(f"{url}/stop")).json()["state"] == "stopped"
        assert (await http.post(f"{url}/start")).json()["state"] == "running"
        assert (await http.post(f"{url}/restart")).json()["state"] == "running"

        frontend = await jupyter.frontend()
        for n in range(2):
            await frontend.chat(agent["id"], f"m{n}", f"c{n}")
        await frontend.close()
        page = (await http.get(f"{url}/messages", params={"after": 1, "limit": 2})).json()
        assert [m["seq"] for m in page] == [2, 3]
        assert (await http.get(f"{url}/messages", params={"after": "-1"})).status_code == 400

        # The manager's codes reach the frontend unchanged.
        missing = await http.get(f"{base}/00000000-0000-0000-0000-000000000000")
        assert missing.status_code == 404
        assert missing.json() == {"message": "No such agent", "code": "NOT_FOUND"}
        assert (await http.delete(url)).status_code == 204
        assert (await http.get(url)).status_code == 404
    assert agent["id"] not in await jupyter.controller.registry.known_agents("local")


async def test_a_password_is_useless_after_its_agent_is_deleted(jupyter):
    async with jupyter.http() as http:
        agent = (await http.post("/clients/local/agents",
                                 json={"name": "doomed", "provider": "echo"})).json()
    password = await jupyter.controller.registry.password("local", agent["id"])
    async with jupyter.http() as http:
        await http.delete(f"/clients/local/agents/{agent['id']}")
    local = jupyter.controller.local
    direct = AgentsClient()
    await direct.sio.connect(local.endpoint, namespaces=["/agents"], transports=["websocket"],
                             auth={"apiKey": local.api_key})
    await direct.emit(ManagerEvent.LOGIN, {"agentId": agent["id"], "password": password})
    assert await direct.log.wait_count(ManagerEvent.LOGIN_ERROR, 1)
    await direct.close()


@pytest.mark.parametrize("controller_config", [{"default_agent_provider": "echo",
                                                "default_agent_name": "helper"}])
async def test_default_agent_is_configurable(jupyter):
    async with jupyter.http() as http:
        (agent,) = (await http.get("/clients/local/agents")).json()
    assert (agent["name"], agent["provider"]) == ("helper", "echo")


async def test_registry_secrets_are_encrypted_with_an_owner_only_key(jupyter):
    await jupyter.default_agent()
    data_dir = jupyter.controller.local.data_dir.parent
    key_file = data_dir / "controller.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(data_dir / "controller.sqlite") as db:
        (token,) = db.execute("select password from agent_credentials").fetchone()
        (api_key,) = db.execute("select api_key from clients").fetchone()
    assert token.startswith("gAAAA") and api_key.startswith("gAAAA")  # Fernet tokens
    assert jupyter.controller.local.api_key not in api_key


async def test_a_failed_delete_keeps_the_agents_password(jupyter, start_manager):
    remote = start_manager("flaky")
    client, agent = await jupyter.remote_agent(remote, "kept")
    async with jupyter.http() as http:
        registry = jupyter.controller.registry
        password = await registry.password(client["id"], agent["id"])
        assert password
        remote.kill()  # the manager is gone: the delete cannot have happened
        failed = await http.delete(f"/clients/{client['id']}/agents/{agent['id']}")
        assert failed.status_code == 502
        assert await registry.password(client["id"], agent["id"]) == password
        unknown = await http.delete(f"/clients/local/agents/{'0' * 36}")
        assert unknown.status_code in (204, 404)  # never there: nothing to keep


async def test_controller_page_parameters_out_of_range_are_refused(jupyter):
    agent = await jupyter.default_agent()
    async with jupyter.http() as http:
        for value in (str(2**63), "1" * 23, "\u00b2", "\u0663"):
            response = await http.get(f"/clients/local/agents/{agent['id']}/messages",
                                      params={"after": value})
            assert response.status_code == 400, (value, response.text)
            assert response.json()["code"] == "INVALID_PAYLOAD"

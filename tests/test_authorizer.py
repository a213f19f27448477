"""Jupyter's authorizer decides who may read, manage and chat, over REST and the socket."""

from __future__ import annotations

import pytest
import socketio
from jupyter_server.auth import Authorizer
from traitlets import Dict

from agenstra_jupyter.protocol import UNAUTHORIZED_MESSAGE, ControllerEvent, ErrorCode, ManagerEvent

from .helpers import FrontendClient

ROLE = "X-Test-Role"
DENIED = {"ok": False, "error": {"code": ErrorCode.UNAUTHORIZED, "message": UNAUTHORIZED_MESSAGE}}


class RoleAuthorizer(Authorizer):
    """Grants actions on "agenstra" by a request header (a stand-in for a user's groups).

    Async, as authorizers may be: a check that forgets to await would let everyone through.
    """

    grants = Dict(default_value={"admin": ["read", "write", "execute"], "reader": ["read"],
                                 "nobody": []})

    async def is_authorized(self, handler, user, action: str, resource: str) -> bool:
        if resource != "agenstra":
            return True
        return action in self.grants.get(handler.request.headers.get(ROLE, "admin"), [])


@pytest.fixture
def jp_server_config(jp_server_config):
    jp_server_config["ServerApp"]["authorizer_class"] = RoleAuthorizer
    return jp_server_config


def as_role(role: str) -> dict[str, str]:
    return {ROLE: role}


async def connect(jupyter, role: str, client: FrontendClient | None = None) -> FrontendClient:
    return await (client or FrontendClient()).connect(jupyter.url, jupyter.token,
                                                      jupyter.base_url, headers=as_role(role))


async def history(jupyter, agent_id: str) -> list[dict]:
    async with jupyter.http() as http:
        response = await http.get(f"/clients/local/agents/{agent_id}/messages")
        assert response.status_code == 200
        return response.json()


def assert_refused(response) -> None:
    assert response.status_code == 403, (response.request.method, response.request.url)
    assert response.json()["code"] == ErrorCode.UNAUTHORIZED
    assert response.json()["message"] == UNAUTHORIZED_MESSAGE  # one message, whatever was asked


async def test_a_reader_reads_but_cannot_manage_or_chat(jupyter):
    agent = await jupyter.default_agent()
    admin = await jupyter.frontend()
    await admin.chat(agent["id"], "echo one", "c1")

    async with jupyter.http(headers=as_role("reader")) as http:
        assert [c["id"] for c in (await http.get("/clients")).json()] == ["local"]
        assert (await http.get("/clients/local")).status_code == 200
        agents = (await http.get("/clients/local/agents")).json()
        assert agent["id"] in [a["id"] for a in agents]
        assert (await http.get(f"/clients/local/agents/{agent['id']}")).status_code == 200
        messages = await http.get(f"/clients/local/agents/{agent['id']}/messages")
        assert [m["text"] for m in messages.json() if m["from"] == "user"] == ["echo one"]
        for method, path, body in [
            ("POST", "/clients/local/agents", {"name": "sneaky", "provider": "echo"}),
            ("DELETE", f"/clients/local/agents/{agent['id']}", None),
            ("POST", f"/clients/local/agents/{agent['id']}/restart", None),
            ("POST", "/clients", {"name": "r", "endpoint": "http://127.0.0.1:9", "apiKey": "k"}),
            ("DELETE", "/clients/local", None),
        ]:
            assert_refused(await http.request(method, path, json=body))
    async with jupyter.http() as http:
        after = (await http.get("/clients/local/agents")).json()
    assert [a["id"] for a in after] == [a["id"] for a in agents]

    reader = await connect(jupyter, "reader")
    assert await reader.set_client() == {"ok": True}
    assert await reader.forward(ManagerEvent.LOGIN, agent["id"]) == {"ok": True}
    await reader.log.wait_for(lambda _: len(reader.messages(agent["id"])) == 2)
    for event, payload in [
        (ManagerEvent.CHAT, {"message": "echo denied", "correlationId": "denied"}),
        (ManagerEvent.CANCEL, {}),
        ("permissionResponse", {"requestId": "r1", "optionId": "allow"}),
    ]:
        assert await reader.forward(event, agent["id"], payload) == DENIED, event
    assert reader.log.of(ControllerEvent.ERROR) == [
        {"message": UNAUTHORIZED_MESSAGE, "code": ErrorCode.UNAUTHORIZED}
    ] * 3
    # Turns run in arrival order: had the denied chat been forwarded, it would be stored first.
    await admin.chat(agent["id"], "echo two", "c2")
    stored = await history(jupyter, agent["id"])
    assert [m["text"] for m in stored if m["from"] == "user"] == ["echo one", "echo two"]
    assert "denied" not in [m["correlationId"] for m in reader.messages(agent["id"])]
    assert await reader.forward(ManagerEvent.LOGOUT, agent["id"], {}) == {"ok": True}
    await reader.close()
    await admin.close()


async def test_a_user_without_read_is_refused(jupyter):
    agent = await jupyter.default_agent()
    client = FrontendClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect(jupyter, "nobody", client)
    assert client.log.of("connect_error") == [{"message": UNAUTHORIZED_MESSAGE}]
    assert not jupyter.controller.gateway.sessions
    async with jupyter.http(headers=as_role("nobody")) as http:
        for method, path in [("GET", "/clients"), ("GET", "/clients/local"),
                             ("GET", "/clients/local/agents"),
                             ("GET", f"/clients/local/agents/{agent['id']}/messages"),
                             ("POST", "/clients/local/agents")]:
            assert_refused(await http.request(method, path, json={}))


async def test_an_admin_works_and_every_event_asks_the_authorizer_anew(jupyter):
    agent = await jupyter.default_agent()
    async with jupyter.http(headers=as_role("admin")) as http:
        created = await http.post("/clients/local/agents",
                                  json={"name": "extra", "provider": "echo"})
        assert created.status_code == 201, created.text
        extra = f"/clients/local/agents/{created.json()['id']}"
        restarted = await http.post(f"{extra}/restart")
        assert restarted.status_code == 200, restarted.text
        deleted = await http.delete(extra)
        assert deleted.status_code == 204
    admin = await connect(jupyter, "admin")
    assert await admin.set_client() == {"ok": True}
    await admin.chat(agent["id"], "echo allowed", "c1")
    authorizer = jupyter.app.authorizer
    authorizer.grants = {**authorizer.grants, "admin": ["read"]}  # revoked while connected
    request = {"message": "echo revoked", "correlationId": "c2"}
    assert await admin.forward(ManagerEvent.CHAT, agent["id"], request) == DENIED
    authorizer.grants = {**authorizer.grants, "admin": []}
    assert await admin.set_client() == DENIED
    assert await admin.forward(ManagerEvent.LOGIN, agent["id"]) == DENIED
    authorizer.grants = {**authorizer.grants, "admin": ["read", "execute"]}
    assert await admin.set_client() == {"ok": True}
    await admin.chat(agent["id"], "echo again", "c3")
    stored = await history(jupyter, agent["id"])
    assert [m["text"] for m in stored if m["from"] == "user"] == ["echo allowed", "echo again"]
    await admin.close()

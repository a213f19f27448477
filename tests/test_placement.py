"""Many managers (issue #18 item 3): placement, health and capacity, a host going down.

Real managers (`python -m agenstra_jupyter.manager.app`) registered with the real
controller of a real Jupyter server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from agenstra_jupyter.config import apply_env
from agenstra_jupyter.controller.app import ControllerApp
from agenstra_jupyter.controller.placement import (
    Candidate,
    Health,
    LeastAgents,
    MostRoom,
)
from agenstra_jupyter.controller.registry import ClientRecord
from agenstra_jupyter.protocol import MANAGER_SERVICE, ControllerEvent, ErrorCode, ManagerEvent

from .helpers import WAIT

HEALTH_TIMEOUT = 1.0


@pytest.fixture
def controller_config() -> dict:
    return {"health_timeout": HEALTH_TIMEOUT, "health_cache_seconds": 0.2}


async def register(http, manager, **extra) -> dict:
    response = await http.post("/clients", json={
        "name": manager.data_dir.name, "endpoint": manager.url, "apiKey": manager.api_key,
        **extra})
    assert response.status_code == 201, response.text
    return response.json()


async def clients_by_name(http) -> dict[str, dict]:
    response = await http.get("/clients")
    assert response.status_code == 200, response.text
    return {client["name"]: client for client in response.json()}


async def until(check, timeout: float = WAIT):
    """Poll `check` (async, returns a truthy value when done) until it holds."""
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)
    return found


def has_room(client: dict) -> bool:
    health = client["health"]
    return health["state"] == "up" and (
        health["capacity"] is None or health["agents"] < health["capacity"])


async def test_new_agents_go_to_the_least_loaded_manager_up_with_room_and_label(
        jupyter, start_manager):
    alpha, beta = start_manager("alpha"), start_manager("beta")
    async with jupyter.http() as http:
        a = await register(http, alpha, labels=["gpu"], capacity=2)
        assert a["labels"] == ["gpu"] and a["capacity"] == 2
        b = await register(http, beta, labels=["cpu", "big"])
        listed = await clients_by_name(http)
        assert listed["alpha"]["health"]["state"] == "up"
        assert listed["alpha"]["health"]["agents"] == 0
        assert listed["alpha"]["health"]["capacity"] == 2
        assert listed["beta"]["health"]["capacity"] is None
        assert listed["beta"]["labels"] == ["cpu", "big"]
        assert listed["local"]["health"]["agents"] >= 1  # the default agent

        # Automatic: every agent goes to a manager that had the fewest agents of those
        # up and with room, at that moment.
        for n in range(5):
            before = {c["id"]: c["health"]["agents"]
                      for c in (await clients_by_name(http)).values() if has_room(c)}
            response = await http.post("/agents", json={"name": f"auto{n}", "provider": "echo"})
            assert response.status_code == 201, response.text
            placed = response.json()
            assert placed["clientId"] in before
            assert before[placed["clientId"]] == min(before.values()), (before, placed)
            assert "password" not in placed and placed["credentials"] is True
        assert (await clients_by_name(http))["alpha"]["health"]["agents"] == 2  # full now

        # By label: only managers carrying it; a full one takes none, whatever the route.
        response = await http.post("/agents", json={"name": "g", "provider": "echo",
                                                    "label": "big"})
        assert response.status_code == 201 and response.json()["clientId"] == b["id"]
        for body in ({"label": "gpu"}, {"clientId": a["id"]}):
            response = await http.post("/agents", json={"name": "g2", "provider": "echo",
                                                        **body})
            assert response.status_code == 503, response.text
            assert response.json()["code"] == ErrorCode.REMOTE_UNAVAILABLE
            assert "full" in response.json()["message"]
        response = await http.post(f"/clients/{a['id']}/agents",
                                   json={"name": "g3", "provider": "echo"})
        assert response.status_code == 503 and "full" in response.json()["message"]
        response = await http.post("/agents", json={"name": "n", "provider": "echo",
                                                    "label": "nope"})
        assert response.status_code == 400
        assert response.json()["code"] == ErrorCode.INVALID_PAYLOAD
        response = await http.post("/agents", json={"name": "n", "provider": "echo",
                                                    "label": "gpu", "clientId": a["id"]})
        assert response.status_code == 400
        for bad in ({"labels": ["no spaces"]}, {"capacity": 0}, {"labels": "gpu"}):
            response = await http.post("/clients", json={
                "name": "bad", "endpoint": beta.url, "apiKey": beta.api_key, **bad})
            assert response.status_code == 400, (bad, response.text)

        # The local manager gets labels and a capacity by PATCH.
        response = await http.patch("/clients/local", json={"labels": ["here"], "capacity": 1})
        assert response.status_code == 200, response.text
        assert response.json()["labels"] == ["here"] and response.json()["capacity"] == 1
        local_agents = response.json()["health"]["agents"]
        response = await http.post("/agents", json={"name": "h", "provider": "echo",
                                                    "label": "here"})
        assert (response.status_code == 503) == (local_agents >= 1)
        response = await http.patch("/clients/local", json={"capacity": None})
        assert response.json()["capacity"] is None and response.json()["labels"] == ["here"]
        response = await http.post("/agents", json={"name": "h2", "provider": "echo",
                                                    "label": "here"})
        assert response.status_code == 201 and response.json()["clientId"] == "local"

        # One listing of every manager's agents, each saying where it is.
        agents = (await http.get("/agents")).json()
        where = {agent["name"]: agent["clientId"] for agent in agents}
        assert where["g"] == b["id"] and where["h2"] == "local"
        assert all(agent["available"] for agent in agents)
        texts = [(await http.get(path)).text for path in ("/clients", "/agents")]
        for text in texts:
            assert alpha.api_key not in text and beta.api_key not in text


async def test_a_killed_manager_says_host_unavailable_while_the_other_keeps_chatting(
        jupyter, start_manager):
    alpha, beta = start_manager("alpha"), start_manager("beta")
    async with jupyter.http() as http:
        a, b = await register(http, alpha), await register(http, beta)
        on_a = (await http.post("/agents", json={"name": "on-a", "provider": "echo",
                                                 "clientId": a["id"]})).json()
        on_b = (await http.post("/agents", json={"name": "on-b", "provider": "echo",
                                                 "clientId": b["id"]})).json()
        assert (on_a["clientId"], on_b["clientId"]) == (a["id"], b["id"])
    front_a, front_b = await jupyter.frontend(a["id"]), await jupyter.frontend(b["id"])
    try:
        for front, agent in ((front_a, on_a), (front_b, on_b)):
            assert await front.forward(ManagerEvent.LOGIN, agent["id"]) == {"ok": True}
            await front.chat(agent["id"], "hello", f"hello-{agent['name']}")

        # front_a holds an agent of each host on one socket.
        assert await front_a.set_client(b["id"]) == {"ok": True}
        assert await front_a.forward(ManagerEvent.LOGIN, on_b["id"]) == {"ok": True}

        alpha.kill()
        await front_a.log.wait_for(lambda log: log.of(ControllerEvent.REMOTE_DISCONNECTED))
        assert {e["clientId"] for e in front_a.log.of(ControllerEvent.REMOTE_DISCONNECTED)} \
            == {a["id"]}

        # The other host is not affected, on its own socket or on the one it shares.
        for n in range(3):
            answer = await front_b.chat(on_b["id"], f"still {n}", f"b{n}")
            assert answer["response"]["result"].endswith(f"still {n}")
            answer = await front_a.chat(on_b["id"], f"shared {n}", f"ab{n}")
            assert answer["response"]["result"].endswith(f"shared {n}")
        assert await front_a.set_client(a["id"]) == {"ok": True}

        # The dead host's agent says so: chatting, logging in afresh, over REST.
        ack = await front_a.forward(ManagerEvent.CHAT, on_a["id"],
                                    {"message": "anyone?", "correlationId": "a1"})
        assert ack["error"]["code"] == ErrorCode.REMOTE_UNAVAILABLE
        assert ack["error"]["message"].startswith("Host unavailable")
        fresh = await jupyter.frontend(a["id"])
        try:
            ack = await fresh.forward(ManagerEvent.LOGIN, on_a["id"])
            assert ack["error"]["code"] == ErrorCode.REMOTE_UNAVAILABLE
            assert ack["error"]["message"].startswith("Host unavailable")
        finally:
            await fresh.close()
        async with jupyter.http() as http:
            response = await http.get(f"/clients/{a['id']}/agents/{on_a['id']}/messages")
            assert response.status_code == 502
            assert response.json()["message"].startswith("Host unavailable")

            listed = await clients_by_name(http)
            assert listed["alpha"]["health"]["state"] == "down"
            assert listed["alpha"]["health"]["error"] == "Manager unreachable"
            assert listed["beta"]["health"]["state"] == "up"
            agents = {agent["name"]: agent for agent in (await http.get("/agents")).json()}
            assert agents["on-a"]["available"] is False
            assert agents["on-a"]["clientId"] == a["id"]
            assert agents["on-a"]["error"]["code"] == ErrorCode.REMOTE_UNAVAILABLE
            assert agents["on-a"]["error"]["message"].startswith("Host unavailable")
            assert agents["on-b"]["available"] is True

            # Placement moves on: nothing new goes to the dead host.
            for n in range(3):
                response = await http.post("/agents", json={"name": f"new{n}",
                                                            "provider": "echo"})
                assert response.status_code == 201, response.text
                assert response.json()["clientId"] != a["id"]

        # Back on its port, with its data: its agents answer again, nobody had to do a thing.
        start_manager("alpha", api_key=alpha.api_key, port=alpha.port)
        await front_a.log.wait_for(lambda log: log.of(ControllerEvent.REMOTE_RECONNECTED))
        answer = await front_a.chat(on_a["id"], "back", "a-back")
        assert answer["response"]["result"].endswith("back")
        async with jupyter.http() as http:
            await until(lambda: _state_is(http, "alpha", "up"))
            agents = {agent["name"]: agent for agent in (await http.get("/agents")).json()}
            assert agents["on-a"]["available"] is True
    finally:
        await front_a.close()
        await front_b.close()


async def _state_is(http, name: str, state: str) -> bool:
    return (await clients_by_name(http))[name]["health"]["state"] == state


async def test_a_frozen_manager_is_shown_down_within_the_health_timeout(
        jupyter, start_manager):
    """A host that takes connections and never answers (SIGSTOP) costs a listing no more
    than the health timeout; nothing of the check's failure leaks."""
    frozen = start_manager("frozen")
    async with jupyter.http() as http:
        client = await register(http, frozen)
        assert await _state_is(http, "frozen", "up")
        jupyter.controller.health.forget(client["id"])  # its cached "up" goes
        os.kill(frozen.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            listed = await clients_by_name(http)
            elapsed = time.monotonic() - started
            agents = (await http.get("/agents")).json()
            response = await http.post("/agents", json={"name": "x", "provider": "echo"})
        finally:
            os.kill(frozen.process.pid, signal.SIGCONT)
        assert elapsed < HEALTH_TIMEOUT + 2.0, elapsed
        health = listed["frozen"]["health"]
        assert health["state"] == "down"
        assert health["error"] == "The manager did not answer in time"
        assert listed["local"]["health"]["state"] == "up"
        assert all(agent["clientId"] != client["id"] or not agent["available"]
                   for agent in agents)
        assert response.status_code == 201 and response.json()["clientId"] != client["id"]
        await until(lambda: _state_is(http, "frozen", "up"))


def test_the_placement_policy_is_a_class_named_in_the_environment(monkeypatch):
    app = ControllerApp()
    assert app.placement_policy is LeastAgents
    monkeypatch.setenv("AGENSTRA_PLACEMENT_POLICY",
                       "agenstra_jupyter.controller.placement.MostRoom")
    apply_env(app)
    assert app.placement_policy is MostRoom
    monkeypatch.setenv("AGENSTRA_PLACEMENT_POLICY", "builtins.dict")  # not a policy
    with pytest.raises(Exception, match="PlacementPolicy"):
        apply_env(app)


def test_most_room_prefers_free_capacity_and_least_agents_the_emptiest():
    def candidate(name: str, agents: int, capacity: int | None) -> Candidate:
        client = ClientRecord(name, name, "http://h", "k", False, "", capacity=capacity)
        return Candidate(client, Health("up", agents=agents))

    small, large, unlimited = (candidate("small", 0, 2), candidate("large", 5, 20),
                               candidate("unlimited", 9, None))
    assert MostRoom().choose([small, large]) is large
    assert MostRoom().choose([small, large, unlimited]) is unlimited
    assert LeastAgents().choose([small, large, unlimited]) is small


async def test_an_advertised_capacity_counts_and_a_hostile_health_answer_shows_nothing(jupyter):
    """A manager that advertises its capacity is full when it says so; one whose health
    check fails with a body full of secrets is shown down in the controller's words."""
    from aiohttp import web

    from .test_foreign_managers import FakeManager

    secret = "internal-db-password-93c1"
    state = {"agents": 1, "fail": False}

    async def answer(request: web.Request) -> web.StreamResponse:
        if state["fail"]:
            return web.json_response({"code": ErrorCode.INTERNAL,
                                      "message": f"db {secret} key {fake.api_key}"}, status=500)
        if request.path == "/api/health":
            return web.json_response({"status": "ok", "service": MANAGER_SERVICE,
                                      "version": "0", "agents": state["agents"],
                                      "capacity": 1})
        return web.json_response([])

    async with FakeManager(api_key="fake-key-4be1d0") as fake, jupyter.http() as http:
        fake.answer = answer
        client = (await http.post("/clients", json=fake.register_body("advertised"))).json()
        health = (await clients_by_name(http))["advertised"]["health"]
        assert (health["state"], health["agents"], health["capacity"]) == ("up", 1, 1)
        response = await http.post("/agents", json={"name": "x", "provider": "echo",
                                                    "clientId": client["id"]})
        assert response.status_code == 503 and "full" in response.json()["message"]

        state["fail"] = True
        jupyter.controller.health.forget(client["id"])  # its cached "up" goes
        health = (await clients_by_name(http))["advertised"]["health"]
        assert health["state"] == "down"
        assert health["error"] == "The manager's health check failed"
        for path in ("/clients", "/agents", f"/clients/{client['id']}"):
            text = (await http.get(path)).text
            assert secret not in text and fake.api_key not in text, path


async def test_a_registry_from_before_labels_migrates_its_managers_unlabelled(tmp_path):
    from cryptography.fernet import Fernet
    from sqlalchemy import insert

    from agenstra_jupyter.controller import registry as registry_module
    from agenstra_jupyter.secrets import SecretBox

    url, box = f"sqlite:///{tmp_path / 'controller.sqlite'}", SecretBox(Fernet.generate_key())
    old = registry_module.Registry(url, box)
    old.migrations = registry_module.MIGRATIONS[:2]  # the schema before client_placement
    await old.open()
    async with old.engine.begin() as conn:
        await conn.execute(insert(registry_module.clients).values(
            id="old", name="old", endpoint="http://h", api_key=box.encrypt("k"), local=False,
            created_at="2026-01-01T00:00:00.000Z"))
    await old.close()

    new = registry_module.Registry(url, box)
    await new.open()
    try:
        (client,) = await new.list_clients()
        assert (client.id, client.labels, client.capacity) == ("old", (), None)
        await new.set_placement("old", ["gpu"], 3)
        client = await new.get_client("old")
        assert (client.labels, client.capacity, client.api_key) == (("gpu",), 3, "k")
        assert await new.delete_client("old") and await new.list_clients() == []
    finally:
        await new.close()

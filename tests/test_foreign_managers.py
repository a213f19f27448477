"""Client registration is no proxy: whatever a registered endpoint sends is bounded and checked.

The "manager" here is a small aiohttp server in the test that answers like a manager
until the test makes it something else (a redirect, a foreign service, a 300 MB body, a
server dripping a byte at a time).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from agenstra_jupyter.controller.manager_api import UNEXPECTED, host_allowed, parse_hosts
from agenstra_jupyter.protocol import MANAGER_SERVICE, ErrorCode

from .conftest import start_jupyter, stop_jupyter

MIB = 1024 * 1024
INTERNAL = "internal-secret-3e7f"  # what a foreign service holds; it must never be relayed
AGENT_ID = "0" * 8 + "-0000-0000-0000-" + "0" * 12

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeManager:
    """Answers /api/health like an agenstra manager; every other path with `answer`."""

    def __init__(self, api_key: str = "fake-key") -> None:
        self.api_key = api_key
        self.answer: Answer = manager_like
        self.hits = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FakeManager:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"message": "Unauthorized", "code": "UNAUTHORIZED"},
                                     status=401)
        return await self.answer(request)

    def register_body(self, name: str = "fake") -> dict:
        return {"name": name, "endpoint": self.url, "apiKey": self.api_key}


async def manager_like(request: web.Request) -> web.StreamResponse:
    if request.path == "/api/health":
        return web.json_response({"status": "ok", "service": MANAGER_SERVICE,
                                  "version": "0", "agents": 0})
    return web.json_response([])


async def foreign(request: web.Request) -> web.StreamResponse:
    """A foreign JSON service: every path answers with its own data."""
    return web.json_response({"status": "ok", "items": [{"id": "x", "secret": INTERNAL}]})


@functools.cache
def _bomb() -> bytes:
    return gzip.compress(b"[" + b" " * (64 * MIB) + b"]")


async def gzip_bomb(request: web.Request) -> web.StreamResponse:
    """A valid-looking list, compressed: 64 KiB on the wire, 64 MiB once inflated."""
    return web.Response(body=_bomb(), headers={"Content-Type": "application/json",
                                            "Content-Encoding": "gzip"})


async def redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(f"http://127.0.0.1:9/{INTERNAL}")


def huge(size: int) -> Answer:
    """A JSON list of `size` bytes, chunked: no Content-Length to refuse it by."""
    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b'"' + b"x" * (MIB - 4) + b'",'
        try:
            await response.write(b"[")
            for _ in range(size // MIB):
                await response.write(chunk)
            await response.write(b'"end"]')
        except (ConnectionError, RuntimeError):
            pass  # the controller hung up: what we want
        return response
    return answer


async def drip(request: web.Request) -> web.StreamResponse:
    """Headers at once, then a byte every 0.2 s, for ever: no single read ever times out."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        await response.write(b"[")
        while True:
            await asyncio.sleep(0.2)
            await response.write(b" ")
    except (ConnectionError, RuntimeError):
        pass
    return response


async def test_a_redirecting_endpoint_is_refused(jupyter, start_manager):
    real = start_manager("real")  # the redirect points at a real manager: still refused
    async with FakeManager(api_key=real.api_key) as fake, jupyter.http() as http:
        async def to_real(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(real.url + request.path)
        fake.answer = to_real
        response = await http.post("/clients", json=fake.register_body())
        assert response.status_code == 400, response.text
        assert response.json()["code"] == ErrorCode.INVALID_PAYLOAD
        assert "redirects (HTTP 302)" in response.json()["message"]
        assert [c["id"] for c in (await http.get("/clients")).json()] == ["local"]


async def test_only_an_agenstra_manager_is_registered(jupyter, start_manager):
    async with FakeManager() as fake, jupyter.http() as http:
        for answer in (foreign, huge(MIB)):
            fake.answer = answer
            response = await http.post("/clients", json=fake.register_body())
            assert response.status_code == 400, response.text
            assert "not an agenstra manager" in response.json()["message"]
            assert INTERNAL not in response.text
        assert [c["id"] for c in (await http.get("/clients")).json()] == ["local"]

        async def older_manager(request: web.Request) -> web.StreamResponse:
            if request.path == "/api/health":  # as managers answered before `service`
                return web.json_response({"status": "ok", "version": "0.1.0", "agents": 3})
            return web.json_response([])

        fake.answer = older_manager
        older = await http.post("/clients", json=fake.register_body("older"))
        assert older.status_code == 201, older.text
        # A real manager says what it is, and is registered.
        real = start_manager("real")
        health = (await real.http().get("/api/health")).json()
        assert health["service"] == MANAGER_SERVICE and health["status"] == "ok"
        created = await http.post("/clients", json={"name": "real", "endpoint": real.url,
                                                    "apiKey": real.api_key})
        assert created.status_code == 201, created.text


async def test_a_manager_turned_hostile_is_not_relayed(jupyter):
    async with FakeManager() as fake, jupyter.http() as http:
        client = (await http.post("/clients", json=fake.register_body())).json()
        base = f"/clients/{client['id']}"
        assert (await http.get(f"{base}/agents")).json() == []  # a manager's answer passes

        async def foreign_error(request: web.Request) -> web.StreamResponse:
            return web.json_response({"code": INTERNAL, "message": INTERNAL}, status=400)

        paths = [("GET", "/providers"), ("GET", "/agents"), ("GET", f"/agents/{AGENT_ID}"),
                 ("GET", f"/agents/{AGENT_ID}/messages"), ("POST", f"/agents/{AGENT_ID}/start"),
                 ("POST", "/agents")]
        for answer in (foreign, redirect, gzip_bomb):
            fake.answer = answer
            for method, path in paths:
                body = {"name": "a", "provider": "echo"} if method == "POST" else None
                response = await http.request(method, base + path, json=body)
                assert response.status_code == 502, (answer, path, response.text)
                assert response.json() == {"code": ErrorCode.REMOTE_UNAVAILABLE,
                                           "message": UNEXPECTED}
        fake.answer = foreign_error  # an error with a code no manager uses: not its text
        response = await http.get(f"{base}/agents")
        assert response.status_code == 400 and INTERNAL not in response.text


@pytest.mark.parametrize("controller_config", [{"manager_timeout": 2.0}])
async def test_a_dripping_manager_times_out_within_the_total_timeout(jupyter):
    async with FakeManager() as fake, jupyter.http() as http:
        client = (await http.post("/clients", json=fake.register_body())).json()
        fake.answer = drip
        started = time.monotonic()
        response = await http.get(f"/clients/{client['id']}/agents", timeout=15)
        elapsed = time.monotonic() - started
        assert response.status_code == 504, response.text
        assert response.json() == {"code": ErrorCode.REMOTE_UNAVAILABLE,
                                   "message": "The manager did not answer within 2 s"}
        assert 1.5 < elapsed < 4, elapsed
        fake.answer = manager_like  # a later answer is served again
        assert (await http.get(f"/clients/{client['id']}/agents")).json() == []


@pytest.mark.parametrize("controller_config",
                         [{"allowed_manager_hosts": "manager.example.org, 127.0.0.1"}])
async def test_the_host_allow_list_is_checked_on_registration_and_every_call(jupyter):
    async with FakeManager() as fake, jupyter.http() as http:
        refused = await http.post("/clients", json={**fake.register_body(),
                                                    "endpoint": fake.url.replace("127.0.0.1",
                                                                                 "localhost")})
        assert refused.status_code == 400
        assert "'localhost' are not allowed" in refused.json()["message"]
        assert fake.hits == 0  # refused before anything was sent

        client = (await http.post("/clients", json=fake.register_body())).json()
        jupyter.controller.api.allowed_hosts = ("manager.example.org",)  # config changed
        hits = fake.hits
        later = await http.get(f"/clients/{client['id']}/agents")
        assert later.status_code == 400 and "not allowed" in later.json()["message"]
        # Sockets too: no link is opened to a host off the list.
        frontend = await jupyter.frontend(client["id"])
        ack = await frontend.forward("login", "some-agent", {})
        await frontend.close()
        assert ack["ok"] is False and "not allowed" in ack["error"]["message"]
        assert fake.hits == hits
        # The operator's own manager is not a registered endpoint: never refused.
        assert (await http.get("/clients/local/agents")).status_code == 200


def test_allow_list_entries():
    allowed = parse_hosts("manager.example.org, *.corp.example 10.1.0.0/16,[::1]")
    assert allowed == ("manager.example.org", "*.corp.example", "10.1.0.0/16", "[::1]")
    assert host_allowed("https://MANAGER.example.org:8443", allowed)
    assert host_allowed("http://a.b.corp.example", allowed)
    assert not host_allowed("http://corp.example.evil.org", allowed)
    assert not host_allowed("http://evilcorp.example", allowed)
    assert host_allowed("http://10.1.200.3:80", allowed)
    assert not host_allowed("http://10.2.0.1", allowed)
    assert not host_allowed("http://manager.example.org.evil.org", allowed)


# -- memory, measured on a real Jupyter server process ---------------------------------------


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


async def test_a_huge_answer_does_not_grow_the_jupyter_server(tmp_path):
    server = start_jupyter(tmp_path)
    try:
        headers = {"Authorization": f"token {server.token}"}
        api = f"{server.full_url}agenstra/api"
        async with FakeManager() as fake, httpx.AsyncClient(base_url=api, headers=headers,
                                                            timeout=120) as http:
            client = (await http.post("/clients", json=fake.register_body())).json()
            assert (await http.get(f"/clients/{client['id']}/agents")).json() == []
            before = memory_kib(server.process.pid)
            fake.answer = huge(300 * MIB)
            response = await http.get(f"/clients/{client['id']}/agents")
            after = memory_kib(server.process.pid)
        print(f"jupyter server memory before {before}, after a 300 MB answer {after} (KiB)")
        assert response.status_code == 502, response.text[:200]
        assert response.json()["code"] == ErrorCode.REMOTE_UNAVAILABLE
        assert response.json()["message"] == f"{UNEXPECTED}: larger than {4 * MIB} bytes"
        # Peak and current resident memory: a few MiB read, not 300.
        assert after["VmHWM"] - before["VmHWM"] < 40 * 1024, (before, after)
        assert after["VmRSS"] - before["VmRSS"] < 40 * 1024, (before, after)
    finally:
        stop_jupyter(server)


@pytest.mark.parametrize("controller_config", [{"max_manager_response_bytes": 64 * 1024,
                                                 "max_manager_history_bytes": MIB}])
async def test_a_page_of_messages_has_its_own_larger_cap(jupyter):
    async with FakeManager() as fake, jupyter.http() as http:
        client = (await http.post("/clients", json=fake.register_body())).json()
        base = f"/clients/{client['id']}/agents"

        def page(size: int) -> Answer:
            message = {"id": "m1", "seq": 1, "from": "agent", "agentId": AGENT_ID,
                       "response": {"type": "text", "result": "y" * size}}

            async def answer(request: web.Request) -> web.StreamResponse:
                return web.json_response([message])  # with a Content-Length
            return answer

        fake.answer = page(200 * 1024)  # over the general cap, under the history cap
        messages = await http.get(f"{base}/{AGENT_ID}/messages")
        assert messages.status_code == 200
        assert len(messages.json()[0]["response"]["result"]) == 200 * 1024
        agents = await http.get(base)
        assert agents.status_code == 502
        assert agents.json()["message"] == f"{UNEXPECTED}: larger than {64 * 1024} bytes"
        fake.answer = page(2 * MIB)
        messages = await http.get(f"{base}/{AGENT_ID}/messages")
        assert messages.status_code == 502
        assert messages.json()["message"] == f"{UNEXPECTED}: larger than {MIB} bytes"

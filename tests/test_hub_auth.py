"""HubAuthenticator against a stand-in Hub API speaking JupyterHub's `GET /user` (the real
Hub is in test_jupyterhub.py; this covers what it cannot make happen: the Hub down, a flood
of wrong tokens, the cache)."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from tornado import httpserver, web

from agenstra_jupyter.manager.auth import Caller
from agenstra_jupyter.manager.hub_auth import HubAuthenticator, caller_of
from agenstra_jupyter.protocol import AgenstraError, ErrorCode

SERVICE = "agenstra-manager"
ACCESS = f"access:services!service={SERVICE}"
TOKENS = {  # token -> the model JupyterHub answers for it
    "alice-token": {"kind": "user", "name": "alice", "scopes": [ACCESS, "read:users!user=alice"]},
    "narrow-token": {"kind": "user", "name": "alice", "scopes": ["read:users!user=alice"]},
    "admin-token": {"kind": "user", "name": "ann", "scopes": [ACCESS, "custom:agenstra:admin"]},
    "service-token": {"kind": "service", "name": "other", "scopes": [ACCESS]},
}


class UserHandler(web.RequestHandler):
    def get(self) -> None:
        self.application.settings["asked"].append(1)
        token = self.request.headers.get("Authorization", "").removeprefix("token ")
        if token not in TOKENS:
            raise web.HTTPError(403)
        self.finish(json.dumps(TOKENS[token]))


@pytest.fixture
def hub_api():
    asked: list[int] = []
    server = httpserver.HTTPServer(web.Application([(r"/hub/api/user", UserHandler)],
                                                   asked=asked))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hub/api", asked
    server.stop()


def authenticator(api_url: str, **settings) -> HubAuthenticator:
    return HubAuthenticator(api_url=api_url, service_name=SERVICE, **settings)


async def test_users_with_the_services_scope_are_let_in_once_per_cache_period(hub_api):
    url, asked = hub_api
    gate = authenticator(url)
    try:
        assert await gate.identify("p", "alice-token") == Caller("alice", admin=False)
        assert await gate.identify("p", "alice-token") == Caller("alice", admin=False)
        assert await gate.identify("p", "admin-token") == Caller("ann", admin=True)
        assert len(asked) == 2  # the second look-up came from the cache
        for token in ("narrow-token", "service-token", "unknown", "", None, 42):
            with pytest.raises(AgenstraError) as refused:
                await gate.identify("p", token)
            assert (refused.value.code, refused.value.status) == (ErrorCode.UNAUTHORIZED, 401)
        refusals = len(asked)
        with pytest.raises(AgenstraError):
            await gate.identify("p", "unknown")
        assert len(asked) == refusals  # a refusal is remembered as well
    finally:
        await gate.close()


async def test_a_flood_of_wrong_tokens_is_throttled_without_asking_the_hub(hub_api):
    url, asked = hub_api
    gate = authenticator(url, failures_per_second=3)
    try:
        codes = []
        for attempt in range(6):
            try:
                await gate.identify("flooder", f"wrong-{attempt}")
            except AgenstraError as exc:
                codes.append(exc.code)
        assert codes == [ErrorCode.UNAUTHORIZED] * 3 + [ErrorCode.RATE_LIMITED] * 3
        assert len(asked) == 3
        assert await gate.identify("someone-else", "alice-token")  # others are not held up
    finally:
        await gate.close()


async def test_a_flood_from_a_shared_address_does_not_lock_out_known_users(hub_api):
    """Every user's server may reach the manager from one address: alice's controller,
    signed in before, still gets in while someone floods wrong tokens from there too, after
    her cached answer has expired."""
    url, _ = hub_api
    gate = authenticator(url, failures_per_second=3, cache_seconds=0)
    try:
        assert await gate.identify("127.0.0.1", "alice-token") == Caller("alice", admin=False)
        for attempt in range(6):
            with pytest.raises(AgenstraError):
                await gate.identify("127.0.0.1", f"wrong-{attempt}")
        assert gate._limits.throttled("127.0.0.1")
        assert await gate.identify("127.0.0.1", "alice-token") == Caller("alice", admin=False)
        with pytest.raises(AgenstraError) as refused:  # one it never vouched for: held
            await gate.identify("127.0.0.1", "admin-token")
        assert refused.value.code == ErrorCode.RATE_LIMITED
    finally:
        await gate.close()


async def test_one_hub_request_per_token_however_many_sockets_at_once(hub_api):
    url, asked = hub_api
    gate = authenticator(url)
    try:
        callers = await asyncio.gather(*(gate.identify("p", "alice-token") for _ in range(20)))
        assert set(callers) == {Caller("alice", admin=False)} and len(asked) == 1
    finally:
        await gate.close()


async def test_the_hub_unreachable_lets_nobody_in():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    gate = authenticator(f"http://127.0.0.1:{port}/hub/api")
    try:
        with pytest.raises(AgenstraError) as refused:
            await gate.identify("p", "alice-token")
        assert (refused.value.code, refused.value.status) == (ErrorCode.UNAVAILABLE, 503)
    finally:
        await gate.close()


def test_hub_admins_are_admins_when_the_token_shows_it():
    model = {"kind": "user", "name": "root", "admin": True, "scopes": ["access:services"]}
    assert caller_of(model, SERVICE, "") == Caller("root", admin=True)
    assert caller_of({**model, "admin": "yes"}, SERVICE, "") == Caller("root", admin=False)
    assert caller_of({**model, "name": ""}, SERVICE, "") is None
    assert caller_of([], SERVICE, "") is None


def test_hub_mode_needs_the_hubs_address(monkeypatch):
    for variable in ("JUPYTERHUB_API_URL", "JUPYTERHUB_SERVICE_NAME", "AGENSTRA_HUB_API_URL",
                     "AGENSTRA_HUB_SERVICE_NAME"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(SystemExit, match="JUPYTERHUB_API_URL"):
        HubAuthenticator()

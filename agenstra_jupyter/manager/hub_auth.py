"""JupyterHub identities for a shared manager (docs/deploy/jupyterhub.md).

Each controller presents its single-user server's Hub token (JUPYTERHUB_API_TOKEN). The
manager asks the Hub whose it is (`GET {api_url}/user`), and lets it in only when the token
may access this service (`access:services!service=<name>`, JupyterHub's own scope). The
answer is cached briefly, refusals too, so a busy controller or a flood of wrong tokens
costs the Hub one request per token per `cache_seconds`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Float, Int, Unicode, default
from traitlets.config import LoggingConfigurable

from ..config import apply_env
from ..protocol import AgenstraError, ErrorCode
from .auth import Authenticator, Caller, KeyGate

MAX_CACHED = 10_000  # tokens remembered; the oldest go first
# A token the Hub vouched for within this long still passes while its peer address is
# throttled (by someone else's wrong tokens); a revoked one is refused at its next lookup.
KNOWN_GOOD_SECONDS = 3600.0
HUB_UNAVAILABLE = "The Hub cannot check credentials now; try again"


def may_access(scopes: Any, service: str) -> bool:
    """True when the token's (expanded) scopes give access to `service`."""
    if not isinstance(scopes, list):
        return False
    return "access:services" in scopes or f"access:services!service={service}" in scopes


def caller_of(model: Any, service: str, admin_scope: str) -> Caller | None:
    """The Hub user a `GET /user` answer names, or None when it may not use `service`."""
    if not isinstance(model, dict) or model.get("kind", "user") != "user":
        return None  # services and malformed answers own no agents
    name, scopes = model.get("name"), model.get("scopes")
    if not isinstance(name, str) or not name or not may_access(scopes, service):
        return None
    admin = model.get("admin") is True or bool(admin_scope and admin_scope in scopes)
    return Caller(user=name, admin=admin)


class HubAuthenticator(Authenticator, LoggingConfigurable):
    """Callers are Hub users, named by their Hub tokens; admins see every agent."""

    api_url = Unicode(
        help="The Hub API (default: JUPYTERHUB_API_URL, set by the Hub for its services). "
        "AGENSTRA_HUB_API_URL."
    ).tag(config=True, env="AGENSTRA_HUB_API_URL")
    service_name = Unicode(
        help="This manager's Hub service name: tokens need access:services!service=<it> "
        "(default: JUPYTERHUB_SERVICE_NAME). AGENSTRA_HUB_SERVICE_NAME."
    ).tag(config=True, env="AGENSTRA_HUB_SERVICE_NAME")
    admin_scope = Unicode(
        "custom:agenstra:admin",
        help="A scope whose holders see and manage every user's agents, besides Hub admins "
        "whose token may read their admin flag; declare it in c.JupyterHub.custom_scopes "
        "and grant it to a role ('' for Hub admins only). AGENSTRA_HUB_ADMIN_SCOPE.",
    ).tag(config=True, env="AGENSTRA_HUB_ADMIN_SCOPE")
    cache_seconds = Float(
        30.0, help="Seconds the Hub's answer about a token is reused (refusals included). "
        "AGENSTRA_HUB_CACHE_SECONDS."
    ).tag(config=True, env="AGENSTRA_HUB_CACHE_SECONDS")
    request_timeout = Float(
        10.0, help="Longest a request to the Hub API may take (s). AGENSTRA_HUB_TIMEOUT."
    ).tag(config=True, env="AGENSTRA_HUB_TIMEOUT")
    failures_per_second = Int(
        20, help="Refused tokens one peer address may send per second before it gets 429 "
        "(0: no limit). AGENSTRA_HUB_FAILURES_PER_SECOND."
    ).tag(config=True, env="AGENSTRA_HUB_FAILURES_PER_SECOND")

    @default("api_url")
    def _default_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "")

    @default("service_name")
    def _default_service_name(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_NAME", "")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        apply_env(self)
        if not self.api_url or not self.service_name:
            raise SystemExit("Hub authentication needs the Hub API URL and this service's "
                             "name (JUPYTERHUB_API_URL, JUPYTERHUB_SERVICE_NAME, or "
                             "AGENSTRA_HUB_API_URL, AGENSTRA_HUB_SERVICE_NAME)")
        self._limits = KeyGate("", self.failures_per_second)  # only its failure budget
        self._cache: dict[str, tuple[float, Caller | None]] = {}
        self._good: dict[str, tuple[float, Caller]] = {}  # tokens the Hub vouched for lately
        self._lookups: dict[str, asyncio.Future[Caller | None]] = {}
        self._http = AsyncHTTPClient(force_instance=True)

    @classmethod
    def from_app(cls, app: Any) -> HubAuthenticator:
        return cls(parent=app, log=app.log)

    async def identify(self, peer: str, token: Any) -> Caller:
        if not isinstance(token, str) or not token:
            raise self._limits.refuse(peer)
        key = hashlib.sha256(token.encode()).hexdigest()  # no raw token kept in memory
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            caller = cached[1]
        elif self._limits.throttled(peer):
            # Every user's controller may share one address (the Hub's host): another's
            # wrong tokens must not lock out a token the Hub vouched for lately.
            good = self._good.get(key)
            if good is None or good[0] <= now:
                raise self._limits.refuse(peer)
            caller = good[1]
        else:
            caller = await self._lookup(key, token)
        if caller is None:
            raise self._limits.refuse(peer)
        return caller

    async def _lookup(self, key: str, token: str) -> Caller | None:
        """The Hub's answer about a token: one request per token at a time, however many
        sockets present it at once."""
        pending = self._lookups.get(key)
        if pending is None:
            pending = self._lookups[key] = asyncio.ensure_future(self._ask_hub(token))
            pending.add_done_callback(lambda _: self._lookups.pop(key, None))
        caller = await asyncio.shield(pending)
        self._remember(key, caller)
        return caller

    async def _ask_hub(self, token: str) -> Caller | None:
        url = self.api_url.rstrip("/") + "/user"
        try:
            response = await self._http.fetch(
                url, headers={"Authorization": f"token {token}"},
                request_timeout=self.request_timeout, follow_redirects=False)
        except HTTPClientError as exc:
            if exc.code in (401, 403, 404):
                return None  # not a token, or one the Hub no longer knows
            self.log.warning("The Hub API answered %s for a token check", exc.code)
            raise AgenstraError(ErrorCode.UNAVAILABLE, HUB_UNAVAILABLE, 503) from None
        except OSError as exc:
            self.log.warning("The Hub API is unreachable: %s", exc)
            raise AgenstraError(ErrorCode.UNAVAILABLE, HUB_UNAVAILABLE, 503) from None
        try:
            model = json.loads(response.body)
        except ValueError:
            return None
        return caller_of(model, self.service_name, self.admin_scope)

    def _remember(self, key: str, caller: Caller | None) -> None:
        now = time.monotonic()
        _put(self._cache, key, (now + self.cache_seconds, caller))
        if caller is not None:
            _put(self._good, key, (now + KNOWN_GOOD_SECONDS, caller))
        else:
            self._good.pop(key, None)  # the Hub disowned it: no grace any more

    async def close(self) -> None:
        self._http.close()


def _put(cache: dict[str, Any], key: str, value: Any) -> None:
    cache.pop(key, None)  # re-inserted last: the dict stays oldest-first
    if len(cache) >= MAX_CACHED:
        cache.pop(next(iter(cache)))
    cache[key] = value

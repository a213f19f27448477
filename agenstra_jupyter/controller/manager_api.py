"""Async calls to a manager's REST API, its errors raised as AgenstraError.

A registered endpoint is whatever URL a user typed, so nothing it sends is trusted: each
answer is bounded in size and time, must have the shape a manager gives, and only then
reaches the caller. The controller never becomes a proxy for another HTTP service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json as jsonlib
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..protocol import (
    ERROR_CODES,
    MANAGER_SERVICE,
    PERMISSION_OUTCOMES,
    AgenstraError,
    ErrorCode,
)

MIB = 1024 * 1024
PARSE_IN_THREAD = MIB  # bodies larger than this are parsed off the event loop
UNEXPECTED = "The manager sent an unexpected answer"
UNREACHABLE = "Manager unreachable"
_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
_MAX_ERROR_TEXT = 500  # a manager's error message is shown to the user, not a document

Shape = Callable[[Any], bool]


class ManagerAPI:
    """One shared HTTP connection pool for every manager this controller talks to."""

    def __init__(self, timeout: float = 60.0, max_bytes: int = 4 * MIB,
                 max_history_bytes: int = 64 * MIB, allowed_hosts: str = "") -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_history_bytes = max_history_bytes
        self.allowed_hosts = parse_hosts(allowed_hosts)
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        # Calls that wait on a user (asks, up to the permission timeout) have a pool of
        # their own: many of them never starve the short calls of connections.
        self._waiting = httpx.AsyncClient(timeout=timeout, follow_redirects=False,
                                          limits=httpx.Limits(max_connections=1000))

    async def close(self) -> None:
        await self._http.aclose()
        await self._waiting.aclose()

    async def request(
        self,
        endpoint: str,
        api_key: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        shape: Shape | None = None,
        history: bool = False,
        local: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """The manager's JSON answer, if it has `shape`; `history` allows a messages page's
        larger size; `local` (the operator's own manager) skips the host allow-list;
        `timeout` replaces the usual total for a call that waits on a user (an ask)."""
        status, body = await self._exchange(endpoint, api_key, method, path, json=json,
                                            params=params, history=history, local=local,
                                            timeout=timeout)
        if status >= 400:
            raise _refusal(status, body)
        if not 200 <= status < 300:  # a redirect is a refusal: never follow it elsewhere
            raise unexpected()
        if status == 204:
            return None
        if shape is not None and not shape(body):
            raise unexpected()
        return body

    async def check_manager(self, endpoint: str, api_key: str) -> None:
        """Registration: refuse (400) unless an agenstra manager answers with this key."""
        status, body = await self._exchange(endpoint, api_key, "GET", "/api/health")
        if 300 <= status < 400:
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD,
                                f"The endpoint redirects (HTTP {status}); register the "
                                "manager's own URL")
        if status == 401:
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD, "The manager rejected this API key")
        if status != 200 or not is_health(body):
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD,
                                "The endpoint is not an agenstra manager (GET /api/health "
                                "gave no manager's answer)")

    def check_host(self, endpoint: str) -> None:
        if self.allowed_hosts and not host_allowed(endpoint, self.allowed_hosts):
            host = urlsplit(endpoint).hostname
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD,
                                f"Managers on {host!r} are not allowed here "
                                "(AGENSTRA_ALLOWED_MANAGER_HOSTS)")

    async def _exchange(self, endpoint: str, api_key: str, method: str, path: str, *,
                        json: Any = None, params: dict[str, Any] | None = None,
                        history: bool = False, local: bool = False,
                        timeout: float | None = None) -> tuple[int, Any]:
        """Status and JSON body (None if not JSON), within the total timeout."""
        if not local:
            self.check_host(endpoint)
        limit = self.max_history_bytes if history else self.max_bytes
        total = timeout or self.timeout
        http = self._waiting if timeout else self._http
        request = http.build_request(
            method, endpoint.rstrip("/") + path, json=json, params=params,
            # Uncompressed: a small compressed body may inflate far beyond the limit.
            headers={"Authorization": f"Bearer {api_key}", "Accept-Encoding": "identity"},
            # A long call may wait silently for its answer: no read may time out before it.
            timeout=(httpx.Timeout(self.timeout, read=total) if timeout
                     else httpx.USE_CLIENT_DEFAULT),
        )
        try:
            # httpx's timeout is per read; a server dripping a byte at a time never hits it.
            status, raw = await asyncio.wait_for(self._read(http, request, limit), total)
        except asyncio.TimeoutError:
            raise AgenstraError(ErrorCode.REMOTE_UNAVAILABLE,
                                f"The manager did not answer within {total:g} s",
                                504) from None
        except httpx.HTTPError:
            raise AgenstraError(ErrorCode.REMOTE_UNAVAILABLE, UNREACHABLE) from None
        try:
            if len(raw) > PARSE_IN_THREAD:  # a big page of history: keep the loop free
                return status, await asyncio.to_thread(jsonlib.loads, raw)
            return status, jsonlib.loads(raw) if raw else None
        except ValueError:
            return status, None

    async def _read(self, http: httpx.AsyncClient, request: httpx.Request,
                    limit: int) -> tuple[int, bytes]:
        """The body, stopped as soon as it is over `limit` bytes."""
        response = await http.send(request, stream=True)
        try:
            if response.headers.get("Content-Encoding", "identity").lower() != "identity":
                raise unexpected()
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limit:
                raise too_large(limit)
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > limit:
                    raise too_large(limit)
            return response.status_code, bytes(body)
        finally:
            await response.aclose()


def unexpected() -> AgenstraError:
    return AgenstraError(ErrorCode.REMOTE_UNAVAILABLE, UNEXPECTED)


def too_large(limit: int) -> AgenstraError:
    return AgenstraError(ErrorCode.REMOTE_UNAVAILABLE,
                         f"{UNEXPECTED}: larger than {limit} bytes")


def _refusal(status: int, body: Any) -> AgenstraError:
    """The manager's error, its code carried unchanged; its own faults are a bad gateway."""
    if status == 401:
        return AgenstraError(ErrorCode.UNAUTHORIZED, "The manager rejected the API key")
    status = 502 if status in (500, 502) else status
    error = AgenstraError.from_payload(body, status)
    if error is None or error.code not in ERROR_CODES:  # not an agenstra manager's answer
        return AgenstraError(ErrorCode.REMOTE_UNAVAILABLE if status >= 500
                             else ErrorCode.INVALID_PAYLOAD, f"Manager error {status}", status)
    return AgenstraError(error.code, error.message[:_MAX_ERROR_TEXT], status)


# -- host allow-list ---------------------------------------------------------------------


def parse_hosts(spec: str) -> tuple[str, ...]:
    """`AGENSTRA_ALLOWED_MANAGER_HOSTS`: names, `*.domain`, IPs or networks, comma-separated."""
    return tuple(entry.strip().lower() for entry in spec.replace(" ", ",").split(",")
                 if entry.strip())


def host_allowed(endpoint: str, allowed: tuple[str, ...]) -> bool:
    """Whether the endpoint's host is listed. Names are not resolved: an IP network
    matches only endpoints written as an IP address."""
    host = (urlsplit(endpoint).hostname or "").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in allowed:
        if entry.startswith("*.") and host.endswith(entry[1:]):
            return True
        if host == entry:
            return True
        if address is not None and "/" in entry:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    return False


# -- the shapes of a manager's answers (DESIGN.md); extra fields are allowed --------------


def is_health(body: Any) -> bool:
    """A manager's health answer; managers before `service` existed say status, version
    and the agent count."""
    if not (isinstance(body, dict) and body.get("status") == "ok"):
        return False
    if "service" in body:
        return body["service"] == MANAGER_SERVICE
    return isinstance(body.get("version"), str) and type(body.get("agents")) is int


def is_agent(body: Any) -> bool:
    return (isinstance(body, dict) and isinstance(body.get("id"), str)
            and _ID.fullmatch(body["id"]) is not None and isinstance(body.get("name"), str)
            and isinstance(body.get("config", {}), (dict, type(None))))


def is_created_agent(body: Any) -> bool:
    return is_agent(body) and isinstance(body.get("password"), str)


def is_agents(body: Any) -> bool:
    return isinstance(body, list) and all(is_agent(agent) for agent in body)


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, dict) and isinstance(item.get("name"), str) for item in value
    )


def is_providers(body: Any) -> bool:
    return (isinstance(body, dict) and _named_list(body.get("providers"))
            and _named_list(body.get("runtimes")))


def _is_message(message: Any) -> bool:
    return (isinstance(message, dict) and isinstance(message.get("id"), str)
            and type(message.get("seq")) is int and message.get("from") in ("user", "agent"))


def is_messages(body: Any) -> bool:
    return isinstance(body, list) and all(_is_message(message) for message in body)


def is_outcome(body: Any) -> bool:
    """The answer to `POST agents/{id}/permissions`: how the request was settled."""
    return isinstance(body, dict) and body.get("outcome") in PERMISSION_OUTCOMES

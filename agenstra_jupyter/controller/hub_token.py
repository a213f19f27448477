"""The token a controller signs in to a shared manager with, in hub mode.

Not the single-user server's own Hub token: that one may use the user's server
(`access:servers!server`), so whoever held it — a compromised manager, an agent escaping
its sandbox there — could run code as every user. The controller asks the Hub for a
token of its own that may only use the manager's service, keeps it (sealed, in the
registry) and mints another only when the Hub no longer honours it.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from ..protocol import AgenstraError, ErrorCode

NOTE = "agenstra: this server's link to the shared agent manager"
TIMEOUT = 30.0


class HubTokens:
    """Mints and checks service-only tokens through the Hub API, as this server's user."""

    def __init__(self, service: str, extra_scopes: list[str]) -> None:
        self.api_url = os.environ.get("JUPYTERHUB_API_URL", "").rstrip("/")
        self.user = os.environ.get("JUPYTERHUB_USER", "")
        self._server_token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if not (self.api_url and self.user and self._server_token):
            raise RuntimeError("AGENSTRA_MANAGER_AUTH=hub needs JUPYTERHUB_API_URL, "
                               "JUPYTERHUB_USER and JUPYTERHUB_API_TOKEN: run inside a "
                               "JupyterHub single-user server")
        self.access = f"access:services!service={service}"
        self.extra_scopes = extra_scopes

    async def token(self, kept: str | None) -> str:
        """`kept` if the Hub still honours it for the service, else a new token."""
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            if kept and await self._serves(http, kept):
                return kept
            return await self._mint(http)

    async def _serves(self, http: httpx.AsyncClient, token: str) -> bool:
        answer = await http.get(f"{self.api_url}/user",
                                headers={"Authorization": f"token {token}"})
        if answer.status_code != 200:
            return False
        scopes = _json(answer).get("scopes")
        return isinstance(scopes, list) and self.access in scopes

    async def _mint(self, http: httpx.AsyncClient) -> str:
        # The extra scopes (the manager's admin scope) only if this user holds them.
        for scopes in ([self.access, *self.extra_scopes], [self.access]):
            answer = await http.post(
                f"{self.api_url}/users/{self.user}/tokens",
                json={"scopes": scopes, "note": NOTE},
                headers={"Authorization": f"token {self._server_token}"})
            token = _json(answer).get("token") if answer.status_code == 201 else None
            if isinstance(token, str) and token:
                return token
            if answer.status_code == 403:
                break  # the server token may not make tokens: retrying cannot help
        raise AgenstraError(
            ErrorCode.UNAVAILABLE,
            f"The Hub gave no token for the agent manager (HTTP {answer.status_code}): "
            "give server tokens the 'tokens!user' scope (c.Spawner.server_token_scopes, "
            "docs/deploy/jupyterhub.md)")


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}

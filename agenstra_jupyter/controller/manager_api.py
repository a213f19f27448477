"""Async calls to a manager's REST API, with its errors turned into clear exceptions."""

from __future__ import annotations

from typing import Any

import httpx

from ..protocol import ErrorCode


class ManagerError(Exception):
    """The manager answered with an error, or could not be reached (status 502)."""

    def __init__(self, status: int, message: str, code: str = ErrorCode.INVALID_PAYLOAD) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class ManagerAPI:
    """One shared HTTP connection pool for every manager this controller talks to."""

    def __init__(self, timeout: float = 30.0) -> None:
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def close(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        endpoint: str,
        api_key: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        url = endpoint.rstrip("/") + path
        try:
            response = await self._http.request(
                method, url, json=json, params=params,
                headers={"Authorization": f"Bearer {api_key}"},
            )
        except httpx.HTTPError:
            raise ManagerError(502, "Manager unreachable", ErrorCode.REMOTE_UNAVAILABLE) from None
        if response.status_code == 204:
            return None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            if response.status_code == 401:
                raise ManagerError(401, "The manager rejected the API key", ErrorCode.UNAUTHORIZED)
            message = body.get("message") if isinstance(body, dict) else None
            status = response.status_code if response.status_code < 500 else 502
            raise ManagerError(status, message or f"Manager error {response.status_code}")
        return body

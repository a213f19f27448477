"""The manager's API key: checked on every Socket.IO handshake and REST request."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any


def bearer_token(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


def key_matches(expected: str, given: Any) -> bool:
    """Constant-time comparison; anything but a non-empty string fails."""
    if not isinstance(given, str) or not given or not expected:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def handshake_key(environ: Mapping[str, Any], auth: Any) -> str | None:
    """The key a Socket.IO client offered: `auth: {apiKey}` or an `Authorization: Bearer` header."""
    if isinstance(auth, dict) and isinstance(auth.get("apiKey"), str):
        return auth["apiKey"]
    return bearer_token(environ.get("HTTP_AUTHORIZATION"))

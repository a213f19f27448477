"""The manager's API key: checked on every Socket.IO handshake and REST request."""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from typing import Any

from .. import protocol
from ..protocol import AgenstraError, ErrorCode

MAX_PEERS = 10_000  # addresses whose failures are remembered; the oldest go first
THROTTLED_MESSAGE = "Too many failed attempts; wait a moment"


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


class KeyGate:
    """The API key check, with failed attempts limited per peer address.

    A peer may fail `failures_per_second` times a second (in bursts of as many); over that
    its wrong keys get 429 instead of 401 until the budget refills: a flood of failures
    costs a cheap answer each, not a logged refusal. The right key always passes, so a
    local user failing on purpose cannot lock the controller out of its own manager; this
    does not slow guessing, which a 256-bit key does not need. Every failure gets the same
    message whatever was wrong with the key.
    """

    def __init__(self, api_key: str, failures_per_second: int) -> None:
        self._key = api_key
        self._rate = failures_per_second
        self._peers: dict[str, tuple[float, float]] = {}  # address -> (budget left, when)

    def check(self, peer: str, given: Any) -> AgenstraError | None:
        """None when `given` is the key; else the refusal to answer with."""
        if key_matches(self._key, given):
            return None
        budget = self._budget(peer)
        if budget < 1:
            return AgenstraError(ErrorCode.RATE_LIMITED, THROTTLED_MESSAGE, 429)
        if self._rate > 0:
            self._spend(peer, budget)
        return AgenstraError(ErrorCode.UNAUTHORIZED, protocol.UNAUTHORIZED_MESSAGE, 401)

    def _spend(self, peer: str, budget: float) -> None:
        self._peers.pop(peer, None)  # re-inserted last: the dict stays oldest-first
        if len(self._peers) >= MAX_PEERS:
            self._peers.pop(next(iter(self._peers)))
        self._peers[peer] = (budget - 1, time.monotonic())

    def _budget(self, peer: str) -> float:
        if self._rate <= 0:
            return float("inf")  # 0 disables the limit
        if peer not in self._peers:
            return float(self._rate)
        left, when = self._peers[peer]
        return min(float(self._rate), left + (time.monotonic() - when) * self._rate)

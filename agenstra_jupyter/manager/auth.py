"""The manager's API key: checked on every Socket.IO handshake and REST request."""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Caller:
    """Who a REST request or a socket comes from (DESIGN.md threat model, ownership).

    `user` None is the API key's holder, the operator of this manager: it sees every agent
    and the agents it creates have no owner. A Hub user sees the agents it owns, every
    agent when `admin`.
    """

    user: str | None = None
    admin: bool = True

    def may_use(self, owner: str | None) -> bool:
        return self.admin or (self.user is not None and owner == self.user)


KEY_HOLDER = Caller()


class Authenticator:
    """Tells who a token belongs to; pluggable (ManagerApp.authenticator_class)."""

    @classmethod
    def from_app(cls, app: Any) -> Authenticator:
        """The authenticator a ManagerApp uses, built from its settings."""
        raise NotImplementedError

    async def identify(self, peer: str, token: Any) -> Caller:
        """The caller `token` names; raises AgenstraError (401/429/503) when it names none."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release what the authenticator holds (HTTP clients)."""


class KeyGate(Authenticator):
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

    @classmethod
    def from_app(cls, app: Any) -> KeyGate:
        return cls(app.api_key or app.generated_key(), app.auth_failures_per_second)

    async def identify(self, peer: str, token: Any) -> Caller:
        refusal = self.check(peer, token)
        if refusal is not None:
            raise refusal
        return KEY_HOLDER

    def check(self, peer: str, given: Any) -> AgenstraError | None:
        """None when `given` is the key; else the refusal to answer with."""
        if key_matches(self._key, given):
            return None
        return self.refuse(peer)

    def throttled(self, peer: str) -> bool:
        """True while `peer` has spent its budget of failures."""
        return self._budget(peer) < 1

    def refuse(self, peer: str) -> AgenstraError:
        """A failure of `peer`, counted: 401, or 429 once its budget is spent."""
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

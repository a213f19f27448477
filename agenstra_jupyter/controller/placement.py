"""Many managers: each one's health, and which of them a new agent goes to.

Health is each manager's `GET /api/health`, asked of all managers at once, every ask
bounded by a short timeout and its answer kept for a few seconds: a listing or a placement
never waits on a dead host longer than the timeout, and a busy page does not flood the
managers with checks. What a failed check says is one of the controller's own short
texts, never the manager's key or what its error carried.

Placement: a create that names no manager goes to the one a `PlacementPolicy` picks among
the managers that are up, have room (capacity) and carry the label asked for, if any.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Annotated, Any

from pydantic import Field
from traitlets.config import LoggingConfigurable

from .. import protocol
from ..protocol import AgenstraError, ErrorCode
from .manager_api import UNREACHABLE, ManagerAPI, is_health
from .registry import ClientRecord

UP, DOWN = "up", "down"
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_LABELS = 32
MAX_CAPACITY = 1_000_000
HOST_UNAVAILABLE = "Host unavailable"
Label = Annotated[str, Field(pattern=LABEL_PATTERN)]


# -- request bodies: the fixed contract's, plus optional fields (DESIGN.md allows extras) ---


class ClientRegistration(protocol.ClientRegisterRequest):
    """`POST clients`: a manager with labels users may place agents by, and a capacity."""

    labels: list[Label] = Field(default_factory=list, max_length=MAX_LABELS)
    capacity: int | None = Field(default=None, ge=1, le=MAX_CAPACITY)


class ClientPlacementUpdate(protocol._Request):
    """`PATCH clients/{id}`: labels and capacity, e.g. of the local manager; `capacity`
    null removes the limit."""

    labels: list[Label] | None = Field(default=None, max_length=MAX_LABELS)
    capacity: int | None = Field(default=None, ge=1, le=MAX_CAPACITY)


class PlacedAgentCreate(protocol.AgentCreateRequest):
    """`POST agents`: an agent created on `clientId`, or on a manager carrying `label`, or
    (neither) wherever the placement policy puts it."""

    clientId: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    label: str | None = Field(default=None, pattern=LABEL_PATTERN)


# -- health ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    """What the last check of one manager found."""

    state: str  # UP or DOWN
    agents: int | None = None  # as the manager counts them
    capacity: int | None = None  # what the manager advertises, if it does
    error: str | None = None  # the controller's own words, safe to show
    checked_at: str = ""
    checked: float = 0.0  # time.monotonic() of the check

    @property
    def up(self) -> bool:
        return self.state == UP


def capacity_of(client: ClientRecord, health: Health) -> int | None:
    """The tighter of the registered and the advertised capacity (None: no limit)."""
    limits = [c for c in (client.capacity, health.capacity) if c is not None]
    return min(limits) if limits else None


def has_room(client: ClientRecord, health: Health) -> bool:
    capacity = capacity_of(client, health)
    return capacity is None or (health.agents or 0) < capacity


def health_view(client: ClientRecord, health: Health) -> dict[str, Any]:
    """A manager's health as REST shows it."""
    return {"state": health.state, "agents": health.agents,
            "capacity": capacity_of(client, health), "error": health.error,
            "checkedAt": health.checked_at}


def _safe_error(exc: AgenstraError) -> str:
    """The controller's short words for a failed check: never what the manager's body
    carried (it may echo a key or an internal error)."""
    if exc.code == ErrorCode.UNAUTHORIZED:
        return "The manager rejected the stored API key"
    if exc.status == 504:
        return "The manager did not answer in time"
    if exc.message == UNREACHABLE:
        return UNREACHABLE
    if exc.code == ErrorCode.INVALID_PAYLOAD and "allowed" in exc.message:
        return "This manager's host is not allowed here"
    return "The manager's health check failed"


class HealthMonitor:
    """Each manager's health, checked concurrently, bounded in time, cached briefly."""

    def __init__(self, api: ManagerAPI, timeout: float = 3.0, ttl: float = 5.0) -> None:
        self._api = api
        self.timeout = timeout
        self.ttl = ttl
        self._cache: dict[str, Health] = {}
        self._checks: dict[str, asyncio.Task[Health]] = {}  # one check per manager at a time

    async def health(self, client: ClientRecord) -> Health:
        cached = self._cache.get(client.id)
        if cached is not None and time.monotonic() - cached.checked < self.ttl:
            return cached
        check = self._checks.get(client.id)
        if check is None:
            check = self._checks[client.id] = asyncio.create_task(self._check(client))
            check.add_done_callback(lambda _, key=client.id: self._checks.pop(key, None))
        return await asyncio.shield(check)  # a caller that goes away leaves it to the others

    async def all(self, clients: list[ClientRecord]) -> dict[str, Health]:
        found = await asyncio.gather(*(self.health(client) for client in clients))
        return {client.id: health for client, health in zip(clients, found, strict=True)}

    def mark_down(self, client_id: str, error: str) -> None:
        """A call to the manager just failed: placement skips it until a check finds it up."""
        self._cache[client_id] = Health(DOWN, error=error, checked_at=protocol.utc_now(),
                                        checked=time.monotonic())

    def note_created(self, client_id: str) -> None:
        """One more agent there: the next placement counts it before the next check does."""
        cached = self._cache.get(client_id)
        if cached is not None and cached.agents is not None:
            self._cache[client_id] = replace(cached, agents=cached.agents + 1)

    def forget(self, client_id: str) -> None:
        self._cache.pop(client_id, None)

    async def _check(self, client: ClientRecord) -> Health:
        now = protocol.utc_now()
        try:
            body = await self._api.request(client.endpoint, client.api_key, "GET",
                                           "/api/health", shape=is_health, local=client.local,
                                           timeout=self.timeout)
        except AgenstraError as exc:
            health = Health(DOWN, error=_safe_error(exc), checked_at=now)
        except Exception:  # whatever went wrong, a listing still shows every manager
            health = Health(DOWN, error="The manager's health check failed", checked_at=now)
        else:
            health = Health(UP, agents=_count(body.get("agents")),
                            capacity=_count(body.get("capacity")), checked_at=now)
        health = replace(health, checked=time.monotonic())
        self._cache[client.id] = health
        return health


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value <= protocol.MAX_SEQ else None


# -- placement ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A manager a new agent may go to: up, with room, carrying the label asked for."""

    client: ClientRecord
    health: Health

    @property
    def agents(self) -> int:
        return self.health.agents or 0

    @property
    def room(self) -> float:
        capacity = capacity_of(self.client, self.health)
        return float("inf") if capacity is None else capacity - self.agents


class PlacementPolicy(LoggingConfigurable):
    """Picks the manager of a new agent among candidates (never empty). Subclass it and
    name the subclass in `ControllerApp.placement_policy` (AGENSTRA_PLACEMENT_POLICY)."""

    def choose(self, candidates: list[Candidate]) -> Candidate:
        raise NotImplementedError


class LeastAgents(PlacementPolicy):
    """The manager with the fewest agents; ties go to the first by name."""

    def choose(self, candidates: list[Candidate]) -> Candidate:
        return min(candidates, key=lambda c: (c.agents, c.client.name))


class MostRoom(PlacementPolicy):
    """The manager with the most free capacity (no limit counts as most); ties go to the
    one with the fewest agents."""

    def choose(self, candidates: list[Candidate]) -> Candidate:
        return min(candidates, key=lambda c: (-c.room, c.agents, c.client.name))


async def place(clients: list[ClientRecord], monitor: HealthMonitor, policy: PlacementPolicy,
                label: str | None = None) -> ClientRecord:
    """The manager a new agent goes to; REMOTE_UNAVAILABLE (503) when none can take it."""
    labelled = [c for c in clients if label is None or label in c.labels]
    if not labelled:
        raise AgenstraError(ErrorCode.INVALID_PAYLOAD, f"No manager has the label {label!r}")
    health = await monitor.all(labelled)
    up = [c for c in labelled if health[c.id].up]
    candidates = [Candidate(c, health[c.id]) for c in up if has_room(c, health[c.id])]
    if not candidates:
        which = f"with the label {label!r} " if label else ""
        why = "all are full" if up else "none is up"
        raise AgenstraError(ErrorCode.REMOTE_UNAVAILABLE,
                            f"No manager {which}can take a new agent: {why}", 503)
    chosen = policy.choose(candidates)
    if chosen not in candidates:  # a policy's mistake must not pick a down or full host
        raise AgenstraError(ErrorCode.INTERNAL, "The placement policy chose no candidate")
    return chosen.client


def unavailable_agent(client: ClientRecord, agent_id: str, name: str) -> dict[str, Any]:
    """An agent of a manager that is down, as a listing shows it: from the controller's own
    records (its id and name), saying why it cannot be used now."""
    return {"id": agent_id, "name": name, "clientId": client.id, "available": False,
            "credentials": True,
            "error": protocol.error_payload(
                ErrorCode.REMOTE_UNAVAILABLE,
                f"{HOST_UNAVAILABLE}: the manager {client.name!r} does not answer")}

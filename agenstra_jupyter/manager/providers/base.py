"""The provider interface: what answers an agent's turns (echo, a shell, an agent CLI, ...)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from traitlets import Any as AnyTrait
from traitlets import Instance
from traitlets.config import LoggingConfigurable

from ..models import AgentRecord
from ..runtimes import Runtime

# emit(kind, payload): send a transient `chatEvent` of the running turn to every subscriber.
EmitEvent = Callable[[str, dict[str, Any]], Awaitable[None]]


class ProviderError(Exception):
    """A turn failed for a reason the user should read; the message is short and secret-free."""


@dataclass
class Turn:
    message: str
    correlation_id: str
    stream: bool
    emit: EmitEvent


@dataclass
class TurnResult:
    text: str
    # Structured parts (tool calls, exit codes, ...) carried next to `result` on the wire.
    extra: dict[str, Any] = field(default_factory=dict)


class Provider(LoggingConfigurable):
    """Answers the turns of one agent. One instance per agent, alive while the agent is."""

    name: ClassVar[str]
    description: ClassVar[str]
    # Capability flags a frontend may rely on, e.g. "streaming", "cancel", "sessions".
    capabilities: ClassVar[frozenset[str]] = frozenset()

    agent = Instance(AgentRecord)
    runtime = Instance(Runtime)
    # Saves provider memory (e.g. a CLI session id) with the agent: await save_state(dict).
    save_state = AnyTrait()

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        """Raise ValueError with a short message if `config` is not usable by this provider."""

    @classmethod
    def info(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "description": cls.description,
            "capabilities": sorted(cls.capabilities),
        }

    async def run_turn(self, turn: Turn) -> TurnResult:
        """Answer one user message. Cancellation of the calling task must stop the work."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release long-lived resources (agent processes, HTTP sessions)."""

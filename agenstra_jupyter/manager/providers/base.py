"""The provider interface: what answers an agent's turns (echo, a shell, an agent CLI, ...)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from traitlets import Any as AnyTrait
from traitlets import Instance
from traitlets.config import LoggingConfigurable

from ...protocol import ChatEventKind
from ..bounds import TurnLimits, clip_diff, clip_text, wire_size
from ..models import AgentRecord
from ..permissions import AskPermission, PermissionAsk, Resolution, permission_part, refuse_all
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
    limits: TurnLimits = field(default_factory=TurnLimits)
    # Asks before the agent acts (policy first, then the user); see permissions.py.
    ask: AskPermission = refuse_all
    # Whether the agent has as many requests waiting as it may: one more asked now gets the
    # policy's answer or a rejection at once, so a provider need not prepare it (no sandbox
    # exec to judge its paths). Untrusted agents can flood; this keeps that cheap.
    crowded: Callable[[], bool] = lambda: False


@dataclass
class TurnResult:
    text: str
    # Structured parts (tool calls, exit codes, ...) carried next to `result` on the wire.
    extra: dict[str, Any] = field(default_factory=dict)


# Tool output kept in events and in the stored answer; the rest is cut (the agent has it).
MAX_TOOL_RESULT = 8 * 1024


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TOOL_RESULT:
        return value[:MAX_TOOL_RESULT] + "\n[truncated]"
    return value


class TurnRecorder:
    """Streams a turn's events to listeners and keeps what the final answer stores.

    Providers translate their protocol into these calls. The text is kept once (it becomes
    the answer's `result`); tool calls and results are sent and kept as its `parts`. Past
    the turn's limits nothing more is kept or sent, so one huge answer costs no more than
    a capped one: the text ends in "[truncated]" and the answer says `truncated: true`.
    """

    def __init__(self, turn: Turn) -> None:
        self._emit = turn.emit
        self._ask = turn.ask
        self.crowded = turn.crowded
        self._limits = turn.limits
        self._text: list[str] = []
        self._text_size = 0
        self.parts: list[dict[str, Any]] = []
        self._parts_size = 2
        self._text_full = self._parts_full = False
        self._tool_names: dict[str, str] = {}

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def truncated(self) -> bool:
        return self._text_full or self._parts_full

    async def delta(self, text: str) -> None:
        if not text or self._text_full:
            return
        size = wire_size(text) - 2
        if self._text_size + size > self._limits.text_bytes:
            text, _ = clip_text(text, self._limits.text_bytes - self._text_size)
            self._text_full = True
        self._text.append(text)
        self._text_size += size
        await self._emit(ChatEventKind.ASSISTANT_DELTA, {"delta": text})

    def _keep(self, part: dict[str, Any]) -> bool:
        """Keep `part` if the parts still have room; once full, later parts are dropped."""
        size = wire_size(part) + 1
        if self._parts_full or self._parts_size + size > self._limits.parts_bytes:
            self._parts_full = True
            return False
        self.parts.append(part)
        self._parts_size += size
        return True

    async def tool_call(
        self, tool_call_id: str, name: str, args: Any = None, status: str = "pending",
        diff: list[dict[str, Any]] | None = None,
    ) -> None:
        """A tool call (again, with the same id, when it changes); `diff`: the edit it makes,
        [{path, oldText, newText}], so a tool card can show it."""
        self._tool_names[tool_call_id] = name
        payload: dict[str, Any] = {"toolCallId": tool_call_id, "name": name, "status": status}
        if args is not None:
            payload["args"] = _clip(args)
        if diff:
            payload["diff"] = clip_diff(diff, MAX_TOOL_RESULT)
        if self._keep({"kind": ChatEventKind.TOOL_CALL, **payload}):
            await self._emit(ChatEventKind.TOOL_CALL, payload)

    def tool_name(self, tool_call_id: str, fallback: str | None = None) -> str:
        """The name a tool call was announced with (or `fallback`)."""
        return self._tool_names.get(tool_call_id) or fallback or "tool"

    async def tool_result(
        self, tool_call_id: str, result: Any = None, is_error: bool = False,
        name: str | None = None,
    ) -> None:
        payload: dict[str, Any] = {
            "toolCallId": tool_call_id,
            "name": name or self._tool_names.get(tool_call_id, "tool"),
            "isError": is_error,
        }
        if result is not None:
            payload["result"] = _clip(result)
        if self._keep({"kind": ChatEventKind.TOOL_RESULT, **payload}):
            await self._emit(ChatEventKind.TOOL_RESULT, payload)

    async def ask(self, request: PermissionAsk) -> Resolution:
        """Ask before the agent acts; the outcome is kept as a `permission` part."""
        resolution = await self._ask(request)
        self._keep(permission_part(request, resolution))
        return resolution

    async def status(self, message: str) -> None:
        await self._emit(ChatEventKind.STATUS, {"message": message})

    def result(self, text: str | None = None, **extra: Any) -> TurnResult:
        """The final answer: `text` (or the streamed text) plus the structured parts."""
        if self.truncated:
            extra["truncated"] = True
        return TurnResult(self.text if text is None else text, {"parts": self.parts, **extra})


class Provider(LoggingConfigurable):
    """Answers the turns of one agent. One instance per agent, alive while the agent is."""

    name: ClassVar[str]
    description: ClassVar[str]
    # Capability flags a frontend may rely on, e.g. "streaming", "cancel", "sessions".
    capabilities: ClassVar[frozenset[str]] = frozenset()
    # A config a user can start from (the create form shows it): real keys, no secrets.
    example: ClassVar[dict[str, Any]] = {}

    agent = Instance(AgentRecord)
    runtime = Instance(Runtime)
    # Saves provider memory (e.g. a CLI session id) with the agent: await save_state(dict).
    save_state = AnyTrait()
    # The agent's stored messages, oldest first: await history(limit) -> list of messages.
    history = AnyTrait()
    # Providers that talk to a model over the network get it unless config says otherwise.
    needs_network: ClassVar[bool] = False
    # Whether its tool calls carry their own diffs; if not, the manager adds its before/after
    # of each text file the turn changed (`diff` parts, see manager/changes.py).
    reports_diffs: ClassVar[bool] = False
    # Whether its turns can change the workspace's files: only then is it looked at around
    # each turn (filesChanged, diffs).
    changes_files: ClassVar[bool] = True
    # Whether its agents are handed the notebook tools (MCP) when the manager has them.
    gets_notebook_tools: ClassVar[bool] = False

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        """Raise ValueError with a short message if `config` is not usable by this provider."""

    @classmethod
    def info(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "description": cls.description,
            "capabilities": sorted(cls.capabilities),
            "example": cls.example,
        }

    async def run_turn(self, turn: Turn) -> TurnResult:
        """Answer one user message. Cancellation of the calling task must stop the work."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release long-lived resources (agent processes, HTTP sessions)."""

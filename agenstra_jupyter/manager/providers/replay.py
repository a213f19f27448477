"""Answers turns from a recorded session file: no live agent, no network, no API key.

config: `session` (path of the session file on the manager's host), `agent` (the recorded
agent's name), `mode` (`strict`: a prompt that differs from the recording fails the turn;
`lenient`: such a turn is answered live by `fallback`, a provider and config, and says so).

A recorded turn that asked permission asks again, in the same order (a new request each:
the run's kernel answers it with the recorded decision, see sessions.ReplayDecisions); an
answer other than the recorded one fails the turn in `strict` mode and is reported in
`lenient` mode: the recorded answer could not have come from it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ...protocol import ChatEventKind
from ...sessions import read_session
from ..permissions import PermissionAsk, Resolution
from .base import Provider, ProviderError, Turn, TurnResult

_PERMISSION_EVENTS = (ChatEventKind.PERMISSION_REQUEST, ChatEventKind.PERMISSION_RESOLVED)


class ReplayProvider(Provider):
    name = "replay"
    description = "Replays the turns of a recorded session (agenstra-jupyter run --replay)."
    capabilities = frozenset({"streaming"})
    example = {"session": "session.json", "agent": "assistant", "mode": "strict"}

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        for key in ("session", "agent"):
            if not isinstance(config.get(key), str) or not config[key]:
                raise ValueError(f"config.{key} is required")
        if config.get("mode", "strict") not in ("strict", "lenient"):
            raise ValueError("config.mode must be strict or lenient")
        fallback = config.get("fallback")
        if fallback is not None and not (
            isinstance(fallback, dict) and isinstance(fallback.get("provider"), str)
        ):
            raise ValueError("config.fallback must be {provider, config}")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cursor = int(self.agent.provider_state.get("cursor", 0))
        self._fallback: Provider | None = None

    async def run_turn(self, turn: Turn) -> TurnResult:
        recorded = await asyncio.to_thread(self._recorded_turns)
        expected = recorded[self._cursor] if self._cursor < len(recorded) else None
        if expected is not None and expected["prompt"] == turn.message:
            self._cursor += 1
            await self.save_state({"cursor": self._cursor})
            return await self._replay(expected, turn)
        problem = (
            f"the recording has no turn {self._cursor + 1}" if expected is None
            else f"the recording has prompt {expected['prompt']!r}"
        )
        message = (f"Replay mismatch for agent {self.agent.config['agent']!r}: {problem}, "
                   f"the notebook sent {turn.message!r}")
        if self.agent.config.get("mode", "strict") == "lenient" and self._can_fall_back():
            await turn.emit(ChatEventKind.STATUS, {"message": f"{message}: answered live"})
            result = await self._live(turn)
            return TurnResult(result.text, {**result.extra, "replayed": False})
        raise ProviderError(message)

    def _recorded_turns(self) -> list[dict[str, Any]]:
        path = Path(self.agent.config["session"])
        try:
            _, turns = read_session(path)
        except (OSError, ValueError) as exc:
            raise ProviderError(f"Cannot read the session file: {exc}") from None
        return [t for t in turns if t.get("agent") == self.agent.config["agent"]]

    async def _replay(self, record: dict[str, Any], turn: Turn) -> TurnResult:
        events = record.get("events", [])
        outcomes = {e["payload"].get("requestId"): e["payload"].get("outcome") for e in events
                    if e.get("kind") == ChatEventKind.PERMISSION_RESOLVED
                    and isinstance(e.get("payload"), dict)}
        asked: list[dict[str, Any]] = []
        seen: set[Any] = set()
        for event in events:
            payload = event.get("payload") or {}
            if event["kind"] == ChatEventKind.PERMISSION_REQUEST:
                if payload.get("requestId") in seen:
                    continue  # the copy sent again after a login (older recordings hold it)
                seen.add(payload.get("requestId"))
                asked.append(await self._ask_again(turn, payload,
                                                   outcomes.get(payload.get("requestId"))))
            elif event["kind"] not in _PERMISSION_EVENTS:  # the recorded ones are stale
                await turn.emit(event["kind"], payload)
        response = dict(record.get("response") or {})
        if asked:
            kept = [p for p in response.get("parts") or [] if p.get("kind") != "permission"]
            response["parts"] = kept + asked
        if response.get("type") == "error":
            raise ProviderError(response.get("result", "The recorded turn failed"))
        text = response.pop("result", "")
        response.pop("type", None)
        return TurnResult(text, response)

    async def _ask_again(self, turn: Turn, recorded: dict[str, Any],
                         outcome: str | None) -> dict[str, Any]:
        """Ask a recorded request again; its `permission` part for the answer."""
        options = [o for o in recorded.get("options") or [] if isinstance(o, dict)]
        ask = PermissionAsk(
            title=str(recorded.get("title") or ""), kind=str(recorded.get("kind") or "other"),
            paths=[str(p) for p in recorded.get("paths") or []], diff=recorded.get("diff"),
            tool_call_id=recorded.get("toolCallId"), **({"options": options} if options else {}))
        resolution: Resolution = await turn.ask(ask)
        # Allowed or not is what must agree: a recorded expiry or cancellation is a refusal
        # a replay cannot reproduce as such (its answer comes at once).
        if outcome is not None and (resolution.outcome == "allowed") != (outcome == "allowed"):
            problem = (f"Replay mismatch for agent {self.agent.config['agent']!r}: the "
                       f"recording {outcome} {ask.title!r}, this run {resolution.outcome} it")
            if self.agent.config.get("mode", "strict") != "lenient":
                raise ProviderError(problem)
            await turn.emit(ChatEventKind.STATUS, {"message": problem})
        part = {"kind": "permission", "requestId": resolution.request_id, "title": ask.title,
                "toolKind": ask.kind, "paths": ask.paths, "outcome": resolution.outcome,
                "by": resolution.by, "optionId": resolution.option_id}
        return {**part, "user": resolution.user} if resolution.user else part

    def _can_fall_back(self) -> bool:
        return isinstance(self.agent.config.get("fallback"), dict)

    async def _live(self, turn: Turn) -> TurnResult:
        if self._fallback is None:
            fallback = self.agent.config["fallback"]
            lookup = getattr(self.parent, "provider_class", None)  # the ManagerApp
            provider_class = lookup(fallback["provider"]) if lookup else None
            if provider_class is None:
                raise ProviderError(f"No live provider {fallback['provider']!r} to fall back to")
            live_agent = _with_config(self.agent, fallback.get("config") or {})
            self._fallback = provider_class(parent=self.parent, agent=live_agent,
                                            runtime=self.runtime, save_state=_ignore,
                                            history=self.history)
        return await self._fallback.run_turn(turn)

    async def close(self) -> None:
        if self._fallback is not None:
            await self._fallback.close()


async def _ignore(_: dict[str, Any]) -> None:
    """The live fallback's own state is not kept: the replay's cursor is."""


def _with_config(agent: Any, config: dict[str, Any]) -> Any:
    from dataclasses import replace

    return replace(agent, config=config, provider_state={})

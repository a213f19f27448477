"""A deterministic agent for demos and tests: it says back what it was told."""

from __future__ import annotations

import asyncio
from typing import Any

from .base import Provider, Turn, TurnRecorder, TurnResult


class EchoProvider(Provider):
    name = "echo"
    description = "Answers 'Echo: <message>' (streamed word by word); no model, no runtime."
    capabilities = frozenset({"streaming", "cancel"})
    changes_files = False  # it runs nothing
    example = {"delay": 1}

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        delay = config.get("delay", 0)
        if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not 0 <= delay <= 60:
            raise ValueError("config.delay must be a number of seconds between 0 and 60")

    async def run_turn(self, turn: Turn) -> TurnResult:
        text = f"Echo: {turn.message}"
        delay = float(self.agent.config.get("delay", 0))
        if not turn.stream:
            await asyncio.sleep(delay)
            return TurnResult(text)
        recorder = TurnRecorder(turn)
        words = text.split(" ")
        for index, word in enumerate(words):
            await asyncio.sleep(delay / len(words))
            await recorder.delta(word if index == 0 else f" {word}")
        return recorder.result()

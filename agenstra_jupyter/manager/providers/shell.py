"""A plain shell in the agent's sandbox: each message is a command line run with `sh -c`."""

from __future__ import annotations

from typing import Any

from ...protocol import FORMAT_TEXT, ChatEventKind
from .base import Provider, ProviderError, Turn, TurnResult


class ShellProvider(Provider):
    name = "shell"
    description = "Runs each message as a shell command in the agent's workspace or container."
    capabilities = frozenset({"cancel"})
    example = {"timeout": 60}

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        timeout = config.get("timeout")
        if timeout is not None and (
            not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0
        ):
            raise ValueError("config.timeout must be a positive number of seconds")

    async def run_turn(self, turn: Turn) -> TurnResult:
        # Command output is shown as preformatted text, live and stored (never as markdown).
        await turn.emit(ChatEventKind.STATUS, {"message": "running", "format": FORMAT_TEXT})
        # The message is one argument to sh: the user's command line, never spliced into ours.
        result = await self.runtime.exec(
            self.agent, ["sh", "-c", turn.message], timeout=self.agent.config.get("timeout")
        )
        if result.timed_out:
            raise ProviderError("The command timed out and was stopped")
        output = result.stdout + result.stderr
        if result.truncated:
            output += "\n[output truncated]"
        text = f"{output}{'' if not output or output.endswith(chr(10)) else chr(10)}"
        text += f"[exit code {result.exit_code}]"
        return TurnResult(text, {"exitCode": result.exit_code, "format": FORMAT_TEXT})

"""A deterministic provider for tests, loaded into a real manager through `provider_classes`.

Its answer depends only on the message: `flood <MB>` streams that much text, `raw <MB>`
returns it unstreamed, `tools <n>` makes n tool calls, `hold` runs until cancelled, and
anything else is answered `ok <message>`.
"""

from __future__ import annotations

import asyncio

from agenstra_jupyter.manager.providers import Provider, Turn, TurnRecorder, TurnResult

CHUNK = "x" * 65536


class ScriptedProvider(Provider):
    name = "scripted"
    description = "Answers by a script in the message (tests only)."
    capabilities = frozenset({"streaming", "cancel"})

    async def run_turn(self, turn: Turn) -> TurnResult:
        recorder = TurnRecorder(turn)
        command, _, argument = turn.message.partition(" ")
        if command == "flood":
            for _ in range(int(float(argument) * 2**20) // len(CHUNK)):
                await recorder.delta(CHUNK)
        elif command == "raw":
            return TurnResult("y" * int(float(argument) * 2**20))
        elif command == "tools":
            for index in range(int(argument)):
                await recorder.tool_call(f"t{index}", "read", {"path": "f" * 4000})
                await recorder.tool_result(f"t{index}", "r" * 4000)
            await recorder.delta("done")
        elif command == "hold":
            await recorder.status("holding")  # the test's sentinel: this turn runs now
            await asyncio.Event().wait()  # until the turn is cancelled
        else:
            await recorder.delta(f"ok {turn.message}")
        return recorder.result()


# The manager arguments that offer it next to the built-in providers.
MANAGER_ARGS = [
    f"--ManagerApp.provider_classes={cls}" for cls in (
        "agenstra_jupyter.manager.providers.EchoProvider",
        "agenstra_jupyter.manager.providers.ShellProvider",
        f"{__name__}.ScriptedProvider",
    )
]

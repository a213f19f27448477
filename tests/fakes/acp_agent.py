"""A small ACP agent written with the SDK's agent side, for the `acp` provider's tests.

What it does depends on the prompt:
  hello    streams "Hello from ACP" in chunks
  count    answers how many prompts this session has seen (session continuity)
  files    asks to write outside and inside its cwd (permissions), writes and reads back
  escape   tries symlinks out of its cwd (permission, write, read) and asks to execute
  slow     streams slowly until cancelled, then ends with stopReason "cancelled"
  crash    exits at once, with a message on stderr
"""

from __future__ import annotations

import asyncio
import sys
import uuid

import acp
from acp.schema import (
    InitializeResponse,
    NewSessionResponse,
    PermissionOption,
    PromptResponse,
    ToolCallLocation,
    ToolCallUpdate,
)


class FakeAgent:
    def __init__(self) -> None:
        self.conn = None
        self.prompts: dict[str, int] = {}
        self.cwd: dict[str, str] = {}
        self.cancelled: set[str] = set()

    def on_connect(self, conn) -> None:
        self.conn = conn

    async def initialize(self, protocol_version, client_capabilities=None, client_info=None,
                         **kwargs):
        return InitializeResponse(protocol_version=protocol_version)

    async def new_session(self, cwd, mcp_servers=None, **kwargs):
        session_id = str(uuid.uuid4())
        self.prompts[session_id] = 0
        self.cwd[session_id] = cwd
        return NewSessionResponse(session_id=session_id)

    async def cancel(self, session_id, **kwargs):
        self.cancelled.add(session_id)

    async def say(self, session_id, text):
        await self.conn.session_update(session_id=session_id,
                                       update=acp.update_agent_message_text(text))

    async def prompt(self, prompt, session_id, **kwargs):
        self.prompts[session_id] += 1
        text = "".join(getattr(block, "text", "") for block in prompt).strip()
        if text == "crash":
            print("fake agent: crashing on purpose", file=sys.stderr, flush=True)
            sys.exit(3)
        if text == "hello":
            for piece in ["Hello ", "from ", "ACP"]:
                await self.say(session_id, piece)
        elif text == "count":
            await self.say(session_id, f"prompt number {self.prompts[session_id]}")
        elif text == "files":
            await self.files(session_id)
        elif text == "escape":
            await self.escape(session_id)
        elif text == "slow":
            for _ in range(600):
                if session_id in self.cancelled:
                    self.cancelled.discard(session_id)
                    return PromptResponse(stop_reason="cancelled")
                await self.say(session_id, ".")
                await asyncio.sleep(0.05)
        return PromptResponse(stop_reason="end_turn")

    async def files(self, session_id):
        cwd = self.cwd[session_id]
        verdicts = []
        for name, path in [("outside", "/etc/agenstra-test.txt"), ("inside", f"{cwd}/note.txt")]:
            await self.conn.session_update(session_id=session_id, update=acp.start_tool_call(
                name, f"write {name}", kind="edit", status="pending",
                locations=[ToolCallLocation(path=path)], raw_input={"path": path}))
            answer = await self.conn.request_permission(
                session_id=session_id,
                tool_call=ToolCallUpdate(tool_call_id=name, kind="edit", title=f"write {name}",
                                         locations=[ToolCallLocation(path=path)]),
                options=[PermissionOption(option_id="yes", name="Allow", kind="allow_once"),
                         PermissionOption(option_id="no", name="Reject", kind="reject_once")])
            outcome = answer.outcome
            chosen = getattr(outcome, "option_id", None)
            verdicts.append(f"{name}={chosen}")
            if chosen == "yes":
                await self.conn.write_text_file(session_id=session_id, path=path,
                                                content=f"written {name}\n")
                read = await self.conn.read_text_file(session_id=session_id, path=path)
                result = read.content
            else:
                result = "refused"
            await self.conn.session_update(session_id=session_id, update=acp.update_tool_call(
                name, status="completed",
                content=[acp.tool_content(acp.text_block(result))]))
        await self.say(session_id, " ".join(verdicts))

    async def ask(self, session_id, kind, path):
        answer = await self.conn.request_permission(
            session_id=session_id,
            tool_call=ToolCallUpdate(tool_call_id=kind, kind=kind, title=f"{kind} {path}",
                                     locations=[ToolCallLocation(path=path)]),
            options=[PermissionOption(option_id="yes", name="Allow", kind="allow_once"),
                     PermissionOption(option_id="no", name="Reject", kind="reject_once")])
        return getattr(answer.outcome, "option_id", None) or "none"

    async def escape(self, session_id):
        import os

        cwd = self.cwd[session_id]
        os.symlink("/etc", f"{cwd}/out")
        os.symlink("/etc/hostname", f"{cwd}/host")
        verdicts = [f"edit-via-link={await self.ask(session_id, 'edit', f'{cwd}/out/x.txt')}",
                    f"execute={await self.ask(session_id, 'execute', cwd)}",
                    f"read-inside={await self.ask(session_id, 'read', f'{cwd}/host')}"]
        for name, call in [
            ("write-via-link", self.conn.write_text_file(session_id=session_id,
                                                         path=f"{cwd}/out/x.txt", content="x")),
            ("read-link", self.conn.read_text_file(session_id=session_id, path=f"{cwd}/host")),
        ]:
            try:
                await call
                verdicts.append(f"{name}=done")
            except Exception:
                verdicts.append(f"{name}=error")
        await self.say(session_id, " ".join(verdicts))


if __name__ == "__main__":
    asyncio.run(acp.run_agent(FakeAgent()))

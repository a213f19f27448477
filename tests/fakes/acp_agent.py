"""A small ACP agent written with the SDK's agent side, for the `acp` provider's tests.

What it does depends on the prompt:
  hello    streams "Hello from ACP" in chunks
  count    answers how many prompts this session has seen (session continuity)
  files    asks to write outside and inside its cwd (permissions), writes and reads back
  escape   tries symlinks out of its cwd (permission, write, read) and asks to execute
  slow     streams slowly until cancelled, then ends with stopReason "cancelled"
  crash    exits at once, with a message on stderr
  approve [kind]  asks to edit approved.txt in its cwd with a diff (to run a command for
           `approve execute`; a huge title and diff for `approve big`), offering allow_once /
           allow_always / reject_once / reject_always; writes the file only if allowed;
           answers what it was told
  flood N  asks N permissions at once and answers how many of each outcome it got
  notebook PATH  reads notebook PATH with the notebook tools (MCP) it was given, inserts a
           cell, runs it and answers what it printed (tests/fakes/mcp_driver.py)
  mcp-servers  answers the MCP servers session/new gave it: "type name url sha256(the
           Authorization header)[:16]" each (never a header in clear), or "none". It takes
           HTTP servers (initialize: mcpCapabilities.http) unless FAKE_ACP_NO_MCP_HTTP=1.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import uuid

import acp
from acp.schema import (
    AgentCapabilities,
    InitializeResponse,
    McpCapabilities,
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
        self.mcp: dict[str, list] = {}
        self.cancelled: set[str] = set()

    def on_connect(self, conn) -> None:
        self.conn = conn

    async def initialize(self, protocol_version, client_capabilities=None, client_info=None,
                         **kwargs):
        http = os.environ.get("FAKE_ACP_NO_MCP_HTTP") != "1"
        return InitializeResponse(protocol_version=protocol_version, agent_capabilities=(
            AgentCapabilities(mcp_capabilities=McpCapabilities(http=http))))

    async def new_session(self, cwd, mcp_servers=None, **kwargs):
        session_id = str(uuid.uuid4())
        self.prompts[session_id] = 0
        self.cwd[session_id] = cwd
        self.mcp[session_id] = list(mcp_servers or [])
        return NewSessionResponse(session_id=session_id)

    def mcp_servers(self, session_id):
        found = []
        for server in self.mcp[session_id]:
            headers = {h.name: h.value for h in getattr(server, "headers", None) or []}
            digest = hashlib.sha256(headers.get("Authorization", "").encode()).hexdigest()
            found.append(f"{getattr(server, 'type', 'stdio')} {server.name} "
                         f"{getattr(server, 'url', '')} {digest[:16]}")
        return "; ".join(found) or "none"

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
        elif text.startswith("notebook "):
            await self.notebook(session_id, text.split(maxsplit=1)[1])
        elif text == "mcp-servers":
            await self.say(session_id, self.mcp_servers(session_id))
        elif text == "count":
            await self.say(session_id, f"prompt number {self.prompts[session_id]}")
        elif text == "files":
            await self.files(session_id)
        elif text == "escape":
            await self.escape(session_id)
        elif text.startswith("flood"):
            await self.flood(session_id, int(text.split()[1]))
            if session_id in self.cancelled:
                self.cancelled.discard(session_id)
                return PromptResponse(stop_reason="cancelled")
        elif text.startswith("approve"):
            kind = text.split()[1] if len(text.split()) > 1 else "edit"
            await self.approve(session_id, kind)
            if session_id in self.cancelled:
                self.cancelled.discard(session_id)
                return PromptResponse(stop_reason="cancelled")
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

    async def approve(self, session_id, kind):
        cwd = self.cwd[session_id]
        path = f"{cwd}/approved.txt"
        call_id = f"approve-{self.prompts[session_id]}"
        diff = acp.tool_diff_content(path, "approved content\n", "old content\n")
        title = "Write approved.txt" if kind != "execute" else "Run make"
        if kind == "big":
            kind, title = "edit", "T" * 5000
            diff = acp.tool_diff_content(path, "x" * 100_000, "y" * 100_000)
        await self.conn.session_update(session_id=session_id, update=acp.start_tool_call(
            call_id, title, kind=kind, status="pending", locations=[ToolCallLocation(path=path)],
            content=[diff] if kind == "edit" else None))
        answer = await self.conn.request_permission(
            session_id=session_id,
            tool_call=ToolCallUpdate(tool_call_id=call_id, kind=kind, title=title,
                                     locations=[ToolCallLocation(path=path)],
                                     content=[diff] if kind == "edit" else None),
            options=[PermissionOption(option_id="yes", name="Allow", kind="allow_once"),
                     PermissionOption(option_id="always", name="Always", kind="allow_always"),
                     PermissionOption(option_id="no", name="Reject", kind="reject_once"),
                     PermissionOption(option_id="never", name="Never", kind="reject_always")])
        chosen = getattr(answer.outcome, "option_id", None)
        allowed = chosen in ("yes", "always")
        if allowed and kind == "edit":
            await self.conn.write_text_file(session_id=session_id, path=path,
                                            content="approved content\n")
        await self.conn.session_update(session_id=session_id, update=acp.update_tool_call(
            call_id, status="completed" if allowed else "failed"))
        written = "written" if allowed and kind == "edit" else "untouched"
        await self.say(session_id, f"approve: {chosen or answer.outcome.outcome} file={written}")

    async def flood(self, session_id, count):
        cwd = self.cwd[session_id]
        answers = await asyncio.gather(*(
            self.ask(session_id, "edit", f"{cwd}/flood-{n}.txt") for n in range(count)))
        counts = {a: answers.count(a) for a in sorted(set(answers))}
        await self.say(session_id, " ".join(f"{a}={n}" for a, n in counts.items()))

    async def ask(self, session_id, kind, path):
        answer = await self.conn.request_permission(
            session_id=session_id,
            tool_call=ToolCallUpdate(tool_call_id=kind, kind=kind, title=f"{kind} {path}",
                                     locations=[ToolCallLocation(path=path)]),
            options=[PermissionOption(option_id="yes", name="Allow", kind="allow_once"),
                     PermissionOption(option_id="no", name="Reject", kind="reject_once")])
        return getattr(answer.outcome, "option_id", None) or "none"

    async def notebook(self, session_id, path):
        """Uses the notebook tools it was given, telling each call as a tool call."""
        from mcp_driver import notebook_task  # beside this script

        calls: list[str] = []

        async def announce(name, status, arguments, output):
            if status == "pending":
                calls.append(f"mcp-{len(calls) + 1}")
                await self.conn.session_update(session_id=session_id, update=acp.start_tool_call(
                    calls[-1], name, kind="other", status="pending", raw_input=arguments))
            else:
                await self.conn.session_update(session_id=session_id, update=acp.update_tool_call(
                    calls[-1], status=status, raw_output=output))

        servers = [s for s in self.mcp[session_id] if getattr(s, "url", None)]
        if not servers:
            await self.say(session_id, "notebook: no notebook tools")
            return
        await self.say(session_id, await notebook_task(servers[0], path, announce))

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

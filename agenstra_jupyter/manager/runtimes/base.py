"""The runtime interface: where an agent's commands run (a sandboxed process, a container)."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from traitlets import Float, Int
from traitlets.config import LoggingConfigurable

from ..models import AgentRecord
from ..notebook_tools import McpEndpoint, NotebookTools

# Longest line a provider reads from an agent's output (JSON events can be large).
STREAM_LIMIT = 32 * 1024 * 1024


class RuntimeFailure(Exception):
    """A runtime could not do what was asked; the message is safe to show to a user."""


@dataclass
class ExecResult:
    exit_code: int | None
    stdout: str
    stderr: str
    truncated: bool = False
    timed_out: bool = False


class AgentProcess(ABC):
    """A command running inside an agent's runtime, with streamed output.

    `stdout` and `stderr` are asyncio StreamReaders whatever the runtime, so providers
    read lines the same way from a local process and from a `docker exec`.
    """

    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader

    @abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abstractmethod
    async def close_stdin(self) -> None: ...

    @abstractmethod
    async def wait(self) -> int:
        """Wait for the command to end; return its exit code."""

    @abstractmethod
    async def kill(self) -> None:
        """Stop the command and everything it started. Safe to call twice."""


class Runtime(LoggingConfigurable):
    """One way to run agents. Subclasses are registered with the manager's `runtime_classes`."""

    name: ClassVar[str]
    description: ClassVar[str]

    exec_timeout = Float(
        600.0, help="Seconds a single command (one shell turn) may run before it is killed."
    ).tag(config=True, env="AGENSTRA_EXEC_TIMEOUT")
    output_limit = Int(
        256 * 1024, help="Bytes of stdout (and of stderr) kept from a command; the rest is dropped."
    ).tag(config=True, env="AGENSTRA_OUTPUT_LIMIT")

    # Set by the manager when it has the controller's MCP socket (notebook_tools.py).
    notebook_tools: NotebookTools | None = None

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        """Raise ValueError with a short message if this runtime cannot honour `config`."""

    def mcp_sockets(self, agent: AgentRecord) -> dict[int, str]:
        """The relays to the notebook tools `agent`'s sandbox gets (inside port -> socket)."""
        return self.notebook_tools.relays(agent) if self.notebook_tools else {}

    def relayed_endpoint(self, agent: AgentRecord) -> McpEndpoint | None:
        """The endpoint if `agent`'s commands get the relay now (see mcp_sockets)."""
        if not self.mcp_sockets(agent) or self.notebook_tools is None:
            return None
        return self.notebook_tools.endpoint(agent)

    async def notebook_endpoint(self, agent: AgentRecord) -> McpEndpoint | None:
        """The notebook tools as `agent` reaches them from inside its runtime, or None when
        it does not get them (no project, no token, no socket, no relay possible)."""
        return self.relayed_endpoint(agent)

    def mcp_environment(self, agent: AgentRecord,
                        env: Mapping[str, str] | None) -> dict[str, str]:
        """`env` plus AGENSTRA_MCP_URL / AGENSTRA_MCP_TOKEN when the agent gets the tools
        (set last: an agent's own config cannot point them elsewhere)."""
        endpoint = self.relayed_endpoint(agent)
        return {**(env or {}), **(endpoint.env() if endpoint else {})}

    def validate_project(self, project: Path) -> None:
        """Raise ValueError with a short message if agents of this runtime cannot work in
        the (already checked) project folder. Called in a thread: it may touch the disk."""

    def host_workspace(self, agent: AgentRecord) -> Path | None:
        """The agent's workspace as a folder on the manager's host (to see which files a
        turn changed), or None when it lives elsewhere (a container's volume)."""
        return None

    async def available(self) -> bool:
        """Whether this runtime can run agents on this host right now."""
        return True

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description}

    async def shutdown(self) -> None:
        """The manager is stopping: end what runs in this process (agents may stay up)."""

    async def start(self, agent: AgentRecord) -> None:
        """Make the agent's environment ready (idempotent)."""
        raise NotImplementedError

    async def stop(self, agent: AgentRecord) -> None:
        """Stop everything the agent runs; keep its workspace (idempotent)."""
        raise NotImplementedError

    async def remove(self, agent: AgentRecord) -> None:
        """Stop the agent and delete its environment and workspace (idempotent)."""
        raise NotImplementedError

    async def spawn(
        self, agent: AgentRecord, argv: list[str], env: Mapping[str, str] | None = None
    ) -> AgentProcess:
        """Start `argv` (an argument list, never a shell string) in the agent's environment."""
        raise NotImplementedError

    def workspace_path(self, agent: AgentRecord) -> str:
        """The agent's workspace as the agent itself sees it (its working directory)."""
        raise NotImplementedError

    async def write_file(self, agent: AgentRecord, path: str, content: str) -> None:
        """Write a text file in the agent's environment (relative paths: its HOME)."""
        script = 'cd "${HOME:-.}" 2>/dev/null; mkdir -p "$(dirname "$1")" && cat > "$1"'
        result = await self.exec(agent, ["sh", "-c", script, "sh", path], stdin=content.encode())
        if result.exit_code != 0:
            raise RuntimeFailure(f"Could not write {path} in the agent's workspace")

    async def write_private_file(self, agent: AgentRecord, path: str, content: str) -> str:
        """Write an owner-only (0600) file under the agent's HOME, its content through stdin
        (never a command line); return its absolute path as the agent sees it."""
        # Made owner-only before anything is written: a file there before (config.files)
        # keeps its mode through `cat >`.
        script = ('umask 077; cd "${HOME:?}" && mkdir -p "$(dirname "$1")" && '
                  'touch "$1" && chmod 600 "$1" && cat > "$1" && printf %s "$HOME/$1"')
        result = await self.exec(agent, ["sh", "-c", script, "sh", path],
                                 stdin=content.encode())
        if result.exit_code != 0 or not result.stdout.startswith("/"):
            raise RuntimeFailure(f"Could not write {path} in the agent's HOME")
        return result.stdout

    async def exec(
        self,
        agent: AgentRecord,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run a command to completion with a timeout and capped output.

        Cancelling the calling task kills the command.
        """
        process = await self.spawn(agent, argv, env)
        reading = asyncio.ensure_future(
            asyncio.gather(
                _read_capped(process.stdout, self.output_limit),
                _read_capped(process.stderr, self.output_limit),
                process.wait(),
            )
        )
        try:
            if stdin:
                await process.write(stdin)
            await process.close_stdin()
            try:
                (out, out_cut), (err, err_cut), code = await asyncio.wait_for(
                    asyncio.shield(reading), timeout or self.exec_timeout
                )
            except asyncio.TimeoutError:
                return ExecResult(None, "", "", timed_out=True)
            return ExecResult(code, _text(out), _text(err), truncated=out_cut or err_cut)
        finally:
            # Killing ends the reads too (EOF); a cancelled caller still waits for that.
            with contextlib.suppress(Exception):
                await asyncio.shield(process.kill())
            if not reading.done():
                reading.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(reading)


async def _read_capped(reader: asyncio.StreamReader, limit: int) -> tuple[bytes, bool]:
    """Read to EOF, keeping the first `limit` bytes; drain the rest so the child never blocks."""
    kept = bytearray()
    truncated = False
    while chunk := await reader.read(65536):
        room = limit - len(kept)
        if room > 0:
            kept += chunk[:room]
        truncated = truncated or len(chunk) > room
    return bytes(kept), truncated


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")

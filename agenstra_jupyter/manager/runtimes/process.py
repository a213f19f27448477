"""The embedded default runtime: each agent is a workspace directory on this host.

Commands run as subprocesses from argument lists, sandboxed with bubblewrap when it is
installed: the host is read-only, the manager's data is hidden, the agent's workspace
is the only writable path, and the network is off unless the agent asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path

from traitlets import Enum, Unicode

from ..models import AgentRecord
from .base import STREAM_LIMIT, AgentProcess, Runtime, RuntimeFailure

# What a sandboxed command may see of the manager's environment; the rest (API keys
# among it) stays out unless an agent's config passes it explicitly.
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")


class LocalProcess(AgentProcess):
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self.stdout = process.stdout  # type: ignore[assignment]
        self.stderr = process.stderr  # type: ignore[assignment]

    async def write(self, data: bytes) -> None:
        stdin = self._process.stdin
        if stdin is None or stdin.is_closing():
            raise BrokenPipeError("stdin is closed")
        stdin.write(data)
        await stdin.drain()

    async def close_stdin(self) -> None:
        stdin = self._process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()

    async def wait(self) -> int:
        return await self._process.wait()

    async def kill(self) -> None:
        if self._process.returncode is None:
            # The process leads its own session: kill the whole group it started.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            await self._process.wait()


class ProcessRuntime(Runtime):
    name = "process"
    description = "A workspace directory on the manager's host; commands sandboxed with bwrap."

    workspace_root = Unicode(
        "", help="Directory holding one workspace per agent (default: DATA_DIR/workspaces)."
    ).tag(config=True, env="AGENSTRA_WORKSPACE_ROOT")
    sandbox = Enum(
        ["auto", "bwrap", "none"],
        default_value="auto",
        help="auto: bubblewrap when installed, else a plain subprocess; bwrap: require it.",
    ).tag(config=True, env="AGENSTRA_SANDBOX")
    hidden_path = Unicode(
        "", help="A host path the sandbox hides (the manager's data directory)."
    ).tag(config=True)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._running: dict[str, set[LocalProcess]] = {}
        self._warned_unsandboxed = False

    def workspace(self, agent: AgentRecord) -> Path:
        return Path(self.workspace_root) / agent.id

    def workspace_path(self, agent: AgentRecord) -> str:
        return str(self.workspace(agent))

    async def start(self, agent: AgentRecord) -> None:
        self.workspace(agent).mkdir(parents=True, exist_ok=True)

    async def stop(self, agent: AgentRecord) -> None:
        for process in list(self._running.get(agent.id, ())):
            await process.kill()

    async def shutdown(self) -> None:
        for processes in list(self._running.values()):
            for process in list(processes):
                await process.kill()

    async def available(self) -> bool:
        try:
            self._sandbox_kind()
        except RuntimeFailure:
            return False
        return True

    def info(self) -> dict[str, object]:
        try:
            sandbox = self._sandbox_kind()
        except RuntimeFailure:
            sandbox = "missing"
        return {**super().info(), "sandbox": sandbox}

    async def remove(self, agent: AgentRecord) -> None:
        await self.stop(agent)
        await asyncio.to_thread(shutil.rmtree, self.workspace(agent), True)

    async def spawn(
        self, agent: AgentRecord, argv: list[str], env: Mapping[str, str] | None = None
    ) -> AgentProcess:
        if not argv or not all(isinstance(arg, str) for arg in argv):
            raise RuntimeFailure("A command is a non-empty list of strings")
        workspace = self.workspace(agent)
        workspace.mkdir(parents=True, exist_ok=True)
        command = self._sandboxed(agent, workspace, argv)
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                cwd=workspace,
                env=self._environment(workspace, env),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                limit=STREAM_LIMIT,
            )
        except FileNotFoundError:
            raise RuntimeFailure(f"Command not found: {argv[0]}") from None
        except PermissionError:
            raise RuntimeFailure(f"Command not executable: {argv[0]}") from None
        local = LocalProcess(process)
        running = self._running.setdefault(agent.id, set())
        running.add(local)
        process_done = asyncio.ensure_future(process.wait())
        process_done.add_done_callback(lambda _: running.discard(local))
        return local

    def _environment(self, workspace: Path, extra: Mapping[str, str] | None) -> dict[str, str]:
        env = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
        env.update(HOME=str(workspace), TERM="dumb", AGENSTRA_WORKSPACE=str(workspace))
        env.update(extra or {})
        return env

    def _sandbox_kind(self) -> str:
        if self.sandbox == "none":
            return "none"
        if shutil.which("bwrap"):
            return "bwrap"
        if self.sandbox == "bwrap":
            raise RuntimeFailure("The bwrap sandbox is required but bubblewrap is not installed")
        return "none"

    def _sandboxed(self, agent: AgentRecord, workspace: Path, argv: list[str]) -> list[str]:
        if self._sandbox_kind() == "none":
            if not self._warned_unsandboxed:
                self.log.warning("bubblewrap not found: agent commands run unsandboxed")
                self._warned_unsandboxed = True
            return argv
        # Order matters: a tmpfs hides what is under it, later binds punch through it.
        args = [
            "bwrap",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
        ]
        if self.hidden_path and not Path(self.hidden_path).is_relative_to("/tmp"):
            args += ["--tmpfs", self.hidden_path]
        args += [
            "--bind",
            str(workspace),
            str(workspace),
            "--chdir",
            str(workspace),
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
        ]
        if agent.config.get("network", "none") != "none":
            args.append("--share-net")
        return [*args, "--", *argv]

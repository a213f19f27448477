"""The local manager: an `agenstra-manager` subprocess supervised like a kernel.

It listens on a free 127.0.0.1 port with a fresh API key (passed by environment, never on
the command line), runs in its own session (a Ctrl-C meant for the server never reaches
it), is restarted on the same port with backoff if it dies, watches its parent so it
never outlives the Jupyter server, and is stopped with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from ..manager import lock
from ..manager.app import READY_LINE

READY_PREFIX = READY_LINE.split("{", 1)[0]
START_TIMEOUT = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class LocalManager:
    def __init__(
        self,
        data_dir: Path,
        extra_args: Sequence[str],
        log: logging.Logger,
        restart_delay_max: float = 30.0,
        project_roots: Sequence[str] = (),
        mcp_socket: str | None = None,
        mcp_base_url: str = "/",
    ) -> None:
        self.data_dir = data_dir
        self.project_roots = list(project_roots)  # the Jupyter root: same host, same files
        # The controller's MCP-only socket and the server's base_url: the notebook tools
        # the manager hands its project agents (DESIGN.md "Notebook tools (MCP)").
        self.mcp_socket = mcp_socket
        self.mcp_base_url = mcp_base_url
        self.api_key = secrets.token_urlsafe(32)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._extra_args = list(extra_args)
        self._log = log
        self._restart_delay_max = restart_delay_max
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._drain: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        """Start the manager and wait until it listens; then keep it alive."""
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="agenstra-local-manager")

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        process = self._process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()

    async def _spawn(self) -> None:
        lock.check_free(self.data_dir)  # a clear reason, not "did not start"
        argv = [
            sys.executable, "-m", "agenstra_jupyter.manager.app",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.data_dir), "--parent-pid", str(os.getpid()),
            *self._extra_args,
        ]
        # Its key, whatever the server's environment says (a server run as a Hub service
        # would otherwise turn the manager's Hub authentication on).
        env = {**os.environ, "AGENSTRA_API_KEY": self.api_key, "AGENSTRA_HUB_AUTH": "0",
               "AGENSTRA_AUTHENTICATOR_CLASS": "agenstra_jupyter.manager.auth.KeyGate"}
        if self.project_roots:
            env["AGENSTRA_PROJECT_ROOTS"] = os.pathsep.join(self.project_roots)
        if self.mcp_socket:
            env["AGENSTRA_MCP_SOCKET"] = self.mcp_socket
            env["AGENSTRA_MCP_BASE_URL"] = self.mcp_base_url
        # A session of its own, as Jupyter gives kernels: the terminal's Ctrl-C reaches the
        # server (which asks for confirmation), not the manager and its running turns.
        self._process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            await asyncio.wait_for(self._await_ready(self._process), START_TIMEOUT)
        except (asyncio.TimeoutError, RuntimeError):
            if self._process.returncode is None:
                self._process.kill()
                await self._process.wait()
            raise RuntimeError("The local agenstra-manager did not start") from None
        self._log.info("Local agenstra-manager (pid %s) at %s", self._process.pid, self.endpoint)

    async def _await_ready(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            if line.decode(errors="replace").startswith(READY_PREFIX):
                # Keep draining stdout so the manager never blocks on a full pipe.
                self._drain = asyncio.create_task(_drain(process.stdout))
                return
        raise RuntimeError("manager exited before it was ready")

    async def _supervise(self) -> None:
        delay = 0.5
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            self._log.warning("Local agenstra-manager exited (%s); restarting", code)
            while not self._stopping:
                await asyncio.sleep(delay)
                try:
                    await self._spawn()
                    self.restarts += 1
                    delay = 0.5
                    break
                except (RuntimeError, OSError) as exc:
                    self._log.warning("Restarting the local manager failed: %s", exc)
                    delay = min(delay * 2, self._restart_delay_max)


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass

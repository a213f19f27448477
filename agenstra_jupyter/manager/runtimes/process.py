"""The embedded default runtime: each agent is a workspace directory on this host.

Every command runs in a bubblewrap sandbox built from an allow-list (runtimes/sandbox.py)
with resource limits, in network namespaces of its own (runtimes/netns.py). Without a
working sandbox the runtime refuses to run agents, unless the operator opted out with
AGENSTRA_SANDBOX=none.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from traitlets import Enum, Int, List, Unicode

from ..models import AgentRecord
from .base import STREAM_LIMIT, AgentProcess, Runtime, RuntimeFailure
from .netns import SandboxNetwork, can_relay, missing_tool, validate_network
from .sandbox import (
    SLIRP_DNS,
    Limits,
    SandboxSpec,
    bwrap_argv,
    resolve_program,
    sandbox_environment,
    secret_paths,
)

INSTALL_HINT = (
    "Agents cannot run: no working sandbox on this host ({reason}). Install it with "
    "`apt-get install bubblewrap slirp4netns` (or your distribution's packages), or set "
    "AGENSTRA_SANDBOX=none to run agents unsandboxed at your own risk."
)


class LocalProcess(AgentProcess):
    def __init__(self, process: asyncio.subprocess.Process,
                 network: SandboxNetwork | None = None) -> None:
        self._process = process
        self._network = network
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
        code = await self._process.wait()
        await self._close_network()
        return code

    async def kill(self) -> None:
        if self._process.returncode is None:
            # bwrap leads its own process group; its PID namespace dies with it, taking
            # every process the agent started (setsid or not) along.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            await self._process.wait()
        await self._close_network()

    async def _close_network(self) -> None:
        network, self._network = self._network, None
        if network is not None:
            await network.close()


class ProcessRuntime(Runtime):
    name = "process"
    description = "A workspace directory on the manager's host; commands sandboxed with bwrap."

    workspace_root = Unicode(
        "", help="Directory holding one workspace per agent (default: DATA_DIR/workspaces)."
    ).tag(config=True, env="AGENSTRA_WORKSPACE_ROOT")
    state_root = Unicode(
        "", help="Directory holding each agent's private HOME (default: DATA_DIR/agents)."
    ).tag(config=True, env="AGENSTRA_AGENT_STATE_ROOT")
    sandbox = Enum(
        ["bwrap", "none"],
        default_value="bwrap",
        help="bwrap: every agent command runs in a bubblewrap sandbox, and agents do not run "
        "when it cannot be made; none: no sandbox at all (only for hosts that isolate the "
        "manager themselves). AGENSTRA_SANDBOX.",
    ).tag(config=True, env="AGENSTRA_SANDBOX")
    protected_paths = List(
        Unicode(), help="Host paths no sandbox may show besides HOME and Jupyter's directories "
        "(the manager adds its data directory)."
    ).tag(config=True)
    memory_limit = Unicode(
        "2g", help="Memory (data segment) per agent process, e.g. 512m, 2g; 0: no limit. "
        "AGENSTRA_PROCESS_MEMORY."
    ).tag(config=True, env="AGENSTRA_PROCESS_MEMORY")
    pids_limit = Int(
        512, help="Processes an agent may run at once (0: no limit; the kernel does not apply "
        "it when the manager runs as root). AGENSTRA_PROCESS_PIDS."
    ).tag(config=True, env="AGENSTRA_PROCESS_PIDS")
    file_size_limit = Unicode(
        "4g", help="Largest file an agent process may write; 0: no limit. "
        "AGENSTRA_PROCESS_FILE_SIZE."
    ).tag(config=True, env="AGENSTRA_PROCESS_FILE_SIZE")
    cpu_time_limit = Int(
        7200, help="CPU seconds per agent process (0: no limit). AGENSTRA_PROCESS_CPU_TIME."
    ).tag(config=True, env="AGENSTRA_PROCESS_CPU_TIME")
    tmp_size = Unicode(
        "1g", help="Size of each sandbox's private /tmp (held in memory); 0: the kernel's "
        "default. AGENSTRA_PROCESS_TMP_SIZE."
    ).tag(config=True, env="AGENSTRA_PROCESS_TMP_SIZE")

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._running: dict[str, set[LocalProcess]] = {}
        self._sandbox_works = False
        self._problem: str | None = None

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        validate_network(config)

    def mcp_sockets(self, agent: AgentRecord) -> dict[int, str]:
        # Unsandboxed commands share the host's network: there is no inside port to relay;
        # without nsenter there is no relay. Then no tools, and the agent still runs.
        if self.sandbox == "none" or not can_relay():
            return {}
        return super().mcp_sockets(agent)

    def workspace(self, agent: AgentRecord) -> Path:
        """Its project (the user's folder), else its private workspace."""
        return Path(agent.project) if agent.project else self.private_workspace(agent)

    def private_workspace(self, agent: AgentRecord) -> Path:
        return Path(self.workspace_root) / agent.id

    def host_workspace(self, agent: AgentRecord) -> Path | None:
        return self.workspace(agent)

    @property
    def agents_root(self) -> Path:
        """Where each agent's private state lives (state_root, or beside the workspaces)."""
        if not self.workspace_root:
            raise RuntimeFailure("The process runtime has no workspace_root")
        return Path(self.state_root or Path(self.workspace_root).parent / "agents")

    def home(self, agent: AgentRecord) -> Path:
        return self.agents_root / agent.id / "home"

    def workspace_path(self, agent: AgentRecord) -> str:
        return str(self.workspace(agent))

    async def start(self, agent: AgentRecord) -> None:
        problem = await self.sandbox_problem()
        if problem:
            raise RuntimeFailure(problem)
        await asyncio.to_thread(self._make_dirs, agent)

    def _make_dirs(self, agent: AgentRecord) -> None:
        if agent.project:
            _check_project(agent.project)
        private = [] if agent.project else [self.workspace(agent)]
        for path in (*private, self.home(agent)):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def stop(self, agent: AgentRecord) -> None:
        for process in list(self._running.get(agent.id, ())):
            await process.kill()

    async def shutdown(self) -> None:
        for processes in list(self._running.values()):
            for process in list(processes):
                await process.kill()

    async def available(self) -> bool:
        return await self.sandbox_problem() is None

    def info(self) -> dict[str, object]:
        """What the last check found (`available()` runs it): shown by every frontend."""
        if self.sandbox == "none":
            sandbox = "none"
        else:
            sandbox = "bwrap" if self._sandbox_works else "missing"
        network = "slirp4netns" if shutil.which("slirp4netns") else "missing"
        info: dict[str, object] = {**super().info(), "sandbox": sandbox, "network": network}
        if self._problem:
            info["problem"] = self._problem
        return info

    async def sandbox_problem(self) -> str | None:
        """None when agents can run here; else what is wrong and how to fix it."""
        if self.sandbox == "none" or self._sandbox_works:
            self._problem = None
            return None
        if not shutil.which("bwrap"):
            reason = "bubblewrap is not installed"
        else:
            probe = await asyncio.create_subprocess_exec(
                "bwrap", "--unshare-all", "--ro-bind", "/", "/", "--", "true",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )
            _, stderr = await probe.communicate()
            if probe.returncode == 0:
                self._sandbox_works, self._problem = True, None
                return None
            last = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["failed"]
            reason = f"bubblewrap cannot create namespaces: {last[0]}"
        self._problem = INSTALL_HINT.format(reason=reason)
        return self._problem

    async def remove(self, agent: AgentRecord) -> None:
        await self.stop(agent)
        # Only what is the agent's own: a project is the user's folder and stays.
        await asyncio.to_thread(shutil.rmtree, self.private_workspace(agent), True)
        await asyncio.to_thread(shutil.rmtree, self.agents_root / agent.id, True)

    async def spawn(
        self, agent: AgentRecord, argv: list[str], env: Mapping[str, str] | None = None
    ) -> AgentProcess:
        if not argv or not all(isinstance(arg, str) for arg in argv):
            raise RuntimeFailure("A command is a non-empty list of strings")
        await self.start(agent)
        spec = await asyncio.to_thread(self._spec, agent, argv)
        ports = list(agent.config.get("loopbackPorts", []))
        env = self.mcp_environment(agent, env)
        try:
            if self.sandbox == "none":
                local = await self._exec(spec.program.argv, spec, env)
            else:
                local = await self._exec_sandboxed(spec, ports, env, self.mcp_sockets(agent))
        finally:
            for fd in _fds(spec.workspace_fd, spec.git_fd):  # bwrap holds the mounts now
                os.close(fd)
        running = self._running.setdefault(agent.id, set())
        running.add(local)
        process_done = asyncio.ensure_future(local._process.wait())
        process_done.add_done_callback(lambda _: running.discard(local))
        return local

    def _spec(self, agent: AgentRecord, argv: list[str]) -> SandboxSpec:
        writable = [Path(self.workspace_root), self.agents_root]
        secrets = secret_paths([*self.protected_paths, *writable])
        # Its project is bound explicitly (after any cover-up), and is the agent's to
        # change: nothing in it is trusted as a program.
        if agent.project:
            writable.append(Path(agent.project))
        search_path = os.environ.get("PATH", os.defpath)
        bwrap = shutil.which("bwrap") or "bwrap"
        return SandboxSpec(
            workspace=self.workspace(agent),
            home=self.home(agent),
            program=resolve_program(argv, search_path, secrets, writable),
            bwrap=bwrap,
            tmp_size=_bytes(self.tmp_size),
            secrets=secrets,
            limits=self._limits(),
            network=agent.config.get("network", "none") != "none",
            resolv_conf=self._resolv_conf(),
            # last: nothing after them can fail and leak the descriptors
            workspace_fd=(workspace_fd := self._project_fd(agent, bwrap)),
            git_fd=_open_git_dir(agent.project) if workspace_fd is not None else None,
            git_dir=_git_dir(agent.project) if workspace_fd is None else None,
        )

    def _project_fd(self, agent: AgentRecord, bwrap: str) -> int | None:
        if not agent.project or self.sandbox == "none" or not _bind_fd_works(bwrap):
            return None
        return _open_project(agent.project)

    def _limits(self) -> Limits:
        return Limits(memory=_bytes(self.memory_limit), processes=self.pids_limit,
                      file_size=_bytes(self.file_size_limit), cpu_seconds=self.cpu_time_limit)

    def _resolv_conf(self) -> Path:
        path = self.agents_root / "resolv.conf"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.write_text(f"nameserver {SLIRP_DNS}\n")
        return path

    async def _exec_sandboxed(self, spec: SandboxSpec, ports: list[int],
                              env: Mapping[str, str] | None,
                              sockets: Mapping[int, str]) -> LocalProcess:
        if not spec.network and not ports and not sockets:
            return await self._exec(bwrap_argv(spec), spec, env)
        missing = missing_tool(spec.network, [*ports, *sockets])
        if missing:
            raise RuntimeFailure(
                f"This agent has network access, which needs {missing}: install it "
                "(`apt-get install slirp4netns`) or create the agent with network 'none'"
            )
        # The sandbox starts behind a gate; its network is made, then the gate opens.
        status_r, status_w = os.pipe()
        ready_r, ready_w = os.pipe()
        block_r, block_w = os.pipe()
        try:
            local = await self._exec(bwrap_argv(spec, (ready_w, block_r, status_w)), spec, env,
                                     pass_fds=(status_w, ready_w, block_r))
        except BaseException:
            for fd in (status_r, ready_r, block_w):
                os.close(fd)
            raise
        finally:
            for fd in (status_w, ready_w, block_r):
                os.close(fd)
        try:
            pid = await _child_pid(status_r)
            await _wait_ready(ready_r)
            network = SandboxNetwork()
            await network.attach(pid, spec.network, ports, sockets=sockets)
            local._network = network
            os.write(block_w, b"go\n")
        except BaseException as exc:
            await local.kill()
            if isinstance(exc, (OSError, RuntimeFailure)):
                said = await local.stderr.read(2000)
                self.log.warning("sandbox start failed: %s; bwrap said %r", exc, said)
                raise RuntimeFailure(f"The sandbox did not start: {exc}") from None
            raise
        finally:
            os.close(block_w)
        return local

    async def _exec(self, argv: list[str], spec: SandboxSpec, env: Mapping[str, str] | None,
                    pass_fds: tuple[int, ...] = ()) -> LocalProcess:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=spec.workspace,
                # bwrap hands its environment to the sandbox; nothing in it may steer
                # the host-side bwrap (LD_PRELOAD and friends are refused by config too).
                env=sandbox_environment(spec, env),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                limit=STREAM_LIMIT,
                pass_fds=(*pass_fds, *_fds(spec.workspace_fd, spec.git_fd)),
            )
        except FileNotFoundError:
            raise RuntimeFailure(f"Command not found: {argv[0]}") from None
        except PermissionError:
            raise RuntimeFailure(f"Command not executable: {argv[0]}") from None
        return LocalProcess(process)


def _check_project(project: str) -> None:
    """The project is still the folder that was checked at creation. It is never made
    again (a folder the user removed is theirs to restore), and one replaced by a symlink
    (by the user, or by an agent working on a folder above it) is never followed: bwrap
    would bind wherever it points."""
    if os.path.realpath(project) != project:
        raise RuntimeFailure(f"The project folder {project} was replaced by a link")
    if not os.path.isdir(project):
        raise RuntimeFailure(f"The project folder {project} is gone")


def _open_project(project: str) -> int:
    """An O_PATH descriptor of exactly the checked folder (not a link put in its place
    meanwhile): bwrap binds what it refers to, whatever the path names later."""
    try:
        fd = os.open(project, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise RuntimeFailure(f"The project folder {project} is gone") from None
    if os.readlink(f"/proc/self/fd/{fd}") != project:
        os.close(fd)
        raise RuntimeFailure(f"The project folder {project} was replaced by a link")
    return fd


@functools.lru_cache(maxsize=4)
def _bind_fd_works(bwrap: str) -> bool:
    """bwrap 0.7 and later bind a descriptor (--bind-fd); older ones only a path."""
    try:
        found = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--bind-fd" in found.stdout + found.stderr


def _fds(*fds: int | None) -> tuple[int, ...]:
    return tuple(fd for fd in fds if fd is not None)


def _git_dir(project: str | None) -> Path | None:
    """The project's own `.git` directory by path (bwrap without --bind-fd)."""
    git = Path(project, ".git") if project else None
    return git if git is not None and git.is_dir() and not git.is_symlink() else None


def _open_git_dir(project: str | None) -> int | None:
    """The project's own `.git` directory (never a link, which is not followed), if any."""
    if not project:
        return None
    try:
        return os.open(os.path.join(project, ".git"),
                       os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None


async def _child_pid(status_fd: int) -> int:
    """The sandbox's pid, from bwrap's first status line."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    # The transport goes on reading (bwrap writes its exit status later) and closes at EOF.
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                 os.fdopen(status_fd, "rb", buffering=0))
    try:
        line = await asyncio.wait_for(reader.readline(), 30)
        return int(json.loads(line)["child-pid"])
    except (asyncio.TimeoutError, ValueError, KeyError, TypeError):
        raise RuntimeFailure("The sandbox did not start") from None


async def _wait_ready(ready_fd: int) -> None:
    try:
        said = await asyncio.wait_for(asyncio.to_thread(os.read, ready_fd, 1), 30)
    except asyncio.TimeoutError:
        said = b""
    finally:
        os.close(ready_fd)
    if said != b"1":
        raise RuntimeFailure("the sandbox ended before it was ready")


def _bytes(size: str) -> int:
    """'512m', '2g', '1024' -> bytes (0: no limit)."""
    text = size.strip().lower()
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text or 0)

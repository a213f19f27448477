"""What the container runtimes share: the Docker SDK client, its errors, `docker exec`.

The Docker SDK is blocking: every call runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Mapping
from typing import Any

from .base import STREAM_LIMIT, AgentProcess, RuntimeFailure

IMAGE_MISSING = ("Agent image not found on the Docker host (scripts/build-agent-image.sh "
                 "builds agenstra-agent:latest)")

# `docker exec` processes lead their own process group, so `setsid` would fork and the exec
# would end at once. Instead the wrapper starts the command in the background (not a group
# leader, so setsid does not fork) with the original stdin, reports its pid (= its new
# session and group id) first on stderr, and waits for it, keeping its exit code. The whole
# group can then be killed from a second `docker exec`.
# Kills the command's whole session (its process group), by the shell's own kill: Debian's
# /usr/bin/kill (procps-ng 4.0.2) reads `kill -KILL -PID` as kill(-1), every process of the
# user. dash wants `--` before a negative id, busybox refuses it: the second form is its.
KILL_SESSION = ["sh", "-c", 'kill -s KILL -- "-$1" 2>/dev/null || kill -s KILL "-$1"', "sh"]
SESSION_WRAPPER = [
    "sh", "-c",
    'exec 3<&0; setsid "$@" <&3 3<&- & pid=$!; exec 3<&-; echo "$pid" >&2; wait "$pid"',
    "sh",
]
SESSION_WAIT = 10.0  # seconds a kill waits for the wrapper to report the command's session


class DockerConnection:
    """The Docker SDK client, made once. Making it asks the daemon for its version, so
    only threads touch `client` (`call`, `ready`), never the event loop."""

    def __init__(self, docker_host: str, log: logging.Logger | logging.LoggerAdapter) -> None:
        self.docker_host = docker_host
        self.log = log
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import docker

                self._client = (docker.DockerClient(base_url=self.docker_host)
                                if self.docker_host else docker.from_env())
            return self._client

    async def ready(self) -> Any:
        return await asyncio.to_thread(lambda: self.client)

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`fn` in a thread, Docker's errors as RuntimeFailures a user may read."""
        import docker.errors

        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except docker.errors.ImageNotFound:
            raise RuntimeFailure(IMAGE_MISSING) from None
        except docker.errors.DockerException as exc:
            self.log.warning("docker: %s", exc)
            raise RuntimeFailure("The Docker daemon refused the request") from None

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)

    async def spawn(self, container: Any, argv: list[str], env: Mapping[str, str] | None,
                    *, user: str, workdir: str, call: Any = None) -> DockerExecProcess:
        """Start `argv` in `container` as `user`, the SDK called through `call` (default:
        `self.call`). Created and started as one step a cancellation cannot split: a command
        that was started always gets its process object, so a cancelled caller still kills
        it."""
        if not argv or not all(isinstance(arg, str) for arg in argv):
            raise RuntimeFailure("A command is a non-empty list of strings")
        starting = asyncio.ensure_future(
            self._start_exec(container, argv, env, user, workdir, call or self.call))
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await (await starting).kill()
            raise

    async def _start_exec(self, container: Any, argv: list[str],
                          env: Mapping[str, str] | None, user: str, workdir: str,
                          call: Any) -> DockerExecProcess:
        api = (await self.ready()).api
        created = await call(
            api.exec_create, container.id, [*SESSION_WRAPPER, *argv], stdin=True,
            stdout=True, stderr=True, tty=False, environment=dict(env or {}),
            workdir=workdir, user=user,
        )
        sock = await call(api.exec_start, created["Id"], socket=True)
        return DockerExecProcess(api, container, created["Id"], sock, user)


class DockerExecProcess(AgentProcess):
    """A `docker exec` with stdin, whose multiplexed output a thread feeds into StreamReaders."""

    def __init__(self, api: Any, container: Any, exec_id: str, sock: Any, user: str) -> None:
        self._api = api
        self._container = container
        self._exec_id = exec_id
        self._sock = sock
        self._user = user
        self._loop = asyncio.get_running_loop()
        self.stdout = asyncio.StreamReader(limit=STREAM_LIMIT)
        self.stderr = asyncio.StreamReader(limit=STREAM_LIMIT)
        self._session_id: asyncio.Future[str] = self._loop.create_future()
        self._eof = asyncio.Event()
        self._killed = False
        threading.Thread(target=self._pump, name=f"docker-exec-{exec_id[:12]}", daemon=True).start()

    def _pump(self) -> None:
        from docker.utils.socket import frames_iter

        header = bytearray()
        try:
            for stream, data in frames_iter(self._sock, tty=False):
                if stream == 2 and not self._session_id.done():
                    header += data
                    if b"\n" not in header:
                        continue
                    sid, _, data = bytes(header).partition(b"\n")
                    self._call(self._set_session, sid.decode().strip())
                    if not data:
                        continue
                reader = self.stdout if stream == 1 else self.stderr
                self._call(reader.feed_data, data)
        except (OSError, ValueError):
            pass  # socket closed under us by kill()
        finally:
            self._call(self._finish)

    def _call(self, fn: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
            self._loop.call_soon_threadsafe(fn, *args)

    def _set_session(self, sid: str) -> None:
        if not self._session_id.done():
            self._session_id.set_result(sid)

    def _finish(self) -> None:
        self.stdout.feed_eof()
        self.stderr.feed_eof()
        if not self._session_id.done():
            self._session_id.set_result("")
        self._eof.set()

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._sock._sock.sendall, data)

    async def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._sock._sock.shutdown, socket.SHUT_WR)

    async def wait(self) -> int:
        await self._eof.wait()
        if self._killed:
            return -9
        for _ in range(50):  # the exec may report "running" a moment after EOF
            info = await asyncio.to_thread(self._api.exec_inspect, self._exec_id)
            if not info["Running"]:
                return int(info["ExitCode"])
            await asyncio.sleep(0.05)
        return -1

    async def kill(self) -> None:
        if self._eof.is_set() or self._killed:
            return
        self._killed = True
        # Until the wrapper reports the session, closing our socket is all a kill could do,
        # and the command would run on: wait for it (it comes first thing, or with EOF).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._session_id), SESSION_WAIT)
        sid = self._session_id.result() if self._session_id.done() else ""
        if sid.isdigit():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._container.exec_run, [*KILL_SESSION, sid],
                                        user=self._user)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._sock.close)
        await self._eof.wait()

"""Commands in a Pod through the exec subresource (the websocket, v5.channel.k8s.io).

Channel 0 is stdin, 1 and 2 stdout and stderr, 3 the command's final Status; the message
[255, 0] closes stdin (v5 only: Kubernetes 1.30 or later).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Mapping
from typing import Any

from .base import STREAM_LIMIT, AgentProcess, RuntimeFailure

STDIN, STDOUT, STDERR, STATUS, CLOSE = 0, 1, 2, 3, 255
SESSION_WAIT = 10.0  # seconds a kill waits for the wrapper to report the command's session
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The shell's own kill, the session id an argument: procps-ng 4.0.2's /usr/bin/kill (Debian
# 12) reads `kill -KILL -PID` as kill(-1, ...), every process the user may signal.
KILL_SESSION = ["sh", "-c", 'kill -s KILL -- "-$1"', "sh"]

# The command's environment arrives on stdin (a count, then one NAME=value per line) and is
# exported as data ("$kv" is never evaluated). Then, as in the Docker runtime, the command
# starts in the background as a session leader with the rest of stdin, its pid (= its
# session id) is reported first on stderr, and the wrapper waits for it, keeping its exit
# code; a kill is a second exec that kills that whole session.
ENV_WRAPPER = [
    "sh", "-c",
    'IFS= read -r n || exit 125; while [ "$n" -gt 0 ]; do IFS= read -r kv || exit 125; '
    'export "$kv" || exit 125; n=$((n - 1)); done; cd "$0" || exit 125; '
    'exec 3<&0; setsid "$@" <&3 3<&- & pid=$!; exec 3<&-; echo "$pid" >&2; wait "$pid"',
]


class KubernetesExecProcess(AgentProcess):
    """One exec websocket: channel 0 is stdin, 1 and 2 stdout and stderr, 3 the command's
    final status; [255, 0] closes stdin (v5)."""

    def __init__(self, socket: Any, killer: Any) -> None:
        self._socket = socket
        self._killer = killer  # None: a plain command (no session wrapper)
        self.stdout = asyncio.StreamReader(limit=STREAM_LIMIT)
        self.stderr = asyncio.StreamReader(limit=STREAM_LIMIT)
        loop = asyncio.get_running_loop()
        self._session_id: asyncio.Future[str] = loop.create_future()
        if killer is None:
            self._session_id.set_result("")
        self._status: dict[str, Any] | None = None
        self._killed = False
        self._pump_task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        import aiohttp

        header = bytearray()
        try:
            async for message in self._socket:
                if message.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    break
                data = message.data if isinstance(message.data, bytes) else message.data.encode()
                if not data:
                    continue
                channel, data = data[0], data[1:]
                if channel == STDERR and not self._session_id.done():
                    header += data
                    if b"\n" not in header:
                        continue
                    sid, _, data = bytes(header).partition(b"\n")
                    self._session_id.set_result(sid.decode(errors="replace").strip())
                if channel == STATUS:
                    with contextlib.suppress(ValueError):
                        self._status = json.loads(data)
                elif data and channel in (STDOUT, STDERR):
                    (self.stdout if channel == STDOUT else self.stderr).feed_data(data)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            pass
        finally:
            self.stdout.feed_eof()
            self.stderr.feed_eof()
            if not self._session_id.done():
                self._session_id.set_result("")

    async def write(self, data: bytes) -> None:
        for start in range(0, len(data), 64 * 1024):
            await self._socket.send_bytes(bytes([STDIN]) + data[start:start + 64 * 1024])

    async def close_stdin(self) -> None:
        with contextlib.suppress(Exception):
            await self._socket.send_bytes(bytes([CLOSE, STDIN]))

    async def wait(self) -> int:
        await asyncio.shield(self._pump_task)
        if self._killed:
            return -9
        return exit_code(self._status)

    async def kill(self) -> None:
        if self._pump_task.done() or self._killed:
            return
        self._killed = True
        # Closing the websocket leaves the command running in the container: kill its
        # session from a second exec, once the wrapper has said which one it is.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._session_id), SESSION_WAIT)
        sid = self._session_id.result() if self._session_id.done() else ""
        if sid.isdigit() and self._killer is not None:
            with contextlib.suppress(Exception):
                await self._killer(sid)
        with contextlib.suppress(Exception):
            await self._socket.close()
        await asyncio.shield(self._pump_task)


def exit_code(status: dict[str, Any] | None) -> int:
    """The exit code in an exec's final Status (channel 3); -1 when there is none."""
    if not status:
        return -1
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode" and str(cause.get("message", "")).isdigit():
            return int(cause["message"])
    return -1


def environment_header(env: Mapping[str, str]) -> bytes:
    """The environment as ENV_WRAPPER reads it from stdin: a count, then NAME=value lines."""
    lines = []
    for name, value in env.items():
        if not ENV_NAME.match(name):
            raise RuntimeFailure(f"{name!r} is not an environment variable name")
        if "\n" in value or "\0" in value:
            raise RuntimeFailure(f"The value of {name} holds a line break or a NUL: the "
                                 "kubernetes runtime cannot pass it")
        lines.append(f"{name}={value}\n")
    return f"{len(lines)}\n{''.join(lines)}".encode()

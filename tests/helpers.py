"""Test helpers: a real `agenstra-manager` subprocess and Socket.IO / HTTP clients for it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import socketio

from agenstra_jupyter.protocol import (
    AGENTS_NAMESPACE,
    CLIENTS_NAMESPACE,
    MAX_FRAME_BYTES,
    ControllerEvent,
    ManagerEvent,
)
from agenstra_jupyter.redact import REDACTED

READY_PREFIX = "agenstra-manager listening on "
WAIT = 20.0  # seconds any single expectation may take before the test fails

# The real agent CLIs (scripts/test.sh installs them) and the fake ones in tests/fakes/bin.
CLI_BIN = Path(os.environ.get("AGENSTRA_TEST_CLI_BIN", "/var/tmp/agenstra-clis/node_modules/.bin"))
FAKE_BIN = Path(__file__).parent / "fakes" / "bin"
SECRET = "sk-test-secret-4f9a1c"  # a provider key that must never show up anywhere


def need_cli(name: str) -> None:
    """Skip (fail under AGENSTRA_REQUIRE_CLIS=1) unless the agent CLI `name` is installed."""
    import pytest

    if (CLI_BIN / name).exists():
        return
    reason = f"the {name} CLI is not installed in {CLI_BIN} (scripts/test.sh installs it)"
    if os.environ.get("AGENSTRA_REQUIRE_CLIS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)
# The frame limit every tier's clients use (aiohttp's default would be 4 MiB).
FRAME_OPTIONS = {"websocket_extra_options": {"max_msg_size": MAX_FRAME_BYTES}}


@dataclass
class ManagerProcess:
    """A running `agenstra-manager`, started the way a user or supervisor starts it."""

    data_dir: Path
    api_key: str
    port: int = 0
    db: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None
    url: str = ""
    stdout_lines: list[str] = field(default_factory=list)
    log_path: Path | None = None

    def start(self) -> ManagerProcess:
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-manager.log"
        # Fast hashing for tests; never let dockerd reach for a registry (none is reachable).
        env = {**os.environ, "AGENSTRA_BCRYPT_ROUNDS": "4", "AGENSTRA_DOCKER_PULL": "never",
               **self.env}
        env["AGENSTRA_API_KEY"] = self.api_key
        argv = [
            sys.executable,
            "-m",
            "agenstra_jupyter.manager.app",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            *self.args,
        ]
        if self.db:
            argv += ["--db", self.db]
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=log, text=True, env=env
            )
        deadline = time.monotonic() + WAIT
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"manager exited early:\n{self.log_path.read_text()}")
            self.stdout_lines.append(line)
            if line.startswith(READY_PREFIX):
                self.url = line[len(READY_PREFIX) :].strip()
                self.port = int(self.url.rsplit(":", 1)[1])
                return self
        raise RuntimeError("manager did not get ready in time")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(WAIT)
        finally:
            if self.process.stdout:
                self.stdout_lines += self.process.stdout.readlines()
                self.process.stdout.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def http(self, api_key: str | None = None) -> httpx.AsyncClient:
        key = self.api_key if api_key is None else api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=WAIT)

    async def create_agent(self, **body: Any) -> dict[str, Any]:
        async with self.http() as http:
            response = await http.post("/api/agents", json=body)
            assert response.status_code == 201, response.text
            return response.json()


class EventLog:
    """Everything one Socket.IO client received, with waiting helpers."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()

    def record(self, event: str, payload: Any) -> None:
        self.events.append((event, payload))
        self._changed.set()

    def of(self, event: str) -> list[Any]:
        return [payload for name, payload in self.events if name == event]

    async def wait_for(self, predicate: Callable[[EventLog], Any], timeout: float = WAIT) -> Any:
        async def poll() -> Any:
            while not (result := predicate(self)):
                self._changed.clear()
                await self._changed.wait()
            return result

        return await asyncio.wait_for(poll(), timeout)

    async def wait_count(self, event: str, count: int, timeout: float = WAIT) -> list[Any]:
        await self.wait_for(lambda log: len(log.of(event)) >= count, timeout)
        return self.of(event)

    def messages(self) -> list[dict[str, Any]]:
        return self.of(ManagerEvent.CHAT_MESSAGE)

    def answers(self) -> list[dict[str, Any]]:
        return [m for m in self.messages() if m["from"] == "agent"]


class AgentsClient:
    """A python-socketio client on the manager's `/agents` namespace."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False, **FRAME_OPTIONS)
        self.log = EventLog()
        self.sio.on("*", self.log.record, namespace=AGENTS_NAMESPACE)
        self.sio.on(
            "connect_error",
            lambda data: self.log.record("connect_error", data),
            namespace=AGENTS_NAMESPACE,
        )

    async def connect(
        self, manager: ManagerProcess, api_key: str | None = None, **kwargs: Any
    ) -> AgentsClient:
        key = manager.api_key if api_key is None else api_key
        await self.sio.connect(
            manager.url,
            namespaces=[AGENTS_NAMESPACE],
            auth={"apiKey": key},
            transports=["websocket"],
            wait_timeout=WAIT,
            **kwargs,
        )
        return self

    async def emit(self, event: str, payload: Any = None) -> None:
        await self.sio.emit(event, payload, namespace=AGENTS_NAMESPACE)

    async def login(self, agent: dict[str, Any], after_seq: int | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"agentId": agent["id"], "password": agent["password"]}
        if after_seq is not None:
            payload["afterSeq"] = after_seq
        before = len(self.log.of(ManagerEvent.LOGIN_SUCCESS))
        await self.emit(ManagerEvent.LOGIN, payload)
        successes = await self.log.wait_count(ManagerEvent.LOGIN_SUCCESS, before + 1)
        return successes[-1]

    async def chat(self, message: str, timeout: float = WAIT, **extra: Any) -> dict[str, Any]:
        """Send a message and wait for the agent's answer to it."""
        correlation = extra.pop("correlationId", None) or f"c-{len(self.log.events)}-{message[:8]}"
        await self.emit(
            ManagerEvent.CHAT, {"message": message, "correlationId": correlation, **extra}
        )
        return await self.answer_to(correlation, timeout)

    async def answer_to(self, correlation_id: str, timeout: float = WAIT) -> dict[str, Any]:
        def answered(log: EventLog) -> Any:
            return next((m for m in log.answers() if m["correlationId"] == correlation_id), None)

        return await self.log.wait_for(answered, timeout)

    async def error(self) -> dict[str, Any]:
        errors = await self.log.wait_count(ManagerEvent.ERROR, 1)
        return errors[-1]

    async def close(self) -> None:
        await self.sio.disconnect()


def events_of(client: AgentsClient, correlation_id: str, kind: str | None = None) -> list:
    """The `chatEvent`s of one turn (of one kind) that `client` received."""
    return [e for e in client.log.of(ManagerEvent.CHAT_EVENT)
            if e["correlationId"] == correlation_id and (kind is None or e["kind"] == kind)]


def assert_seq_complete(messages: list[dict[str, Any]], first: int = 1) -> None:
    """Messages are exactly seq first, first+1, ... with no gap and no duplicate."""
    assert [m["seq"] for m in messages] == list(range(first, first + len(messages)))


class FrontendClient:
    """A python-socketio client on the controller's `/clients` namespace, as a kernel uses it."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False, **FRAME_OPTIONS)
        self.log = EventLog()
        self.sio.on("*", self.log.record, namespace=CLIENTS_NAMESPACE)
        self.sio.on("connect_error", lambda data: self.log.record("connect_error", data),
                    namespace=CLIENTS_NAMESPACE)

    async def connect(self, server_url: str, token: str | None, base_url: str = "/jp/",
                      headers: dict[str, str] | None = None) -> FrontendClient:
        url = f"{server_url}?token={token}" if token else server_url
        await self.sio.connect(
            url, socketio_path=f"{base_url.strip('/')}/agenstra/socket.io",
            namespaces=[CLIENTS_NAMESPACE], transports=["websocket"], headers=headers or {},
            wait_timeout=WAIT,
        )
        return self

    async def call(self, event: str, payload: Any) -> Any:
        return await self.sio.call(event, payload, namespace=CLIENTS_NAMESPACE, timeout=WAIT)

    async def set_client(self, client_id: str = "local") -> Any:
        return await self.call(ControllerEvent.SET_CLIENT, {"clientId": client_id})

    async def forward(self, event: str, agent_id: str | None, payload: Any = None) -> Any:
        request: dict[str, Any] = {"event": event}
        if agent_id is not None:
            request["agentId"] = agent_id
        if payload is not None:
            request["payload"] = payload
        return await self.call(ControllerEvent.FORWARD, request)

    def forwarded(self, agent_id: str, event: str | None = None) -> list[dict[str, Any]]:
        return [
            f["payload"] for f in self.log.of(ControllerEvent.FORWARDED_EVENT)
            if f["agentId"] == agent_id and (event is None or f["event"] == event)
        ]

    def messages(self, agent_id: str) -> list[dict[str, Any]]:
        return self.forwarded(agent_id, ManagerEvent.CHAT_MESSAGE)

    async def answer_to(self, agent_id: str, correlation_id: str,
                        timeout: float = WAIT) -> dict[str, Any]:
        def answered(_: EventLog) -> Any:
            return next((m for m in self.messages(agent_id)
                         if m["from"] == "agent" and m["correlationId"] == correlation_id), None)

        return await self.log.wait_for(answered, timeout)

    async def chat(self, agent_id: str, message: str, correlation_id: str) -> dict[str, Any]:
        ack = await self.forward(ManagerEvent.CHAT, agent_id,
                                 {"message": message, "correlationId": correlation_id})
        assert ack == {"ok": True}, ack
        return await self.answer_to(agent_id, correlation_id)

    async def close(self) -> None:
        await self.sio.disconnect()


async def login_cookie(jupyter: Any) -> str:
    """Log in through Jupyter's login page, as a browser does; return the Cookie header."""
    async with httpx.AsyncClient(base_url=jupyter.url) as http:
        page = await http.get(f"{jupyter.base_url}login")
        xsrf = page.cookies["_xsrf"]
        await http.post(f"{jupyter.base_url}login",
                        data={"password": jupyter.token, "_xsrf": xsrf})
        return "; ".join(f"{name}={value}" for name, value in http.cookies.items())


# -- a secret in every config field (tests/test_secrets.py, tests/test_hostile.py) --------

# One distinct value per place a secret can sit in a config.
SECRETS = {
    "env": "env-secret-5d1c9a7e",
    "envKey": "sk-env-key-3b8f2a61",
    "file": "file-secret-90e4c2b8",
    "apiKey": "apikey-secret-6a2d4f1e",
    "flagValue": "flag-secret-c7b3e915",
    "flagPair": "pair-secret-4f0a8d2c",
    "envPair": "envpair-secret-b19e6c3a",
    "header": "header-secret-2e7d5b90",
    "bearer": "bearer-secret-8c4a1f6d",
    "bareToken": "ghp_baretoken7e2c9b14",
    "urlPassword": "urlpass-secret-1a9f3e7c",
    "queryToken": "query-secret-6d2b8e40",
    "nested": "nested-secret-0f5c7a93",
}

# A custom CLI that proves it got the decrypted env and file: it answers their digests.
# (config.files land in the workspace or the agent's HOME, depending on the runtime.)
SCRIPT = (
    "import hashlib,json,os,sys; sys.stdin.read(); "
    "h=lambda s: hashlib.sha256(s.encode()).hexdigest(); "
    "f=[p for p in ('settings.json', os.path.join(os.environ.get('HOME', '.'), "
    "'settings.json')) if os.path.exists(p)][0]; "
    "print(json.dumps({'type':'result','subtype':'success','is_error':False,"
    "'result': h(os.environ['FOO'])+' '+h(open(f).read())}))"
)


def secret_config() -> dict:
    s = SECRETS
    secret_args = [
        "--api-key", s["flagValue"], f"--token={s['flagPair']}", f"GITHUB_TOKEN={s['envPair']}",
        f"x-api-key: {s['header']}", f"Authorization: Bearer {s['bearer']}", s["bareToken"],
        "--model", "m1",
    ]
    return {
        "preset": "custom", "format": "claude", "network": "none",
        "command": ["python3", "-c", SCRIPT, *secret_args],
        "args": secret_args,
        "env": {"FOO": s["env"], "OPENAI_API_KEY": s["envKey"]},
        "files": {"settings.json": s["file"]},
        "apiKey": s["apiKey"],
        "baseUrl": f"https://bob:{s['urlPassword']}@api.example.com/v1"
                   f"?access_token={s['queryToken']}&model=m1",
        "extra": {"env": {"NESTED": s["nested"]}},
    }


MASKED_ARGS = [
    "--api-key", REDACTED, f"--token={REDACTED}", f"GITHUB_TOKEN={REDACTED}",
    f"x-api-key: {REDACTED}", f"Authorization: Bearer {REDACTED}", REDACTED, "--model", "m1",
]
MASKED_CONFIG = {
    "preset": "custom", "format": "claude", "network": "none",
    "command": ["python3", "-c", SCRIPT, *MASKED_ARGS],
    "args": MASKED_ARGS,
    "env": {"FOO": REDACTED, "OPENAI_API_KEY": REDACTED},
    "files": {"settings.json": REDACTED},
    "apiKey": REDACTED,
    "baseUrl": f"https://{REDACTED}@api.example.com/v1?access_token={REDACTED}&model=m1",
    "extra": {"env": {"NESTED": REDACTED}},
}


def leaked(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [name for name, value in SECRETS.items() if value.encode() in data]


def stored_secrets(data_dir: Path) -> list[str]:
    """The plaintext agent passwords and manager API keys a controller keeps (sealed)."""
    import sqlite3

    from cryptography.fernet import Fernet

    with sqlite3.connect(data_dir / "controller.sqlite") as registry:
        sealed = [row[0] for row in registry.execute("select password from agent_credentials")]
        sealed += [row[0] for row in registry.execute("select api_key from clients")]
    box = Fernet((data_dir / "controller.key").read_bytes().strip())
    return [box.decrypt(token.encode()).decode() for token in sealed]


def database_bytes(path: Path) -> bytes:
    """The database file and its -wal/-shm as they lie on disk, read byte for byte."""
    companions = [path.with_name(path.name + suffix) for suffix in ("", "-wal", "-shm")]
    return b"".join(p.read_bytes() for p in companions if p.exists())


def permission_requests(client: AgentsClient, correlation_id: str | None = None) -> list:
    """The `permissionRequest` events `client` received (of one turn)."""
    return [e for e in client.log.of(ManagerEvent.CHAT_EVENT)
            if e["kind"] == "permissionRequest"
            and correlation_id in (None, e["correlationId"])]


async def answer_requests(client: AgentsClient, option_id: str, count: int) -> list:
    """Answer the next `count` permission requests with `option_id`, one at a time."""
    asked = len(permission_requests(client))
    for n in range(asked, asked + count):
        requests = await client.log.wait_for(
            lambda _, n=n: len(permission_requests(client)) > n and permission_requests(client))
        await client.emit(ManagerEvent.PERMISSION_RESPONSE, {
            "requestId": requests[n]["payload"]["requestId"], "optionId": option_id})
    return permission_requests(client)[asked:]


class SlowReader:
    """A websocket client by hand, joined to a Socket.IO namespace, that reads only when
    told to (a small receive buffer): its peer's writes back up, as for a frontend on a
    slow link."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.sid = ""

    @classmethod
    async def connect(cls, url: str, path: str = "/socket.io/", query: str = "",
                      namespace: str = "/") -> SlowReader:
        import base64
        import socket as sockets

        host, port = url.removeprefix("http://").rstrip("/").split(":")
        sock = sockets.socket()
        sock.setsockopt(sockets.SOL_SOCKET, sockets.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET {path}?EIO=4&transport=websocket{query} HTTP/1.1\r\n"
                     f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
        client = cls(reader, writer)
        assert (await client.read()).startswith("0{")  # engine.io's open packet
        joined = "40" if namespace == "/" else f"40{namespace},"
        client.send(joined)
        reply = await client.read()
        assert reply.startswith(joined), reply
        client.sid = json.loads(reply[len(joined):])["sid"]  # the Socket.IO sid
        return client

    def send(self, text: str) -> None:
        """One text frame, masked with a zero key (as a client must mask)."""
        data = text.encode()
        if len(data) < 126:
            header = bytes([0x81, 0x80 | len(data)])
        elif len(data) < 1 << 16:
            header = bytes([0x81, 0x80 | 126]) + len(data).to_bytes(2, "big")
        else:
            header = bytes([0x81, 0x80 | 127]) + len(data).to_bytes(8, "big")
        self.writer.write(header + b"\0\0\0\0" + data)

    async def read(self) -> str:
        head = await self.reader.readexactly(2)
        size = head[1] & 0x7F
        if size == 126:
            size = int.from_bytes(await self.reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await self.reader.readexactly(8), "big")
        return (await self.reader.readexactly(size)).decode()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()

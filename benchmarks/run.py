"""agenstra benchmarks: `python benchmarks/run.py [--json FILE] [--quick]`.

Starts its own processes on 127.0.0.1 (a Jupyter server with the extension and its local
manager, a standalone manager, a bare python-socketio echo server), measures, prints a
table and writes the figures as JSON. See BENCHMARKS.md for results and method.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import socketio

from agenstra_jupyter.sessions import start_server

BARE_SERVER = textwrap.dedent("""
    import socketio, tornado.web, tornado.ioloop, sys
    sio = socketio.AsyncServer(async_mode="tornado")
    @sio.on("echo", namespace="/bench")
    async def echo(sid, data):
        await sio.emit("echoed", data, to=sid, namespace="/bench")
    app = tornado.web.Application([(r"/socket.io/", socketio.get_tornado_handler(sio))])
    app.listen(int(sys.argv[1]), "127.0.0.1")
    print("ready", flush=True)
    tornado.ioloop.IOLoop.current().start()
""")


WARMUP = 20


async def sample(n: int, round_trip: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    """Time `n` round trips after WARMUP untimed ones."""
    samples = []
    for index in range(n + WARMUP):
        started = time.perf_counter()
        await round_trip()
        if index >= WARMUP:
            samples.append(time.perf_counter() - started)
    return percentiles(samples)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99),
            "mean_ms": statistics.fmean(ordered) * 1000, "n": len(ordered)}


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Frontend:
    """A /clients socket with one logged-in agent; chat() returns when the answer is back."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.sio = socketio.AsyncClient(reconnection=True, reconnection_delay=0.2)
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.events = 0
        self.logins = 0
        self.sio.on("forwardedEvent", self._forwarded, namespace="/clients")
        self.agent_id = ""

    async def _forwarded(self, data: dict[str, Any]) -> None:
        self.events += 1
        payload = data["payload"]
        if data["event"] == "loginSuccess":
            self.logins += 1
        elif data["event"] == "chatMessage" and payload["from"] == "agent":
            waiter = self.waiting.pop(payload["correlationId"], None)
            if waiter and not waiter.done():
                waiter.set_result(None)

    async def connect(self, agent_id: str) -> Frontend:
        self.agent_id = agent_id
        await self.sio.connect(f"{self.server.url}?token={self.server.token}",
                               socketio_path="agenstra/socket.io", namespaces=["/clients"],
                               transports=["websocket"])
        await self.sio.call("setClient", {"clientId": "local"}, namespace="/clients")
        await self.sio.call("forward", {"event": "login", "agentId": agent_id},
                            namespace="/clients")
        return self

    async def chat(self, text: str = "ping", stream: bool = False) -> float:
        correlation = uuid.uuid4().hex
        done = self.waiting[correlation] = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        ack = await self.sio.call("forward", {"event": "chat", "agentId": self.agent_id,
                                              "payload": {"message": text, "stream": stream,
                                                          "correlationId": correlation}},
                                  namespace="/clients")
        if not ack.get("ok"):
            self.waiting.pop(correlation, None)
            raise RuntimeError(ack["error"]["message"])
        await done
        return time.perf_counter() - started


async def create_agent(server: Any, name: str) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{server.url}agenstra/api/clients/local/agents",
                                   headers={"Authorization": f"token {server.token}"},
                                   json={"name": name, "provider": "echo"}, timeout=60)
        return response.json()["id"]


# -- the measurements ----------------------------------------------------------------------


async def latency_controller(server: Any, n: int) -> dict[str, float]:
    frontend = await Frontend(server).connect(await create_agent(server, "lat"))
    figures = await sample(n, frontend.chat)
    await frontend.sio.disconnect()
    return figures


async def latency_direct(n: int) -> dict[str, float]:
    key = secrets.token_urlsafe(24)
    data = tempfile.mkdtemp(prefix="agenstra-bench-")
    manager = subprocess.Popen(
        [sys.executable, "-m", "agenstra_jupyter.manager.app", "--data-dir", data],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "AGENSTRA_API_KEY": key,
                                                 "AGENSTRA_BCRYPT_ROUNDS": "4"})
    url = manager.stdout.readline().split()[-1]
    try:
        async with httpx.AsyncClient() as http:
            agent = (await http.post(f"{url}/api/agents", json={"name": "d", "provider": "echo"},
                                     headers={"Authorization": f"Bearer {key}"})).json()
        sio = socketio.AsyncClient()
        waiting: dict[str, asyncio.Future[None]] = {}

        async def message(payload: dict[str, Any]) -> None:
            if payload["from"] == "agent" and payload["correlationId"] in waiting:
                waiting.pop(payload["correlationId"]).set_result(None)

        sio.on("chatMessage", message, namespace="/agents")
        await sio.connect(url, namespaces=["/agents"], auth={"apiKey": key},
                          transports=["websocket"])
        await sio.emit("login", {"agentId": agent["id"], "password": agent["password"]},
                       namespace="/agents")

        async def round_trip() -> None:
            correlation = uuid.uuid4().hex
            answered = waiting[correlation] = asyncio.get_running_loop().create_future()
            await sio.emit("chat", {"message": "ping", "correlationId": correlation,
                                    "stream": False}, namespace="/agents")
            await answered

        figures = await sample(n, round_trip)
        await sio.disconnect()
        return figures
    finally:
        manager.terminate()
        manager.wait(30)


async def latency_bare(n: int) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(port)],
                              stdout=subprocess.PIPE, text=True)
    server.stdout.readline()
    try:
        sio = socketio.AsyncClient()
        received: asyncio.Queue[Any] = asyncio.Queue()
        sio.on("echoed", received.put, namespace="/bench")
        await sio.connect(f"http://127.0.0.1:{port}", namespaces=["/bench"],
                          transports=["websocket"])

        async def round_trip() -> None:
            await sio.emit("echo", {"message": "ping"}, namespace="/bench")
            await received.get()

        figures = await sample(n, round_trip)
        await sio.disconnect()
        return figures
    finally:
        server.terminate()
        server.wait(30)


async def throughput(server: Any, frontends: int, seconds: float) -> dict[str, float]:
    agents = await asyncio.gather(*(create_agent(server, f"tp{frontends}-{i}")
                                    for i in range(frontends)))
    clients = await asyncio.gather(*(Frontend(server).connect(a) for a in agents))
    stop = time.perf_counter() + seconds
    turns = 0

    async def loop(frontend: Frontend) -> None:
        nonlocal turns
        while time.perf_counter() < stop:
            await frontend.chat("one two three four", stream=True)
            turns += 1

    before = sum(c.events for c in clients)
    started = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in clients))
    took = time.perf_counter() - started
    events = sum(c.events for c in clients) - before
    await asyncio.gather(*(c.sio.disconnect() for c in clients))
    return {"frontends": frontends, "events_per_s": events / took, "turns_per_s": turns / took}


async def idle_sockets(server: Any, count: int) -> dict[str, float]:
    """Raw engine.io websockets joined to /clients, as cheap as a client can be."""
    import aiohttp

    pid = server.process.pid
    before = rss_kb(pid)
    ws_url = (f"{server.url.replace('http', 'ws')}agenstra/socket.io/?EIO=4&transport=websocket"
              f"&token={server.token}")
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sockets = []
    semaphore = asyncio.Semaphore(200)

    async def open_one() -> None:
        async with semaphore:
            ws = await session.ws_connect(ws_url, autoping=True)
            await ws.receive()  # engine.io open packet
            await ws.send_str("40/clients,")
            await ws.receive()  # namespace connected
            sockets.append(ws)

    started = time.perf_counter()
    await asyncio.gather(*(open_one() for _ in range(count)))
    took = time.perf_counter() - started
    await asyncio.sleep(2)
    after = rss_kb(pid)
    await asyncio.gather(*(ws.close() for ws in sockets))
    await session.close()
    await asyncio.sleep(2)
    return {"sockets": count, "connect_s": took, "rss_delta_mb": (after - before) / 1024,
            "kb_per_socket": (after - before) / count}


async def recovery(server: Any, frontends: int) -> dict[str, float]:
    agents = await asyncio.gather(*(create_agent(server, f"rec-{i}") for i in range(frontends)))
    clients = await asyncio.gather(*(Frontend(server).connect(a) for a in agents))
    await asyncio.gather(*(c.chat() for c in clients))
    logins = [c.logins for c in clients]
    found = subprocess.run(["pgrep", "-f", "agenstra_jupyter.manager.app.*agenstra-bench"],
                           capture_output=True, text=True).stdout.split()
    started = time.perf_counter()
    os.kill(int(found[0]), signal.SIGKILL)
    while any(c.logins <= n for c, n in zip(clients, logins, strict=True)):
        await asyncio.sleep(0.01)
    logged_in = time.perf_counter() - started

    async def first_answer(frontend: Frontend) -> None:
        while True:
            try:
                await asyncio.wait_for(frontend.chat(), 30)
                return
            except Exception:
                await asyncio.sleep(0.05)

    await asyncio.gather(*(first_answer(c) for c in clients))
    answered = time.perf_counter() - started
    await asyncio.gather(*(c.sio.disconnect() for c in clients))
    return {"agents": frontends, "all_logged_in_s": logged_in, "next_answer_s": answered}


async def history_replay(messages: int) -> dict[str, float]:
    import bcrypt

    from agenstra_jupyter.manager.models import AgentRecord
    from agenstra_jupyter.manager.store import Store
    from agenstra_jupyter.secrets import SecretBox

    data = Path(tempfile.mkdtemp(prefix="agenstra-bench-"))
    # The manager started below on `data` reads the configs with the same key file.
    box = SecretBox.from_key_file(data / "manager.key")
    store = Store(f"sqlite:///{data / 'manager.sqlite'}", box)
    await store.open()
    password = "bench-password-123456"
    now = "2026-01-01T00:00:00.000Z"
    await store.create_agent(AgentRecord(
        id="hist", name="hist", provider="echo", runtime="process", created_at=now,
        updated_at=now, password_hash=bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()))
    for n in range(messages // 2):
        await store.append_message("hist", "user", f"c{n}", text=f"question {n}")
        await store.append_message("hist", "agent", f"c{n}",
                                   response={"type": "text", "result": f"answer {n}"})
    await store.close()
    key = secrets.token_urlsafe(24)
    manager = subprocess.Popen(
        [sys.executable, "-m", "agenstra_jupyter.manager.app", "--data-dir", str(data)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "AGENSTRA_API_KEY": key})
    url = manager.stdout.readline().split()[-1]
    results = {}
    try:
        for label, after in (("full_s", None), ("last_tenth_s", messages - messages // 10)):
            sio = socketio.AsyncClient()
            received = 0
            expected = messages - (after or 0)
            done = asyncio.get_running_loop().create_future()

            async def message(_: Any, expected: int = expected, done: Any = done) -> None:
                nonlocal received
                received += 1
                if received == expected and not done.done():
                    done.set_result(None)

            sio.on("chatMessage", message, namespace="/agents")
            await sio.connect(url, namespaces=["/agents"], auth={"apiKey": key},
                              transports=["websocket"])
            request: dict[str, Any] = {"agentId": "hist", "password": password}
            if after is not None:
                request["afterSeq"] = after
            started = time.perf_counter()
            await sio.emit("login", request, namespace="/agents")
            await asyncio.wait_for(done, 120)
            results[label] = time.perf_counter() - started
            await sio.disconnect()
    finally:
        manager.terminate()
        manager.wait(30)
    return {"messages": messages, **results}


async def main(quick: bool) -> dict[str, Any]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it
    n = 100 if quick else 300
    results: dict[str, Any] = {"machine": {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "nofile": hard}}
    print("latency: bare python-socketio echo ...", file=sys.stderr)
    results["latency_bare"] = await latency_bare(n)
    print("latency: straight to the manager ...", file=sys.stderr)
    results["latency_direct"] = await latency_direct(n)
    env = {"AGENSTRA_CHAT_RATE": "0", "AGENSTRA_LOGIN_RATE": "0",
           "AGENSTRA_MAX_SOCKETS_PER_USER": "0", "AGENSTRA_BCRYPT_ROUNDS": "4",
           "AGENSTRA_DEFAULT_PROVIDER": ""}
    server = start_server(Path(tempfile.mkdtemp(prefix="agenstra-bench-")), env)
    try:
        print("latency: through the controller ...", file=sys.stderr)
        results["latency_controller"] = await latency_controller(server, n)
        results["throughput"] = []
        for frontends in (1, 10, 100):
            print(f"throughput: {frontends} frontends ...", file=sys.stderr)
            results["throughput"].append(await throughput(server, frontends, 3 if quick else 5))
        results["idle_sockets"] = []
        for count in ((1000,) if quick else (1000, 10000)):
            print(f"idle sockets: {count} ...", file=sys.stderr)
            results["idle_sockets"].append(await idle_sockets(server, count))
        print("recovery after a manager kill ...", file=sys.stderr)
        results["recovery"] = await recovery(server, 10)
    finally:
        server.stop()
    print("history replay ...", file=sys.stderr)
    results["history_replay"] = await history_replay(2000 if quick else 10000)
    controller, direct, bare = (results[f"latency_{k}"] for k in ("controller", "direct", "bare"))
    results["ratios_p50"] = {"controller_vs_direct": controller["p50_ms"] / direct["p50_ms"],
                             "controller_vs_bare": controller["p50_ms"] / bare["p50_ms"]}
    return results


def table(results: dict[str, Any]) -> str:
    rows = ["| measurement | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|"]
    for key, label in (("latency_bare", "bare python-socketio echo (floor)"),
                       ("latency_direct", "client → manager (echo agent)"),
                       ("latency_controller", "client → controller → manager (echo)")):
        r = results[key]
        rows.append(f"| {label} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} |")
    ratios = results["ratios_p50"]
    rows += ["", f"p50 ratio controller/direct: {ratios['controller_vs_direct']:.2f}, "
                 f"controller/bare: {ratios['controller_vs_bare']:.2f}", "",
             "| frontends | forwarded events/s | turns/s |", "|---|---|---|"]
    rows += [f"| {t['frontends']} | {t['events_per_s']:.0f} | {t['turns_per_s']:.0f} |"
             for t in results["throughput"]]
    rows += ["", "| idle sockets | connect s | RSS +MB | KB per socket |", "|---|---|---|---|"]
    rows += [f"| {s['sockets']} | {s['connect_s']:.1f} | {s['rss_delta_mb']:.1f} | "
             f"{s['kb_per_socket']:.1f} |" for s in results["idle_sockets"]]
    rec, hist = results["recovery"], results["history_replay"]
    rows += ["", f"recovery after SIGKILL of the manager ({rec['agents']} agents): all logged in "
                 f"again in {rec['all_logged_in_s']:.2f} s, next answer after "
                 f"{rec['next_answer_s']:.2f} s",
             f"history replay of {hist['messages']} messages: full {hist['full_s']:.2f} s, "
             f"last tenth (afterSeq) {hist['last_tenth_s']:.2f} s"]
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results.json"))
    parser.add_argument("--quick", action="store_true", help="fewer samples (about a minute)")
    args = parser.parse_args()
    figures = asyncio.run(main(args.quick))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2))
    print(table(figures))

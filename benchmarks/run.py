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


# A coroutine's round trip through a one-thread executor, as the manager's history writer
# makes (`run_in_executor`), with the two threads free to run on any CPU and then both on
# one: on a virtual machine a wake-up across CPUs is dear, and the manager pays a few per
# batch of messages (the writer's, the GIL's).
THREAD_HOP = textwrap.dedent("""
    import asyncio, json, os, time
    from concurrent.futures import ThreadPoolExecutor

    async def hops(executor, n=5000):
        loop = asyncio.get_running_loop()
        for _ in range(500):
            await loop.run_in_executor(executor, int)
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            await loop.run_in_executor(executor, int)
        return ((time.perf_counter() - started) / n * 1e6,
                (time.process_time() - cpu) / n * 1e6)

    async def main():
        executor = ThreadPoolExecutor(max_workers=1)
        free, free_cpu = await hops(executor)
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        executor.submit(os.sched_setaffinity, 0, {cpu}).result()
        pinned, pinned_cpu = await hops(executor)
        print(json.dumps({"free_us": free, "free_cpu_us": free_cpu, "pinned_us": pinned,
                          "pinned_cpu_us": pinned_cpu}))

    asyncio.run(main())
""")


def thread_hop() -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", THREAD_HOP], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


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
    # The controller's own (local) manager: a child of the Jupyter server.
    found = subprocess.run(["pgrep", "-P", str(server.process.pid), "-f",
                            "agenstra_jupyter.manager"],
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


# -- the Node peer and load generator -------------------------------------------------------

NODE = Path(__file__).parent / "node"
# Forwarded events/s through one controller with 100 streaming frontends before issue #17
# (BENCHMARKS.md at commit 27fdb28: 1248/s, Python client; this harness's JS client
# measured 1213/s on the same code): the streaming target's base.
TODAY_STREAM_EVENTS_PER_S = float(os.environ.get("AGENSTRA_BENCH_STREAM_BASE", "1248"))
MANAGER_ENV = {"AGENSTRA_CHAT_RATE": "0", "AGENSTRA_LOGIN_RATE": "0",
               "AGENSTRA_MAX_SOCKETS_PER_USER": "0", "AGENSTRA_MAX_LINKS_PER_USER": "0",
               "AGENSTRA_BCRYPT_ROUNDS": "4",
               "AGENSTRA_DEFAULT_PROVIDER": ""}


def node_ready() -> None:
    if not (NODE / "node_modules").is_dir():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NODE)],
                       check=True, stdout=subprocess.DEVNULL)


def private_json(data: Any) -> str:
    """A 0600 file for secrets (passwords, keys): never on a command line."""
    fd, path = tempfile.mkstemp(prefix="agenstra-bench-", suffix=".json")
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)
    return path


async def loadgen(config: dict[str, Any]) -> dict[str, Any]:
    path = private_json(config)
    try:
        node = await asyncio.create_subprocess_exec(
            "node", str(NODE / "loadgen.js"), path, stdout=asyncio.subprocess.PIPE)
        out, _ = await node.communicate()
    finally:
        os.unlink(path)
    if node.returncode:
        raise RuntimeError(f"loadgen {config['path']} {config['mode']} failed")
    return json.loads(out.decode().splitlines()[-1])


class Hold:
    """A loadgen in hold mode: `frontends` logged in until stop()."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = {**config, "mode": "hold"}

    async def start(self) -> dict[str, Any]:
        self.path = private_json(self.config)
        self.node = await asyncio.create_subprocess_exec(
            "node", str(NODE / "loadgen.js"), self.path, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        return json.loads(await self.node.stdout.readline())

    async def stop(self) -> dict[str, Any]:
        self.node.stdin.close()
        out = await self.node.stdout.read()
        await self.node.wait()
        os.unlink(self.path)
        return json.loads(out.decode().splitlines()[-1])


class Manager:
    """A standalone manager: the one manager every path of the comparison reaches."""

    def __init__(self) -> None:
        self.key = secrets.token_urlsafe(24)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agenstra_jupyter.manager.app", "--data-dir",
             tempfile.mkdtemp(prefix="agenstra-peer-")],
            stdout=subprocess.PIPE, text=True,
            env={**os.environ, **MANAGER_ENV, "AGENSTRA_API_KEY": self.key})
        self.url = self.process.stdout.readline().split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))

    async def agents(self, count: int, name: str) -> list[dict[str, str]]:
        async with httpx.AsyncClient(timeout=60) as http:
            async def one(index: int) -> dict[str, str]:
                made = (await http.post(f"{self.url}/api/agents",
                                        json={"name": f"{name}-{index}", "provider": "echo"},
                                        headers={"Authorization": f"Bearer {self.key}"})).json()
                return {"id": made["id"], "password": made["password"]}
            return await gather_limited([one(i) for i in range(count)])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def gather_limited(jobs: list[Awaitable[Any]], limit: int = 20) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Awaitable[Any]) -> Any:
        async with semaphore:
            return await job
    return await asyncio.gather(*(run(job) for job in jobs))


async def register(server: Any, manager: Manager) -> str:
    """Register the standalone manager with the controller; its client id."""
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.post(f"{server.url}agenstra/api/clients",
                                   headers={"Authorization": f"token {server.token}"},
                                   json={"name": "bench", "endpoint": manager.url,
                                         "apiKey": manager.key})
        response.raise_for_status()
        return response.json()["id"]


async def controller_agents(server: Any, client_id: str, count: int,
                            name: str) -> list[dict[str, str]]:
    async with httpx.AsyncClient(timeout=60) as http:
        async def one(index: int) -> dict[str, str]:
            response = await http.post(
                f"{server.url}agenstra/api/clients/{client_id}/agents",
                headers={"Authorization": f"token {server.token}"},
                json={"name": f"{name}-{index}", "provider": "echo"})
            return {"id": response.json()["id"]}
        return await gather_limited([one(i) for i in range(count)])


def established_to(pid: int, port: int) -> int:
    """The process's established TCP connections to 127.0.0.1:`port`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if fields[3] == "01" and remote_port == port and fields[9] in inodes:
            count += 1
    return count


async def fan_in(server: Any, client_id: str, manager: Manager, frontends: int,
                 controller_cfg: dict[str, Any]) -> dict[str, Any]:
    agents = await controller_agents(server, client_id, frontends, f"fan{frontends}")
    await asyncio.sleep(1)
    controller_before, manager_before = rss_kb(server.process.pid), rss_kb(manager.process.pid)
    # Creating the agents left REST keep-alive connections to the manager: not links.
    rest = established_to(server.process.pid, manager.port)
    hold = Hold({**controller_cfg, "agents": agents, "frontends": frontends})
    ready = await hold.start()
    await asyncio.sleep(2)
    connections = established_to(server.process.pid, manager.port) - rest
    controller_after, manager_after = rss_kb(server.process.pid), rss_kb(manager.process.pid)
    done = await hold.stop()
    return {"frontends": frontends, "connect_s": ready["connect_s"],
            "controller_connections": connections, "controller_rest_connections": rest,
            "controller_kb_per_frontend": (controller_after - controller_before) / frontends,
            "manager_kb_per_agent": (manager_after - manager_before) / frontends,
            "checks": done["checks"]}


async def main(quick: bool) -> dict[str, Any]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers inherit it
    node_ready()
    n, seconds, fan = (100, 2, 200) if quick else (300, 5, 1000)
    node_version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
    results: dict[str, Any] = {"machine": {
        "python": platform.python_version(), "node": node_version.strip(),
        "platform": platform.platform(), "cpus": os.cpu_count(), "nofile": hard,
        "quick": quick}}
    print("thread hop ...", file=sys.stderr)
    results["thread_hop"] = thread_hop()
    bare_port, relay_port = free_port(), free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(bare_port)],
                            stdout=subprocess.PIPE, text=True)
    bare.stdout.readline()
    manager = Manager()
    server = start_server(Path(tempfile.mkdtemp(prefix="agenstra-bench-")), MANAGER_ENV)
    # Fresh agents for every run: a login replays an agent's history, which would mix
    # one run's answers into the next one's checks. 221 = latency 1 + 10 + 100 + 100 streamed.
    pool = 1 + 10 + 100 + 100
    relay_agents = await manager.agents(pool, "relay")
    credentials = private_json({a["id"]: a["password"] for a in relay_agents})
    relay = subprocess.Popen(["node", str(NODE / "relay.js"), str(relay_port), manager.url],
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "RELAY_API_KEY": manager.key,
                                  "RELAY_CREDENTIALS": credentials})
    relay.stdout.readline()
    try:
        client_id = await register(server, manager)
        clients = {"bare": {"url": f"http://127.0.0.1:{bare_port}", "agents": [
                       {"id": f"bare-{i}"} for i in range(pool)]},
                   "direct": {"url": manager.url, "apiKey": manager.key,
                              "agents": await manager.agents(pool, "direct")},
                   "controller": {"url": server.url.rstrip("/"), "token": server.token,
                                  "socketPath": "/agenstra/socket.io",
                                  "clientId": client_id,
                                  "agents": await controller_agents(server, client_id, pool, "c")},
                   "relay": {"url": f"http://127.0.0.1:{relay_port}", "agents": relay_agents}}
        cfg = {name: {**c, "path": name} for name, c in clients.items()}
        used = dict.fromkeys(cfg, 0)

        def take(name: str, count: int) -> list[dict[str, str]]:
            used[name] += count
            return cfg[name]["agents"][used[name] - count:used[name]]

        results["latency"] = {}
        for name in cfg:
            print(f"latency: {name} ...", file=sys.stderr)
            results["latency"][name] = await loadgen(
                {**cfg[name], "agents": take(name, 1), "mode": "latency", "n": n})
        results["throughput"] = []
        runs = [(name, f, False) for f in (10, 100) for name in cfg] + [("controller", 100, True)]
        for name, frontends, stream in runs:
            print(f"throughput: {name}, {frontends} frontends, stream={stream} ...",
                  file=sys.stderr)
            results["throughput"].append(await loadgen(
                {**cfg[name], "agents": take(name, frontends), "mode": "throughput",
                 "frontends": frontends, "seconds": seconds, "stream": stream}))
        print(f"fan-in: {fan} frontends ...", file=sys.stderr)
        results["fan_in"] = await fan_in(server, client_id, manager, fan, cfg["controller"])
        if not quick:
            results["idle_sockets"] = [await idle_sockets(server, 1000)]
            print("recovery after a manager kill ...", file=sys.stderr)
            results["recovery"] = await recovery(server, 10)
    finally:
        relay.terminate()
        bare.terminate()
        server.stop()
        manager.stop()
        os.unlink(credentials)
    if not quick:
        print("history replay ...", file=sys.stderr)
        results["history_replay"] = await history_replay(10000)
    results["targets"] = targets(results)
    return results


def find(results: dict[str, Any], path: str, frontends: int, stream: bool = False) -> float:
    return next(t["turns_per_s"] if not stream else t["events_per_s"]
                for t in results["throughput"]
                if t["path"] == path and t["frontends"] == frontends and t["stream"] == stream)


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #17's targets: (name, figure, ratio, goal, met)."""
    lat = {name: figures["p50_ms"] for name, figures in r["latency"].items()}
    rows = [("direct p50 / bare p50", f"{lat['direct']:.2f} ms", lat["direct"] / lat["bare"],
             "<= 3", lambda x: x <= 3),
            ("controller p50 / direct p50", f"{lat['controller']:.2f} ms",
             lat["controller"] / lat["direct"], "<= 1.2", lambda x: x <= 1.2)]
    for f in (10, 100):
        controller, relay = find(r, "controller", f), find(r, "relay", f)
        direct, bare = find(r, "direct", f), find(r, "bare", f)
        rows.append((f"controller / Node relay turns/s, {f} frontends", f"{controller:.0f}/s",
                     controller / relay, ">= 0.95", lambda x: x >= 0.95))
        rows.append((f"manager / bare floor turns/s, {f} frontends", f"{direct:.0f}/s",
                     direct / bare, ">= 0.5", lambda x: x >= 0.5))
    stream = find(r, "controller", 100, stream=True)
    base = TODAY_STREAM_EVENTS_PER_S
    rows.append(("streamed events/s, controller, 100 frontends / today's",
                 f"{stream:.0f}/s", stream / base if base else None, ">= 4",
                 lambda x: x >= 4))
    fan = r["fan_in"]
    rows.append((f"controller→manager connections, {fan['frontends']} frontends",
                 str(fan["controller_connections"]), fan["controller_connections"], "small fixed",
                 lambda x: x <= 4))
    rows.append(("controller KB per logged-in frontend", f"{fan['controller_kb_per_frontend']:.0f}",
                 fan["controller_kb_per_frontend"], "<= 50", lambda x: x <= 50))
    rows.append(("manager KB per logged-in agent", f"{fan['manager_kb_per_agent']:.0f}",
                 fan["manager_kb_per_agent"], "measured", lambda x: True))
    failures = sum(sum(run["checks"].values()) for run in
                   [*r["latency"].values(), *r["throughput"], fan])
    rows.append(("answers exactly once, in order (failures)", str(failures), failures, "0",
                 lambda x: x == 0))
    return [{"target": name, "figure": figure, "ratio": ratio, "goal": goal,
             "met": None if ratio is None else bool(check(ratio))}
            for name, figure, ratio, goal, check in rows]


def table(results: dict[str, Any]) -> str:
    rows = ["| target | figure | ratio | goal | met? |", "|---|---|---|---|---|"]
    for t in results["targets"]:
        ratio = "n/a" if t["ratio"] is None else f"{t['ratio']:.2f}"
        met = {True: "yes", False: "NO", None: "no base"}[t["met"]]
        rows.append(f"| {t['target']} | {t['figure']} | {ratio} | {t['goal']} | {met} |")
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
    sys.exit(0 if figures["targets"][-1]["met"] else 1)  # a lost or doubled answer fails

"""A small fake Kubernetes API server on 127.0.0.1 (no real one can run on these machines).

It speaks the REST paths, JSON and status codes the official client uses for what the
kubernetes runtime asks (pods, persistentvolumeclaims, networkpolicies, /version) and the
exec subresource over a websocket (v5.channel.k8s.io: channel-prefixed binary frames, the
final Status on channel 3, [255, 0] closing stdin). A "container" is a bubblewrap sandbox
with the Pod's env and an empty folder at /workspace: what runs there is the runtime's real
command line. Unlike a kubelet, it never runs the Pod's own command and has no scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

TOKEN = "fake-service-account-token"


def status(code: int, reason: str, message: str = "") -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message or reason, "reason": reason, "code": code}
    return web.json_response(body, status=code)


class FakeKubernetes:
    """Run with `start()` in a thread of its own; `requests` records what was sent."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, dict[str, Any]]] = {
            "pods": {}, "persistentvolumeclaims": {}, "networkpolicies": {}}
        self.requests: list[tuple[str, str, Any]] = []  # (method, path?query, JSON body)
        self.exec_protocols = ["v5.channel.k8s.io"]
        self.processes: list[asyncio.subprocess.Process] = []
        self.roots = tempfile.TemporaryDirectory(prefix="fake-k8s-")
        self.loop = asyncio.new_event_loop()
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeKubernetes:
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait(10)
        return self

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application(middlewares=[self._auth])
        core, net = "/api/v1/namespaces/{ns}", "/apis/networking.k8s.io/v1/namespaces/{ns}"
        app.router.add_get("/version/", self._version)  # the path the client asks
        app.router.add_get(core + "/pods/{name}/exec", self._exec)
        for base, kind in ((core, "pods"), (core, "persistentvolumeclaims"),
                           (net, "networkpolicies")):
            app.router.add_get(f"{base}/{kind}", self._list)
            app.router.add_post(f"{base}/{kind}", self._create)
            app.router.add_get(f"{base}/{kind}/{{name}}", self._read)
            app.router.add_put(f"{base}/{kind}/{{name}}", self._replace)
            app.router.add_delete(f"{base}/{kind}/{{name}}", self._delete)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        async def end() -> None:
            for process in self.processes:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(end(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.roots.cleanup()

    def kubeconfig(self, folder: Path) -> Path:
        path = folder / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "fake", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }))
        return path

    def add(self, kind: str, body: dict[str, Any]) -> None:
        """Put an object there, as if someone else made it (thread-safe)."""
        self.loop.call_soon_threadsafe(self._store, kind, copy.deepcopy(body))

    def sent(self, method: str, kind: str) -> list[Any]:
        return [body for m, path, body in self.requests if m == method
                and path.split("?")[0].rstrip("/").endswith(kind)]

    def running_commands(self) -> int:
        return sum(1 for p in self.processes if p.returncode is None)

    # -- REST --------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return status(401, "Unauthorized")
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path_qs, body))
        return await handler(request)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({
            "major": "1", "minor": "31", "gitVersion": "v1.31.0", "gitCommit": "0" * 40,
            "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23",
            "compiler": "gc", "platform": "linux/amd64"})

    def _kind(self, request: web.Request) -> str:
        parts = request.path.split("/")
        return parts[parts.index("namespaces") + 2]

    def _store(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2026-12-01T00:00:00Z")
        if kind == "pods":
            body.setdefault("status", {"phase": "Pending"})
        self.objects[kind][meta["name"]] = body
        return body

    def _view(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind == "pods" and body["status"].get("phase") == "Pending":
            # "Scheduled and started" the first time anyone looks.
            body["spec"].setdefault("nodeName", "node-1")
            body["status"] = {"phase": "Running", "containerStatuses": [
                {"name": c["name"], "ready": True, "restartCount": 0, "image": c["image"],
                 "imageID": "", "state": {"running": {}}} for c in body["spec"]["containers"]]}
        return body

    async def _list(self, request: web.Request) -> web.Response:
        kind = self._kind(request)
        wanted = [term.split("=", 1) for term in
                  request.query.get("labelSelector", "").split(",") if term]
        phase = request.query.get("fieldSelector", "").removeprefix("status.phase=")
        items = []
        for body in list(self.objects[kind].values()):
            body = self._view(kind, body)
            labels = body["metadata"].get("labels", {})
            if all(labels.get(k) == v for k, v in wanted) and (
                    not phase or body.get("status", {}).get("phase") == phase):
                items.append(body)
        kinds = {"pods": "PodList", "persistentvolumeclaims": "PersistentVolumeClaimList",
                 "networkpolicies": "NetworkPolicyList"}
        return web.json_response({"kind": kinds[kind], "apiVersion": "v1",
                                  "metadata": {"resourceVersion": "1"}, "items": items})

    async def _create(self, request: web.Request) -> web.Response:
        kind, body = self._kind(request), await request.json()
        if body.get("metadata", {}).get("name") in self.objects[kind]:
            return status(409, "AlreadyExists")
        return web.json_response(self._store(kind, body), status=201)

    async def _read(self, request: web.Request) -> web.Response:
        kind, name = self._kind(request), request.match_info["name"]
        if name not in self.objects[kind]:
            return status(404, "NotFound")
        return web.json_response(self._view(kind, self.objects[kind][name]))

    async def _replace(self, request: web.Request) -> web.Response:
        kind, name = self._kind(request), request.match_info["name"]
        if name not in self.objects[kind]:
            return status(404, "NotFound")
        return web.json_response(self._store(kind, await request.json()))

    async def _delete(self, request: web.Request) -> web.Response:
        kind, name = self._kind(request), request.match_info["name"]
        if self.objects[kind].pop(name, None) is None:
            return status(404, "NotFound")
        return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                  "status": "Success"})

    # -- exec ----------------------------------------------------------------------------

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        pod = self.objects["pods"].get(request.match_info["name"])
        if pod is None or pod["status"].get("phase") != "Running":
            return status(404, "NotFound")
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if not set(offered) & set(self.exec_protocols):
            return status(400, "BadRequest", "requested protocol(s) are not supported")
        query = request.query
        if query.getall("command")[0] in ("kill", "/bin/kill", "/usr/bin/kill"):
            # Debian 12's procps kill reads `kill -SIG -PGID` as kill(-1): here, with no
            # PID namespace, that would be every process of the test run.
            return status(400, "BadRequest", "the fake refuses /usr/bin/kill")
        container = next(c for c in pod["spec"]["containers"] if c["name"] == query["container"])
        socket = web.WebSocketResponse(protocols=self.exec_protocols)
        await socket.prepare(request)
        process = await self._run(pod, container, query.getall("command"))
        outputs = [asyncio.ensure_future(self._send(socket, process.stdout, 1)),
                   asyncio.ensure_future(self._send(socket, process.stderr, 2))]
        feeding = asyncio.ensure_future(self._feed(socket, process))
        code = await process.wait()
        await asyncio.gather(*outputs)
        if not socket.closed:
            final = ({"metadata": {}, "status": "Success"} if code == 0 else
                     {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                      "message": f"command terminated with non-zero exit code {code}",
                      "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}})
            with contextlib.suppress(ConnectionError):
                await socket.send_bytes(b"\x03" + json.dumps(final).encode())
                await socket.close()
        feeding.cancel()
        return socket

    async def _run(self, pod: dict[str, Any], container: dict[str, Any],
                   argv: list[str]) -> asyncio.subprocess.Process:
        """The command in the Pod's "container": its env, its own /workspace and /tmp."""
        root = Path(self.roots.name, pod["metadata"]["name"])
        for folder in ("workspace", "tmp", "home"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin",
               **{e["name"]: e["value"] for e in container.get("env", [])}}
        sandbox = ["bwrap", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
                   "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                   "--symlink", "usr/sbin", "/sbin", "--ro-bind", "/etc", "/etc",
                   "--dev", "/dev", "--bind", str(root / "workspace"), "/workspace",
                   "--bind", str(root / "home"), "/home/agenstra",
                   "--bind", str(root / "tmp"), "/tmp", "--clearenv",
                   *[a for k, v in env.items() for a in ("--setenv", k, v)], "--", *argv]
        process = await asyncio.create_subprocess_exec(
            *sandbox, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        self.processes.append(process)
        return process

    async def _send(self, socket: web.WebSocketResponse, stream: Any, channel: int) -> None:
        while chunk := await stream.read(65536):
            if not socket.closed:
                with contextlib.suppress(ConnectionError):
                    await socket.send_bytes(bytes([channel]) + chunk)

    async def _feed(self, socket: web.WebSocketResponse,
                    process: asyncio.subprocess.Process) -> None:
        """Channel 0 to the command's stdin; [255, 0] closes it. A closed websocket leaves
        the command running, as on a real cluster."""
        async for message in socket:
            if message.type != WSMsgType.BINARY or not message.data:
                continue
            channel, data = message.data[0], message.data[1:]
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                if channel == 0:
                    process.stdin.write(data)
                    await process.stdin.drain()
                elif channel == 255 and data == b"\x00":
                    process.stdin.close()

"""`agenstra-manager`: the per-host service that owns agents, their history and runtimes."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

import socketio
from jupyter_core.paths import jupyter_data_dir
from sqlalchemy.engine import make_url
from tornado import httpserver, netutil, web
from traitlets import Bool, Float, Int, List, Type, Unicode, default, validate
from traitlets.config import Application, catch_config_error

from .. import protocol
from .._version import __version__
from ..config import env_config
from ..secrets import SecretBox, SecretKeyError, private_dir
from ..socketio_tuned import Coalescing, TunedServer
from .auth import Authenticator, KeyGate
from .bounds import MAX_STORED_MESSAGE, QueueLimits, TurnLimits
from .changes import FileWatch
from .gateway import AgentsNamespace, bounded_socketio_handler
from .hub_auth import HubAuthenticator
from .lock import DataDirInUse, hold
from .notebook_tools import NotebookTools
from .projects import PathList, ProjectPolicy
from .providers import (
    AcpProvider,
    CliProvider,
    EchoProvider,
    OpenAIProvider,
    Provider,
    ReplayProvider,
    ShellProvider,
)
from .rest import api_routes
from .runtimes import DockerRuntime, ProcessRuntime, Runtime, SwarmRuntime
from .service import AgentService
from .store import Store

READY_LINE = "agenstra-manager listening on http://{host}:{port}"
SHUTDOWN_GRACE = 1.0  # seconds clients get to close their sockets at shutdown


class ManagerApp(Application):
    name = "agenstra-manager"
    version = __version__
    description = (
        "Serve agents over Socket.IO (namespace /agents) and REST (/api/) for Jupyter "
        "controllers. Every option can also be set through the AGENSTRA_* variable it names."
    )

    def get_default_logging_config(self) -> dict[str, Any]:
        """traitlets' config, with the app's logger at log_level rather than DEBUG: it
        leaves the dropping to the handler, so every debug line of a turn built a record."""
        config: dict[str, Any] = super().get_default_logging_config()
        for logger in config.get("loggers", {}).values():
            logger["level"] = logging.getLevelName(self.log_level)
        return config

    host = Unicode("127.0.0.1", help="Interface to listen on.").tag(
        config=True, env="AGENSTRA_HOST"
    )
    port = Int(0, help="Port to listen on (0: pick a free one).").tag(
        config=True, env="AGENSTRA_PORT"
    )
    api_key = Unicode(
        "", help="Key clients must present (generated and printed once when empty)."
    ).tag(config=True, env="AGENSTRA_API_KEY")
    hub_auth = Bool(
        help="Authenticate controllers by their users' JupyterHub tokens (a manager shared "
        "as a Hub service, docs/deploy/jupyterhub.md) instead of the API key; each user then "
        "sees only their own agents. Default: on when run as a Hub service "
        "(JUPYTERHUB_SERVICE_NAME set). AGENSTRA_HUB_AUTH."
    ).tag(config=True, env="AGENSTRA_HUB_AUTH")
    authenticator_class = Type(
        klass=Authenticator,
        help="Who a token names: KeyGate (the API key; the default) or HubAuthenticator "
        "(the default with hub_auth). AGENSTRA_AUTHENTICATOR_CLASS.",
    ).tag(config=True, env="AGENSTRA_AUTHENTICATOR_CLASS")
    data_dir = Unicode(help="Directory for the database and agent workspaces.").tag(
        config=True, env="AGENSTRA_DATA_DIR"
    )
    db = Unicode(help="SQLAlchemy database URL (default: sqlite in DATA_DIR).").tag(
        config=True, env="AGENSTRA_DB"
    )
    key_file = Unicode(
        help="Fernet key file encrypting agent configs (env, files, API keys) in the "
        "database; created owner-only on first run (default: DATA_DIR/manager.key; "
        "environment variable AGENSTRA_MANAGER_KEY_FILE)."
    ).tag(config=True, env="AGENSTRA_MANAGER_KEY_FILE")
    default_runtime = Unicode("process", help="Runtime of agents created without one.").tag(
        config=True, env="AGENSTRA_RUNTIME"
    )
    history_limit = Int(
        0, help="Messages replayed at a login without afterSeq (0: the whole history)."
    ).tag(config=True, env="AGENSTRA_HISTORY_LIMIT")
    max_message_bytes = Int(256 * 1024, help="Largest chat message accepted.").tag(
        config=True, env="AGENSTRA_MAX_MESSAGE_BYTES"
    )
    max_sockets = Int(
        512, help="Socket.IO connections open at once, each a file descriptor; a new one "
        "over it is refused with a 503 (0: no limit). AGENSTRA_MAX_SOCKETS."
    ).tag(config=True, env="AGENSTRA_MAX_SOCKETS")
    handshake_timeout = Float(
        10.0, help="Seconds a connection may stay open without joining /agents (its key "
        "refused, or none offered) before it is closed (0: never). AGENSTRA_HANDSHAKE_TIMEOUT."
    ).tag(config=True, env="AGENSTRA_HANDSHAKE_TIMEOUT")
    auth_failures_per_second = Int(
        20, help="Failed API keys (REST and Socket.IO) one peer address may send per second, "
        "in bursts of as many; over it that address's wrong keys get 429 / RATE_LIMITED until "
        "its budget refills, while the right key always passes (0: no limit). "
        "AGENSTRA_AUTH_FAILURES_PER_SECOND."
    ).tag(config=True, env="AGENSTRA_AUTH_FAILURES_PER_SECOND")
    max_turn_text_bytes = Int(
        TurnLimits.text_bytes,
        help="Bytes of answer text one turn keeps and streams, counted as JSON on the wire; "
        "the rest is dropped and the answer ends in [truncated]. AGENSTRA_MAX_TURN_TEXT_BYTES.",
    ).tag(config=True, env="AGENSTRA_MAX_TURN_TEXT_BYTES")
    max_turn_parts_bytes = Int(
        TurnLimits.parts_bytes,
        help="Bytes of tool calls and results one turn keeps and streams; later ones are "
        "dropped. AGENSTRA_MAX_TURN_PARTS_BYTES.",
    ).tag(config=True, env="AGENSTRA_MAX_TURN_PARTS_BYTES")
    max_queued_turns = Int(
        QueueLimits().turns,
        help="Turns one agent may have waiting behind the running one; more chats are refused "
        "(RATE_LIMITED). AGENSTRA_MAX_QUEUED_TURNS.",
    ).tag(config=True, env="AGENSTRA_MAX_QUEUED_TURNS")
    max_queued_bytes = Int(
        QueueLimits().total_bytes,
        help="Bytes of waiting messages all agents together may hold; more chats are refused "
        "(RATE_LIMITED). AGENSTRA_MAX_QUEUED_BYTES.",
    ).tag(config=True, env="AGENSTRA_MAX_QUEUED_BYTES")
    permission_timeout = Float(
        600.0, help="Seconds an agent's permission request waits for a user's answer; then it "
        "expires and counts as rejected. AGENSTRA_PERMISSION_TIMEOUT.",
    ).tag(config=True, env="AGENSTRA_PERMISSION_TIMEOUT")
    bcrypt_rounds = Int(12, help="bcrypt cost for agent passwords (4-31).").tag(
        config=True, env="AGENSTRA_BCRYPT_ROUNDS"
    )
    parent_pid = Int(
        0, help="Exit when this process (the supervising Jupyter server) is gone; 0: never."
    ).tag(config=True)
    project_roots = PathList(
        help="Folders under which agents' projects (the user's own folders, DESIGN.md "
        "'Projects') may lie; empty: projects are refused. The local manager a Jupyter server "
        "starts gets the server's root. AGENSTRA_PROJECT_ROOTS (os.pathsep-separated)."
    ).tag(config=True, env="AGENSTRA_PROJECT_ROOTS")
    mcp_socket = Unicode(
        "", help="The controller's MCP-only UNIX socket (its notebook tools, DESIGN.md "
        "'Notebook tools (MCP)'): agents with a project and a token reach it through a port "
        "relayed inside their sandbox; empty: no notebook tools. The local manager a Jupyter "
        "server starts gets it. AGENSTRA_MCP_SOCKET."
    ).tag(config=True, env="AGENSTRA_MCP_SOCKET")
    mcp_base_url = Unicode(
        "/", help="The Jupyter server's base_url the MCP endpoint lies under "
        "(<base_url>agenstra/mcp). AGENSTRA_MCP_BASE_URL."
    ).tag(config=True, env="AGENSTRA_MCP_BASE_URL")
    runtime_classes = List(
        Type(klass=Runtime), [ProcessRuntime, DockerRuntime, SwarmRuntime],
        help="Runtimes this manager offers.",
    ).tag(config=True)
    provider_classes = List(
        Type(klass=Provider),
        [EchoProvider, ShellProvider, CliProvider, AcpProvider, OpenAIProvider, ReplayProvider],
        help="Providers this manager offers.",
    ).tag(config=True)

    aliases = {
        "host": "ManagerApp.host",
        "port": "ManagerApp.port",
        "api-key": "ManagerApp.api_key",
        "db": "ManagerApp.db",
        "data-dir": "ManagerApp.data_dir",
        "key-file": "ManagerApp.key_file",
        "runtime": "ManagerApp.default_runtime",
        "history-limit": "ManagerApp.history_limit",
        "log-level": "Application.log_level",
        "parent-pid": "ManagerApp.parent_pid",
    }

    @default("hub_auth")
    def _default_hub_auth(self) -> bool:
        return bool(os.environ.get("JUPYTERHUB_SERVICE_NAME"))

    @default("authenticator_class")
    def _default_authenticator_class(self) -> type[Authenticator]:
        return HubAuthenticator if self.hub_auth else KeyGate

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return str(Path(jupyter_data_dir()) / "agenstra" / "manager")

    @default("db")
    def _default_db(self) -> str:
        return f"sqlite:///{Path(self.data_dir) / 'manager.sqlite'}"

    @default("key_file")
    def _default_key_file(self) -> str:
        return str(Path(self.data_dir) / "manager.key")

    @validate("permission_timeout")
    def _positive_timeout(self, proposal: dict[str, Any]) -> float:
        if proposal["value"] <= 0:
            raise ValueError("permission_timeout must be more than 0 seconds")
        return proposal["value"]

    @validate("max_turn_text_bytes", "max_turn_parts_bytes", "max_queued_turns",
              "max_queued_bytes")
    def _positive(self, proposal: dict[str, Any]) -> int:
        if proposal["value"] < 1:
            raise ValueError(f"{proposal['trait'].name} must be at least 1")
        return proposal["value"]

    def turn_limits(self) -> TurnLimits:
        """The caps of one answer; together they keep it well under every frame limit."""
        if self.max_turn_text_bytes + self.max_turn_parts_bytes > MAX_STORED_MESSAGE:
            raise SystemExit(f"max_turn_text_bytes + max_turn_parts_bytes must not exceed "
                             f"{MAX_STORED_MESSAGE} (half the frame limit)")
        return TurnLimits(self.max_turn_text_bytes, self.max_turn_parts_bytes)

    @validate("bcrypt_rounds")
    def _valid_rounds(self, proposal: dict[str, Any]) -> int:
        if not 4 <= proposal["value"] <= 31:
            raise ValueError("bcrypt_rounds must be between 4 and 31")
        return proposal["value"]

    def provider_class(self, name: str) -> type[Provider] | None:
        return next((cls for cls in self.provider_classes if cls.name == name), None)

    @property
    def classes(self) -> list[type]:  # type: ignore[override]
        return [ManagerApp, FileWatch, HubAuthenticator, *self.runtime_classes,
                *self.provider_classes]

    @catch_config_error
    def initialize(self, argv: list[str] | None = None) -> None:
        self.update_config(env_config([ManagerApp, ProcessRuntime, DockerRuntime, SwarmRuntime]))
        self.parse_command_line(argv)
        # Plug-in classes named on the command line can carry env options of their own.
        self.update_config(env_config(self.classes))
        self.parse_command_line(argv)

    def start(self) -> None:
        asyncio.run(self.serve())

    # -- serving -------------------------------------------------------------------------

    async def serve(self, ready: asyncio.Future[int] | None = None) -> None:
        """Run until SIGTERM/SIGINT (or until `stop()`); `ready` receives the bound port."""
        self._stopping = asyncio.Event()
        store = await self._open_store()
        runtimes = self._make_runtimes()
        if self.default_runtime not in runtimes:
            raise SystemExit(f"Unknown runtime {self.default_runtime!r}: {sorted(runtimes)}")
        service = AgentService(
            store,
            runtimes,
            {cls.name: cls for cls in self.provider_classes},
            self.default_runtime,
            self.bcrypt_rounds,
            self.log,
            provider_parent=self,
            turn_limits=self.turn_limits(),
            queue_limits=QueueLimits(self.max_queued_turns, self.max_queued_bytes),
            projects=self._project_policy(runtimes),
            permission_timeout=self.permission_timeout,
            notebook_tools=self._notebook_tools(),
        )
        sio = self.sio = TunedServer(  # tuned for small events (socketio_tuned.py)
            # A controller that reads slowly gets a turn's text deltas merged.
            coalescing=Coalescing(protocol.delta_stream, protocol.merge_deltas),
            # Each event in a task of its own; the gateway orders them per agent (ordering.py).
            async_handlers=True,
            # What this manager reads is small (chats of max_message_bytes, JSON-escaped at
            # most ~4x); it may send frames of MAX_FRAME_BYTES.
            max_http_buffer_size=min(protocol.MAX_FRAME_BYTES,
                                     4 * self.max_message_bytes + 64 * 1024),
            logger=False,
            engineio_logger=False,
        )
        gate = self.authenticator_class.from_app(self)
        sio.register_namespace(
            AgentsNamespace(service, gate, self.history_limit, self.max_message_bytes, self.log)
        )
        await service.recover()
        app = web.Application(
            [
                (f"/{protocol.MANAGER_SOCKETIO_PATH}/",
                 bounded_socketio_handler(sio, self.max_sockets, self.handshake_timeout)),
                *api_routes(service, gate),
            ],
            websocket_ping_interval=20,
        )
        server = httpserver.HTTPServer(app, xheaders=False)
        sockets = netutil.bind_sockets(self.port, self.host)
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        self._install_signal_handlers()
        watcher = asyncio.create_task(self._watch_parent()) if self.parent_pid else None
        print(READY_LINE.format(host=self.host, port=port), flush=True)
        if ready is not None:
            ready.set_result(port)
        try:
            await self._stopping.wait()
        finally:
            self.log.info("agenstra-manager shutting down")
            if watcher is not None:
                watcher.cancel()
            server.stop()
            await service.shutdown()
            await self._disconnect_all(sio)
            await sio.shutdown()
            await server.close_all_connections()
            await store.close()
            await gate.close()

    def stop(self) -> None:
        self._stopping.set()

    async def _open_store(self) -> Store:
        """The database, owner-only in an owner-only DATA_DIR, its configs sealed with the key.

        A key that is not the database's stops the manager here, with the reason.
        """
        private_dir(Path(self.data_dir))
        try:
            self._lock = hold(Path(self.data_dir))
        except DataDirInUse as exc:
            raise SystemExit(f"agenstra-manager cannot start: {exc}") from None
        database = make_url(self.db).render_as_string(hide_password=True)
        try:
            store = Store(self.db, SecretBox.from_key_file(Path(self.key_file)))
            await store.open()
        except SecretKeyError as exc:
            raise SystemExit(
                f"agenstra-manager cannot start: {exc} (key file {self.key_file}, "
                f"database {database}). Use the key this database was created with."
            ) from None
        return store

    async def _disconnect_all(self, sio: socketio.AsyncServer) -> None:
        """Close every client socket; a peer that never answers the close cannot hold us up."""
        if not sio.eio.sockets:
            return
        try:
            await asyncio.wait_for(sio.eio.disconnect(), SHUTDOWN_GRACE)
        except asyncio.TimeoutError:
            self.log.warning("Some clients did not close their sockets in time")

    async def _watch_parent(self) -> None:
        while os.getppid() == self.parent_pid:  # noqa: ASYNC110 (no event tells a parent died)
            await asyncio.sleep(1.0)
        self.log.warning("The supervising process %s is gone; stopping", self.parent_pid)
        self.stop()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):
                pass  # not the main thread (embedded in tests): stop() is called instead

    def _notebook_tools(self) -> NotebookTools | None:
        if not self.mcp_socket:
            return None
        return NotebookTools(os.path.abspath(self.mcp_socket), self.mcp_base_url)

    def _mcp_dir(self) -> list[str]:
        """The socket's folder (the controller's private data): never shown to a sandbox,
        never a project."""
        return [os.path.dirname(os.path.abspath(self.mcp_socket))] if self.mcp_socket else []

    def _make_runtimes(self) -> dict[str, Runtime]:
        runtimes: dict[str, Runtime] = {}
        for cls in self.runtime_classes:
            runtime = cls(parent=self)
            runtime.notebook_tools = self._notebook_tools()
            if isinstance(runtime, ProcessRuntime):
                if not runtime.workspace_root:
                    runtime.workspace_root = str(Path(self.data_dir) / "workspaces")
                if not runtime.state_root:
                    runtime.state_root = str(Path(self.data_dir) / "agents")
                runtime.protected_paths = [*runtime.protected_paths, self.data_dir,
                                           self.key_file, *self._mcp_dir()]
            runtimes[cls.name] = runtime
        return runtimes

    def _project_policy(self, runtimes: dict[str, Runtime]) -> ProjectPolicy:
        """Projects must not hold the manager's own data, wherever it is configured."""
        protected = [self.data_dir, self.key_file, *self._mcp_dir()]
        database = make_url(self.db)
        if database.get_backend_name() == "sqlite" and database.database:
            protected.append(database.database)
        for runtime in runtimes.values():
            if isinstance(runtime, ProcessRuntime):
                protected += [runtime.workspace_root, str(runtime.agents_root),
                              *runtime.protected_paths]
        return ProjectPolicy(list(self.project_roots), protected)

    def generated_key(self) -> str:
        key = secrets.token_urlsafe(32)
        print(f"agenstra-manager API key (generated for this run): {key}", flush=True)
        return key


def main(argv: list[str] | None = None) -> None:
    app = ManagerApp.instance()
    app.initialize(argv)
    try:
        app.start()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()

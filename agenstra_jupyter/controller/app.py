"""The controller: a Jupyter server extension between frontends and agent managers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Dict, Enum, Float, Int, List, Type, Unicode, default

from .. import protocol
from ..config import apply_env
from ..db import sqlite_url
from ..protocol import AgenstraError, ErrorCode
from ..secrets import SecretBox, private_dir
from ..socketio_tuned import Coalescing, TunedServer
from . import provisioner, saves
from .gateway import ClientsNamespace, Limits
from .handlers import api_handlers
from .hub_token import HubTokens
from .links import Backoff
from .local import LocalManager
from .manager_api import ManagerAPI, is_agents, is_created_agent, is_providers
from .mcp.endpoint import MCPEndpoint
from .placement import HealthMonitor, LeastAgents, PlacementPolicy
from .registry import LOCAL_CLIENT_ID, Registry
from .socketio_handler import jupyter_socketio_handler

ASK_MARGIN = 60.0  # the manager settles an ask by its own timeout first: hear its answer


class ControllerApp(ExtensionApp):
    name = "agenstra_jupyter"
    load_other_extensions = True

    data_dir = Unicode(help="Directory of the registry, its key and the local manager's data.").tag(
        config=True, env="AGENSTRA_CONTROLLER_DATA_DIR"
    )
    db = Unicode("", help="SQLAlchemy URL of the registry (default: sqlite in data_dir).").tag(
        config=True, env="AGENSTRA_CONTROLLER_DB"
    )
    secret_key = Unicode(
        "", help="Fernet key encrypting stored secrets (default: a key file in data_dir)."
    ).tag(config=True, env="AGENSTRA_SECRET_KEY")
    local_manager = Bool(True, help="Start and supervise a local agenstra-manager.").tag(
        config=True, env="AGENSTRA_LOCAL_MANAGER"
    )
    manager_url = Unicode(
        "", help="Use this external manager as client 'local' instead of starting one."
    ).tag(config=True, env="AGENSTRA_MANAGER_URL")
    manager_api_key = Unicode("", help="API key of manager_url.").tag(
        config=True, env="AGENSTRA_MANAGER_API_KEY"
    )
    manager_auth = Enum(
        ["key", "hub"], "key",
        help="How this server proves itself to manager_url: 'key' (manager_api_key) or "
        "'hub' (a Hub token this JupyterHub single-user server mints for it, good for "
        "the manager's service only: docs/deploy/jupyterhub.md). AGENSTRA_MANAGER_AUTH.",
    ).tag(config=True, env="AGENSTRA_MANAGER_AUTH")
    hub_service = Unicode(
        "agenstra-manager",
        help="The shared manager's JupyterHub service name (manager_auth 'hub'): its token "
        "is scoped to access:services!service=<it>. AGENSTRA_HUB_SERVICE.",
    ).tag(config=True, env="AGENSTRA_HUB_SERVICE")
    hub_token_scopes = Unicode(
        "custom:agenstra:admin",
        help="Scopes, comma-separated, the manager's token carries besides access to its "
        "service, when this server's user holds them (the manager's admin scope). "
        "AGENSTRA_HUB_TOKEN_SCOPES.",
    ).tag(config=True, env="AGENSTRA_HUB_TOKEN_SCOPES")
    manager_args = List(
        Unicode(), help="Extra command-line arguments for the local manager."
    ).tag(config=True)
    default_agent_name = Unicode("assistant", help="Agent created on first start.").tag(
        config=True, env="AGENSTRA_DEFAULT_AGENT"
    )
    default_agent_provider = Unicode(
        "auto",
        help="Provider of the default agent: 'auto' (the best agent CLI the local manager "
        "finds, else a shell), a provider name, or '' to create none.",
    ).tag(config=True, env="AGENSTRA_DEFAULT_PROVIDER")
    default_agent_runtime = Unicode("process", help="Runtime of the default agent.").tag(
        config=True, env="AGENSTRA_DEFAULT_RUNTIME"
    )
    default_agent_config = Dict(
        help="Config merged into the default agent's, e.g. {'loopbackPorts': [11434]} for a "
        "local model server. AGENSTRA_DEFAULT_AGENT_CONFIG."
    ).tag(config=True, env="AGENSTRA_DEFAULT_AGENT_CONFIG")
    reconnect_delay = Float(0.5, help="First delay before reconnecting to a manager (s).").tag(
        config=True, env="AGENSTRA_RECONNECT_DELAY"
    )
    reconnect_delay_max = Float(10.0, help="Longest delay between reconnects (s).").tag(
        config=True, env="AGENSTRA_RECONNECT_DELAY_MAX"
    )
    login_rate = Int(30, help="Logins a frontend socket may make per minute (0: no limit).").tag(
        config=True, env="AGENSTRA_LOGIN_RATE"
    )
    chat_rate = Int(120, help="Chats a frontend socket may send per minute (0: no limit).").tag(
        config=True, env="AGENSTRA_CHAT_RATE"
    )
    max_message_bytes = Int(
        256 * 1024, help="Largest forwarded payload, in bytes of JSON (0: no limit)."
    ).tag(config=True, env="AGENSTRA_MAX_MESSAGE_BYTES")
    max_sockets_per_user = Int(
        64, help="Frontend sockets one user may hold open (0: no limit)."
    ).tag(config=True, env="AGENSTRA_MAX_SOCKETS_PER_USER")
    event_rate = Int(
        600, help="Events a frontend socket may send per minute, in bursts of as many: "
        "setClient, every forwarded event but chats and logins (which have their own "
        "limits), and malformed ones (0: no limit). AGENSTRA_EVENT_RATE."
    ).tag(config=True, env="AGENSTRA_EVENT_RATE")
    max_links_per_socket = Int(
        32, help="Agents one frontend socket may have open at once; each is logged in on "
        "its manager's one shared connection (0: no limit). AGENSTRA_MAX_LINKS_PER_SOCKET."
    ).tag(config=True, env="AGENSTRA_MAX_LINKS_PER_SOCKET")
    max_links_per_user = Int(
        128, help="Agents one user may have open at once over all their sockets (0: no "
        "limit). AGENSTRA_MAX_LINKS_PER_USER."
    ).tag(config=True, env="AGENSTRA_MAX_LINKS_PER_USER")

    manager_timeout = Float(
        60.0, help="Longest a REST call to a manager may take in all, connecting, sending and "
        "reading its answer (s). AGENSTRA_MANAGER_TIMEOUT."
    ).tag(config=True, env="AGENSTRA_MANAGER_TIMEOUT")
    max_manager_response_bytes = Int(
        4 * 1024 * 1024, help="Largest answer read from a manager's REST API, except a page "
        "of messages (bytes). AGENSTRA_MAX_MANAGER_RESPONSE_BYTES."
    ).tag(config=True, env="AGENSTRA_MAX_MANAGER_RESPONSE_BYTES")
    max_manager_history_bytes = Int(
        64 * 1024 * 1024, help="Largest page of messages read from a manager (bytes); a page "
        "over it fails, a client may ask for fewer (limit=). "
        "AGENSTRA_MAX_MANAGER_HISTORY_BYTES."
    ).tag(config=True, env="AGENSTRA_MAX_MANAGER_HISTORY_BYTES")
    allowed_manager_hosts = Unicode(
        "", help="Hosts users may register managers on, comma-separated: names, '*.domain', "
        "IP addresses or networks ('10.0.0.0/8', matching endpoints written as an IP); "
        "checked at registration and on every call. Empty (the default) allows any host: a "
        "Jupyter user can reach the same network from a kernel anyway, and the controller "
        "relays only answers shaped like a manager's, bounded in size and time. Set it where "
        "the Jupyter server can reach what its users cannot. The local manager is exempt. "
        "AGENSTRA_ALLOWED_MANAGER_HOSTS."
    ).tag(config=True, env="AGENSTRA_ALLOWED_MANAGER_HOSTS")

    placement_policy = Type(
        LeastAgents, klass=PlacementPolicy,
        help="Where an agent created without a manager goes (POST agents): a PlacementPolicy "
        "class, by default the manager with the fewest agents among those up and with room; "
        "agenstra_jupyter.controller.placement.MostRoom picks the most free capacity. "
        "AGENSTRA_PLACEMENT_POLICY."
    ).tag(config=True, env="AGENSTRA_PLACEMENT_POLICY")
    health_timeout = Float(
        3.0, help="Longest a manager's health check may take (s): a host that does not "
        "answer within it is shown down. AGENSTRA_HEALTH_TIMEOUT."
    ).tag(config=True, env="AGENSTRA_HEALTH_TIMEOUT")
    health_cache_seconds = Float(
        5.0, help="How long a manager's health check is reused before the next one (s). "
        "AGENSTRA_HEALTH_CACHE_SECONDS."
    ).tag(config=True, env="AGENSTRA_HEALTH_CACHE_SECONDS")

    notebook_tools = Bool(
        True, help="Give agents that have a project the notebook tools: an MCP endpoint at "
        "{base_url}agenstra/mcp (and on an MCP-only socket in data_dir for the local "
        "manager's sandboxed agents), reached with a per-agent token. AGENSTRA_NOTEBOOK_TOOLS."
    ).tag(config=True, env="AGENSTRA_NOTEBOOK_TOOLS")
    notebook_tools_max_request_bytes = Int(
        4 * 1024 * 1024, help="Largest request body the notebook tools' endpoint reads "
        "(bytes). AGENSTRA_NOTEBOOK_TOOLS_MAX_REQUEST_BYTES."
    ).tag(config=True, env="AGENSTRA_NOTEBOOK_TOOLS_MAX_REQUEST_BYTES")
    notebook_tools_ask_timeout = Float(
        help="Longest a notebook tool waits for the user's answer to its approval request "
        "(s); a little longer than the manager's AGENSTRA_PERMISSION_TIMEOUT, after which "
        "the manager answers 'expired' itself. AGENSTRA_NOTEBOOK_TOOLS_ASK_TIMEOUT."
    ).tag(config=True, env="AGENSTRA_NOTEBOOK_TOOLS_ASK_TIMEOUT")
    notebook_tools_calls_per_agent = Int(
        8, help="Notebook tool calls one agent may have running at once (0: no limit). "
        "AGENSTRA_NOTEBOOK_TOOLS_CALLS_PER_AGENT."
    ).tag(config=True, env="AGENSTRA_NOTEBOOK_TOOLS_CALLS_PER_AGENT")

    @default("notebook_tools_ask_timeout")
    def _default_ask_timeout(self) -> float:
        # The local manager inherits this environment: wait as long as it lets a user answer.
        try:
            manager_timeout = float(os.environ.get("AGENSTRA_PERMISSION_TIMEOUT", ""))
        except ValueError:
            manager_timeout = protocol.DEFAULT_PERMISSION_TIMEOUT  # the manager's own default
        return manager_timeout + ASK_MARGIN

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return str(Path(jupyter_data_dir()) / "agenstra")

    def registry_url(self) -> str:
        # Not a trait default: data_dir may still change (AGENSTRA_*) after db is first read.
        return self.db or sqlite_url(Path(self.data_dir) / "controller.sqlite")

    def initialize_settings(self) -> None:
        apply_env(self)
        if not provisioner.use_as_default():  # kernels in agents' projects import nothing
            self.log.warning("agenstra: kernels do not use %s (another default provisioner "
                             "is configured, or it is not installed): a kernel started in "
                             "an agent's project imports from the agent's files",
                             provisioner.NAME)
        # Saves in agents' projects never write through a link the agent put there.
        self.serverapp.contents_manager.register_pre_save_hook(saves.refuse_symlinked_saves)
        self.controller = Controller(self)
        self.settings["agenstra_controller"] = self.controller

    def initialize_handlers(self) -> None:
        socketio_path = "/" + protocol.CONTROLLER_SOCKETIO_PATH + "/?"
        self.handlers.extend(
            [
                (socketio_path, jupyter_socketio_handler(self.controller.sio)),
                *api_handlers("/agenstra/api"),
            ]
        )
        if self.controller.mcp is not None:
            self.handlers.extend(self.controller.mcp.jupyter_handlers())

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        if self.controller.mcp is not None:
            try:  # before the local manager starts: it is handed the socket
                await self.controller.mcp.start()
            except Exception:
                self.log.exception("agenstra: the notebook tools' endpoint did not start")
        try:
            await self.controller.ready()
        except Exception:
            self.log.exception("agenstra: the controller did not start; retrying on first use")

    async def stop_extension(self) -> None:
        await self.controller.close()


class Controller:
    """What the extension runs: registry, frontend gateway, manager API, local manager."""

    def __init__(self, app: ControllerApp) -> None:
        self.app = app
        self.log = app.log
        data_dir = private_dir(Path(app.data_dir))
        box = (
            SecretBox(app.secret_key.encode())
            if app.secret_key
            else SecretBox.from_key_file(data_dir / "controller.key")
        )
        self.registry = Registry(app.registry_url(), box)
        self.api = ManagerAPI(
            timeout=app.manager_timeout, max_bytes=app.max_manager_response_bytes,
            max_history_bytes=app.max_manager_history_bytes,
            allowed_hosts=app.allowed_manager_hosts,
        )
        self.health = HealthMonitor(self.api, timeout=app.health_timeout,
                                    ttl=app.health_cache_seconds)
        self.placement = app.placement_policy(parent=app)
        self.local: LocalManager | None = None
        self.mcp = (
            MCPEndpoint(self, data_dir=data_dir,
                        max_body_bytes=app.notebook_tools_max_request_bytes,
                        ask_timeout=app.notebook_tools_ask_timeout,
                        max_calls_per_agent=app.notebook_tools_calls_per_agent)
            if app.notebook_tools else None
        )
        self.sio = TunedServer(  # tuned for small events (socketio_tuned.py)
            # A frontend that reads slowly gets a turn's text deltas merged, not piled up.
            coalescing=Coalescing(protocol.delta_stream, protocol.merge_deltas),
            cors_allowed_origins=[],  # origins are checked by Jupyter (JupyterHandler)
            async_handlers=False,  # one socket's events in order: a chat never overtakes a login
            # One limit for every tier's frames; forward payloads are then held to
            # max_message_bytes.
            max_http_buffer_size=protocol.MAX_FRAME_BYTES,
            logger=False,
            engineio_logger=False,
        )
        self.gateway = ClientsNamespace(
            self.registry,
            self.ready,
            Backoff(app.reconnect_delay, app.reconnect_delay_max),
            Limits(
                logins_per_minute=app.login_rate, chats_per_minute=app.chat_rate,
                max_message_bytes=app.max_message_bytes,
                sockets_per_user=app.max_sockets_per_user, events_per_minute=app.event_rate,
                links_per_socket=app.max_links_per_socket,
                links_per_user=app.max_links_per_user,
            ),
            self.log,
            check_host=self.api.check_host,
        )
        self.sio.register_namespace(self.gateway)
        self._started = False
        self._registry_open = False
        self._lock = asyncio.Lock()

    @property
    def registry_open(self) -> bool:
        return self._registry_open

    @property
    def mcp_socket_path(self) -> str | None:
        """The MCP-only socket the local manager relays to its agents; None without tools
        (off, or the socket did not open)."""
        if self.mcp is None or not self.mcp.listening:
            return None
        return str(self.mcp.socket_path)

    @property
    def root_dir(self) -> str:
        """The Jupyter server's root: projects are folders relative to it."""
        serverapp = self.app.serverapp
        contents = getattr(serverapp, "contents_manager", None)
        root = getattr(contents, "root_dir", None) or serverapp.root_dir
        return os.path.realpath(os.path.expanduser(root))

    async def ready(self) -> None:
        """Open the registry and bring up the local manager, once."""
        async with self._lock:
            if not self._started:
                try:
                    await self._start()
                except RuntimeError as exc:  # the local manager did not start: say why
                    raise AgenstraError(ErrorCode.UNAVAILABLE, str(exc)) from None
                self._started = True

    async def _start(self) -> None:
        app = self.app
        if not self._registry_open:  # once: a retried start must not open another engine
            await self.registry.open()
            self._registry_open = True
            for project in await self.registry.granted_projects():
                provisioner.add_project(project)
        if app.manager_url:
            await self.registry.set_local(app.manager_url.rstrip("/"),
                                          await self._manager_key())
        elif app.local_manager:
            if self.local is None:  # kept only once started: a retry starts it again
                local = LocalManager(Path(app.data_dir) / "local-manager", app.manager_args,
                                     self.log, project_roots=[self.root_dir],
                                     mcp_socket=self.mcp_socket_path,
                                     mcp_base_url=app.serverapp.base_url)
                await local.start()
                self.local = local
            await self.registry.set_local(self.local.endpoint, self.local.api_key)
        else:
            return
        try:
            await self._ensure_default_agent()
        except Exception as exc:  # best effort: never a reason to refuse the user's requests
            self.log.warning("agenstra: the default agent was not created: %s", exc)

    async def _manager_key(self) -> str:
        """What manager_url is sent as its key: the API key, or (hub mode) a token of its
        own for the manager's service, kept across restarts while the Hub honours it."""
        if self.app.manager_auth == "key":
            return self.app.manager_api_key
        kept = await self.registry.get_client(LOCAL_CLIENT_ID)
        extra = [scope.strip() for scope in self.app.hub_token_scopes.split(",")
                 if scope.strip()]
        tokens = HubTokens(self.app.hub_service, extra)
        return await tokens.token(kept.api_key if kept is not None else None)

    async def _ensure_default_agent(self) -> None:
        app = self.app
        if not app.default_agent_provider or not app.default_agent_name:
            return
        client = await self.registry.get_client(LOCAL_CLIENT_ID)
        assert client is not None
        agents = await self.api.request(client.endpoint, client.api_key, "GET", "/api/agents",
                                        shape=is_agents, local=True)
        # A Hub admin lists everyone's agents: only its own `assistant` counts.
        me = os.environ.get("JUPYTERHUB_USER") if app.manager_auth == "hub" else None
        if any(agent["name"] == app.default_agent_name and agent.get("owner") == me
               for agent in agents):
            return
        provider, config = await self._default_provider(client)
        created = await self.api.request(
            client.endpoint, client.api_key, "POST", "/api/agents",
            json={"name": app.default_agent_name, "provider": provider,
                  "config": {**config, **app.default_agent_config},
                  "runtime": app.default_agent_runtime,
                  "description": "Created on first start"},
            shape=is_created_agent, local=True,
        )
        await self.registry.save_password(
            LOCAL_CLIENT_ID, created["id"], created["name"], created["password"]
        )
        self.log.info("agenstra: created the default agent %r", created["name"])

    async def _default_provider(self, client: Any) -> tuple[str, dict[str, Any]]:
        """The configured provider, or for 'auto' the best CLI found, falling back to shell."""
        if self.app.default_agent_provider != "auto":
            return self.app.default_agent_provider, {}
        offer = await self.api.request(client.endpoint, client.api_key, "GET", "/api/providers",
                                       shape=is_providers, local=True)
        cli = next((p for p in offer["providers"] if p["name"] == "cli"), None)
        if cli and cli.get("detected"):
            return "cli", {"preset": cli["detected"][0]}
        return "shell", {}

    async def close(self) -> None:
        if self.mcp is not None:
            await self.mcp.stop()
        await self.gateway.close_all()
        if self.sio.eio.sockets:
            await self.sio.eio.disconnect()
        await self.sio.shutdown()
        if self.local is not None:
            await self.local.stop()
        await self.api.close()
        await self.registry.close()

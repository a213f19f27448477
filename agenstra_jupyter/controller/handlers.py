"""REST under {base_url}agenstra/api/: managers ("clients") and their agents.

Jupyter authentication and XSRF apply as for any Jupyter API.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from .. import protocol
from ..manager.projects import relative_project, resolve_relative
from ..protocol import AgenstraError, ErrorCode
from ..redact import redact
from ..rest_errors import JSONErrors
from . import placement, provisioner
from .manager_api import (
    UNREACHABLE,
    is_agent,
    is_agents,
    is_created_agent,
    is_health,
    is_messages,
    is_providers,
)
from .registry import ClientNameTaken, ClientRecord

if TYPE_CHECKING:
    from .app import Controller

MAX_PAGE = 1000
class ControllerHandler(JSONErrors, APIHandler):
    auth_resource = "agenstra"

    @property
    def controller(self) -> Controller:
        return self.settings["agenstra_controller"]

    def body(self, model: type) -> Any:
        try:
            data = json.loads(self.request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD, "Body must be JSON") from None
        return protocol.parse(model, data)

    def send(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(payload))

    async def client(self, client_id: str) -> ClientRecord:
        await self.controller.ready()
        client = await self.controller.registry.get_client(client_id)
        if client is None:
            raise AgenstraError(ErrorCode.UNKNOWN_CLIENT, "Unknown client")
        return client

    async def manager(self, client: ClientRecord, method: str, path: str, **kwargs: Any) -> Any:
        """The manager's answer, checked against `shape=`; the allow-list spares `local`."""
        try:
            return await self.controller.api.request(
                client.endpoint, client.api_key, method, path, local=client.local, **kwargs
            )
        except AgenstraError as exc:
            if exc.code == ErrorCode.UNAUTHORIZED:  # it refused the key we hold, not the user
                raise AgenstraError(ErrorCode.REMOTE_UNAVAILABLE,
                                    "The manager rejected the stored API key") from None
            if exc.code == ErrorCode.REMOTE_UNAVAILABLE and exc.status == 504:
                self.controller.health.mark_down(client.id, "The manager did not answer in time")
            if exc.code == ErrorCode.REMOTE_UNAVAILABLE and exc.message == UNREACHABLE:
                self.controller.health.mark_down(client.id, UNREACHABLE)
                raise AgenstraError(ErrorCode.REMOTE_UNAVAILABLE,
                                    f"{placement.HOST_UNAVAILABLE}: manager unreachable",
                                    exc.status) from None
            raise

    def view(self, agent: dict[str, Any], credentials: bool) -> dict[str, Any]:
        return agent_view(agent, credentials, self.controller.root_dir)

    async def project(self, client: ClientRecord, project: str) -> str:
        """The project as its manager gets it: checked, absolute, symlinks resolved."""
        health = await self.manager(client, "GET", "/api/health", shape=is_health)
        if health.get("projects") is not True:
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD,
                                "This manager cannot open your files: projects need a manager "
                                "on this host that offers them (the local one)")
        protected = [self.controller.app.data_dir]  # the registry and its key
        path = await asyncio.to_thread(resolve_relative, self.controller.root_dir, project,
                                       protected)
        return str(path)

    async def create(self, client: ClientRecord,
                     request: protocol.AgentCreateRequest) -> dict[str, Any]:
        """Create the agent on `client`'s manager, keeping its password; the agent's view."""
        client_id = client.id
        await self.check_room(client)
        body = request.model_dump(exclude_none=True,
                                  include=set(protocol.AgentCreateRequest.model_fields))
        token = None
        if request.project is not None:
            body["project"] = await self.project(client, request.project)
            provisioner.add_project(body["project"])  # before the agent can write there
            token = self.notebook_tools_token()
        if token is not None:  # the agent's own capability: sent once, never shown
            body = protocol.ManagerAgentCreateRequest(
                **body, notebookTools=protocol.NotebookToolsGrant(token=token)
            ).model_dump(exclude_none=True)
        created = await self.manager(
            client, "POST", "/api/agents", json=body, shape=is_created_agent,
        )
        password = created.pop("password")
        registry = self.controller.registry
        await registry.save_password(client_id, created["id"], created["name"], password)
        if token is not None:
            await registry.save_grant(token, client_id, created["id"], body["project"])
        self.controller.health.note_created(client_id)
        return self.view(created, True)

    async def check_room(self, client: ClientRecord) -> None:
        """Refuse a create on a manager at its capacity (registered or advertised)."""
        health = await self.controller.health.health(client)
        if health.up and not placement.has_room(client, health):
            raise AgenstraError(ErrorCode.REMOTE_UNAVAILABLE,
                                f"The manager {client.name!r} is full ({health.agents} of "
                                f"{placement.capacity_of(client, health)} agents)", 503)

    def notebook_tools_token(self) -> str | None:
        """A fresh token for a project agent's notebook tools, unless they are off."""
        return self.controller.registry.new_token() if self.controller.mcp is not None else None


def agent_view(agent: dict[str, Any], credentials: bool,
               root: str | None = None) -> dict[str, Any]:
    """A manager's agent as this API shows it: never a password, its config masked, its
    project relative to the Jupyter `root` (what a frontend opens documents with).

    Masked again here: the manager may be an older or foreign one that masks less.
    """
    view = {key: value for key, value in agent.items() if key != "password"}
    view["config"] = redact(agent.get("config") or {})
    view["project"] = relative_project(agent.get("project"), root) if root else None
    return {**view, "credentials": credentials}


def note_projects(agents: list[dict[str, Any]]) -> None:
    """The projects agents work in: kernels started there import nothing from them."""
    for agent in agents:
        if isinstance(agent.get("project"), str):
            provisioner.add_project(agent["project"])


def validate_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problem = "endpoint must be an http(s) URL"
    elif parts.username or parts.password:
        problem = "endpoint must not contain credentials; send apiKey"
    elif parts.query or parts.fragment:
        problem = "endpoint must not have a query or fragment"
    else:
        return endpoint.rstrip("/")
    raise AgenstraError(ErrorCode.INVALID_PAYLOAD, problem)


class ClientsHandler(ControllerHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        """Every manager with its health, checked at once, each check bounded in time."""
        await self.controller.ready()
        clients = await self.controller.registry.list_clients()
        health = await self.controller.health.all(clients)
        self.send([client_view(c, health[c.id]) for c in clients])

    @web.authenticated
    @authorized
    async def post(self) -> None:
        request: placement.ClientRegistration = self.body(placement.ClientRegistration)
        endpoint = validate_endpoint(request.endpoint)
        await self.controller.ready()
        # Only an agenstra manager that answers with this key is registered.
        await self.controller.api.check_manager(endpoint, request.apiKey)
        try:
            client = await self.controller.registry.add_client(
                request.name, endpoint, request.apiKey, request.labels, request.capacity
            )
        except ClientNameTaken:
            raise AgenstraError(ErrorCode.CONFLICT,
                                f"A client named {request.name!r} exists already") from None
        self.send(client_view(client, await self.controller.health.health(client)), status=201)


def client_view(client: ClientRecord, health: placement.Health) -> dict[str, Any]:
    return {**client.to_wire(), "health": placement.health_view(client, health)}


class ClientHandler(ControllerHandler):
    @web.authenticated
    @authorized
    async def get(self, client_id: str) -> None:
        client = await self.client(client_id)
        self.send(client_view(client, await self.controller.health.health(client)))

    @web.authenticated
    @authorized
    async def patch(self, client_id: str) -> None:
        """Labels and capacity (the local manager's too, which is never registered)."""
        update: placement.ClientPlacementUpdate = self.body(placement.ClientPlacementUpdate)
        client = await self.client(client_id)
        given = update.model_fields_set
        labels = update.labels if "labels" in given and update.labels is not None \
            else list(client.labels)
        capacity = update.capacity if "capacity" in given else client.capacity
        await self.controller.registry.set_placement(client_id, labels, capacity)
        client = await self.client(client_id)
        self.send(client_view(client, await self.controller.health.health(client)))

    @web.authenticated
    @authorized
    async def delete(self, client_id: str) -> None:
        client = await self.client(client_id)
        if client.local:
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD, "The local manager cannot be removed")
        await self.controller.registry.delete_client(client_id)
        self.controller.health.forget(client_id)
        await self.controller.gateway.close_links(client_id)  # nothing may talk to it now
        self.set_status(204)
        self.finish()


class ProvidersHandler(ControllerHandler):
    @web.authenticated
    @authorized
    async def get(self, client_id: str) -> None:
        client = await self.client(client_id)
        self.send(await self.manager(client, "GET", "/api/providers", shape=is_providers))


class AgentsHandler(ControllerHandler):
    @web.authenticated
    @authorized
    async def get(self, client_id: str) -> None:
        client = await self.client(client_id)
        agents = await self.manager(client, "GET", "/api/agents", shape=is_agents)
        note_projects(agents)
        known = await self.controller.registry.known_agents(client_id)
        self.send([self.view(agent, agent["id"] in known) for agent in agents])

    @web.authenticated
    @authorized
    async def post(self, client_id: str) -> None:
        request: protocol.AgentCreateRequest = self.body(protocol.AgentCreateRequest)
        client = await self.client(client_id)
        self.send(await self.create(client, request), status=201)


class PlacedAgentsHandler(ControllerHandler):
    """`agents`: every manager's agents in one list, and agents created where placement
    puts them (docs/many-hosts.md)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """Each agent with its `clientId`; a down manager's agents (from the controller's
        records) with `available: false` and why, the other managers' unaffected."""
        await self.controller.ready()
        clients = await self.controller.registry.list_clients()
        health = await self.controller.health.all(clients)
        found = await asyncio.gather(*(self.agents_of(c, health[c.id]) for c in clients))
        self.send([agent for agents in found for agent in agents])

    async def agents_of(self, client: ClientRecord,
                        health: placement.Health) -> list[dict[str, Any]]:
        registry = self.controller.registry
        if health.up:
            try:
                agents = await self.manager(client, "GET", "/api/agents", shape=is_agents)
            except AgenstraError:
                pass  # it went down since its check: say so below, like any down host
            else:
                note_projects(agents)
                known = await registry.known_agents(client.id)
                return [{**self.view(agent, agent["id"] in known), "clientId": client.id,
                         "available": True} for agent in agents]
        names = await registry.known_agent_names(client.id)
        return [placement.unavailable_agent(client, agent_id, name)
                for agent_id, name in names.items()]

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """Create an agent on `clientId`, on a manager with `label`, or (neither) on the
        manager the placement policy picks among those up and with room."""
        request: placement.PlacedAgentCreate = self.body(placement.PlacedAgentCreate)
        if request.clientId is not None and request.label is not None:
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD, "Give clientId or label, not both")
        await self.controller.ready()
        if request.clientId is not None:
            client = await self.client(request.clientId)
        else:
            clients = await self.controller.registry.list_clients()
            client = await placement.place(clients, self.controller.health,
                                           self.controller.placement, request.label)
        agent = await self.create(client, request)
        self.send({**agent, "clientId": client.id, "available": True}, status=201)


class AgentHandler(ControllerHandler):
    @web.authenticated
    @authorized
    async def get(self, client_id: str, agent_id: str) -> None:
        client = await self.client(client_id)
        try:
            agent = await self.manager(client, "GET", f"/api/agents/{agent_id}",
                                       shape=is_agent)
        except AgenstraError as exc:
            if exc.status == 404:  # gone from its manager: its notebook tools go with it
                await self.controller.registry.revoke_grant(client_id, agent_id)
            raise
        known = await self.controller.registry.known_agents(client_id)
        self.send(self.view(agent, agent_id in known))

    @web.authenticated
    @authorized
    async def delete(self, client_id: str, agent_id: str) -> None:
        client = await self.client(client_id)
        try:
            await self.manager(client, "DELETE", f"/api/agents/{agent_id}")
        except AgenstraError as exc:
            if exc.status != 404:  # NOT_FOUND, or any 404 from an older manager
                raise  # the agent may live on: its password (shown once) must stay
        # Deleted, or never there: its password and notebook tools are of no use any more.
        await self.controller.registry.forget_agent(client_id, agent_id)
        await self.controller.registry.revoke_grant(client_id, agent_id)
        await self.controller.gateway.close_links(client_id, agent_id)
        self.set_status(204)
        self.finish()


class AgentActionHandler(ControllerHandler):
    @web.authenticated
    @authorized
    async def post(self, client_id: str, agent_id: str, action: str) -> None:
        client = await self.client(client_id)
        agent = await self.manager(client, "POST", f"/api/agents/{agent_id}/{action}",
                                   shape=is_agent)
        known = await self.controller.registry.known_agents(client_id)
        self.send(self.view(agent, agent_id in known))


class MessagesHandler(ControllerHandler):
    @web.authenticated
    @authorized
    async def get(self, client_id: str, agent_id: str) -> None:
        params = {}
        for name in ("after", "limit"):
            value = self.get_query_argument(name, None)
            if value is not None:
                params[name] = str(protocol.parse_count(name, value))
        client = await self.client(client_id)
        self.send(await self.manager(client, "GET", f"/api/agents/{agent_id}/messages",
                                     params=params, shape=is_messages, history=True))


def api_handlers(prefix: str) -> list[tuple[str, type]]:
    client = prefix + r"/clients/([A-Za-z0-9._-]{1,64})"
    agent = client + r"/agents/([A-Za-z0-9-]{1,64})"
    return [
        (prefix + r"/clients/?", ClientsHandler),
        (prefix + r"/agents/?", PlacedAgentsHandler),
        (client + r"/?", ClientHandler),
        (client + r"/providers", ProvidersHandler),
        (client + r"/agents/?", AgentsHandler),
        (agent + r"/?", AgentHandler),
        (agent + r"/(start|stop|restart)", AgentActionHandler),
        (agent + r"/messages", MessagesHandler),
    ]

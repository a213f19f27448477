"""REST under {base_url}agenstra/api/: managers ("clients") and their agents.

Jupyter authentication and XSRF apply as for any Jupyter API.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from .. import protocol
from ..protocol import ErrorCode, ProtocolError
from ..redact import redact
from .manager_api import ManagerError
from .registry import ClientNameTaken, ClientRecord

if TYPE_CHECKING:
    from .app import Controller

MAX_PAGE = 1000
STATUS_CODES = {400: ErrorCode.INVALID_PAYLOAD, 401: ErrorCode.UNAUTHORIZED,
                403: ErrorCode.UNAUTHORIZED, 404: ErrorCode.UNKNOWN_CLIENT}


class CodedHTTPError(web.HTTPError):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(status, message)
        self.code = code


class ControllerHandler(APIHandler):
    auth_resource = "agenstra"

    @property
    def controller(self) -> Controller:
        return self.settings["agenstra_controller"]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, CodedHTTPError):
            code, message = exc.code, exc.log_message
        elif status_code in (401, 403):  # one message for every auth failure
            code, message = ErrorCode.UNAUTHORIZED, protocol.UNAUTHORIZED_MESSAGE
        elif status_code < 500:
            code = STATUS_CODES.get(status_code, ErrorCode.INVALID_PAYLOAD)
            message = getattr(exc, "log_message", None) or self._reason
        else:
            code, message = ErrorCode.INTERNAL, self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({**protocol.error_payload(code, message), "reason": self._reason}))

    def body(self, model: type) -> Any:
        try:
            data = json.loads(self.request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPError(400, "Body must be JSON") from None
        try:
            return protocol.parse(model, data)
        except ProtocolError as exc:
            raise web.HTTPError(400, exc.message) from None

    def send(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(payload))

    async def client(self, client_id: str) -> ClientRecord:
        await self.controller.ready()
        client = await self.controller.registry.get_client(client_id)
        if client is None:
            raise web.HTTPError(404, "Unknown client")
        return client

    async def manager(self, client: ClientRecord, method: str, path: str, **kwargs: Any) -> Any:
        return await self.call(client.endpoint, client.api_key, method, path, **kwargs)

    async def call(self, endpoint: str, api_key: str, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return await self.controller.api.request(endpoint, api_key, method, path, **kwargs)
        except ManagerError as exc:
            if exc.status == 401:  # the manager refused the key we hold: not the user's doing
                raise CodedHTTPError(
                    502, "The manager rejected the stored API key", ErrorCode.REMOTE_UNAVAILABLE
                ) from None
            raise CodedHTTPError(exc.status, exc.message, exc.code) from None


def agent_view(agent: dict[str, Any], credentials: bool) -> dict[str, Any]:
    """A manager's agent as this API shows it: never a password, its config masked.

    Masked again here: the manager may be an older or foreign one that masks less.
    """
    view = {key: value for key, value in agent.items() if key != "password"}
    view["config"] = redact(agent.get("config") or {})
    return {**view, "credentials": credentials}


def validate_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise web.HTTPError(400, "endpoint must be an http(s) URL")
    if parts.username or parts.password:
        raise web.HTTPError(400, "endpoint must not contain credentials; send apiKey")
    if parts.query or parts.fragment:
        raise web.HTTPError(400, "endpoint must not have a query or fragment")
    return endpoint.rstrip("/")


class ClientsHandler(ControllerHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.controller.ready()
        self.send([c.to_wire() for c in await self.controller.registry.list_clients()])

    @web.authenticated
    @authorized
    async def post(self) -> None:
        request: protocol.ClientRegisterRequest = self.body(protocol.ClientRegisterRequest)
        endpoint = validate_endpoint(request.endpoint)
        await self.controller.ready()
        # Only a manager that answers with this key is registered.
        try:
            await self.controller.api.request(endpoint, request.apiKey, "GET", "/api/health")
        except ManagerError as exc:
            if exc.status == 401:
                raise web.HTTPError(400, "The manager rejected this API key") from None
            raise CodedHTTPError(exc.status, exc.message, exc.code) from None
        try:
            client = await self.controller.registry.add_client(
                request.name, endpoint, request.apiKey
            )
        except ClientNameTaken:
            raise web.HTTPError(409, f"A client named {request.name!r} exists already") from None
        self.send(client.to_wire(), status=201)


class ClientHandler(ControllerHandler):
    @web.authenticated
    @authorized
    async def get(self, client_id: str) -> None:
        self.send((await self.client(client_id)).to_wire())

    @web.authenticated
    @authorized
    async def delete(self, client_id: str) -> None:
        client = await self.client(client_id)
        if client.local:
            raise web.HTTPError(400, "The local manager cannot be removed")
        await self.controller.registry.delete_client(client_id)
        self.set_status(204)
        self.finish()


class ProvidersHandler(ControllerHandler):
    @web.authenticated
    @authorized
    async def get(self, client_id: str) -> None:
        client = await self.client(client_id)
        self.send(await self.manager(client, "GET", "/api/providers"))


class AgentsHandler(ControllerHandler):
    @web.authenticated
    @authorized
    async def get(self, client_id: str) -> None:
        client = await self.client(client_id)
        agents = await self.manager(client, "GET", "/api/agents")
        known = await self.controller.registry.known_agents(client_id)
        self.send([agent_view(agent, agent["id"] in known) for agent in agents])

    @web.authenticated
    @authorized
    async def post(self, client_id: str) -> None:
        request: protocol.AgentCreateRequest = self.body(protocol.AgentCreateRequest)
        client = await self.client(client_id)
        created = await self.manager(
            client, "POST", "/api/agents", json=request.model_dump(exclude_none=True)
        )
        password = created.pop("password")
        await self.controller.registry.save_password(
            client_id, created["id"], created["name"], password
        )
        self.send(agent_view(created, True), status=201)


class AgentHandler(ControllerHandler):
    @web.authenticated
    @authorized
    async def get(self, client_id: str, agent_id: str) -> None:
        client = await self.client(client_id)
        agent = await self.manager(client, "GET", f"/api/agents/{agent_id}")
        known = await self.controller.registry.known_agents(client_id)
        self.send(agent_view(agent, agent_id in known))

    @web.authenticated
    @authorized
    async def delete(self, client_id: str, agent_id: str) -> None:
        client = await self.client(client_id)
        try:
            await self.manager(client, "DELETE", f"/api/agents/{agent_id}")
        except web.HTTPError as exc:
            if exc.status_code != 404:
                raise  # the agent may live on: its password (shown once) must stay
        # Deleted, or never there: its password is of no use any more.
        await self.controller.registry.forget_agent(client_id, agent_id)
        self.set_status(204)
        self.finish()


class AgentActionHandler(ControllerHandler):
    @web.authenticated
    @authorized
    async def post(self, client_id: str, agent_id: str, action: str) -> None:
        client = await self.client(client_id)
        agent = await self.manager(client, "POST", f"/api/agents/{agent_id}/{action}")
        known = await self.controller.registry.known_agents(client_id)
        self.send(agent_view(agent, agent_id in known))


class MessagesHandler(ControllerHandler):
    @web.authenticated
    @authorized
    async def get(self, client_id: str, agent_id: str) -> None:
        params = {}
        for name in ("after", "limit"):
            value = self.get_query_argument(name, None)
            if value is not None:
                try:
                    params[name] = str(protocol.parse_count(name, value))
                except ProtocolError as exc:
                    raise web.HTTPError(400, exc.message) from None
        client = await self.client(client_id)
        self.send(
            await self.manager(client, "GET", f"/api/agents/{agent_id}/messages", params=params)
        )


def api_handlers(prefix: str) -> list[tuple[str, type]]:
    client = prefix + r"/clients/([A-Za-z0-9._-]{1,64})"
    agent = client + r"/agents/([A-Za-z0-9-]{1,64})"
    return [
        (prefix + r"/clients/?", ClientsHandler),
        (client + r"/?", ClientHandler),
        (client + r"/providers", ProvidersHandler),
        (client + r"/agents/?", AgentsHandler),
        (agent + r"/?", AgentHandler),
        (agent + r"/(start|stop|restart)", AgentActionHandler),
        (agent + r"/messages", MessagesHandler),
    ]

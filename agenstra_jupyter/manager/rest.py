"""The manager's REST API under /api/ (API key required): agents, messages, health, providers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import prometheus_client
from tornado import web

from .. import protocol
from .._version import __version__
from ..protocol import AgenstraError, ErrorCode
from ..rest_errors import JSONErrors
from .auth import Authenticator, Caller, bearer_token
from .bounds import MAX_STORED_MESSAGE, wire_size
from .models import AgentRecord
from .service import AgentService

MAX_PAGE = 1000
# A page of history stops growing past this (one message always fits: each is capped at
# MAX_STORED_MESSAGE), well under what a controller accepts; clients fetch the next page,
# or get the rest replayed at login, so a short page loses nothing.
MAX_PAGE_BYTES = 4 * MAX_STORED_MESSAGE


class ApiHandler(JSONErrors, web.RequestHandler):
    """JSON in, JSON out; every error is `{message, code}` with a 4xx/5xx status."""

    caller: Caller

    def initialize(self, service: AgentService, gate: Authenticator) -> None:
        self.service = service
        self._gate = gate

    async def prepare(self) -> None:
        given = bearer_token(self.request.headers.get("Authorization"))
        self.caller = await self._gate.identify(self.request.remote_ip or "", given)

    async def agent(self, agent_id: str) -> AgentRecord:
        """The caller's agent: another user's is NOT_FOUND, as if it did not exist."""
        agent = await self.service.get_agent(agent_id)
        if not self.caller.may_use(agent.owner):
            raise AgenstraError(ErrorCode.NOT_FOUND, "No such agent")
        return agent

    def check_xsrf_cookie(self) -> None:
        """API-key authenticated; no cookies are involved."""

    def json_body(self) -> Any:
        try:
            return json.loads(self.request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD, "Body must be JSON") from None

    async def _visible_agents(self) -> list[AgentRecord]:
        """The caller's agents (every agent for an admin), chosen by the store."""
        if self.caller.admin:
            return await self.service.list_agents()
        if self.caller.user is None:
            return []
        return await self.service.list_agents(owner=self.caller.user)

    def send(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))


def _int_argument(handler: ApiHandler, name: str, default: int, maximum: int | None = None) -> int:
    raw = handler.get_query_argument(name, None)
    if raw is None:
        return default
    value = protocol.parse_count(name, raw)
    return min(value, maximum) if maximum is not None else value


class MetricsHandler(ApiHandler):
    async def get(self) -> None:
        if not self.caller.admin:  # the whole manager's figures: its operator's, not a user's
            raise AgenstraError(ErrorCode.NOT_FOUND, "Not found")
        self.set_header("Content-Type", prometheus_client.CONTENT_TYPE_LATEST)
        self.finish(prometheus_client.generate_latest(prometheus_client.REGISTRY))


class HealthHandler(ApiHandler):
    async def get(self) -> None:
        agents = await self._visible_agents()
        self.send({"status": "ok", "service": protocol.MANAGER_SERVICE, "version": __version__,
                   "agents": len(agents), "projects": self.service.projects.enabled,
                   "notebookTools": self.service.notebook_tools is not None})


class ProvidersHandler(ApiHandler):
    async def get(self) -> None:
        self.send(await self.service.describe())


class AgentsHandler(ApiHandler):
    async def get(self) -> None:
        self.send([agent.to_wire() for agent in await self._visible_agents()])

    async def post(self) -> None:
        request = protocol.parse(protocol.ManagerAgentCreateRequest, self.json_body())
        agent, password = await self.service.create_agent(request, owner=self.caller.user)
        self.send({**agent.to_wire(), "password": password}, status=201)


class AgentHandler(ApiHandler):
    async def get(self, agent_id: str) -> None:
        self.send((await self.agent(agent_id)).to_wire())

    async def delete(self, agent_id: str) -> None:
        await self.agent(agent_id)
        await self.service.delete_agent(agent_id)
        self.set_status(204)
        self.finish()


class AgentActionHandler(ApiHandler):
    async def post(self, agent_id: str, action: str) -> None:
        actions = {
            "start": self.service.start_agent,
            "stop": self.service.stop_agent,
            "restart": self.service.restart_agent,
        }
        await self.agent(agent_id)
        self.send((await actions[action](agent_id)).to_wire())


class PermissionsHandler(ApiHandler):
    """A notebook tool's ask (the controller's, DESIGN.md "Notebook tools"): answered with
    `{"outcome": ...}` once settled, which may take up to the permission timeout."""

    _asking: asyncio.Future[str] | None = None

    async def post(self, agent_id: str) -> None:
        request = protocol.parse(protocol.ToolPermissionRequest, self.json_body())
        await self.agent(agent_id)
        self._asking = asyncio.ensure_future(
            self.service.ask_tool_permission(agent_id, request))
        try:
            outcome = await self._asking
        except asyncio.CancelledError:
            return  # the caller went away: its request was settled as cancelled
        self.send({"outcome": outcome})

    def on_connection_close(self) -> None:
        # Nobody is left to tell: the request must not wait for a user.
        if self._asking is not None:
            self._asking.cancel()


class MessagesHandler(ApiHandler):
    async def get(self, agent_id: str) -> None:
        await self.agent(agent_id)
        after = _int_argument(self, "after", 0)
        limit = _int_argument(self, "limit", MAX_PAGE, MAX_PAGE)
        self.send(_fill(await self.service.store.messages(agent_id, after, limit)))


def _fill(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leading messages that fit in MAX_PAGE_BYTES (at least one)."""
    used = 0
    for count, message in enumerate(messages):
        used += wire_size(message)
        if used > MAX_PAGE_BYTES and count:
            return messages[:count]
    return messages


def api_routes(service: AgentService,
               gate: Authenticator) -> list[tuple[str, type, dict[str, Any]]]:
    args = {"service": service, "gate": gate}
    agent = r"/api/agents/([A-Za-z0-9-]{1,64})"
    return [
        (r"/api/health", HealthHandler, args),
        (r"/metrics", MetricsHandler, args),
        (r"/api/providers", ProvidersHandler, args),
        (r"/api/agents/?", AgentsHandler, args),
        (agent + r"/?", AgentHandler, args),
        (agent + r"/(start|stop|restart)", AgentActionHandler, args),
        (agent + r"/messages", MessagesHandler, args),
        (agent + r"/permissions", PermissionsHandler, args),
        (r"/api/.*", NotFoundHandler, args),
    ]


class NotFoundHandler(ApiHandler):
    async def prepare(self) -> None:
        await super().prepare()
        raise AgenstraError(ErrorCode.NOT_FOUND, "Not found")

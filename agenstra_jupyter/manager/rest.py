"""The manager's REST API under /api/ (API key required): agents, messages, health, providers."""

from __future__ import annotations

import json
from typing import Any

import prometheus_client
from tornado import web

from .. import __version__, protocol
from ..protocol import ErrorCode, ProtocolError
from .auth import bearer_token, key_matches
from .service import AgentError, AgentService

MAX_PAGE = 1000


class ApiHandler(web.RequestHandler):
    """JSON in, JSON out; every error is `{message, code}` with a 4xx/5xx status."""

    def initialize(self, service: AgentService, api_key: str) -> None:
        self.service = service
        self._api_key = api_key

    def prepare(self) -> None:
        if not key_matches(self._api_key, bearer_token(self.request.headers.get("Authorization"))):
            raise web.HTTPError(401, protocol.UNAUTHORIZED_MESSAGE)

    def check_xsrf_cookie(self) -> None:
        """API-key authenticated; no cookies are involved."""

    def json_body(self) -> Any:
        try:
            return json.loads(self.request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPError(400, "Body must be JSON") from None

    def send(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message
        else:
            message = self._reason if status_code < 500 else "Internal error"
        code = ErrorCode.UNAUTHORIZED if status_code == 401 else ErrorCode.INVALID_PAYLOAD
        if status_code >= 500:
            code = ErrorCode.INTERNAL
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(protocol.error_payload(code, message)))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, web.HTTPError):
            return  # expected client errors: tornado's access log already records the status
        super().log_exception(typ, value, tb)

    async def call(self, coroutine: Any) -> Any:
        """Await a service call, turning AgentError into its HTTP status."""
        try:
            return await coroutine
        except AgentError as exc:
            raise web.HTTPError(exc.status, exc.message) from None


def _int_argument(handler: ApiHandler, name: str, default: int, maximum: int | None = None) -> int:
    raw = handler.get_query_argument(name, None)
    if raw is None:
        return default
    try:
        value = protocol.parse_count(name, raw)
    except ProtocolError as exc:
        raise web.HTTPError(400, exc.message) from None
    return min(value, maximum) if maximum is not None else value


class MetricsHandler(ApiHandler):
    async def get(self) -> None:
        self.set_header("Content-Type", prometheus_client.CONTENT_TYPE_LATEST)
        self.finish(prometheus_client.generate_latest(prometheus_client.REGISTRY))


class HealthHandler(ApiHandler):
    async def get(self) -> None:
        agents = await self.service.list_agents()
        self.send({"status": "ok", "version": __version__, "agents": len(agents)})


class ProvidersHandler(ApiHandler):
    async def get(self) -> None:
        self.send(await self.service.describe())


class AgentsHandler(ApiHandler):
    async def get(self) -> None:
        self.send([agent.to_wire() for agent in await self.service.list_agents()])

    async def post(self) -> None:
        try:
            request = protocol.parse(protocol.AgentCreateRequest, self.json_body())
        except ProtocolError as exc:
            raise web.HTTPError(400, exc.message) from None
        agent, password = await self.call(self.service.create_agent(request))
        self.send({**agent.to_wire(), "password": password}, status=201)


class AgentHandler(ApiHandler):
    async def get(self, agent_id: str) -> None:
        self.send((await self.call(self.service.get_agent(agent_id))).to_wire())

    async def delete(self, agent_id: str) -> None:
        await self.call(self.service.delete_agent(agent_id))
        self.set_status(204)
        self.finish()


class AgentActionHandler(ApiHandler):
    async def post(self, agent_id: str, action: str) -> None:
        actions = {
            "start": self.service.start_agent,
            "stop": self.service.stop_agent,
            "restart": self.service.restart_agent,
        }
        self.send((await self.call(actions[action](agent_id))).to_wire())


class MessagesHandler(ApiHandler):
    async def get(self, agent_id: str) -> None:
        await self.call(self.service.get_agent(agent_id))
        after = _int_argument(self, "after", 0)
        limit = _int_argument(self, "limit", MAX_PAGE, MAX_PAGE)
        self.send(await self.service.store.messages(agent_id, after, limit))


def api_routes(service: AgentService, api_key: str) -> list[tuple[str, type, dict[str, Any]]]:
    args = {"service": service, "api_key": api_key}
    agent = r"/api/agents/([A-Za-z0-9-]{1,64})"
    return [
        (r"/api/health", HealthHandler, args),
        (r"/metrics", MetricsHandler, args),
        (r"/api/providers", ProvidersHandler, args),
        (r"/api/agents/?", AgentsHandler, args),
        (agent + r"/?", AgentHandler, args),
        (agent + r"/(start|stop|restart)", AgentActionHandler, args),
        (agent + r"/messages", MessagesHandler, args),
        (r"/api/.*", NotFoundHandler, args),
    ]


class NotFoundHandler(ApiHandler):
    def prepare(self) -> None:
        super().prepare()
        raise web.HTTPError(404, "Not found")

"""The manager's agents: lifecycle, credentials and their live channels.

REST handlers and the Socket.IO gateway both go through this class; neither touches
the store, runtimes or providers directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import bcrypt

from .. import protocol
from ..protocol import AgenstraError, ErrorCode
from .approvals import DEFAULT_TIMEOUT, cancel_stored, stored_part
from .bounds import QueueLimits, TurnLimits, clip_parts
from .channel import NO_TURN_MESSAGE, AgentChannel, Outbox, error_response
from .models import AgentRecord
from .notebook_tools import NotebookTools
from .permissions import PermissionAsk
from .projects import ProjectPolicy
from .providers import Provider, ProviderError
from .runtimes import Runtime, RuntimeFailure
from .store import NameTaken, Store

MAX_CONFIG_BYTES = 16 * 1024
INTERRUPTED_MESSAGE = "Interrupted: the manager stopped before this turn finished"


class AgentService:
    def __init__(
        self,
        store: Store,
        runtimes: dict[str, Runtime],
        providers: dict[str, type[Provider]],
        default_runtime: str,
        bcrypt_rounds: int,
        log: logging.Logger,
        provider_parent: Any = None,
        turn_limits: TurnLimits | None = None,
        queue_limits: QueueLimits | None = None,
        projects: ProjectPolicy | None = None,
        permission_timeout: float = DEFAULT_TIMEOUT,
        notebook_tools: NotebookTools | None = None,
    ) -> None:
        self.store = store
        self.notebook_tools = notebook_tools  # None: this manager has no MCP socket
        self.runtimes = runtimes
        self.providers = providers
        self.default_runtime = default_runtime
        self.bcrypt_rounds = bcrypt_rounds
        self.log = log
        self._provider_parent = provider_parent
        self._turn_limits = turn_limits or TurnLimits()
        # One for all channels: the queued bytes are bounded across every agent.
        self._queue_limits = queue_limits or QueueLimits()
        self.projects = projects or ProjectPolicy()  # none unless project roots are set
        self._permission_timeout = permission_timeout
        self._channels: dict[str, AgentChannel] = {}
        self.outbox: Outbox | None = None
        # Checked when no agent matches, so a wrong name costs as much time as a wrong
        # password: the same cost as the real hashes.
        self._decoy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(bcrypt_rounds))

    # -- catalogue -----------------------------------------------------------------------

    async def describe(self) -> dict[str, Any]:
        runtimes = []
        for name, runtime in self.runtimes.items():
            available = await runtime.available()  # first: it refreshes what info() reports
            info = runtime.info()
            info.update(available=available, default=name == self.default_runtime)
            runtimes.append(info)
        tools = self.notebook_tools is not None
        return {
            "providers": [{**cls.info(), "notebookTools": tools and cls.gets_notebook_tools}
                          for cls in self.providers.values()],
            "runtimes": runtimes,
        }

    # -- lifecycle -----------------------------------------------------------------------

    async def create_agent(
        self, request: protocol.AgentCreateRequest | protocol.ManagerAgentCreateRequest,
        owner: str | None = None,
    ) -> tuple[AgentRecord, str]:
        provider = self.providers.get(request.provider)
        if provider is None:
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD, f"Unknown provider {request.provider!r}")
        runtime = request.runtime or self.default_runtime
        if runtime not in self.runtimes:
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD, f"Unknown runtime {runtime!r}")
        if len(json.dumps(request.config)) > MAX_CONFIG_BYTES:
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD,
                                f"config is larger than {MAX_CONFIG_BYTES} bytes")
        config = dict(request.config)
        if provider.needs_network:
            config.setdefault("network", "egress")  # it must reach its model's API
        try:
            provider.validate_config(config)
            self.runtimes[runtime].validate_config(config)
        except ValueError as exc:
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD, str(exc)) from None
        project = await self._project(request.project, self.runtimes[runtime])
        password = secrets.token_urlsafe(24)
        password_hash = await asyncio.to_thread(
            bcrypt.hashpw, password.encode(), bcrypt.gensalt(self.bcrypt_rounds)
        )
        now = protocol.utc_now()
        record = AgentRecord(
            id=str(uuid.uuid4()),
            name=request.name,
            provider=request.provider,
            runtime=runtime,
            image=request.image,
            config=config,
            description=request.description,
            password_hash=password_hash.decode(),
            created_at=now,
            updated_at=now,
            project=project,
            notebook_token=_notebook_token(request) if project else None,
            owner=owner,
        )
        try:
            await self.store.create_agent(record)
        except NameTaken:
            raise AgenstraError(ErrorCode.CONFLICT,
                                f"An agent named {request.name!r} exists already") from None
        try:
            record = await self.start_agent(record.id)
        except AgenstraError as exc:
            # The agent exists (state "error") and its password must still reach the caller.
            self.log.warning("Agent %s created but not started: %s", record.name, exc.message)
            record = await self.get_agent(record.id)
        return record, password

    async def ask_tool_permission(self, agent_id: str,
                                  request: protocol.ToolPermissionRequest) -> str:
        """A notebook tool's ask, in the agent's running turn (DESIGN.md "Notebook tools"):
        its outcome once settled; CONFLICT when no turn runs, NOT_FOUND for no agent."""
        await self.get_agent(agent_id)
        channel = self._channels.get(agent_id)
        if channel is None:
            raise AgenstraError(ErrorCode.CONFLICT, NO_TURN_MESSAGE)
        resolution = await channel.ask_in_turn(tool_ask(request))
        return resolution.outcome

    async def _project(self, project: str | None, runtime: Runtime) -> str | None:
        """The resolved project folder (checked again here: the caller may not be our
        controller), or None for a private workspace."""
        if project is None:
            return None
        path = await self.projects.check(project)
        try:
            await asyncio.to_thread(runtime.validate_project, path)
        except ValueError as exc:
            raise AgenstraError(ErrorCode.INVALID_PAYLOAD, str(exc)) from None
        return str(path)

    async def list_agents(self, owner: str | None = None) -> list[AgentRecord]:
        return await self.store.list_agents(owner)

    async def get_agent(self, agent_id: str) -> AgentRecord:
        agent = await self.store.get_agent(agent_id)
        if agent is None:
            raise AgenstraError(ErrorCode.NOT_FOUND, "No such agent")
        return agent

    async def delete_agent(self, agent_id: str) -> None:
        agent = await self.get_agent(agent_id)
        # The closed channel stays registered until the agent is gone, so a login meanwhile
        # finds it (and its refusals) rather than a new channel starting turns.
        channel = self._channels.get(agent_id)
        if channel is not None:
            await channel.close("Cancelled: the agent was deleted")
        try:
            await self._runtime(agent).remove(agent)
            await self.store.delete_agent(agent_id)
        finally:
            self._channels.pop(agent_id, None)

    async def start_agent(self, agent_id: str) -> AgentRecord:
        agent = await self.get_agent(agent_id)
        try:
            await self._runtime(agent).start(agent)
        except RuntimeFailure as exc:
            await self.store.update_agent(agent_id, state="error")
            raise AgenstraError(ErrorCode.UNAVAILABLE, str(exc)) from None
        await self.store.update_agent(agent_id, state="running")
        return await self.get_agent(agent_id)

    async def stop_agent(self, agent_id: str) -> AgentRecord:
        agent = await self.get_agent(agent_id)
        # Turns are held first: none may start (and spawn) in a runtime being stopped.
        async with self._held(agent, "Cancelled: the agent was stopped"):
            await self.store.update_agent(agent_id, state="stopped")
            try:
                await self._runtime(agent).stop(agent)
            except RuntimeFailure as exc:
                raise AgenstraError(ErrorCode.UNAVAILABLE, str(exc)) from None
        return await self.get_agent(agent_id)

    @contextlib.asynccontextmanager
    async def _held(self, agent: AgentRecord, reason: str) -> AsyncIterator[None]:
        # A channel made here holds a login that comes during the stop, too.
        channel = self.channel(agent) if self.outbox else self._channels.get(agent.id)
        if channel is None:
            yield
            return
        await channel.hold(reason)
        try:
            yield
        finally:
            channel.release()

    async def restart_agent(self, agent_id: str) -> AgentRecord:
        await self.stop_agent(agent_id)
        return await self.start_agent(agent_id)

    def _runtime(self, agent: AgentRecord) -> Runtime:
        runtime = self.runtimes.get(agent.runtime)
        if runtime is None:
            raise AgenstraError(ErrorCode.UNAVAILABLE,
                                f"Runtime {agent.runtime!r} is not enabled on this manager")
        return runtime

    # -- sessions ------------------------------------------------------------------------

    async def authenticate(
        self, agent_id: str | None, agent_name: str | None, password: str,
        owner: str | None = None,
    ) -> AgentRecord | None:
        """The agent if the password is right; None for every kind of failure. A name is
        looked up among `owner`'s agents (None: those of the API key's holder)."""
        agent = None
        if agent_id:
            agent = await self.store.get_agent(agent_id)
            if agent is not None and agent_name and agent.name != agent_name:
                agent = None
        elif agent_name:
            agent = await self.store.get_agent_by_name(agent_name, owner)
        stored = agent.password_hash.encode() if agent else self._decoy_hash
        candidate = password.encode()
        if len(candidate) > 72:  # bcrypt's limit; longer can never be one of ours
            return None
        matches = await asyncio.to_thread(bcrypt.checkpw, candidate, stored)
        return agent if matches and agent else None

    def existing_channel(self, agent_id: str) -> AgentChannel | None:
        """The live channel of a logged-in agent, without touching the database."""
        return self._channels.get(agent_id)

    def channel(self, agent: AgentRecord) -> AgentChannel:
        channel = self._channels.get(agent.id)
        if channel is None:
            if self.outbox is None:
                raise RuntimeError("The service has no outbox")
            channel = AgentChannel(
                agent.id, self.store, self.outbox, lambda: self._make_provider(agent.id),
                self.log, self._turn_limits, self._queue_limits, self._permission_timeout,
            )
            self._channels[agent.id] = channel
        return channel

    async def _make_provider(self, agent_id: str) -> Provider:
        agent = await self.get_agent(agent_id)
        if agent.state != "running":
            try:
                agent = await self.start_agent(agent_id)
            except AgenstraError as exc:
                raise ProviderError(exc.message) from None
        provider_class = self.providers.get(agent.provider)
        if provider_class is None:
            raise ProviderError(f"Provider {agent.provider!r} is not enabled on this manager")

        async def save_state(state: dict[str, Any]) -> None:
            await self.store.update_agent(agent_id, provider_state=state)

        async def history(limit: int) -> list[dict[str, Any]]:
            return await self.store.recent_messages(agent_id, limit)

        return provider_class(
            parent=self._provider_parent,
            agent=agent,
            runtime=self._runtime(agent),
            save_state=save_state,
            history=history,
        )

    # -- manager start and stop ----------------------------------------------------------

    async def recover(self) -> None:
        """After a restart: close turns a crash cut short (their waiting permission requests
        cancelled, and listed in the answer), bring running agents back up."""
        await cancel_stored(self.store)
        for message in await self.store.unanswered_turns():
            rows = await self.store.permission_requests(
                message["agentId"], correlation_id=message["correlationId"])
            parts, _ = clip_parts([stored_part(row) for row in rows],
                                  self._turn_limits.parts_bytes)
            extra: dict[str, Any] = {"parts": parts} if parts else {}
            await self.store.append_message(
                message["agentId"],
                "agent",
                message["correlationId"],
                response=error_response(INTERRUPTED_MESSAGE, interrupted=True, **extra),
            )
        for agent in await self.store.list_agents():
            if agent.state == "running":
                try:
                    await self._runtime(agent).start(agent)
                except (RuntimeFailure, AgenstraError) as exc:
                    self.log.warning("Agent %s did not come back up: %s", agent.name, exc)

    async def shutdown(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(channel.close() for channel in channels))
        for runtime in self.runtimes.values():
            await runtime.shutdown()


def _notebook_token(request: protocol.AgentCreateRequest) -> str | None:
    grant = getattr(request, "notebookTools", None)
    return grant.token if grant is not None else None


def tool_ask(request: protocol.ToolPermissionRequest) -> PermissionAsk:
    """A notebook tool's request as the broker takes it. Its paths were resolved inside the
    project by the controller; any that does not read as a plain relative one is not
    counted as inside (so no policy lets it pass unasked)."""
    inside = bool(request.paths) and all(_plain_relative(p) for p in request.paths)
    options = [dict(o) for o in protocol.DEFAULT_PERMISSION_OPTIONS
               if not (request.outsideSandbox and o["kind"].endswith("_always"))]
    return PermissionAsk(title=request.title, kind=request.kind, paths=list(request.paths),
                         inside_workspace=inside, diff=request.diff, options=options,
                         tool_call_id=request.toolCallId,
                         outside_sandbox=request.outsideSandbox)


def _plain_relative(path: str) -> bool:
    parts = path.replace("\\", "/").split("/")
    return bool(path) and not path.startswith("/") and ".." not in parts

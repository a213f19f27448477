"""Swarm runtime: each agent a Docker Swarm service of one replica; turns `docker exec` into
the service's running task.

Lockdown as the docker runtime's: a non-root user, every capability dropped, memory, CPU
and process limits, no Docker socket, no host network; the root filesystem is read-only
too (a tmpfs at /tmp; the workspace is a named volume). Swarm has no network "none" for
services (the task would join the default bridge, which reaches the host): each agent gets
an internal overlay network of its own, with no route out and no interface on the host.

What a service cannot be given on Docker Engine 20.10 (API 1.41): no-new-privileges (newer
engines read Privileges.NoNewPrivileges; older ones drop it silently). It is asked for
anyway, and every task's container is checked before its first command: a root user, any
capability, a writable root, a missing limit or network refuse it. A missing
no-new-privileges is logged and shown in info() (with no capability in the bounding set and a
read-only root, a set-uid program gains nothing it can use), or refused when
`require_no_new_privileges` is set.

Not offered: projects (a host folder; the task may run on another node), config.network
'egress', config.loopbackPorts and the notebook tools (all need the manager in the task's
network namespace). Commands reach only tasks on the Docker node the manager talks to, so by
default services are pinned to that node (their workspace volume lives there too).
Services carry the agent id, the manager and the runtime as labels: a restarted manager
finds them again. Restarting a killed task is Swarm's work (restart condition 'any').
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Int, List, Unicode

from ..models import AgentRecord
from .base import AgentProcess, Runtime, RuntimeFailure
from .docker import AGENT_LABEL, NAME_LABEL, WORKSPACE
from .dockerexec import DockerConnection
from .netns import validate_network

RUNTIME_LABEL = "agenstra.runtime"
MANAGER_LABEL = "agenstra.manager"
MIN_API = (1, 41)  # CapabilityDrop and Limits.Pids for services
POLL = 0.25  # seconds between looks at a service's tasks
NO_PROJECTS = ("The swarm runtime does not work in project folders (its agents may run on "
               "another node): use the docker or process runtime for a project")
NOT_LOCKED = "The agent's Swarm task is not locked down ({what}): refused"


class CommaList(List):
    """A list of strings; its environment variable separates them with commas."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(Unicode(), **kwargs)

    def from_string(self, s: str) -> list[str]:  # type: ignore[override]
        return [part.strip() for part in s.split(",") if part.strip()]


class SwarmRuntime(Runtime):
    name = "swarm"
    description = "One Docker Swarm service per agent (non-root, no capabilities, limits)."

    docker_host = Unicode(
        "", help="Docker daemon of a swarm manager node (default: DOCKER_HOST or the local "
        "socket). AGENSTRA_SWARM_DOCKER_HOST."
    ).tag(config=True, env="AGENSTRA_SWARM_DOCKER_HOST")
    image = Unicode(
        "agenstra-agent:latest", help="Image for agents that do not name one; its /workspace "
        "must belong to `user` (a new volume takes its owner from it). AGENSTRA_SWARM_IMAGE."
    ).tag(config=True, env="AGENSTRA_SWARM_IMAGE")
    user = Unicode("1000:1000", help="uid:gid agents run as (never root). AGENSTRA_SWARM_USER."
                   ).tag(config=True, env="AGENSTRA_SWARM_USER")
    mem_limit = Unicode("1g", help="Memory limit per agent (bytes, or 512m, 2g). "
                        "AGENSTRA_SWARM_MEMORY.").tag(config=True, env="AGENSTRA_SWARM_MEMORY")
    cpus = Float(1.0, help="CPUs per agent. AGENSTRA_SWARM_CPUS.").tag(
        config=True, env="AGENSTRA_SWARM_CPUS")
    pids_limit = Int(256, help="Maximum processes per agent. AGENSTRA_SWARM_PIDS.").tag(
        config=True, env="AGENSTRA_SWARM_PIDS")
    tmp_size = Unicode("64m", help="Size of the tmpfs at /tmp (the root is read-only). "
                       "AGENSTRA_SWARM_TMP_SIZE.").tag(config=True, env="AGENSTRA_SWARM_TMP_SIZE")
    constraints = CommaList(
        help="Placement constraints of agents' services, e.g. node.labels.agents==yes "
        "(comma-separated in AGENSTRA_SWARM_CONSTRAINTS)."
    ).tag(config=True, env="AGENSTRA_SWARM_CONSTRAINTS")
    pin_to_manager_node = Bool(
        True, help="Also constrain services to the node the manager's Docker client talks to "
        "(commands can only be run there). AGENSTRA_SWARM_PIN_TO_MANAGER_NODE."
    ).tag(config=True, env="AGENSTRA_SWARM_PIN_TO_MANAGER_NODE")
    labels = CommaList(
        help="Extra key=value labels of agents' services and containers (comma-separated in "
        "AGENSTRA_SWARM_LABELS); agenstra.* labels are the runtime's own."
    ).tag(config=True, env="AGENSTRA_SWARM_LABELS")
    manager_label = Unicode(
        "", help="Value of the agenstra.manager label on services (default: this host's "
        "name). AGENSTRA_SWARM_MANAGER_LABEL."
    ).tag(config=True, env="AGENSTRA_SWARM_MANAGER_LABEL")
    volume_driver = Unicode(
        "", help="Volume driver of workspaces (default: the node's local volumes). "
        "AGENSTRA_SWARM_VOLUME_DRIVER."
    ).tag(config=True, env="AGENSTRA_SWARM_VOLUME_DRIVER")
    task_timeout = Float(
        60.0, help="Seconds to wait for an agent's task to run (after a create, a restart, a "
        "reschedule). AGENSTRA_SWARM_TASK_TIMEOUT."
    ).tag(config=True, env="AGENSTRA_SWARM_TASK_TIMEOUT")
    require_no_new_privileges = Bool(
        False, help="Refuse tasks whose engine cannot set no-new-privileges for services (Engine "
        "20.10, API 1.41, cannot). "
        "AGENSTRA_SWARM_REQUIRE_NO_NEW_PRIVILEGES."
    ).tag(config=True, env="AGENSTRA_SWARM_REQUIRE_NO_NEW_PRIVILEGES")

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._docker = DockerConnection(self.docker_host, self.log)
        self._problem: str | None = None
        self._node_id: str | None = None
        self._checked: set[str] = set()  # containers whose lockdown was verified
        self._no_new_privileges: bool | None = None

    # -- what this runtime offers ---------------------------------------------------------

    async def available(self) -> bool:
        return await self._swarm_problem() is None

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {**super().info(), "sandbox": "container",
                                "network": "isolated"}
        if self._no_new_privileges is not None:
            info["noNewPrivileges"] = self._no_new_privileges
        if self._problem:
            info["problem"] = self._problem
        return info

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        validate_network(config)
        if config.get("network", "none") != "none":
            raise ValueError("The swarm runtime offers only config.network 'none' (an "
                             "isolated network); use the docker runtime for egress")
        if config.get("loopbackPorts"):
            raise ValueError("The swarm runtime does not relay config.loopbackPorts")

    def validate_project(self, project: Path) -> None:
        raise ValueError(NO_PROJECTS)

    def workspace_path(self, agent: AgentRecord) -> str:
        return WORKSPACE

    def mcp_sockets(self, agent: AgentRecord) -> dict[int, str]:
        return {}  # no relay into a task's network namespace

    async def shutdown(self) -> None:
        await self._docker.close()  # services stay up across manager restarts

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, agent: AgentRecord) -> None:
        await self.container(agent)

    async def stop(self, agent: AgentRecord) -> None:
        """Scale the service to zero and wait (bounded) for its task to end: Swarm stops it
        asynchronously, and a start meanwhile would run two on one workspace."""
        service = await self._docker.call(self._find, agent)
        if service is not None and _replicas(service) != 0:
            await self._docker.call(service.scale, 0)
        deadline = time.monotonic() + self.task_timeout
        while await self._docker.call(self._running_containers, agent):
            if time.monotonic() > deadline:
                raise RuntimeFailure("The agent's Swarm task did not stop in "
                                     f"{self.task_timeout:.0f} s")
            await asyncio.sleep(POLL)

    async def remove(self, agent: AgentRecord) -> None:
        await self._docker.call(self._remove_sync, agent)

    async def spawn(
        self, agent: AgentRecord, argv: list[str], env: Mapping[str, str] | None = None
    ) -> AgentProcess:
        if not argv or not all(isinstance(arg, str) for arg in argv):
            raise RuntimeFailure("A command is a non-empty list of strings")
        container = await self.container(agent)
        return await self._docker.spawn(container, argv, dict(env or {}), user=self.user,
                                        workdir=WORKSPACE)

    async def container(self, agent: AgentRecord) -> Any:
        """The container of the agent's running task (on our node, locked down), waited for
        up to `task_timeout` seconds; the service is made or scaled up when needed."""
        await self._ready()
        service = await self._docker.call(self._ensure_service, agent)
        container = await self._running_container(service)
        if container.id not in self._checked:
            await self._check_lockdown(agent, container)
            self._checked.add(container.id)
        return container

    # -- swarm state ----------------------------------------------------------------------

    async def _swarm_problem(self) -> str | None:
        """None when services can be made here (and our node is known); else why not."""
        try:
            info, version = await asyncio.to_thread(self._engine)
        except Exception:
            self._problem = "No Docker daemon answers (DOCKER_HOST or AGENSTRA_SWARM_DOCKER_HOST)"
            return self._problem
        swarm = info.get("Swarm") or {}
        api = tuple(int(part) for part in version.split(".")[:2])
        if swarm.get("LocalNodeState") != "active":
            self._problem = "This Docker node is not in a swarm (docker swarm init)"
        elif not swarm.get("ControlAvailable"):
            self._problem = "This Docker node is not a swarm manager"
        elif api < MIN_API:
            self._problem = (f"Docker API {version} cannot drop a service's "
                             "capabilities nor limit its processes (1.41 needed)")
        else:
            self._problem, self._node_id = None, swarm.get("NodeID")
        return self._problem

    def _engine(self) -> tuple[dict[str, Any], str]:
        """The daemon's info and the API version the client agreed with it."""
        client = self._docker.client
        return client.info(), client.api.api_version

    async def _ready(self) -> None:
        if self._node_id is None and (problem := await self._swarm_problem()):
            raise RuntimeFailure(problem)

    async def _running_container(self, service: Any) -> Any:
        """The running container of the service's running task; RuntimeFailure with the
        task's own error after `task_timeout` seconds (a task being rescheduled, or whose
        container just died, counts as waiting)."""
        deadline = time.monotonic() + self.task_timeout
        last: dict[str, Any] = {}
        while True:
            tasks = await self._docker.call(service.tasks, filters={"desired-state": "running"})
            for task in tasks:
                status = task.get("Status") or {}
                last = status or last
                if status.get("State") == "running":
                    container = await self._docker.call(self._task_container, task)
                    if container is not None and container.status == "running":
                        return container
            if time.monotonic() > deadline:
                state = last.get("State", "no task")
                detail = last.get("Err") or last.get("Message") or ""
                raise RuntimeFailure(f"The agent's Swarm task is not running after "
                                     f"{self.task_timeout:.0f} s ({state}: {detail})")
            await asyncio.sleep(POLL)

    def _task_container(self, task: dict[str, Any]) -> Any:
        import docker.errors

        if task.get("NodeID") != self._node_id:
            raise RuntimeFailure(f"The agent's task runs on another Swarm node "
                                 f"({task.get('NodeID')}): commands reach only tasks on the "
                                 "manager's node (keep pin_to_manager_node)")
        container_id = task["Status"].get("ContainerStatus", {}).get("ContainerID")
        try:
            return self._docker.client.containers.get(container_id) if container_id else None
        except docker.errors.NotFound:
            return None  # gone already: Swarm reschedules the task

    async def _check_lockdown(self, agent: AgentRecord, container: Any) -> None:
        """Refuse a task the engine did not lock down as asked (an engine ignores what its
        API version does not know); stop it rather than run it weaker."""
        problem = _settings_problem(container.attrs)
        if problem is None:
            found = await self._docker.call(container.exec_run, ["cat", "/proc/self/status"],
                                            user=self.user)
            status = _proc_status(found.output.decode(errors="replace"))
            problem = self._process_problem(status)
        if problem:
            await self.stop(agent)
            raise RuntimeFailure(NOT_LOCKED.format(what=problem))

    def _process_problem(self, status: dict[str, str]) -> str | None:
        if status.get("Uid", "0").split()[:1] in (["0"], []):
            return "runs as root"
        if any(int(status.get(key, "1"), 16) for key in ("CapEff", "CapPrm", "CapBnd")):
            return "has capabilities"
        self._no_new_privileges = status.get("NoNewPrivs") == "1"
        if not self._no_new_privileges:
            if self.require_no_new_privileges:
                return "no-new-privileges is not set"
            self.log.warning("Swarm tasks run without no-new-privileges (this Docker engine "
                             "cannot set it for services)")
        return None

    # -- blocking helpers (run in threads) ------------------------------------------------

    def _find(self, agent: AgentRecord) -> Any:
        found = self._docker.client.services.list(
            filters={"label": f"{AGENT_LABEL}={agent.id}"})
        return found[0] if found else None

    def _running_containers(self, agent: AgentRecord) -> list[Any]:
        return self._docker.client.containers.list(
            filters={"label": f"{AGENT_LABEL}={agent.id}", "status": "running"})

    def _ensure_service(self, agent: AgentRecord) -> Any:
        """The agent's service with one replica: made, or scaled up after a stop."""
        service = self._find(agent)
        if service is None:
            self._create(agent)
            service = self._find(agent)
        elif _replicas(service) != 1:
            service.scale(1)
            service.reload()
        return service

    def _our_labels(self, agent: AgentRecord) -> dict[str, str]:
        extra = dict(label.partition("=")[::2] for label in self.labels)
        return {**{k: v for k, v in extra.items() if not k.startswith("agenstra.")},
                AGENT_LABEL: agent.id, NAME_LABEL: agent.name, RUNTIME_LABEL: self.name,
                MANAGER_LABEL: self.manager_label or socket.gethostname()}

    def _create(self, agent: AgentRecord) -> None:
        from docker.types import (
            ContainerSpec,
            DriverConfig,
            Mount,
            Placement,
            Resources,
            RestartPolicy,
            ServiceMode,
            TaskTemplate,
        )
        from docker.utils import parse_bytes

        image = agent.image or self.image
        client = self._docker.client
        if self.pin_to_manager_node:
            client.images.get(image)  # it must be here: the task runs on this node
        labels = self._our_labels(agent)
        workspace = Mount(WORKSPACE, f"agenstra-ws-{agent.id}", type="volume", labels=labels,
                          driver_config=DriverConfig(self.volume_driver)
                          if self.volume_driver else None)
        tmp = Mount("/tmp", None, type="tmpfs", tmpfs_size=parse_bytes(self.tmp_size))
        spec = ContainerSpec(image, command=["sleep", "2147483647"], user=self.user,
                             workdir=WORKSPACE, labels=labels, mounts=[workspace, tmp],
                             cap_drop=["ALL"], read_only=True, init=True)
        spec["Privileges"] = {"NoNewPrivileges": True}  # engines before 27 ignore it
        resources = Resources(cpu_limit=int(self.cpus * 1e9),
                              mem_limit=parse_bytes(self.mem_limit))
        resources["Limits"]["Pids"] = self.pids_limit
        constraints = list(self.constraints)
        if self.pin_to_manager_node:
            constraints.append(f"node.id=={self._node_id}")
        template = TaskTemplate(
            spec, resources=resources, restart_policy=RestartPolicy("any", delay=1),
            placement=Placement(constraints=constraints),
            networks=[self._network(agent, labels)],
        )
        client.api.create_service(template, name=f"agenstra-{agent.id}", labels=labels,
                                  mode=ServiceMode("replicated", 1))

    def _network(self, agent: AgentRecord, labels: dict[str, str]) -> str:
        """The agent's own internal overlay network: no route out, no host interface."""
        import docker.errors

        name = f"agenstra-net-{agent.id}"
        try:
            self._docker.client.networks.get(name)
        except docker.errors.NotFound:
            self._docker.client.networks.create(name, driver="overlay", internal=True,
                                                labels=labels)
        return name

    def _remove_sync(self, agent: AgentRecord) -> None:
        """The service, then its containers on this node (now, not when Swarm gets to
        them), its network and its workspace volume."""
        import docker.errors

        client = self._docker.client
        service = self._find(agent)
        if service is not None:
            service.remove()
        for container in client.containers.list(
                all=True, filters={"label": f"{AGENT_LABEL}={agent.id}"}):
            container.remove(force=True)
            self._checked.discard(container.id)
        deadline = time.monotonic() + self.task_timeout
        for kind, name in (("networks", f"agenstra-net-{agent.id}"),
                           ("volumes", f"agenstra-ws-{agent.id}")):
            while True:
                try:
                    getattr(client, kind).get(name).remove()
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError:
                    # Still in use for a moment: Swarm lets go of a removed task's
                    # attachments asynchronously.
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(POLL)


def _replicas(service: Any) -> int | None:
    return ((service.attrs.get("Spec") or {}).get("Mode") or {}).get(
        "Replicated", {}).get("Replicas")


def _settings_problem(attrs: dict[str, Any]) -> str | None:
    """What the task's container lacks of the lockdown, from its own settings."""
    host = attrs.get("HostConfig") or {}
    user = (attrs.get("Config") or {}).get("User") or ""
    if user.split(":")[0] in ("", "0", "root"):
        return "runs as root"
    if "ALL" not in (host.get("CapDrop") or []) or host.get("CapAdd") or host.get("Privileged"):
        return "keeps capabilities"
    if not host.get("ReadonlyRootfs"):
        return "writable root filesystem"
    if not (host.get("Memory") and host.get("NanoCpus") and (host.get("PidsLimit") or 0) > 0):
        return "no memory, CPU or process limit"
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    if host.get("NetworkMode") == "host" or "host" in networks or "bridge" in networks:
        return "on the host's network or the default bridge"
    if any("docker.sock" in (m.get("Source") or "") for m in attrs.get("Mounts") or []):
        return "the Docker socket is mounted"
    return None


def _proc_status(text: str) -> dict[str, str]:
    return {key: value.strip() for key, _, value in
            (line.partition(":") for line in text.splitlines())}

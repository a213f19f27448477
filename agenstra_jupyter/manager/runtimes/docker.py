"""Docker runtime: one locked-down container per agent, commands sent through `docker exec`.

Containers carry the agent id as a label, so a restarted manager finds them again. The
Docker SDK is blocking: every call runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from traitlets import Enum, Float, Int, Unicode

from ..models import AgentRecord
from ..notebook_tools import McpEndpoint
from .base import AgentProcess, Runtime, RuntimeFailure
from .dockerexec import DockerConnection
from .netns import SandboxNetwork, validate_network

AGENT_LABEL = "agenstra.agent-id"
NAME_LABEL = "agenstra.agent-name"
WORKSPACE = "/workspace"
# A project agent's HOME: its named volume (the project itself is bound at WORKSPACE).
PROJECT_HOME = "/home/agenstra"
ROOT_PROJECT = ("The project folder {project} belongs to root, and agents never run as root in "
                "a container: give it to your user (chown) or choose another folder")

class DockerRuntime(Runtime):
    name = "docker"
    description = "One container per agent (non-root, no capabilities, resource limits)."

    docker_host = Unicode(
        "", help="Docker daemon URL (default: DOCKER_HOST or the local socket)."
    ).tag(config=True, env="AGENSTRA_DOCKER_HOST")
    image = Unicode("agenstra-agent:latest", help="Image for agents that do not name one.").tag(
        config=True, env="AGENSTRA_DOCKER_IMAGE"
    )
    user = Unicode("1000:1000", help="uid:gid agents run as (never root).").tag(
        config=True, env="AGENSTRA_DOCKER_USER"
    )
    network_mode = Enum(
        ["none", "egress"],
        default_value="none",
        help="Network of agents whose config names none: none, or egress (a bridge network, "
        "never the host's). AGENSTRA_DOCKER_NETWORK.",
    ).tag(config=True, env="AGENSTRA_DOCKER_NETWORK")
    egress_network = Unicode(
        "agenstra-egress", help="The bridge network egress agents join (created when missing; "
        "no inter-container traffic). AGENSTRA_DOCKER_EGRESS_NETWORK."
    ).tag(config=True, env="AGENSTRA_DOCKER_EGRESS_NETWORK")
    mem_limit = Unicode("1g", help="Memory limit per agent container.").tag(
        config=True, env="AGENSTRA_DOCKER_MEMORY"
    )
    cpus = Float(1.0, help="CPUs per agent container.").tag(config=True, env="AGENSTRA_DOCKER_CPUS")
    pull_policy = Enum(
        ["missing", "never"],
        default_value="missing",
        help="Pull an agent image that is not on the Docker host (missing), or never pull.",
    ).tag(config=True, env="AGENSTRA_DOCKER_PULL")
    pids_limit = Int(256, help="Maximum processes per agent container.").tag(
        config=True, env="AGENSTRA_DOCKER_PIDS"
    )

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._docker = DockerConnection(self.docker_host, self.log)
        self._networks: dict[str, SandboxNetwork] = {}
        self._tools_relayed: set[str] = set()  # agents whose container reaches the tools

    @property
    def client(self) -> Any:
        """The Docker SDK client (threads only: making it asks the daemon)."""
        return self._docker.client

    def info(self) -> dict[str, Any]:
        return {**super().info(), "sandbox": "container", "network": "bridge"}

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        validate_network(config)

    def workspace_path(self, agent: AgentRecord) -> str:
        return WORKSPACE

    def host_workspace(self, agent: AgentRecord) -> Path | None:
        return Path(agent.project) if agent.project else None

    def validate_project(self, project: Path) -> None:
        _project_user(project)

    def user_of(self, container: Any) -> str:
        """The uid:gid the container was made for (a project's owner), else `user`."""
        configured = (getattr(container, "attrs", None) or {}).get("Config", {}).get("User")
        return configured or self.user

    async def available(self) -> bool:
        try:
            return bool(await asyncio.to_thread(lambda: self.client.ping()))
        except Exception:
            return False

    async def shutdown(self) -> None:
        # Containers stay up across manager restarts; only our connection to dockerd ends.
        await self._docker.close()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, agent: AgentRecord) -> None:
        await self._call(self._start_sync, agent)

    async def stop(self, agent: AgentRecord) -> None:
        await self._detach_network(agent)
        container = await self._call(self._find, agent)
        if container is not None and container.status == "running":
            await self._call(container.stop, timeout=2)

    async def remove(self, agent: AgentRecord) -> None:
        await self._detach_network(agent)
        container = await self._call(self._find, agent)
        if container is not None:
            await self._call(container.remove, force=True)
        volume = await self._call(self._volume, agent, create=False)
        if volume is not None:
            await self._call(volume.remove, force=True)

    async def container(self, agent: AgentRecord) -> Any:
        """The agent's container (running), found by label; started if needed."""
        container = await self._call(self._find, agent)
        if container is None or container.status != "running":
            await self._detach_network(agent)
            await self.start(agent)
            container = await self._call(self._find, agent)
        await self._attach_network(agent, container)
        return container

    async def _attach_network(self, agent: AgentRecord, container: Any) -> None:
        """Inside an egress container, refuse the host and private ranges; relay the
        config's loopbackPorts. Both need the manager on the Docker host, as root."""
        ports = list(agent.config.get("loopbackPorts", []))
        sockets = super().mcp_sockets(agent)
        egress = self._network_for_name(agent) != "none"
        if agent.id in self._networks or not (egress or ports or sockets):
            return
        network = SandboxNetwork()
        try:
            await self._call(container.reload)
            await network.attach(int(container.attrs["State"]["Pid"]), egress, ports,
                                 slirp=False, sockets=sockets)
        except (RuntimeFailure, OSError, KeyError, ValueError):
            if ports:
                raise RuntimeFailure("config.loopbackPorts needs the manager on the Docker "
                                     "host, running as root") from None
            self.log.warning("Agent %s: could not refuse host and private addresses nor "
                             "relay the notebook tools inside its container (the manager is "
                             "not root on the Docker host)", agent.name)
        else:
            if sockets:  # only where the relay is up: the others get no tools
                self._tools_relayed.add(agent.id)
        self._networks[agent.id] = network

    def mcp_sockets(self, agent: AgentRecord) -> dict[int, str]:
        """Relayed once per container (see _attach_network): the tools only where it
        worked."""
        return super().mcp_sockets(agent) if agent.id in self._tools_relayed else {}

    async def notebook_endpoint(self, agent: AgentRecord) -> McpEndpoint | None:
        if not super().mcp_sockets(agent):
            return None
        await self.container(agent)  # attaches its network (and the relay) if not yet
        return self.relayed_endpoint(agent)

    async def _detach_network(self, agent: AgentRecord) -> None:
        self._tools_relayed.discard(agent.id)
        network = self._networks.pop(agent.id, None)
        if network is not None:
            await network.close()

    async def spawn(
        self, agent: AgentRecord, argv: list[str], env: Mapping[str, str] | None = None
    ) -> AgentProcess:
        if not argv or not all(isinstance(arg, str) for arg in argv):
            raise RuntimeFailure("A command is a non-empty list of strings")
        container = await self.container(agent)
        return await self._docker.spawn(container, argv, self.mcp_environment(agent, env),
                                        user=self.user_of(container), workdir=WORKSPACE,
                                        call=self._call)

    # -- blocking helpers (run in threads) -----------------------------------------------

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._docker.call(fn, *args, **kwargs)

    def _find(self, agent: AgentRecord) -> Any:
        found = self.client.containers.list(
            all=True, filters={"label": f"{AGENT_LABEL}={agent.id}"}
        )
        return found[0] if found else None

    def _volume(self, agent: AgentRecord, create: bool = True) -> Any:
        import docker.errors

        name = f"agenstra-ws-{agent.id}"
        try:
            return self.client.volumes.get(name)
        except docker.errors.NotFound:
            if not create:
                return None
            return self.client.volumes.create(name, labels={AGENT_LABEL: agent.id})

    def _start_sync(self, agent: AgentRecord) -> None:
        container = self._find(agent)
        if container is not None and container.attrs["HostConfig"]["NetworkMode"] == "host":
            # Made by an older version: host networking reaches every loopback service.
            container.remove(force=True)
            container = None
        if container is None:
            container = self._create(agent)
        if container.status != "running":
            if agent.project:
                # The daemon resolves bind sources again at each start: a project swapped
                # for a link since (by an agent on a folder above it) must not be followed.
                try:
                    _project_user(Path(agent.project))
                except ValueError as exc:
                    raise RuntimeFailure(str(exc)) from None
            container.start()

    def _ensure_image(self, image: str) -> None:
        import docker.errors

        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            if self.pull_policy == "never":
                raise
            self.log.info("Pulling agent image %s", image)
            try:
                self.client.images.pull(image)
            except docker.errors.APIError:
                raise RuntimeFailure(f"Could not pull the agent image {image}") from None

    def _create(self, agent: AgentRecord) -> Any:
        image = agent.image or self.image
        self._ensure_image(image)
        volume = self._volume(agent)
        user, environment = self.user, {}
        volumes = {volume.name: {"bind": WORKSPACE, "mode": "rw"}}
        if agent.project:
            # The user's folder at /workspace, worked on as its owner (so the files the
            # agent writes are the user's); the private volume becomes its HOME.
            try:
                user = _project_user(Path(agent.project))
            except ValueError as exc:
                raise RuntimeFailure(str(exc)) from None
            environment = {"HOME": PROJECT_HOME}
            volumes = {agent.project: {"bind": WORKSPACE, "mode": "rw"},
                       volume.name: {"bind": PROJECT_HOME, "mode": "rw"}}
            git = Path(agent.project, ".git")
            if git.is_dir() and not git.is_symlink():
                # git runs hooks and core.fsmonitor from here outside any sandbox.
                volumes[str(git)] = {"bind": f"{WORKSPACE}/.git", "mode": "ro"}
        self._give_volume_to(image, volume.name, user, PROJECT_HOME if agent.project
                             else WORKSPACE)
        return self.client.containers.create(
            image,
            ["sleep", "2147483647"],
            name=f"agenstra-{agent.name}-{agent.id[:8]}",
            labels={AGENT_LABEL: agent.id, NAME_LABEL: agent.name},
            user=user,
            environment=environment,
            working_dir=WORKSPACE,
            volumes=volumes,
            network_mode=self._network_for(agent),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit=self.mem_limit,
            nano_cpus=int(self.cpus * 1e9),
            pids_limit=self.pids_limit,
            init=True,
            detach=True,
        )

    def _network_for_name(self, agent: AgentRecord) -> str:
        wanted = agent.config.get("network", self.network_mode)
        # "host" appears only in configs of older versions: it now means egress.
        return self.egress_network if wanted in ("egress", "host") else "none"

    def _network_for(self, agent: AgentRecord) -> str:
        """'none', or the egress bridge network (made once, without inter-container traffic)."""
        if self._network_for_name(agent) == "none":
            return "none"
        import docker.errors

        try:
            self.client.networks.get(self.egress_network)
        except docker.errors.NotFound:
            self.client.networks.create(
                self.egress_network, driver="bridge", labels={AGENT_LABEL: "egress"},
                options={"com.docker.network.bridge.enable_icc": "false"},
            )
        return self.egress_network

    def _give_volume_to(self, image: str, volume: str, user: str, where: str) -> None:
        """A new named volume is root-owned: hand it to the agent user once, with CAP_CHOWN only."""
        self.client.containers.run(
            image,
            ["chown", user, where],
            user="0:0",
            volumes={volume: {"bind": where, "mode": "rw"}},
            network_mode="none",
            cap_drop=["ALL"],
            cap_add=["CHOWN"],
            security_opt=["no-new-privileges"],
            remove=True,
        )


def _project_user(project: Path) -> str:
    """uid:gid of the project's owner; ValueError for root, or a folder that is gone or
    was replaced by a link since it was checked (Docker would bind where it points)."""
    if os.path.realpath(project) != str(project):
        raise ValueError(f"The project folder {project} was replaced by a link")
    try:
        info = project.stat()
    except OSError:
        raise ValueError(f"The project folder {project} is gone") from None
    if info.st_uid == 0:
        raise ValueError(ROOT_PROJECT.format(project=project))
    return f"{info.st_uid}:{info.st_gid}"

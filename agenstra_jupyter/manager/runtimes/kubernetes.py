"""Kubernetes runtime: one locked-down Pod per agent, commands sent through the exec subresource.

Everything sent to the API server is a typed object of the official `kubernetes_asyncio`
client (V1Pod, V1NetworkPolicy, ...), serialised by the client: no YAML, no manifest text
with the agent's name pasted in. Pods carry the manager's and the agent's ids as labels,
so a restarted manager finds them again; the agent's name, which the user chose, goes
into an annotation only (any text is a valid annotation value, and nothing selects on it).

A command runs in the agent's container through `pods/exec` over a websocket
(v5.channel.k8s.io: the version that can close stdin, Kubernetes 1.30 or later). Exec
has no environment parameter, and a command line lands in the API server's audit log,
so the environment goes through stdin instead (kubeexec.ENV_WRAPPER).

See docs/deploy/kubernetes.md for the RBAC this needs and what was not tested against a
real cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from traitlets import Bool, Dict, Enum, Float, Int, Unicode

from ..models import AgentRecord
from ..notebook_tools import McpEndpoint
from .base import AgentProcess, Runtime, RuntimeFailure
from .kubeexec import ENV_WRAPPER, KILL_SESSION, KubernetesExecProcess, environment_header
from .netns import BLOCKED_RANGES

MANAGER_LABEL = "agenstra.io/manager-id"
AGENT_LABEL = "agenstra.io/agent-id"
NAME_ANNOTATION = "agenstra.io/agent-name"
CONTAINER = "agent"
WORKSPACE = "/workspace"
PROJECT_HOME = "/home/agenstra"  # a project agent's HOME (its own volume)
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
EXEC_PROTOCOL = "v5.channel.k8s.io"
# A label value (and so a name part): what the API server accepts, nothing else.
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
OLD_KUBERNETES = ("The Kubernetes API refused the exec websocket (400): agents need Kubernetes "
                  "1.30 or later (the v5.channel.k8s.io protocol, which can close stdin)")

class KubernetesRuntime(Runtime):
    name = "kubernetes"
    description = ("One Pod per agent (non-root, no capabilities, read-only root, seccomp, "
                   "resource limits, a NetworkPolicy denying egress unless allowed).")

    namespace = Unicode(
        "", help="Namespace of agents' Pods (default: the manager's own namespace in a "
        "cluster, else 'default'). Give agents a namespace of their own. "
        "AGENSTRA_K8S_NAMESPACE."
    ).tag(config=True, env="AGENSTRA_K8S_NAMESPACE")
    kubeconfig = Unicode(
        "", help="A kubeconfig file; empty: the Pod's service account inside a cluster, "
        "else KUBECONFIG or ~/.kube/config. AGENSTRA_K8S_KUBECONFIG."
    ).tag(config=True, env="AGENSTRA_K8S_KUBECONFIG")
    context = Unicode(
        "", help="The kubeconfig context (default: its current one). AGENSTRA_K8S_CONTEXT."
    ).tag(config=True, env="AGENSTRA_K8S_CONTEXT")
    manager_id = Unicode(
        "agenstra", help="Label value naming this manager's Pods (a label value: letters, "
        "digits, '-', '_', '.'; one per manager sharing a namespace). AGENSTRA_K8S_MANAGER_ID."
    ).tag(config=True, env="AGENSTRA_K8S_MANAGER_ID")
    image = Unicode(
        "agenstra-agent:latest", help="Image of agents that name none. AGENSTRA_K8S_IMAGE."
    ).tag(config=True, env="AGENSTRA_K8S_IMAGE")
    image_pull_policy = Enum(
        ["IfNotPresent", "Always", "Never"], default_value="IfNotPresent",
        help="The Pods' imagePullPolicy. AGENSTRA_K8S_PULL_POLICY.",
    ).tag(config=True, env="AGENSTRA_K8S_PULL_POLICY")
    run_as_user = Int(1000, help="uid agents run as (never 0; a project's owner instead "
                      "when it has one). AGENSTRA_K8S_UID.").tag(config=True,
                                                                  env="AGENSTRA_K8S_UID")
    run_as_group = Int(1000, help="gid agents run as. AGENSTRA_K8S_GID.").tag(
        config=True, env="AGENSTRA_K8S_GID")
    cpu_limit = Unicode("1", help="CPU limit per agent. AGENSTRA_K8S_CPU.").tag(
        config=True, env="AGENSTRA_K8S_CPU")
    memory_limit = Unicode("1Gi", help="Memory limit (and request) per agent. "
                           "AGENSTRA_K8S_MEMORY.").tag(config=True, env="AGENSTRA_K8S_MEMORY")
    cpu_request = Unicode("100m", help="CPU request per agent. AGENSTRA_K8S_CPU_REQUEST.").tag(
        config=True, env="AGENSTRA_K8S_CPU_REQUEST")
    ephemeral_storage_limit = Unicode(
        "4Gi", help="Ephemeral storage per agent (its emptyDir workspace and /tmp count). "
        "AGENSTRA_K8S_EPHEMERAL_STORAGE."
    ).tag(config=True, env="AGENSTRA_K8S_EPHEMERAL_STORAGE")
    node_selector = Dict(
        help="nodeSelector of agents' Pods, as JSON in AGENSTRA_K8S_NODE_SELECTOR."
    ).tag(config=True, env="AGENSTRA_K8S_NODE_SELECTOR")
    runtime_class_name = Unicode(
        "", help="RuntimeClass of agents' Pods (e.g. gVisor or Kata for a stronger "
        "boundary); empty: the cluster's default. AGENSTRA_K8S_RUNTIME_CLASS."
    ).tag(config=True, env="AGENSTRA_K8S_RUNTIME_CLASS")
    user_namespaces = Bool(
        False, help="hostUsers: false (the Pod's uids are not the node's; Kubernetes 1.30+ "
        "with user namespace support). AGENSTRA_K8S_USER_NAMESPACES."
    ).tag(config=True, env="AGENSTRA_K8S_USER_NAMESPACES")
    workspace_size = Unicode(
        "", help="Size of a PersistentVolumeClaim per agent for its workspace (kept while "
        "the agent is stopped, deleted with it); empty: an emptyDir, lost when the agent "
        "stops. AGENSTRA_K8S_WORKSPACE_SIZE."
    ).tag(config=True, env="AGENSTRA_K8S_WORKSPACE_SIZE")
    storage_class = Unicode(
        "", help="StorageClass of the workspace claims (empty: the cluster's default). "
        "AGENSTRA_K8S_STORAGE_CLASS."
    ).tag(config=True, env="AGENSTRA_K8S_STORAGE_CLASS")
    project_claims = Dict(
        help="Where projects live: a folder the manager sees (the claim mounted there) -> "
        "the PersistentVolumeClaim in the agents' namespace, as JSON in "
        "AGENSTRA_K8S_PROJECT_CLAIMS, e.g. {\"/home/jovyan\": \"claim-alice\"}. A project "
        "is mounted as that claim with its path below the folder as subPath."
    ).tag(config=True, env="AGENSTRA_K8S_PROJECT_CLAIMS")
    network_mode = Enum(
        ["none", "egress"], default_value="none",
        help="Network of agents whose config names none: none (no egress at all, not even "
        "DNS), or egress (public addresses and the cluster DNS; never private ranges). "
        "AGENSTRA_K8S_NETWORK.",
    ).tag(config=True, env="AGENSTRA_K8S_NETWORK")
    start_timeout = Float(
        180.0, help="Seconds an agent's Pod may take to run (image pull included). "
        "AGENSTRA_K8S_START_TIMEOUT."
    ).tag(config=True, env="AGENSTRA_K8S_START_TIMEOUT")

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._api: Any = None  # kubernetes_asyncio ApiClient (REST)
        self._ws: Any = None  # WsApiClient (exec)
        self._connecting = asyncio.Lock()
        self._default_namespace: str | None = None

    def info(self) -> dict[str, Any]:
        return {**super().info(), "sandbox": "pod", "network": "networkpolicy"}

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        if config.get("network", "none") not in ("none", "egress"):
            raise ValueError("config.network must be 'none' or 'egress'")
        if config.get("loopbackPorts"):
            raise ValueError("config.loopbackPorts is not offered by the kubernetes runtime: "
                             "list the addresses the agent may reach in config.egressCidrs")
        egress_cidrs(config)

    def workspace_path(self, agent: AgentRecord) -> str:
        return WORKSPACE

    def host_workspace(self, agent: AgentRecord) -> Path | None:
        # A project's claim is mounted in the manager too (project_claims): changes show.
        return Path(agent.project) if agent.project else None

    def validate_project(self, project: Path) -> None:
        self.project_volume(project)
        project_owner(project)

    def mcp_sockets(self, agent: AgentRecord) -> dict[int, str]:
        return {}  # no relay into a Pod yet: agents of this runtime get no notebook tools

    async def notebook_endpoint(self, agent: AgentRecord) -> McpEndpoint | None:
        return None

    def project_volume(self, project: Path) -> tuple[str, str]:
        """(claim, subPath) of a project folder; ValueError when no claim holds it."""
        for folder, claim in self.project_claims.items():
            if not isinstance(claim, str) or not PurePosixPath(project).is_relative_to(folder):
                continue
            sub = PurePosixPath(project).relative_to(folder)
            if not sub.parts or ".." in sub.parts or sub.is_absolute():
                raise ValueError(f"The project {project} is not a folder inside {folder}")
            return claim, str(sub)
        raise ValueError(f"The project {project} lies on no volume this manager can give "
                         "an agent (AGENSTRA_K8S_PROJECT_CLAIMS)")

    # -- the API connection ------------------------------------------------------------

    def _configured(self) -> bool:
        """Whether there is a cluster to talk to, known without asking anyone."""
        if self.kubeconfig:
            return Path(self.kubeconfig).is_file()
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return True
        default = os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]
        return Path(default).expanduser().is_file()

    async def clients(self) -> tuple[Any, Any]:
        """(ApiClient, WsApiClient), made once from the service account or a kubeconfig."""
        async with self._connecting:
            if self._api is None:
                from kubernetes_asyncio import config
                from kubernetes_asyncio.client import ApiClient, Configuration
                from kubernetes_asyncio.stream import WsApiClient

                configuration = Configuration()
                try:
                    if not self.kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
                        config.load_incluster_config(client_configuration=configuration)
                    else:
                        await config.load_kube_config(
                            config_file=self.kubeconfig or None, context=self.context or None,
                            client_configuration=configuration)
                except config.ConfigException as exc:
                    raise RuntimeFailure(f"No Kubernetes configuration: {exc}") from None
                self._api = ApiClient(configuration)
                self._ws = WsApiClient(configuration)
            return self._api, self._ws

    @property
    def agent_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        if self._default_namespace is None:  # read once (a small local file)
            self._default_namespace = "default"
            with contextlib.suppress(OSError):
                self._default_namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        return self._default_namespace

    async def available(self) -> bool:
        if not await asyncio.to_thread(self._configured):
            return False
        try:
            from kubernetes_asyncio.client import VersionApi

            api, _ = await self.clients()
            await asyncio.wait_for(VersionApi(api).get_code(), 5.0)
            return True
        except Exception:
            return False

    async def shutdown(self) -> None:
        # Pods stay up across manager restarts; only the API connections end.
        api, ws, self._api, self._ws = self._api, self._ws, None, None
        for client in (api, ws):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()

    async def _call(self, method: Any, *args: Any, missing_ok: bool = False,
                    **kwargs: Any) -> Any:
        """An API call, its errors as RuntimeFailures a user may read (404: None if
        `missing_ok`)."""
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            return await method(*args, **kwargs)
        except ApiException as exc:
            if missing_ok and exc.status == 404:
                return None
            self.log.warning("kubernetes: %s %s %s", exc.status, exc.reason, exc.body)
            raise RuntimeFailure(f"The Kubernetes API refused the request ({exc.status} "
                                 f"{exc.reason})") from None

    async def _core(self) -> Any:
        from kubernetes_asyncio.client import CoreV1Api

        return CoreV1Api((await self.clients())[0])

    # -- lifecycle -----------------------------------------------------------------------

    def labels(self, agent: AgentRecord) -> dict[str, str]:
        for value in (self.manager_id, agent.id):
            if not LABEL_VALUE.match(value):
                raise RuntimeFailure("A manager or agent id is not a valid label value")
        return {"app.kubernetes.io/managed-by": "agenstra", MANAGER_LABEL: self.manager_id,
                AGENT_LABEL: agent.id}

    def selector(self, agent: AgentRecord) -> str:
        return ",".join(f"{key}={value}" for key, value in self.labels(agent).items())

    def object_name(self, agent: AgentRecord) -> str:
        """The agent's objects are named from its id alone (never from its name)."""
        self.labels(agent)
        return f"agenstra-{agent.id.lower().replace('_', '-')}"[:63].rstrip("-.")

    async def find(self, agent: AgentRecord) -> Any:
        """The agent's Pod, found by its labels (a restarted manager finds it too)."""
        core = await self._core()
        found = await self._call(core.list_namespaced_pod, self.agent_namespace,
                                 label_selector=self.selector(agent))
        return found.items[0] if found.items else None

    async def start(self, agent: AgentRecord) -> None:
        pod = await self.find(agent)
        if pod is not None and (pod.metadata.deletion_timestamp
                                or pod.status.phase in ("Succeeded", "Failed")):
            await self._delete_pod(agent, pod)
            pod = None
        if pod is None:
            await self._apply_network_policy(agent)  # before the Pod: never a moment open
            if self.workspace_size:
                await self._ensure_workspace_claim(agent)
            pod = await self._create_pod(agent)
        await self._wait_running(agent)

    async def stop(self, agent: AgentRecord) -> None:
        pod = await self.find(agent)
        if pod is not None:
            await self._delete_pod(agent, pod)

    async def remove(self, agent: AgentRecord) -> None:
        await self.stop(agent)
        from kubernetes_asyncio.client import NetworkingV1Api

        api, _ = await self.clients()
        name, namespace = self.object_name(agent), self.agent_namespace
        await self._call(NetworkingV1Api(api).delete_namespaced_network_policy, name,
                         namespace, missing_ok=True)
        if self.workspace_size:
            await self._call((await self._core()).delete_namespaced_persistent_volume_claim,
                             name, namespace, missing_ok=True)

    async def pod(self, agent: AgentRecord) -> Any:
        """The agent's running Pod, started if needed."""
        pod = await self.find(agent)
        if pod is None or pod.status.phase != "Running" or pod.metadata.deletion_timestamp:
            await self.start(agent)
            pod = await self.find(agent)
        return pod

    async def _delete_pod(self, agent: AgentRecord, pod: Any) -> None:
        """Delete the Pod and wait until it is gone (a new one gets the same name)."""
        core = await self._core()
        await self._call(core.delete_namespaced_pod, pod.metadata.name, self.agent_namespace,
                         grace_period_seconds=2, missing_ok=True)
        await self._poll(lambda: self._gone(agent), self.start_timeout,
                         "The agent's old Pod was not deleted in time")

    async def _gone(self, agent: AgentRecord) -> bool:
        return await self.find(agent) is None

    async def _wait_running(self, agent: AgentRecord) -> None:
        await self._poll(lambda: self._running(agent), self.start_timeout,
                         "The agent's Pod did not start in time")

    async def _running(self, agent: AgentRecord) -> bool:
        pod = await self.find(agent)
        if pod is None:
            raise RuntimeFailure("The agent's Pod disappeared while starting")
        if pod.status.phase in ("Failed", "Succeeded"):
            raise RuntimeFailure(f"The agent's Pod ended ({pod.status.phase})")
        for status in pod.status.container_statuses or []:
            waiting = status.state.waiting if status.state else None
            if waiting and waiting.reason in ("ErrImagePull", "ImagePullBackOff",
                                              "InvalidImageName", "CreateContainerConfigError",
                                              "CreateContainerError"):
                raise RuntimeFailure(f"The agent's Pod cannot start ({waiting.reason})")
        return pod.status.phase == "Running"

    async def _poll(self, done: Any, timeout: float, message: str) -> None:
        """Ask `done()` with a growing pause until it is true; RuntimeFailure at timeout."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + timeout, 0.05
        while not await done():
            if loop.time() > deadline:
                raise RuntimeFailure(message)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    # -- the objects -----------------------------------------------------------------------

    async def _create_pod(self, agent: AgentRecord) -> Any:
        from kubernetes_asyncio.client.exceptions import ApiException

        uid, gid = self.run_as_user, self.run_as_group
        affinity, project = None, None
        if agent.project:
            try:
                claim, sub = self.project_volume(Path(agent.project))
                uid, gid = await asyncio.to_thread(project_owner, Path(agent.project))
            except ValueError as exc:
                raise RuntimeFailure(str(exc)) from None
            git = await asyncio.to_thread(_real_folder, Path(agent.project, ".git"))
            project = (claim, sub, git)
            affinity = await self._claim_affinity(claim)
        pod = self.pod_object(agent, uid=uid, gid=gid, project=project, affinity=affinity)
        core = await self._core()
        try:
            return await core.create_namespaced_pod(self.agent_namespace, pod)
        except ApiException as exc:
            if exc.status == 409:  # a concurrent start made it
                return None
            self.log.warning("kubernetes: %s %s %s", exc.status, exc.reason, exc.body)
            raise RuntimeFailure(f"The Kubernetes API refused the agent's Pod ({exc.status} "
                                 f"{exc.reason})") from None

    def pod_object(self, agent: AgentRecord, *, uid: int, gid: int,
                   project: tuple[str, str, bool] | None = None, affinity: Any = None) -> Any:
        """The agent's V1Pod: a container that sleeps (commands come through exec)."""
        from kubernetes_asyncio import client as k8s

        if uid == 0 or gid == 0:
            raise RuntimeFailure("Agents never run as root (uid or gid 0)")
        name = self.object_name(agent)
        workspace = (k8s.V1PersistentVolumeClaimVolumeSource(claim_name=name)
                     if self.workspace_size else None)
        volumes = [
            k8s.V1Volume(name="own", persistent_volume_claim=workspace,
                         empty_dir=None if workspace else k8s.V1EmptyDirVolumeSource()),
            k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="1Gi")),
        ]
        mounts = [k8s.V1VolumeMount(name="tmp", mount_path="/tmp")]
        home = WORKSPACE
        if project is None:
            mounts.append(k8s.V1VolumeMount(name="own", mount_path=WORKSPACE))
        else:
            claim, sub, git = project
            home = PROJECT_HOME
            volumes.append(k8s.V1Volume(
                name="project",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=claim)))
            mounts += [k8s.V1VolumeMount(name="project", mount_path=WORKSPACE, sub_path=sub),
                       k8s.V1VolumeMount(name="own", mount_path=PROJECT_HOME)]
            if git:  # git runs hooks and core.fsmonitor from here outside any sandbox
                mounts.append(k8s.V1VolumeMount(name="project", mount_path=f"{WORKSPACE}/.git",
                                                sub_path=f"{sub}/.git", read_only=True))
        seccomp = k8s.V1SeccompProfile(type="RuntimeDefault")
        container = k8s.V1Container(
            name=CONTAINER,
            image=agent.image or self.image,
            image_pull_policy=self.image_pull_policy,
            command=["sleep", "2147483647"],
            working_dir=WORKSPACE,
            env=[k8s.V1EnvVar(name="HOME", value=home)],
            volume_mounts=mounts,
            resources=k8s.V1ResourceRequirements(
                limits={"cpu": self.cpu_limit, "memory": self.memory_limit,
                        "ephemeral-storage": self.ephemeral_storage_limit},
                requests={"cpu": self.cpu_request, "memory": self.memory_limit}),
            security_context=k8s.V1SecurityContext(
                run_as_non_root=True, run_as_user=uid, run_as_group=gid, privileged=False,
                allow_privilege_escalation=False, read_only_root_filesystem=True,
                capabilities=k8s.V1Capabilities(drop=["ALL"]), seccomp_profile=seccomp),
        )
        return k8s.V1Pod(
            api_version="v1", kind="Pod",
            metadata=k8s.V1ObjectMeta(name=name, labels=self.labels(agent),
                                      annotations={NAME_ANNOTATION: agent.name}),
            spec=k8s.V1PodSpec(
                containers=[container],
                volumes=volumes,
                security_context=k8s.V1PodSecurityContext(
                    run_as_non_root=True, run_as_user=uid, run_as_group=gid,
                    # Not on a project: it would re-own the user's whole claim.
                    fs_group=None if project else gid,
                    fs_group_change_policy=None if project else "OnRootMismatch",
                    seccomp_profile=seccomp),
                automount_service_account_token=False,
                enable_service_links=False,  # no variables naming every Service
                host_network=False, host_pid=False, host_ipc=False,
                host_users=False if self.user_namespaces else None,
                # The pause container is PID 1 and reaps what killed sessions leave behind.
                share_process_namespace=True,
                restart_policy="Always",
                termination_grace_period_seconds=2,
                node_selector=dict(self.node_selector) or None,
                runtime_class_name=self.runtime_class_name or None,
                affinity=affinity,
            ),
        )

    async def _claim_affinity(self, claim: str) -> Any:
        """A ReadWriteOnce claim is mounted on one node at a time: the agent goes to the
        node of the Pod (the user's server) that mounts it now."""
        from kubernetes_asyncio import client as k8s

        core = await self._core()
        found = await self._call(core.read_namespaced_persistent_volume_claim, claim,
                                 self.agent_namespace, missing_ok=True)
        if found is None or found.status.phase != "Bound":
            raise RuntimeFailure(f"The project's volume claim {claim} is missing or not bound")
        modes = set(found.spec.access_modes or [])
        if "ReadWriteMany" in modes:
            return None
        if "ReadWriteOncePod" in modes or "ReadWriteOnce" not in modes:
            raise RuntimeFailure(f"The project's volume claim {claim} cannot be shared with "
                                 "an agent (its access mode)")
        pods = await self._call(core.list_namespaced_pod, self.agent_namespace,
                                field_selector="status.phase=Running")
        for pod in pods.items:
            claims = {v.persistent_volume_claim.claim_name for v in pod.spec.volumes or []
                      if v.persistent_volume_claim}
            if claim in claims and pod.spec.node_name:
                term = k8s.V1NodeSelectorTerm(match_fields=[k8s.V1NodeSelectorRequirement(
                    key="metadata.name", operator="In", values=[pod.spec.node_name])])
                return k8s.V1Affinity(node_affinity=k8s.V1NodeAffinity(
                    required_during_scheduling_ignored_during_execution=k8s.V1NodeSelector(
                        node_selector_terms=[term])))
        return None

    async def _ensure_workspace_claim(self, agent: AgentRecord) -> None:
        from kubernetes_asyncio import client as k8s
        from kubernetes_asyncio.client.exceptions import ApiException

        claim = k8s.V1PersistentVolumeClaim(
            api_version="v1", kind="PersistentVolumeClaim",
            metadata=k8s.V1ObjectMeta(name=self.object_name(agent), labels=self.labels(agent)),
            spec=k8s.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                storage_class_name=self.storage_class or None,
                resources=k8s.V1VolumeResourceRequirements(
                    requests={"storage": self.workspace_size})))
        core = await self._core()
        try:
            await core.create_namespaced_persistent_volume_claim(self.agent_namespace, claim)
        except ApiException as exc:
            if exc.status != 409:  # 409: it is there from before (the agent was stopped)
                self.log.warning("kubernetes: %s %s %s", exc.status, exc.reason, exc.body)
                raise RuntimeFailure(f"The Kubernetes API refused the agent's workspace "
                                     f"claim ({exc.status} {exc.reason})") from None

    def network_policy(self, agent: AgentRecord) -> Any:
        """Nothing reaches the agent; it reaches nothing, or (egress) public addresses and
        the cluster DNS, plus the CIDRs its config lists."""
        from kubernetes_asyncio import client as k8s

        rules = []
        if agent.config.get("network", self.network_mode) == "egress":
            rules.append(k8s.V1NetworkPolicyEgressRule(to=[k8s.V1NetworkPolicyPeer(
                ip_block=k8s.V1IPBlock(cidr="0.0.0.0/0", _except=list(BLOCKED_RANGES)))]))
            dns = k8s.V1NetworkPolicyPeer(
                namespace_selector=k8s.V1LabelSelector(
                    match_labels={"kubernetes.io/metadata.name": "kube-system"}),
                pod_selector=k8s.V1LabelSelector(match_labels={"k8s-app": "kube-dns"}))
            rules.append(k8s.V1NetworkPolicyEgressRule(to=[dns], ports=[
                k8s.V1NetworkPolicyPort(protocol=protocol, port=53)
                for protocol in ("UDP", "TCP")]))
        if cidrs := egress_cidrs(agent.config):
            rules.append(k8s.V1NetworkPolicyEgressRule(
                to=[k8s.V1NetworkPolicyPeer(ip_block=k8s.V1IPBlock(cidr=c)) for c in cidrs]))
        return k8s.V1NetworkPolicy(
            api_version="networking.k8s.io/v1", kind="NetworkPolicy",
            metadata=k8s.V1ObjectMeta(name=self.object_name(agent), labels=self.labels(agent)),
            spec=k8s.V1NetworkPolicySpec(
                pod_selector=k8s.V1LabelSelector(match_labels=self.labels(agent)),
                policy_types=["Ingress", "Egress"], ingress=[], egress=rules))

    async def _apply_network_policy(self, agent: AgentRecord) -> None:
        from kubernetes_asyncio.client import NetworkingV1Api
        from kubernetes_asyncio.client.exceptions import ApiException

        api, _ = await self.clients()
        networking, policy = NetworkingV1Api(api), self.network_policy(agent)
        try:
            await networking.create_namespaced_network_policy(self.agent_namespace, policy)
        except ApiException as exc:
            if exc.status != 409:
                self.log.warning("kubernetes: %s %s %s", exc.status, exc.reason, exc.body)
                raise RuntimeFailure(f"The Kubernetes API refused the agent's NetworkPolicy "
                                     f"({exc.status} {exc.reason})") from None
            # There from before: its config may have changed since.
            await self._call(networking.replace_namespaced_network_policy,
                             policy.metadata.name, self.agent_namespace, policy)

    # -- commands ------------------------------------------------------------------------

    async def spawn(
        self, agent: AgentRecord, argv: list[str], env: Mapping[str, str] | None = None
    ) -> AgentProcess:
        if not argv or not all(isinstance(arg, str) for arg in argv):
            raise RuntimeFailure("A command is a non-empty list of strings")
        header = environment_header(env or {})
        pod = await self.pod(agent)
        # Opened and given its environment as one step a cancellation cannot split: a
        # command that was started always gets its process object, so it can be killed.
        starting = asyncio.ensure_future(self._start_command(pod.metadata.name, argv, header))
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await (await starting).kill()
            raise

    async def _start_command(self, pod_name: str, argv: list[str],
                             header: bytes) -> KubernetesExecProcess:
        process = await self.open_exec(pod_name, [*ENV_WRAPPER, WORKSPACE, *argv])
        try:
            await process.write(header)
        except Exception:
            await process.kill()
            raise RuntimeFailure("The agent's command ended before it started") from None
        return process

    async def open_exec(self, pod_name: str, argv: list[str],
                        wrapped: bool = True) -> KubernetesExecProcess:
        """`argv` in the agent's container over the exec websocket."""
        import aiohttp
        from kubernetes_asyncio.client import CoreV1Api

        _, ws_client = await self.clients()
        opening = await CoreV1Api(ws_client).connect_get_namespaced_pod_exec(
            pod_name, self.agent_namespace, command=argv, container=CONTAINER, stdin=True,
            stdout=True, stderr=True, tty=False, _preload_content=False,
            _headers={"sec-websocket-protocol": EXEC_PROTOCOL})
        try:
            socket = await opening
        except aiohttp.WSServerHandshakeError as exc:
            self.log.warning("kubernetes exec: %s %s", exc.status, exc.message)
            if exc.status == 400:
                raise RuntimeFailure(OLD_KUBERNETES) from None
            raise RuntimeFailure(f"The Kubernetes API refused the exec ({exc.status})") from None
        except aiohttp.ClientError as exc:
            raise RuntimeFailure(f"The Kubernetes API cannot be reached for exec ({exc})") from None
        killer = (lambda sid: self._kill_session(pod_name, sid)) if wrapped else None
        return KubernetesExecProcess(socket, killer)

    async def _kill_session(self, pod_name: str, sid: str) -> None:
        process = await self.open_exec(pod_name, [*KILL_SESSION, sid], wrapped=False)
        await process.close_stdin()
        await process.wait()


def egress_cidrs(config: Mapping[str, Any]) -> list[str]:
    """config.egressCidrs: at most 16 networks the agent may reach beyond its `network`."""
    cidrs = config.get("egressCidrs", [])
    if not isinstance(cidrs, list) or len(cidrs) > 16 or not all(
            isinstance(c, str) for c in cidrs):
        raise ValueError("config.egressCidrs must be a list of at most 16 CIDRs")
    try:
        return [str(ipaddress.ip_network(c, strict=False)) for c in cidrs]
    except ValueError:
        raise ValueError("config.egressCidrs must be a list of CIDRs such as "
                         "10.1.2.3/32") from None


def project_owner(project: Path) -> tuple[int, int]:
    """uid, gid of the project's owner as the manager sees it; ValueError for root."""
    try:
        info = project.stat()
    except OSError:
        raise ValueError(f"The project folder {project} is gone") from None
    if info.st_uid == 0 or info.st_gid == 0:
        raise ValueError(f"The project folder {project} belongs to root, and agents never "
                         "run as root: give it to your user or choose another folder")
    return info.st_uid, info.st_gid


def _real_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()

"""The `swarm` runtime on the real test dockerd made a single-node swarm.

The module fixture runs `docker swarm init --advertise-addr 127.0.0.1` when the node is in
no swarm, and leaves it in the swarm afterwards (other runs reuse it). One agent's service
is shared by the tests below, in order: create and chat, attacks from inside, a manager
restart, a killed task, delete.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from agenstra_jupyter.manager.runtimes.docker import AGENT_LABEL
from agenstra_jupyter.manager.runtimes.swarm import (
    MANAGER_LABEL,
    RUNTIME_LABEL,
    SwarmRuntime,
    _settings_problem,
)
from agenstra_jupyter.protocol import ManagerEvent

from .conftest import TEST_IMAGE, _docker_reason
from .helpers import AgentsClient, ManagerProcess

pytestmark = pytest.mark.docker
ENV = {"AGENSTRA_SWARM_TASK_TIMEOUT": "30", "AGENSTRA_SWARM_MANAGER_LABEL": "swarm-test"}


def _swarm_reason() -> str | None:
    """None once this dockerd is a swarm manager (made one if it is in no swarm)."""
    reason = _docker_reason()
    if reason:
        return reason
    state = subprocess.run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"],
                           capture_output=True, text=True).stdout.strip()
    if state == "inactive":
        init = subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"],
                              capture_output=True, text=True)
        if init.returncode != 0:
            return f"docker swarm init failed: {init.stderr.strip()}"
    elif state != "active":
        return f"this dockerd's swarm state is {state!r}"
    return None


@pytest.fixture(scope="module")
def docker_client():
    reason = _swarm_reason()
    if reason:
        if os.environ.get("AGENSTRA_REQUIRE_DOCKER") == "1":
            pytest.fail(f"Docker Swarm is required here but unusable: {reason}")
        pytest.skip(f"Swarm tests need a Docker daemon: {reason}")
    import docker

    client = docker.from_env()
    yield client
    client.close()


class Deployment:
    """One manager (restartable on the same database) and its one swarm agent."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.api_key = secrets.token_urlsafe(24)
        self.env = {**ENV, "AGENSTRA_MANAGER_KEY_FILE": str(root / "manager.key")}
        self.db = f"sqlite:///{root / 'swarm.sqlite'}"
        self.manager = self.start("first")
        self.agent = self.create(name="swarmed", provider="shell", runtime="swarm",
                                 image=TEST_IMAGE)

    def start(self, name: str) -> ManagerProcess:
        return ManagerProcess(data_dir=self.root / name, api_key=self.api_key, db=self.db,
                              env=self.env).start()

    def create(self, **body) -> httpx.Response | dict:
        response = httpx.post(f"{self.manager.url}/api/agents", json=body, timeout=60,
                              headers={"Authorization": f"Bearer {self.api_key}"})
        return response.json() if response.status_code == 201 else response

    async def client(self) -> AgentsClient:
        client = await AgentsClient().connect(self.manager)
        await client.login(self.agent)
        return client

    async def run(self, command: str) -> str:
        client = await self.client()
        try:
            # Unique: the history a login replays holds earlier answers to the same words.
            answer = await client.chat(command, timeout=60,
                                       correlationId=secrets.token_hex(8))
        finally:
            await client.close()
        return answer["response"]["result"]


@pytest.fixture(scope="module")
def deployment(docker_client, tmp_path_factory):
    deployment = Deployment(tmp_path_factory.mktemp("swarm"))
    yield deployment
    if deployment.manager.process.poll() is None:
        deployment.manager.kill()
    if services_of(docker_client, deployment.agent["id"]):  # a test failed before delete
        asyncio.run(_remove(deployment.agent["id"]))


async def _remove(agent_id: str) -> None:
    from agenstra_jupyter.manager.models import AgentRecord

    runtime = SwarmRuntime()
    await runtime.remove(AgentRecord(id=agent_id, name="left", provider="shell",
                                     runtime="swarm", password_hash="-", created_at="",
                                     updated_at=""))
    await runtime.shutdown()


def services_of(docker_client, agent_id: str) -> list:
    return docker_client.services.list(filters={"label": f"{AGENT_LABEL}={agent_id}"})


def task_container(docker_client, agent_id: str):
    (container,) = docker_client.containers.list(
        filters={"label": f"{AGENT_LABEL}={agent_id}", "status": "running"})
    return container


async def test_a_shell_turn_runs_in_a_locked_down_service(deployment, docker_client):
    result = await deployment.run("id -u; pwd; echo hi > note.txt; cat note.txt")
    assert result == "1000\n/workspace\nhi\n[exit code 0]"

    (service,) = services_of(docker_client, deployment.agent["id"])
    spec = service.attrs["Spec"]
    assert spec["Labels"][RUNTIME_LABEL] == "swarm"
    assert spec["Labels"][MANAGER_LABEL] == "swarm-test"
    assert spec["Mode"]["Replicated"]["Replicas"] == 1
    assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "any"
    assert any(c.startswith("node.id==")
               for c in spec["TaskTemplate"]["Placement"]["Constraints"])
    container = task_container(docker_client, deployment.agent["id"])
    host = container.attrs["HostConfig"]
    assert container.attrs["Config"]["User"] == "1000:1000"
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd") and not host["Privileged"]
    assert host["ReadonlyRootfs"] and host["Memory"] > 0 and host["NanoCpus"] > 0
    assert host["PidsLimit"] > 0
    assert list(container.attrs["NetworkSettings"]["Networks"]) == [
        f"agenstra-net-{deployment.agent['id']}"]
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert sorted(mounts) == ["/tmp", "/workspace"]
    assert mounts["/workspace"]["Name"] == f"agenstra-ws-{deployment.agent['id']}"
    assert _settings_problem(container.attrs) is None


async def test_an_agent_inside_its_service_cannot_escalate_nor_leave(deployment):
    status = await deployment.run("grep -E '^(Uid|CapEff|CapBnd|CapPrm):' /proc/self/status")
    lines = dict(line.split(":\t") for line in status.splitlines()[:-1])
    assert lines["Uid"].split()[0] == "1000"
    assert {lines[k] for k in ("CapEff", "CapBnd", "CapPrm")} == {"0000000000000000"}

    sockets = await deployment.run(
        "find / -path /proc -prune -o -path /sys -prune -o -type s -print 2>/dev/null; "
        "grep -c docker.sock /proc/mounts")
    assert sockets == "0\n[exit code 1]"  # no socket anywhere, no Docker socket mounted

    # Not the host's network: its 127.0.0.1 is not ours, and no route leads out.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        reach = await deployment.run(f"nc -w 2 127.0.0.1 {port} </dev/null; echo rc=$?")
    assert "rc=1" in reach
    routes = await deployment.run("cat /proc/net/route")
    destinations = [line.split()[1] for line in routes.splitlines()[1:-1]]
    assert destinations and "00000000" not in destinations  # no default route
    assert await deployment.run("ls /sys/class/net") == "eth0\nlo\n[exit code 0]"
    outside = await deployment.run("nc -w 3 1.1.1.1 80 </dev/null 2>&1")
    assert "unreachable" in outside.lower() and not outside.endswith("[exit code 0]")

    written = await deployment.run("touch /etc/owned 2>&1")
    assert "Read-only file system" in written


async def test_a_restarted_manager_finds_its_service_by_label(deployment, docker_client):
    (before,) = services_of(docker_client, deployment.agent["id"])
    assert deployment.manager.stop() == 0
    deployment.manager = deployment.start("second")
    (after,) = services_of(docker_client, deployment.agent["id"])
    assert after.id == before.id  # found again, not re-created
    client = await deployment.client()
    await client.log.wait_count(ManagerEvent.CHAT_MESSAGE, 2)  # history came back too
    await client.close()
    assert await deployment.run("cat note.txt") == "hi\n[exit code 0]"


async def test_a_killed_task_is_rescheduled_and_the_next_turn_works(deployment,
                                                                    docker_client):
    killed = task_container(docker_client, deployment.agent["id"])
    await asyncio.to_thread(killed.kill)
    await asyncio.to_thread(killed.wait, timeout=30)  # dead before the turn, not dying
    # The next turn waits for Swarm's new task, which finds the same workspace volume.
    assert await deployment.run("cat note.txt") == "hi\n[exit code 0]"
    again = task_container(docker_client, deployment.agent["id"])
    assert again.id != killed.id
    (service,) = services_of(docker_client, deployment.agent["id"])
    assert len(service.tasks()) >= 2


async def test_stop_scales_the_service_to_zero_and_start_brings_it_back(deployment,
                                                                        docker_client):
    agent_id = deployment.agent["id"]
    async with deployment.manager.http() as http:
        stopped = await http.post(f"/api/agents/{agent_id}/stop")
        assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
        (service,) = services_of(docker_client, agent_id)
        assert service.attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 0
        started = await http.post(f"/api/agents/{agent_id}/start")
        assert started.status_code == 200 and started.json()["state"] == "running"
    assert task_container(docker_client, agent_id).status == "running"
    assert await deployment.run("cat note.txt") == "hi\n[exit code 0]"  # the same volume


async def test_delete_removes_the_service_its_network_and_volume(deployment, docker_client):
    agent_id = deployment.agent["id"]
    async with deployment.manager.http() as http:
        assert (await http.delete(f"/api/agents/{agent_id}")).status_code == 204
    assert services_of(docker_client, agent_id) == []
    assert docker_client.containers.list(all=True,
                                         filters={"label": f"{AGENT_LABEL}={agent_id}"}) == []
    assert [v for v in docker_client.volumes.list() if agent_id in v.name] == []
    deadline = time.monotonic() + 30  # Swarm lets go of a network asynchronously
    while docker_client.networks.list(names=[f"agenstra-net-{agent_id}"]):
        assert time.monotonic() < deadline, "the agent's network was not removed"
        await asyncio.sleep(0.2)


async def test_what_swarm_cannot_offer_is_refused_clearly(deployment, docker_client):
    egress = deployment.create(name="egress", provider="shell", runtime="swarm",
                               config={"network": "egress"})
    assert egress.status_code == 400 and "only config.network 'none'" in egress.text
    with pytest.raises(ValueError, match="does not work in project folders"):
        SwarmRuntime().validate_project(Path.cwd())

    missing = deployment.create(name="noimg", provider="shell", runtime="swarm",
                                image="agenstra-does-not-exist:1")
    assert missing["state"] == "error"
    assert services_of(docker_client, missing["id"]) == []
    client = await AgentsClient().connect(deployment.manager)
    await client.login(missing)
    answer = await client.chat("echo hi")
    await client.close()
    assert answer["response"]["result"].startswith("Agent image not found on the Docker host")

    nowhere = SwarmRuntime(docker_host="unix:///nonexistent/docker.sock")
    assert not await nowhere.available()
    assert nowhere.info()["problem"].startswith("No Docker daemon answers")


async def test_a_task_without_the_lockdown_is_named(deployment, docker_client):
    # What the runtime checks on every task's container, against a real one's settings.
    from agenstra_jupyter.manager.models import AgentRecord

    runtime = SwarmRuntime(image=TEST_IMAGE)
    record = AgentRecord(id=f"lockdown-{secrets.token_hex(4)}", name="lockdown",
                         provider="shell", runtime="swarm", password_hash="-", created_at="",
                         updated_at="")
    try:
        attrs = (await runtime.container(record)).attrs
    finally:
        await runtime.remove(record)
        await runtime.shutdown()
    assert _settings_problem(attrs) is None
    weaker = [("HostConfig", "CapDrop", None, "keeps capabilities"),
              ("HostConfig", "ReadonlyRootfs", False, "writable root filesystem"),
              ("HostConfig", "PidsLimit", 0, "no memory, CPU or process limit"),
              ("Config", "User", "0:0", "runs as root"),
              ("HostConfig", "NetworkMode", "host", "on the host's network")]
    for section, key, value, problem in weaker:
        changed = {**attrs, section: {**attrs[section], key: value}}
        assert (_settings_problem(changed) or "").startswith(problem)

"""Stop and delete really stop (#13 item 9): no queued turn starts in a runtime being
stopped, and a cancelled Docker command never runs on."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from agenstra_jupyter.protocol import ManagerEvent

from .conftest import TEST_IMAGE
from .helpers import WAIT, AgentsClient


def processes_with(marker: str) -> list[int]:
    """Host processes whose command line holds `marker` (sandboxed ones included)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            pass  # ended meanwhile
    return found


async def send(client: AgentsClient, message: str, correlation_id: str) -> dict:
    return await client.sio.call(ManagerEvent.CHAT, {"message": message,
                                                     "correlationId": correlation_id},
                                 namespace="/agents", timeout=WAIT)


PAST = {"stop": "stopped", "delete": "deleted"}


@pytest.mark.parametrize("action", ["stop", "delete"])
async def test_stop_and_delete_cancel_queued_turns_and_leave_no_process(manager, action):
    agent = await manager.create_agent(name="busy", provider="shell")
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    marker = f"m-{uuid.uuid4().hex}"
    assert (await send(client, f"sleep 600; : {marker}-1", "t1"))["ok"]
    while not processes_with(f"{marker}-1"):  # turn 1 runs its command
        await asyncio.sleep(0.05)
    assert (await send(client, f"sleep 600; : {marker}-2", "t2"))["ok"]  # queued behind it

    async with manager.http() as http:
        if action == "stop":
            response = await http.post(f"/api/agents/{agent['id']}/stop")
            assert response.status_code == 200 and response.json()["state"] == "stopped"
        else:
            response = await http.delete(f"/api/agents/{agent['id']}")
            assert response.status_code == 204
    for correlation_id in ("t1", "t2"):
        answer = await client.answer_to(correlation_id, timeout=10)
        assert answer["response"]["type"] == "error"
        assert answer["response"]["result"] == f"Cancelled: the agent was {PAST[action]}"
    assert processes_with(marker) == []  # neither command survives, none started again

    if action == "stop":
        async with manager.http() as http:
            state = (await http.get(f"/api/agents/{agent['id']}")).json()["state"]
        assert state == "stopped"  # the queued turn did not start it again
        after = await client.chat("echo back")  # a new chat starts it, as before
        assert after["response"]["result"] == "back\n[exit code 0]"
    await client.close()


# -- Docker: cancel before the exec's session is known -----------------------------------


def container_processes(container) -> bytes:
    return container.exec_run(["ps", "-o", "args"]).output


@pytest.mark.docker
@pytest.mark.usefixtures("docker_available")
async def test_killing_a_docker_command_at_once_ends_it():
    from agenstra_jupyter.manager.models import AgentRecord
    from agenstra_jupyter.manager.runtimes import DockerRuntime

    runtime = DockerRuntime(image=TEST_IMAGE, pull_policy="never")
    agent = AgentRecord(id=uuid.uuid4().hex, name="kill", provider="shell",
                        runtime="docker", password_hash="-", created_at="", updated_at="")
    marker = f"m-{uuid.uuid4().hex[:8]}"
    try:
        container = await runtime.container(agent)
        process = await runtime.spawn(agent, ["sh", "-c", f"sleep 600; : {marker}"])
        await process.kill()  # before its session id came back
        assert await asyncio.wait_for(process.wait(), 10) == -9
        assert marker.encode() not in await asyncio.to_thread(container_processes, container)
    finally:
        await runtime.remove(agent)
        await runtime.shutdown()


@pytest.mark.docker
@pytest.mark.usefixtures("docker_available")
@pytest.mark.parametrize("image", [TEST_IMAGE, "agenstra-agent:latest"])
async def test_killing_a_docker_command_kills_its_session_only(image):
    """Debian's /usr/bin/kill reads `kill -KILL -PID` as kill(-1): killing one command
    must not kill the agent's other processes (busybox and the Debian agent image)."""
    from agenstra_jupyter.manager.models import AgentRecord
    from agenstra_jupyter.manager.runtimes import DockerRuntime

    runtime = DockerRuntime(image=image, pull_policy="never")
    agent = AgentRecord(id=uuid.uuid4().hex, name="kill", provider="shell",
                        runtime="docker", password_hash="-", created_at="", updated_at="")
    try:
        await runtime.container(agent)
        bystander = await runtime.spawn(agent, ["sh", "-c", "sleep 600"])
        bystander_ended = asyncio.ensure_future(bystander.wait())
        target = await runtime.spawn(agent, ["sh", "-c", "echo started; sleep 601"])
        assert await asyncio.wait_for(target.stdout.readline(), 10) == b"started\n"
        await target.kill()
        assert await asyncio.wait_for(target.wait(), 10) == -9
        await asyncio.sleep(0.5)
        assert not bystander_ended.done()  # still running
        check = await runtime.exec(agent, ["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"])
        assert "sleep 600" in check.stdout and "sleep 601" not in check.stdout
        await bystander.kill()
    finally:
        await runtime.remove(agent)
        await runtime.shutdown()


@pytest.mark.docker
@pytest.mark.usefixtures("docker_available")
async def test_cancelling_a_docker_spawn_while_the_exec_starts_leaves_nothing():
    from agenstra_jupyter.manager.models import AgentRecord
    from agenstra_jupyter.manager.runtimes import DockerRuntime

    starting = asyncio.Event()

    class Observed(DockerRuntime):
        """Says when `exec_start` is under way in its thread: the moment to cancel."""

        async def _call(self, fn, *args, **kwargs):
            if getattr(fn, "__name__", "") != "exec_start":
                return await super()._call(fn, *args, **kwargs)
            call = asyncio.ensure_future(super()._call(fn, *args, **kwargs))
            starting.set()
            return await call

    runtime = Observed(image=TEST_IMAGE, pull_policy="never")
    agent = AgentRecord(id=uuid.uuid4().hex, name="spawn", provider="shell",
                        runtime="docker", password_hash="-", created_at="", updated_at="")
    marker = f"m-{uuid.uuid4().hex[:8]}"
    try:
        container = await runtime.container(agent)
        spawn = asyncio.ensure_future(runtime.spawn(agent, ["sh", "-c", f"sleep 600; : {marker}"]))
        await starting.wait()
        spawn.cancel()  # the exec starts anyway, in its thread
        with pytest.raises(asyncio.CancelledError):
            await spawn

        def execs() -> list[dict]:
            container.reload()
            ids = container.attrs["ExecIDs"] or []
            return [container.client.api.exec_inspect(i) for i in ids]

        # Once its thread has started the exec (a Pid, or an exit code), nothing of it runs.
        while [e for e in await asyncio.to_thread(execs) if not e["Pid"] and
               e["ExitCode"] is None]:
            await asyncio.sleep(0.05)
        assert marker.encode() not in await asyncio.to_thread(container_processes, container)
    finally:
        await runtime.remove(agent)
        await runtime.shutdown()

"""The `docker` runtime against a real dockerd (scripts/test.sh starts one) and a local image."""

from __future__ import annotations

import asyncio

import pytest

from agenstra_jupyter.manager.runtimes.docker import AGENT_LABEL
from agenstra_jupyter.protocol import ManagerEvent

from .conftest import TEST_IMAGE
from .helpers import AgentsClient

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_available")]


@pytest.fixture
def docker_client():
    import docker

    client = docker.from_env()
    yield client
    client.close()


def containers_of(docker_client, agent_id):
    return docker_client.containers.list(all=True, filters={"label": f"{AGENT_LABEL}={agent_id}"})


async def test_shell_agent_in_a_locked_down_container_survives_a_manager_restart(
    start_manager, tmp_path, docker_client
):
    db = f"sqlite:///{tmp_path / 'docker.sqlite'}"
    key = {"AGENSTRA_MANAGER_KEY_FILE": str(tmp_path / "docker.key")}  # it goes with the db
    manager = start_manager("first", db=db, env=key)
    agent = await manager.create_agent(name="boxed", provider="shell", runtime="docker",
                                       image=TEST_IMAGE)
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    answer = await client.chat("id -u; pwd; echo hi > note.txt; cat note.txt")
    assert answer["response"]["result"] == "1000\n/workspace\nhi\n[exit code 0]"
    await client.close()

    (container,) = containers_of(docker_client, agent["id"])
    config = container.attrs["HostConfig"]
    assert container.attrs["Config"]["User"] == "1000:1000"
    assert config["CapDrop"] == ["ALL"] and not config.get("CapAdd")
    assert "no-new-privileges" in config["SecurityOpt"]
    assert config["NetworkMode"] == "none" and not config["Privileged"]
    assert config["Memory"] > 0 and config["NanoCpus"] > 0 and config["PidsLimit"] > 0
    mounts = container.attrs["Mounts"]
    assert [m["Destination"] for m in mounts] == ["/workspace"]
    assert not any("docker.sock" in (m.get("Source") or "") for m in mounts)

    assert manager.stop() == 0
    again = start_manager("second", db=db, api_key=manager.api_key, env=key)
    (found,) = containers_of(docker_client, agent["id"])
    assert found.id == container.id  # found again by its label, not re-created
    client = await AgentsClient().connect(again)
    await client.login(agent)
    await client.log.wait_count(ManagerEvent.CHAT_MESSAGE, 2)
    kept = await client.chat("cat note.txt")
    assert kept["response"]["result"] == "hi\n[exit code 0]"

    async with again.http() as http:
        assert (await http.delete(f"/api/agents/{agent['id']}")).status_code == 204
    assert containers_of(docker_client, agent["id"]) == []
    assert [v for v in docker_client.volumes.list() if agent["id"] in v.name] == []
    await client.close()


async def test_cancel_kills_the_command_inside_the_container(manager, docker_client):
    agent = await manager.create_agent(name="sleepy", provider="shell", runtime="docker",
                                       image=TEST_IMAGE)
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    await client.emit(ManagerEvent.CHAT, {"message": "sleep 300; echo never",
                                         "correlationId": "long"})
    (container,) = containers_of(docker_client, agent["id"])

    async def sleeping() -> bool:
        ps = await asyncio.to_thread(container.exec_run, ["ps", "-o", "args"])
        return b"sleep 300" in ps.output

    while not await sleeping():
        await asyncio.sleep(0.1)
    await client.emit(ManagerEvent.CANCEL, {"correlationId": "long"})
    cancelled = await client.answer_to("long", timeout=10)
    assert cancelled["response"]["result"] == "Cancelled"
    assert not await sleeping()
    after = await client.chat("echo next")
    assert after["response"]["result"] == "next\n[exit code 0]"
    await client.close()
    async with manager.http() as http:
        await http.delete(f"/api/agents/{agent['id']}")


async def test_stdin_reaches_the_container_and_output_streams_back(manager):
    # The runtime's streaming interface, which CLI and ACP providers build on.
    from agenstra_jupyter.manager.models import AgentRecord
    from agenstra_jupyter.manager.runtimes import DockerRuntime

    runtime = DockerRuntime(image=TEST_IMAGE, pull_policy="never")
    agent = AgentRecord(id="stdin-test-0001", name="stdin", provider="shell", runtime="docker",
                        password_hash="-", created_at="", updated_at="")
    try:
        result = await runtime.exec(agent, ["sh", "-c", "tr a-z A-Z; echo done >&2; exit 4"],
                                    stdin=b"hello from stdin\n")
        assert (result.stdout, result.stderr, result.exit_code) == (
            "HELLO FROM STDIN\n", "done\n", 4)
        process = await runtime.spawn(agent, ["sh", "-c", "while read l; do echo got:$l; done"])
        await process.write(b"one\n")
        assert await asyncio.wait_for(process.stdout.readline(), 10) == b"got:one\n"
        await process.write(b"two\n")
        assert await asyncio.wait_for(process.stdout.readline(), 10) == b"got:two\n"
        await process.close_stdin()
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        await runtime.remove(agent)
        await runtime.shutdown()


async def test_a_missing_image_gives_a_clear_error_turn(manager):
    agent = await manager.create_agent(name="noimg", provider="shell", runtime="docker",
                                       image="agenstra-does-not-exist:1")
    assert agent["state"] == "error"
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    answer = await client.chat("echo hi")
    assert answer["response"]["type"] == "error"
    assert answer["response"]["result"].startswith("Agent image not found on the Docker host")
    await client.close()

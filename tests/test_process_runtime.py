"""The `process` runtime: the shell agent in its bubblewrap sandbox, through a real manager."""

from __future__ import annotations

import shutil

import pytest

from .helpers import AgentsClient

needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None,
    reason="bubblewrap is not installed (scripts/test.sh installs it)",
)


async def shell_agent(manager, **config):
    agent = await manager.create_agent(name="sh", provider="shell", config=config)
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    return agent, client


async def test_commands_run_in_the_agents_workspace(manager):
    agent, client = await shell_agent(manager)
    answer = await client.chat("pwd; echo $HOME; printf 'out'; printf 'err' >&2")
    workspace = manager.data_dir / "workspaces" / agent["id"]
    assert answer["response"]["result"] == f"{workspace}\n{workspace}\nouterr\n[exit code 0]"
    assert answer["response"]["exitCode"] == 0
    await client.close()


async def test_the_manager_environment_does_not_leak_into_commands(start_manager):
    manager = start_manager(env={"SOME_PROVIDER_API_KEY": "sk-leak"})
    _, client = await shell_agent(manager)
    answer = await client.chat("env")
    assert "sk-leak" not in answer["response"]["result"]
    assert manager.api_key not in answer["response"]["result"]
    await client.close()


async def test_output_is_capped(start_manager):
    manager = start_manager(env={"AGENSTRA_OUTPUT_LIMIT": "1000"})
    _, client = await shell_agent(manager)
    answer = await client.chat("head -c 100000 /dev/zero | tr '\\0' a")
    result = answer["response"]["result"]
    assert result.startswith("a" * 1000 + "\n[output truncated]")
    assert result.endswith("[exit code 0]")
    await client.close()


@needs_bwrap
async def test_sandbox_allows_writes_only_in_the_workspace(manager, tmp_path):
    outside = tmp_path / "outside.txt"
    _, client = await shell_agent(manager)
    answer = await client.chat(f"echo x > {outside}; echo x > inside.txt && cat inside.txt")
    assert not outside.exists()
    assert answer["response"]["result"].endswith("x\n[exit code 0]")
    denied = await client.chat("touch /usr/agenstra-test")
    assert denied["response"]["exitCode"] != 0
    await client.close()


@needs_bwrap
async def test_sandbox_hides_the_manager_data_and_the_network(manager):
    _, client = await shell_agent(manager)
    database = manager.data_dir / "manager.sqlite"
    answer = await client.chat(f"test -e {database} && echo visible || echo hidden")
    assert answer["response"]["result"].startswith("hidden")
    network = await client.chat(f"cat /proc/net/tcp | wc -l; echo {manager.port}")
    # In a fresh network namespace nothing listens: only the header line of /proc/net/tcp.
    assert network["response"]["result"].split("\n")[0] == "1"
    await client.close()


@needs_bwrap
async def test_network_is_shared_when_the_agent_asks_for_it(manager):
    _, client = await shell_agent(manager, network="host")
    answer = await client.chat("cat /proc/net/tcp | wc -l")
    assert int(answer["response"]["result"].split("\n")[0]) > 1  # sees the manager's socket
    await client.close()

"""The `process` runtime: the shell agent in its bubblewrap sandbox, through a real manager."""

from __future__ import annotations

import pytest

from .helpers import AgentsClient

needs_bwrap = pytest.mark.usefixtures("sandbox_available")


async def shell_agent(manager, **config):
    agent = await manager.create_agent(name="sh", provider="shell", config=config)
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    return agent, client


async def test_commands_run_in_the_agents_workspace(manager):
    agent, client = await shell_agent(manager)
    answer = await client.chat("pwd; echo $HOME; printf 'out'; printf 'err' >&2")
    workspace = manager.data_dir / "workspaces" / agent["id"]
    home = manager.data_dir / "agents" / agent["id"] / "home"
    assert answer["response"]["result"] == f"{workspace}\n{home}\nouterr\n[exit code 0]"
    assert answer["response"]["exitCode"] == 0
    assert answer["response"]["format"] == "text"  # command output: shown preformatted
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


async def test_network_and_loopback_ports_are_validated(manager):
    async with manager.http() as http:
        for config, message in [({"network": "host"}, "egress"), ({"network": "lan"}, "egress"),
                                ({"loopbackPorts": [0]}, "loopbackPorts"),
                                ({"loopbackPorts": ["80"]}, "loopbackPorts"),
                                ({"loopbackPorts": list(range(1, 40))}, "loopbackPorts")]:
            response = await http.post("/api/agents", json={"name": "bad", "provider": "shell",
                                                            "config": config})
            assert response.status_code == 400, config
            assert message in response.json()["message"]
        assert (await http.get("/api/agents")).json() == []  # nothing was created

"""A fresh start picks the best agent CLI it finds for the default agent (else a shell)."""

from __future__ import annotations

import os

import pytest

from agenstra_jupyter.protocol import ChatEventKind, ControllerEvent, ManagerEvent

from .fakes.vendors import Reply
from .helpers import CLI_BIN, FAKE_BIN, SECRET, need_cli

AUTO = [{"default_agent_provider": "auto"}]


@pytest.mark.parametrize("controller_config", AUTO)
async def test_claude_found_on_path_becomes_the_default_agent(jupyter, vendor,
                                                              monkeypatch):
    need_cli("claude")
    monkeypatch.setenv("PATH", f"{CLI_BIN}:{os.environ['PATH']}")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", vendor.url)
    # Read when the default agent is made (the local manager is still starting now).
    jupyter.controller.app.default_agent_config = {"loopbackPorts": [vendor.port]}
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    vendor.script(Reply(text="streaming slowly " * 30, chunk_delay=0.2))
    vendor.default = Reply(text="Claude, through the controller.")
    agent = await jupyter.default_agent()
    assert agent["provider"] == "cli" and agent["config"]["preset"] == "claude"

    client = await jupyter.frontend()
    ack = await client.forward(ManagerEvent.CHAT, agent["id"],
                               {"message": "tell me a story", "correlationId": "s"})
    assert ack == {"ok": True}

    def deltas(_log) -> list:
        return [e for e in client.forwarded(agent["id"], ManagerEvent.CHAT_EVENT)
                if e["kind"] == ChatEventKind.ASSISTANT_DELTA and e["correlationId"] == "s"]

    await client.log.wait_for(lambda log: len(deltas(log)) >= 2, timeout=60)
    assert await client.forward(ManagerEvent.CANCEL, agent["id"], {"correlationId": "s"}) == {
        "ok": True}
    cancelled = await client.answer_to(agent["id"], "s")
    assert cancelled["response"]["result"] == "Cancelled"
    answer = await client.chat(agent["id"], "and now?", "n")
    assert answer["response"]["result"] == "Claude, through the controller."
    assert SECRET not in str(client.log.events)
    assert not client.log.of(ControllerEvent.ERROR)
    await client.close()


@pytest.mark.parametrize("controller_config", AUTO)
async def test_without_agent_clis_the_default_agent_is_a_shell(jupyter, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
    agent = await jupyter.default_agent()
    assert agent["provider"] == "shell"


@pytest.mark.parametrize("controller_config", AUTO)
async def test_the_first_cli_found_wins(jupyter, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE_BIN}:/usr/local/bin:/usr/bin:/bin")
    agent = await jupyter.default_agent()
    assert (agent["provider"], agent["config"]["preset"]) == ("cli", "cursor")


@pytest.mark.parametrize("controller_config", [{"default_agent_provider": "no-such-provider"}])
async def test_a_default_agent_that_cannot_be_made_does_not_stop_the_controller(jupyter):
    async with jupyter.http() as http:
        clients = await http.get("/clients")
        assert clients.status_code == 200 and [c["id"] for c in clients.json()] == ["local"]
        assert (await http.get("/clients/local/agents")).json() == []
        created = await http.post("/clients/local/agents", json={"name": "e", "provider": "echo"})
        assert created.status_code == 201
    client = await jupyter.frontend()  # the socket connects and works too
    answer = await client.chat(created.json()["id"], "still here", "s")
    assert answer["response"]["result"] == "Echo: still here"
    await client.close()

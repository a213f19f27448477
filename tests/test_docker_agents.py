"""Agent CLIs and ACP agents inside the Docker runtime, on the locally built agent image.

scripts/test.sh builds agenstra-agent:latest (scripts/build-agent-image.sh); this module
layers the Claude Code CLI and the ACP test agent on it, as a user would add their CLIs.
"""

from __future__ import annotations

import asyncio
import io
import site
import subprocess
import tarfile
from pathlib import Path

import pytest

from agenstra_jupyter.protocol import ChatEventKind

from .fakes.vendors import Reply
from .helpers import CLI_BIN, SECRET, AgentsClient, answer_requests, events_of, need_cli

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_available")]

AGENT_IMAGE = "agenstra-agent:latest"
TEST_AGENT_IMAGE = "agenstra-agent-test:latest"
ACP_PACKAGES = ["acp", "pydantic", "pydantic_core", "annotated_types", "typing_extensions.py",
                "typing_inspection"]


@pytest.fixture(scope="module")
def agent_image():
    """The agent image plus the claude CLI and the ACP test agent (with its SDK)."""
    if subprocess.run(["docker", "image", "inspect", AGENT_IMAGE],
                      capture_output=True).returncode != 0:
        pytest.fail(f"{AGENT_IMAGE} is missing: scripts/build-agent-image.sh builds it")
    need_cli("claude")
    claude = (CLI_BIN / "claude").resolve()
    packages = Path(next(p for p in site.getsitepackages() if Path(p, "acp").exists()))
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = (f"FROM {AGENT_IMAGE}\nCOPY claude /usr/local/bin/claude\n"
                      "COPY pylib /opt/pylib\nCOPY acp_agent.py /opt/acp_agent.py\n"
                      "ENV PYTHONPATH=/opt/pylib\n").encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.add(claude, "claude")
        tar.add(Path(__file__).parent / "fakes" / "acp_agent.py", "acp_agent.py")
        for name in ACP_PACKAGES:
            tar.add(packages / name, f"pylib/{name}",
                    filter=lambda t: None if "__pycache__" in t.name else t)
    context.seek(0)
    build = subprocess.run(["docker", "build", "-q", "--network", "none", "-t",
                            TEST_AGENT_IMAGE, "-"], input=context.read(), capture_output=True)
    assert build.returncode == 0, build.stderr.decode()
    return TEST_AGENT_IMAGE


async def docker_agent(manager, name: str, provider: str, config: dict, image: str):
    agent = await manager.create_agent(name=name, provider=provider, runtime="docker",
                                       image=image, config=config)
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    return agent, client


async def test_claude_cli_in_a_container(cli_manager, vendor, agent_image):
    vendor.script(Reply(text="Hello from inside the container."))
    config = {"preset": "claude",
              "env": {"ANTHROPIC_BASE_URL": vendor.url, "ANTHROPIC_API_KEY": SECRET},
              "loopbackPorts": [vendor.port]}
    agent, client = await docker_agent(cli_manager, "boxedclaude", "cli", config, agent_image)
    answer = await client.chat("hello", correlationId="c", timeout=90)
    assert answer["response"]["result"] == "Hello from inside the container."
    assert events_of(client, "c", ChatEventKind.ASSISTANT_DELTA)
    second = await client.chat("again", correlationId="d", timeout=90)
    assert second["response"]["sessionId"] == answer["response"]["sessionId"]
    async with cli_manager.http() as http:
        await http.delete(f"/api/agents/{agent['id']}")
    await client.close()


async def test_acp_agent_in_a_container(cli_manager, agent_image):
    config = {"command": ["python3", "/opt/acp_agent.py"], "network": "none",
              "permissions": "workspace"}
    agent, client = await docker_agent(cli_manager, "boxedacp", "acp", config, agent_image)
    assert (await client.chat("hello"))["response"]["result"] == "Hello from ACP"
    # `workspace` allows the edit inside; the one outside is asked, and rejected here.
    files, [asked] = await asyncio.gather(client.chat("files"),
                                          answer_requests(client, "no", 1))
    assert files["response"]["result"] == "outside=no inside=yes"  # /workspace is the root
    assert asked["payload"]["kind"] == "edit"
    assert (await client.chat("count"))["response"]["result"] == "prompt number 3"
    async with cli_manager.http() as http:
        await http.delete(f"/api/agents/{agent['id']}")
    await client.close()


def test_the_agent_image_has_python_node_and_a_non_root_user():
    run = subprocess.run(["docker", "run", "--rm", "--network", "none", AGENT_IMAGE, "sh", "-c",
                          "id -u; python3 --version; node --version; npm --version; pwd"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    uid, python, node, npm, cwd = run.stdout.split()[:1] + run.stdout.split("\n")[1:5]
    assert uid == "1000" and python.startswith("Python 3") and node.startswith("v")
    assert npm and cwd == "/workspace"

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .fakes.vendors import FakeVendor
from .helpers import CLI_BIN, FAKE_BIN, FrontendClient, ManagerProcess

pytest_plugins = ["pytest_jupyter.jupyter_server"]

TEST_IMAGE = "agenstra-test-busybox:latest"


@pytest.fixture
def start_manager(tmp_path: Path) -> Iterator:
    """Start real `agenstra-manager` processes; all are stopped after the test."""
    started: list[ManagerProcess] = []

    def start(name: str = "m", **kwargs) -> ManagerProcess:
        kwargs.setdefault("api_key", secrets.token_urlsafe(24))
        manager = ManagerProcess(data_dir=tmp_path / name, **kwargs).start()
        started.append(manager)
        return manager

    yield start
    for manager in started:
        if manager.process and manager.process.poll() is None:
            manager.kill()


@pytest.fixture
def manager(start_manager) -> ManagerProcess:
    return start_manager()


@pytest.fixture
def start_scripted_manager(start_manager):
    """Start real managers that also offer the deterministic `scripted` provider
    (tests/fakes/providers.py), injected through `provider_classes`."""
    from .fakes.providers import MANAGER_ARGS

    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))

    def start(name: str = "m", env: dict | None = None, **kwargs) -> ManagerProcess:
        return start_manager(name, env={"PYTHONPATH": path, **(env or {})},
                             args=MANAGER_ARGS, **kwargs)

    return start


def _docker_reason() -> str | None:
    if not shutil.which("docker"):
        return "the docker CLI is not installed (scripts/test.sh installs docker.io)"
    probe = subprocess.run(["docker", "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"no Docker daemon answers at DOCKER_HOST={os.environ.get('DOCKER_HOST', '')!r}"
    image = subprocess.run(["docker", "image", "inspect", TEST_IMAGE], capture_output=True)
    if image.returncode != 0:
        return f"the test image {TEST_IMAGE} is missing (scripts/make-test-image.sh builds it)"
    return None


@pytest.fixture(scope="session")
def docker_available() -> None:
    reason = _docker_reason()
    if reason is None:
        return
    if os.environ.get("AGENSTRA_REQUIRE_DOCKER") == "1":
        pytest.fail(f"Docker is required here but unusable: {reason}")
    pytest.skip(f"Docker tests need a daemon: {reason}")


@pytest.fixture(scope="session")
def sandbox_available() -> None:
    """bubblewrap and slirp4netns, which the process runtime's sandbox is made of."""
    missing = [tool for tool in ("bwrap", "slirp4netns") if shutil.which(tool) is None]
    if not missing:
        return
    reason = f"{' and '.join(missing)} not installed (scripts/test.sh installs them)"
    if os.environ.get("AGENSTRA_REQUIRE_SANDBOX") == "1":
        pytest.fail(f"The sandbox is required here: {reason}")
    pytest.skip(reason)


# -- agent CLIs against fake model APIs ------------------------------------------------------


@pytest.fixture
def vendor() -> Iterator[FakeVendor]:
    """A fake model API on 127.0.0.1 speaking each vendor's streaming format."""
    fake = FakeVendor().start()
    yield fake
    fake.stop()


@pytest.fixture
def cli_manager(start_manager) -> ManagerProcess:
    """A manager that finds the real agent CLIs (and the fake ones) on its PATH.

    The fake CLIs (`#!/usr/bin/env python3`) and custom commands (`python3 -c ...`) run with
    this test run's interpreter, as in an activated virtualenv: what else is first on PATH
    may not work in a sandbox (a pyenv shim runs `~/.pyenv/libexec`, hidden with HOME)."""
    path = f"{CLI_BIN}:{FAKE_BIN}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    return start_manager(env={"PATH": path})


# -- headless Chromium (tests/browser.py has the page helpers) -------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from .browser import CHROMIUM, CHROMIUM_ARGS, browser_reason

    reason = browser_reason()
    if reason:
        if os.environ.get("AGENSTRA_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# -- Jupyter server with the controller extension (pytest-jupyter) -------------------------


@pytest.fixture
def jp_base_url() -> str:
    return "/jp/"  # a non-root base_url, as under JupyterHub


@pytest.fixture
def controller_config() -> dict:
    """Extra ControllerApp settings; override in a test module or with parametrize."""
    return {}


@pytest.fixture
def jp_server_config(tmp_path, controller_config, monkeypatch):
    monkeypatch.setenv("AGENSTRA_BCRYPT_ROUNDS", "4")
    monkeypatch.setenv("AGENSTRA_DOCKER_PULL", "never")
    return {
        "ServerApp": {"jpserver_extensions": {"agenstra_jupyter": True}},
        "ControllerApp": {
            "data_dir": str(tmp_path / "agenstra"),
            "reconnect_delay": 0.1,
            "reconnect_delay_max": 1.0,
            "default_agent_provider": "shell",  # whatever CLIs this machine has
            **controller_config,
        },
    }


@dataclass
class JupyterServer:
    url: str
    base_url: str
    token: str
    app: object

    @property
    def controller(self):
        return self.app.web_app.settings["agenstra_controller"]

    def http(self, token: str | None = "default", headers: dict | None = None) -> httpx.AsyncClient:
        token = self.token if token == "default" else token
        headers = dict(headers or {})
        if token:
            headers["Authorization"] = f"token {token}"
        return httpx.AsyncClient(
            base_url=f"{self.url}{self.base_url}agenstra/api", headers=headers, timeout=30
        )

    async def frontend(self, client_id: str = "local") -> FrontendClient:
        client = await FrontendClient().connect(self.url, self.token, self.base_url)
        assert await client.set_client(client_id) == {"ok": True}
        return client

    async def remote_agent(self, manager, agent_name: str = "e") -> tuple[dict, dict]:
        """Register `manager` as a client named after its data dir; create an echo agent."""
        async with self.http() as http:
            client = (await http.post("/clients", json={
                "name": manager.data_dir.name, "endpoint": manager.url,
                "apiKey": manager.api_key})).json()
            agent = (await http.post(f"/clients/{client['id']}/agents",
                                     json={"name": agent_name, "provider": "echo"})).json()
        return client, agent

    async def default_agent(self) -> dict:
        async with self.http() as http:
            agents = (await http.get("/clients/local/agents")).json()
        return next(agent for agent in agents if agent["name"] == "assistant")


@pytest.fixture
def jupyter(jp_serverapp, http_server, http_server_port, jp_base_url) -> JupyterServer:
    """The real Jupyter server, listening, with the extension and its local manager."""
    return JupyterServer(
        url=f"http://127.0.0.1:{http_server_port[1]}",
        base_url=jp_base_url,
        token=jp_serverapp.identity_provider.token,
        app=jp_serverapp,
    )


# -- a Jupyter server process, as a user runs it (for kernels, clients, notebooks) ------------


@dataclass
class JupyterProcess:
    url: str
    base_url: str
    token: str
    data_dir: Path
    env: dict
    process: subprocess.Popen

    @property
    def full_url(self) -> str:
        return f"{self.url}{self.base_url}"

    def client(self):
        from agenstra_jupyter.client import AgenstraClient, ServerInfo

        return AgenstraClient(ServerInfo(self.url, self.base_url, self.token))

    def manager_pid(self) -> int:
        found = subprocess.run(["pgrep", "-f", f"agenstra_jupyter.manager.app.*{self.data_dir}"],
                               capture_output=True, text=True).stdout.split()
        return int(found[0])


def start_jupyter(root: Path, extra_env: dict | None = None, port: int = 0,
                  token: str = "", args: list[str] | None = None,
                  stdin: int | None = None, collaborative: bool = False) -> JupyterProcess:
    """A `jupyter server` subprocess in a process group of its own (as a terminal runs it);
    `stdin` may be a terminal (a pty), for what Jupyter does only on one. Real-time
    collaboration (jupyter-collaboration, installed for the tests) is off unless
    `collaborative`: most tests are of JupyterLab as it is without it."""
    import socket
    import time

    if not port:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    token = token or secrets.token_hex(16)
    data_dir = root / "agenstra"
    env = {**os.environ, "AGENSTRA_BCRYPT_ROUNDS": "4", "AGENSTRA_DOCKER_PULL": "never",
           "AGENSTRA_CONTROLLER_DATA_DIR": str(data_dir), "AGENSTRA_DEFAULT_PROVIDER": "shell",
           "JUPYTER_RUNTIME_DIR": str(root / "runtime"), **(extra_env or {})}
    log = open(root / "jupyter.log", "a")  # kept open for the process
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
         f"--port={port}", "--ServerApp.base_url=/jp/", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", *rtc_args(collaborative), *(args or [])],
        stdout=log, stderr=log, env=env, cwd=root, stdin=stdin, start_new_session=True,
    )
    server = JupyterProcess(f"http://127.0.0.1:{port}", "/jp/", token, data_dir, env, process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{server.full_url}agenstra/api/clients/local/agents",
                                 headers={"Authorization": f"token {token}"}, timeout=30)
            if response.status_code == 200 and response.json():
                return server
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"jupyter server did not start:\n{(root / 'jupyter.log').read_text()}")


def rtc_args(collaborative: bool) -> list[str]:
    if importlib.util.find_spec("jupyter_server_ydoc") is None:
        if collaborative:
            pytest.fail("jupyter-collaboration is not installed (pip install -e '.[test]')")
        return []
    return [f"--YDocExtension.disable_rtc={not collaborative}"]


def stop_jupyter(server: JupyterProcess) -> None:
    server.process.terminate()
    try:
        server.process.wait(30)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="module")
def jupyter_server(tmp_path_factory):
    """A real `jupyter server` with the extension, its local manager and default agent."""
    server = start_jupyter(tmp_path_factory.mktemp("jupyter"))
    yield server
    stop_jupyter(server)

"""A real JupyterHub: two users, one agenstra-manager shared as a hub-managed service.

Each user logs in to the Hub, creates an agent and chats with it through their own
single-user server, from the Python client and from the sidebar in Chromium; then alice
tries bob's agent through every route and finds nothing (docs/deploy/jupyterhub.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from agenstra_jupyter.protocol import ErrorCode, ManagerEvent

from .browser import (
    ARTIFACTS,
    PANEL,
    TIMEOUT_MS,
    create_agent,
    jp_asyncio_loop,  # noqa: F401 (replaces pytest-jupyter's loop: Playwright has its own)
    jp_server_cleanup,  # noqa: F401
    open_panel,
    send,
    wait_answer,
)
from .helpers import AgentsClient, FrontendClient

SERVICE = "agenstra-manager"
PASSWORD = "hub-test-password"
USERS = ("alice", "bob")
ADMIN = "ann"  # not a Hub admin: holds the manager's admin scope through a role
CHP = os.environ.get("AGENSTRA_TEST_CHP") or shutil.which("configurable-http-proxy") or \
    "/var/tmp/agenstra-hub/node_modules/.bin/configurable-http-proxy"


def _missing() -> list[str]:
    missing = []
    try:
        import jupyterhub  # noqa: F401
    except ImportError:
        missing.append("jupyterhub (pip install 'jupyterhub>=5,<7')")
    if not Path(CHP).is_file():
        missing.append(f"configurable-http-proxy (npm; none at {CHP}, set AGENSTRA_TEST_CHP)")
    return missing


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Hub:
    url: str  # the public URL, through the proxy: http://127.0.0.1:PORT
    manager_url: str  # the shared manager's own URL (the Hub service's `url`)
    root: Path
    process: subprocess.Popen

    @property
    def api(self) -> str:
        return f"{self.url}/hub/api"


@dataclass
class User:
    name: str
    token: str  # a Hub API token of this user (inherits the user's scopes)
    hub: Hub

    @property
    def server(self) -> str:
        return f"{self.hub.url}/user/{self.name}/"

    def rest(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.server}agenstra/api/{path}", timeout=30,
                             headers={"Authorization": f"token {self.token}"}, **kwargs)

    def manager(self, method: str, path: str, token: str | None = None,
                **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.hub.manager_url}{path}", timeout=30,
                             headers={"Authorization": f"Bearer {token or self.token}"},
                             **kwargs)


HUB_CONFIG = """
c = get_config()  # noqa
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.db_url = "sqlite:///{root}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{root}/cookie_secret"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allowed_users = {users!r}
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{root}/home/{{username}}"
c.Spawner.cmd = [{python!r}, "-m", "jupyterhub.singleuser"]
c.Spawner.args = ["--allow-root"]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.environment = {{
    "AGENSTRA_MANAGER_URL": "{manager_url}",
    "AGENSTRA_MANAGER_AUTH": "hub",
    "AGENSTRA_DEFAULT_PROVIDER": "echo",  # each user's own `assistant`
    "JUPYTERLAB_WORKSPACES_DIR": "{root}/lab-workspaces",
}}
# The shared manager, started and stopped by the Hub.
c.JupyterHub.services = [{{
    "name": "{service}",
    "url": "{manager_url}",
    "command": [{python!r}, "-m", "agenstra_jupyter.manager.app", "--host=127.0.0.1",
                "--port={manager_port}", "--data-dir={root}/manager"],
    "environment": {{"AGENSTRA_BCRYPT_ROUNDS": "4", "AGENSTRA_HUB_CACHE_SECONDS": "5"}},
}}]
# Users may use the manager, and so may their servers' tokens (docs/deploy/jupyterhub.md).
c.JupyterHub.custom_scopes = {{
    "custom:agenstra:admin": {{"description": "See and manage every user's agents"}},
}}
c.JupyterHub.load_roles = [
    {{"name": "user", "scopes": ["self", "access:services!service={service}"]}},
    {{"name": "agenstra-admin", "scopes": ["custom:agenstra:admin"], "users": ["{admin}"]}},
]
c.Spawner.server_token_scopes = [
    "users:activity!user", "access:servers!server", "access:services!service={service}",
    "tokens!user",  # to mint the manager's own, service-only token
]
"""


def _start_hub(root: Path) -> Hub:
    port, manager_port = _free_port(), _free_port()
    manager_url = f"http://127.0.0.1:{manager_port}"
    config = root / "jupyterhub_config.py"
    config.write_text(HUB_CONFIG.format(
        port=port, hub_port=_free_port(), proxy_api_port=_free_port(), chp=CHP, root=root,
        password=PASSWORD, users={*USERS, ADMIN}, admin=ADMIN, python=sys.executable,
        manager_url=manager_url, manager_port=manager_port, service=SERVICE))
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("JUPYTER", "AGENSTRA_"))}  # the Hub's own, nothing of ours
    log = open(root / "hub.log", "a")  # kept open for the process
    process = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config)],
                               cwd=root, env=env, stdout=log, stderr=log, start_new_session=True)
    hub = Hub(f"http://127.0.0.1:{port}", manager_url, root, process)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            up = httpx.get(f"{hub.api}/", timeout=5).status_code == 200
            if up and httpx.get(f"{manager_url}/api/health", timeout=5).status_code == 401:
                return hub
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    _stop(process)
    raise RuntimeError(f"JupyterHub did not start:\n{(root / 'hub.log').read_text()[-5000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, 15)  # the Hub stops its servers and the service itself
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[Hub]:
    missing = _missing()
    if missing:
        reason = "JupyterHub tests need " + " and ".join(missing)
        if os.environ.get("AGENSTRA_REQUIRE_JUPYTERHUB") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    hub = _start_hub(tmp_path_factory.mktemp("hub"))
    try:
        yield hub
    finally:
        _stop(hub.process)
        for line in (hub.root / "hub.log").read_text(errors="replace").splitlines()[-40:]:
            print(line)  # shown with a failure


def _log_in(hub: Hub, name: str) -> httpx.Client:
    """The Hub's login form, as a browser fills it: a client holding the Hub's cookies."""
    session = httpx.Client(base_url=hub.url, timeout=60, follow_redirects=False)
    form = session.get("/hub/login")
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text)
    data = {"username": name, "password": PASSWORD, **({"_xsrf": xsrf[1]} if xsrf else {})}
    answer = session.post("/hub/login", data=data)
    assert answer.status_code == 302, (answer.status_code, answer.text[:500])
    return session


def _api_token(hub: Hub, name: str) -> str:
    """Log in with the Hub's form, then ask for an API token with the login cookie."""
    session = _log_in(hub, name)
    headers = {"X-XSRFToken": session.cookies.get("_xsrf", "")}
    made = session.post(f"/hub/api/users/{name}/tokens", json={"note": "agenstra test"},
                        headers=headers)
    assert made.status_code == 201, made.text
    return made.json()["token"]


def _user(hub: Hub, name: str) -> User:
    """Log in, get an API token and start the user's server."""
    user = User(name, _api_token(hub, name), hub)
    auth = {"Authorization": f"token {user.token}"}
    started = httpx.post(f"{hub.api}/users/{name}/server", headers=auth, timeout=60)
    assert started.status_code in (201, 202, 400), started.text  # 400: running already
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        model = httpx.get(f"{hub.api}/users/{name}", headers=auth, timeout=30).json()
        if model.get("servers", {}).get("", {}).get("ready"):
            answer = user.rest("GET", "clients")
            if answer.status_code == 200:
                return user
        time.sleep(0.5)
    raise AssertionError(f"{name}'s server never became ready")


def _manager_key_of(hub: Hub, name: str) -> str:
    """The key `name`'s controller keeps (sealed) for the shared manager, client `local`."""
    import sqlite3

    from cryptography.fernet import Fernet

    data_dir = next((hub.root / "home" / name).rglob("controller.sqlite")).parent
    with sqlite3.connect(data_dir / "controller.sqlite") as registry:
        sealed = registry.execute("select api_key from clients where id = 'local'").fetchone()
    return Fernet((data_dir / "controller.key").read_bytes().strip()).decrypt(
        sealed[0].encode()).decode()


def _server_token(name: str) -> str:
    """The Hub token the Hub gave `name`'s single-user server (JUPYTERHUB_API_TOKEN)."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            text = environ.read_bytes().decode(errors="replace")
        except OSError:
            continue
        variables = dict(item.split("=", 1) for item in text.split("\0") if "=" in item)
        if variables.get("JUPYTERHUB_USER") == name and "JUPYTERHUB_API_TOKEN" in variables \
                and "JUPYTERHUB_SERVICE_NAME" not in variables:
            return variables["JUPYTERHUB_API_TOKEN"]
    raise AssertionError(f"no single-user server of {name} found")


def _run(coroutine: Any) -> Any:
    """Run async socket code beside Playwright's sync API (which owns this thread's loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _python_client_chat(user: User, agent_name: str) -> str:
    from agenstra_jupyter.client import AgenstraClient, ServerInfo

    client = AgenstraClient(ServerInfo(user.hub.url, f"/user/{user.name}/", user.token))
    try:
        client.create_agent(agent_name, provider="echo")
        return client.agent(agent_name).chat(f"hello from {user.name}", timeout=60)
    finally:
        client.close()


def _sidebar_chat(browser, user: User, agent_name: str) -> list[str]:
    """Log in to the Hub in Chromium, create an agent in the sidebar and chat; the names of
    the agents the sidebar offers."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS * 2)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{user.hub.url}/hub/login?next=/user/{user.name}/lab")
        page.fill("input[name=username]", user.name)
        page.fill("input[name=password]", PASSWORD)
        page.click("input[type=submit], button[type=submit]")
        page.wait_for_selector(".jp-LabShell")
        assert page.url.startswith(user.server), page.url
        open_panel(page)
        create_agent(page, agent_name)
        send(page, f"sidebar hello from {user.name}")
        wait_answer(page, f"sidebar hello from {user.name}")
        page.screenshot(path=str(ARTIFACTS / f"jupyterhub-{user.name}-sidebar.png"))
        offered = page.eval_on_selector_all(f"{PANEL} select[aria-label=Agent] option",
                                            "nodes => nodes.map(n => n.textContent)")
        _notebook_chat(page, user, agent_name)
        return offered
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"jupyterhub-{user.name}-notebook.png"))
        context.close()
        assert not errors, f"uncaught errors in the page: {errors}"


def _notebook_chat(page, user: User, agent_name: str) -> None:
    """A notebook cell in the user's server chats through its kernel: the Python client
    finds its server and the server's own Hub token by itself."""
    cell = (f"from agenstra_jupyter.client import AgenstraClient\n"
            f"print(AgenstraClient().agent({agent_name!r}).chat('kernel hello'))")
    notebook = {"cells": [{"cell_type": "code", "execution_count": None, "id": "chat",
                           "metadata": {}, "outputs": [], "source": cell}],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                            "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    put = httpx.put(f"{user.server}api/contents/chat.ipynb", timeout=30,
                    headers={"Authorization": f"token {user.token}"},
                    json={"type": "notebook", "format": "json", "content": notebook})
    assert put.status_code in (200, 201), put.text
    page.goto(f"{user.server}lab/tree/chat.ipynb")
    page.locator(".jp-StatusBar-TextItem", has_text="| Idle").wait_for(timeout=90_000)
    page.locator(".jp-Notebook .jp-Cell").first.click()
    page.keyboard.press("Shift+Enter")
    page.locator(".jp-OutputArea", has_text="Echo: kernel hello").wait_for(timeout=60_000)


async def _controller_socket_attempts(alice: User, bob_agent: dict[str, Any]) -> list[Any]:
    """alice's own server's socket: bob's agent by id, by name, and a made-up id."""
    frontend = await FrontendClient().connect(
        alice.hub.url, None, base_url=f"/user/{alice.name}/",
        headers={"Authorization": f"token {alice.token}"})
    try:
        await frontend.set_client()
        by_id = await frontend.forward(ManagerEvent.LOGIN, bob_agent["id"])
        made_up = await frontend.forward(ManagerEvent.LOGIN, str(uuid.uuid4()))
        by_name = await frontend.forward(ManagerEvent.LOGIN, None,
                                         {"agentName": bob_agent["name"]})
        chat = await frontend.forward(ManagerEvent.CHAT, bob_agent["id"], {"message": "hi"})
        assert frontend.forwarded(bob_agent["id"]) == []  # nothing of bob's came through
        return [by_id, made_up, by_name, chat]
    finally:
        await frontend.close()


async def _manager_socket_attempts(hub: Hub, token: str, agent: dict[str, Any]) -> list[Any]:
    """Straight to the shared manager with `token`: log into `agent` by id, then by name,
    with its real password."""
    client = await AgentsClient().connect(SimpleNamespace(url=hub.manager_url), api_key=token)
    try:
        results = []
        for named in ({"agentId": agent["id"]}, {"agentName": agent["name"]}):
            before = len(client.log.events)
            await client.emit(ManagerEvent.LOGIN, {**named, "password": agent["password"]})
            await client.log.wait_for(lambda log, n=before: len(log.events) > n)
            results.append(client.log.events[before])
        return results
    finally:
        await client.close()


def test_two_users_share_one_manager_and_never_see_each_others_agents(hub, browser):
    alice, bob = (_user(hub, name) for name in USERS)

    # Each user chats through their own server: the Python client, then the sidebar and a
    # notebook. Names are each user's own: both have an `assistant`, a `client`, a `sidebar`.
    names = ["assistant", "client", "sidebar"]
    for user in (alice, bob):
        answer = _python_client_chat(user, "client")
        assert f"hello from {user.name}" in answer
    for user in (alice, bob):
        offered = _sidebar_chat(browser, user, "sidebar")
        assert sorted(offered) == names

    # The shared manager holds all four, each owned by its user.
    agents = {user.name: user.rest("GET", "clients/local/agents").json() for user in (alice, bob)}
    for name, mine in agents.items():
        assert sorted(a["name"] for a in mine) == names
        assert {a["owner"] for a in mine} == {name}
    bob_agent = next(a for a in agents["bob"] if a["name"] == "client")
    path = f"clients/local/agents/{bob_agent['id']}"

    # alice through her own server's REST: bob's agent is answered as one never made (a
    # delete is idempotent: 204 for both).
    made_up = f"clients/local/agents/{uuid.uuid4()}"
    for method, route in (("GET", ""), ("GET", "/messages"), ("POST", "/stop"),
                          ("DELETE", "")):
        answer, nothing = (alice.rest(method, f"{where}{route}") for where in (path, made_up))
        assert answer.status_code == nothing.status_code == (204 if method == "DELETE" else 404)
        assert answer.content == nothing.content, (method, route, answer.text)

    # ... and through its socket: by id, by name, or chatting, as for an agent never made.
    by_id, made_up, by_name, chat = _run(_controller_socket_attempts(alice, bob_agent))
    assert by_id == made_up and by_id["ok"] is False, by_id
    assert by_name["ok"] is False and chat == made_up, (by_name, chat)

    # Straight to the manager with alice's token, and bob's agent's real password (bob made
    # it there himself): REST and socket say what they say of an agent that does not exist.
    made = bob.manager("POST", "/api/agents", json={"name": "bob-direct", "provider": "echo"})
    assert made.status_code == 201, made.text
    direct = made.json()
    assert direct["owner"] == "bob"
    same_name = alice.manager("POST", "/api/agents", json={"name": "bob-direct",
                                                             "provider": "echo"})
    assert same_name.status_code == 201 and same_name.json()["owner"] == "alice"  # no 409
    listed = alice.manager("GET", "/api/agents").json()
    assert {a["owner"] for a in listed} == {"alice"}
    missing = alice.manager("GET", f"/api/agents/{uuid.uuid4()}")
    assert missing.status_code == 404
    for agent in (bob_agent, direct):
        for method, route in (("GET", ""), ("GET", "/messages"), ("POST", "/start"),
                              ("DELETE", "")):
            answer = alice.manager(method, f"/api/agents/{agent['id']}{route}")
            assert (answer.status_code, answer.json()) == (404, missing.json()), route
    refused = _run(_manager_socket_attempts(hub, alice.token, direct))
    assert [event for event, _ in refused] == [ManagerEvent.LOGIN_ERROR] * 2, refused
    assert refused[0][1] == refused[1][1] == {"message": "Invalid credentials",
                                              "code": ErrorCode.LOGIN_FAILED}
    welcomed = _run(_manager_socket_attempts(hub, bob.token, direct))  # the password is right
    assert [event for event, _ in welcomed] == [ManagerEvent.LOGIN_SUCCESS] * 2, welcomed

    # Nothing of bob's was touched.
    assert len(bob.rest("GET", "clients/local/agents").json()) == 4  # bob-direct too
    history = bob.rest("GET", f"{path}/messages").json()
    assert any("hello from bob" in (m.get("text") or "") for m in history)

    # The server's Hub token reaches no log, no frontend and no agent (a shell agent's
    # environment, the sandbox's, has nothing of it).
    from agenstra_jupyter.client import AgenstraClient, ServerInfo

    secret = _server_token("alice")
    client = AgenstraClient(ServerInfo(hub.url, "/user/alice/", alice.token))
    try:
        client.create_agent("alice-shell", provider="shell")
        seen = client.agent("alice-shell").chat("env; cat /proc/*/environ 2>/dev/null", 60)
    finally:
        client.close()
    assert "HOME=" in seen and "JUPYTERHUB" not in seen and secret not in seen
    assert secret not in alice.rest("GET", "clients").text
    assert secret not in (hub.root / "hub.log").read_text(errors="replace")
    # The manager never holds the server's token, which could use alice's server: her
    # controller signs in with a token of its own that may use the manager's service only.
    key = _manager_key_of(hub, "alice")
    assert key != secret
    model = httpx.get(f"{hub.api}/user", headers={"Authorization": f"token {key}"},
                      timeout=30).json()
    assert model["name"] == "alice"
    # The Hub adds the right to read one's own name and groups; nothing else comes with it.
    beyond_reading = {s for s in model["scopes"] if not s.startswith("read:users:")}
    assert beyond_reading == {f"access:services!service={SERVICE}"}, model["scopes"]

    # An admin (by the manager's admin scope) sees and reads everyone's agents.
    admin = User(ADMIN, _api_token(hub, ADMIN), hub)
    everyone = {a["owner"] for a in admin.manager("GET", "/api/agents").json()}  # all 6
    assert everyone == {"alice", "bob"}
    assert admin.manager("GET", f"/api/agents/{bob_agent['id']}").json()["owner"] == "bob"

    # A token without access to the service, or none of the Hub's, opens nothing.
    narrow = httpx.post(f"{hub.api}/users/alice/tokens", json={"scopes": ["read:users!user"]},
                        headers={"Authorization": f"token {alice.token}"}, timeout=30)
    assert narrow.status_code == 201, narrow.text
    for token in (narrow.json()["token"], "not-a-hub-token"):
        answer = alice.manager("GET", "/api/agents", token=token)
        assert answer.status_code == 401 and "alice" not in answer.text

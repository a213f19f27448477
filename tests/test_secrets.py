"""Secrets at rest and in sight.

Agent configs are sealed in the manager's database (and still reach the agent), data
directories and their files are owner-only, REST shows the names of an agent's env and
files but no secret value, and `agenstra-jupyter run` keeps its Jupyter token off the
command line.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, insert

from agenstra_jupyter.controller.handlers import agent_view
from agenstra_jupyter.db import _migrate
from agenstra_jupyter.manager.models import agents
from agenstra_jupyter.manager.store import Store, migrations
from agenstra_jupyter.redact import REDACTED, redact
from agenstra_jupyter.secrets import SecretBox, SecretKeyError

from .helpers import (
    MASKED_CONFIG,
    SECRETS,
    AgentsClient,
    database_bytes,
    leaked,
    secret_config,
)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- what REST shows ---------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "shown"), [
    ({"env": {"A": "1", "B": "2"}}, {"env": {"A": REDACTED, "B": REDACTED}}),
    ({"files": {"a/b.json": "{}"}}, {"files": {"a/b.json": REDACTED}}),
    ({"env": "not-a-dict"}, {"env": REDACTED}),
    ({"clientSecret": {"x": 1}, "password": "p"}, {"clientSecret": REDACTED, "password": REDACTED}),
    ({"args": ["--token", "t", "-v", "x"]}, {"args": ["--token", REDACTED, "-v", "x"]}),
    ({"args": ["--password=p", "--model=m"]}, {"args": [f"--password={REDACTED}", "--model=m"]}),
    ({"args": ["sk-abcdefghijkl", "sk-x"]}, {"args": [REDACTED, "sk-x"]}),
    ({"command": ["curl", "-H", "Authorization: Basic dXNlcjpwdw=="]},
     {"command": ["curl", "-H", f"Authorization: Basic {REDACTED}"]}),
    ({"url": "git+ssh://me:pw@h/r.git"}, {"url": f"git+ssh://{REDACTED}@h/r.git"}),
    ({"url": "http://h/p?id=1&api_key=k#f"}, {"url": f"http://h/p?id=1&api_key={REDACTED}#f"}),
    ({"system": "Be brief.", "timeout": 5, "passEnv": ["OPENAI_API_KEY"]},
     {"system": "Be brief.", "timeout": 5, "passEnv": ["OPENAI_API_KEY"]}),
])
def test_redaction_rules(config, shown):
    assert redact(config) == shown
    assert redact(shown) == shown  # masking twice (manager, then controller) changes nothing


def test_every_config_field_is_masked():
    assert redact(secret_config()) == MASKED_CONFIG
    assert leaked(json.dumps(redact(secret_config()))) == []


def test_the_controller_masks_a_manager_that_did_not():
    raw = {"id": "a", "name": "n", "password": "pw-1234", "config": secret_config()}
    view = agent_view(raw, credentials=True)
    assert view["config"] == MASKED_CONFIG and "password" not in view and view["credentials"]


# -- sealed at rest, still working ---------------------------------------------------------------


async def test_configs_are_sealed_in_the_database_and_reach_the_agent(manager):
    agent = await manager.create_agent(name="sealed", provider="cli", config=secret_config())
    assert agent["config"] == MASKED_CONFIG
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    answer = await client.chat("go", correlationId="c1")
    await client.close()
    assert answer["response"]["result"] == f"{digest(SECRETS['env'])} {digest(SECRETS['file'])}"

    async with manager.http() as http:
        views = [(await http.get("/api/agents")).text,
                 (await http.get(f"/api/agents/{agent['id']}")).text,
                 (await http.post(f"/api/agents/{agent['id']}/restart")).text]
    assert json.loads(views[1])["config"] == MASKED_CONFIG
    assert leaked("".join(views)) == []

    db = manager.data_dir / "manager.sqlite"
    assert leaked(database_bytes(db)) == []  # the manager is running: -wal holds the writes
    with sqlite3.connect(db) as conn:
        (stored,) = conn.execute("select config from agents").fetchone()
    assert set(json.loads(stored)) == {"sealed"}
    manager.stop()
    assert leaked(database_bytes(db)) == []
    assert leaked(manager.log()) == []


async def test_a_wrong_key_stops_the_manager_at_start_with_the_reason(start_manager):
    first = start_manager("m")
    await first.create_agent(name="a", provider="echo", config={"env": {"X": "1"}})
    first.stop()
    key_file = first.data_dir / "manager.key"
    key_file.write_bytes(Fernet.generate_key())
    with pytest.raises(RuntimeError) as failed:
        start_manager("m")
    message = str(failed.value)
    assert "cannot be decrypted with this key" in message and str(key_file) in message
    assert "Traceback" not in message

    key_file.write_text("not a key")
    with pytest.raises(RuntimeError) as failed:
        start_manager("m")
    assert f"{key_file} does not hold a Fernet key" in str(failed.value)


async def test_the_key_file_is_configurable(start_manager, tmp_path):
    key_file = tmp_path / "keys" / "agents.key"
    manager = start_manager("m", env={"AGENSTRA_MANAGER_KEY_FILE": str(key_file)})
    await manager.create_agent(name="a", provider="echo", config={"env": {"X": "1"}})
    assert mode(key_file) == 0o600 and mode(key_file.parent) == 0o700
    assert not (manager.data_dir / "manager.key").exists()
    box = SecretBox(key_file.read_bytes().strip())
    with sqlite3.connect(manager.data_dir / "manager.sqlite") as conn:
        (stored,) = conn.execute("select config from agents").fetchone()
    assert json.loads(box.decrypt(json.loads(stored)["sealed"]))["env"] == {"X": "1"}


# A large config lies in overflow pages, which sealing frees: they must not keep it.
@pytest.mark.parametrize("padding", [0, 12_000])
async def test_a_plaintext_database_of_an_older_version_is_sealed_on_open(tmp_path, padding):
    path = tmp_path / "old.sqlite"
    config = {"env": {"FOO": SECRETS["env"]}, "apiKey": SECRETS["apiKey"],
              "files": {"f": "x" * padding + SECRETS["file"] + "y" * padding}}
    engine = create_engine(f"sqlite:///{path}")
    box = SecretBox(Fernet.generate_key())
    with engine.begin() as conn:
        _migrate(conn, migrations(box)[:2])  # the last schema with plaintext configs
        conn.execute(insert(agents).values(
            id="a", name="old", provider="echo", runtime="process", config=config,
            description="", password_hash="h", state="stopped", provider_state={},
            created_at="t", updated_at="t"))
    engine.dispose()
    assert leaked(database_bytes(path)) == ["env", "file", "apiKey"]  # the test can fail

    store = Store(f"sqlite:///{path}", box)
    await store.open()
    try:
        assert (await store.get_agent("a")).config == config
        assert leaked(database_bytes(path)) == []
    finally:
        await store.close()
    assert leaked(database_bytes(path)) == []

    other = Store(f"sqlite:///{path}", SecretBox(Fernet.generate_key()))
    with pytest.raises(SecretKeyError):
        await other.open()


async def test_a_changed_config_is_sealed_too(tmp_path):
    from agenstra_jupyter.manager.models import AgentRecord

    path = tmp_path / "s.sqlite"
    store = Store(f"sqlite:///{path}", SecretBox(Fernet.generate_key()))
    await store.open()
    try:
        await store.create_agent(AgentRecord(id="a", name="a", provider="echo", runtime="process",
                                             password_hash="h", created_at="t", updated_at="t"))
        await store.update_agent("a", config={"env": {"FOO": SECRETS["env"]}})
        assert (await store.get_agent("a")).config == {"env": {"FOO": SECRETS["env"]}}
    finally:
        await store.close()
    assert leaked(database_bytes(path)) == []


# -- owner-only files and folders ---------------------------------------------------------------


def private_tree(data_dir: Path, *files: str) -> dict[str, int]:
    """Modes of `data_dir` and `files` in it that are not owner-only."""
    loose = {str(data_dir): mode(data_dir)} if mode(data_dir) != 0o700 else {}
    for name in files:
        path = data_dir / name
        if path.exists() and mode(path) != 0o600:
            loose[name] = mode(path)
    return loose


MANAGER_FILES = ("manager.key", "manager.sqlite", "manager.sqlite-wal", "manager.sqlite-shm")


async def test_manager_files_are_owner_only_whatever_the_umask(start_manager):
    previous = os.umask(0)  # the manager inherits it
    try:
        manager = start_manager("m")
    finally:
        os.umask(previous)
    await manager.create_agent(name="a", provider="echo")
    assert (manager.data_dir / "manager.sqlite-wal").exists()
    assert private_tree(manager.data_dir, *MANAGER_FILES) == {}


async def test_loose_manager_files_are_tightened_on_start(start_manager):
    manager = start_manager("m")
    await manager.create_agent(name="a", provider="echo")
    manager.kill()  # leaves -wal and -shm behind
    manager.data_dir.chmod(0o755)
    for name in MANAGER_FILES:
        if (manager.data_dir / name).exists():
            (manager.data_dir / name).chmod(0o644)
    assert private_tree(manager.data_dir, *MANAGER_FILES) != {}
    start_manager("m")
    assert private_tree(manager.data_dir, *MANAGER_FILES) == {}


@pytest.fixture
def controller_config(tmp_path) -> dict:
    """A controller data dir an older version left readable, to be tightened on start."""
    data_dir = tmp_path / "agenstra"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    key = data_dir / "controller.key"
    key.write_bytes(Fernet.generate_key())
    key.chmod(0o644)
    return {}


async def test_controller_files_are_owner_only(jupyter, tmp_path):
    await jupyter.default_agent()
    data_dir = tmp_path / "agenstra"
    assert private_tree(data_dir, "controller.key", "controller.sqlite",
                        "controller.sqlite-wal", "controller.sqlite-shm") == {}
    assert private_tree(data_dir / "local-manager", *MANAGER_FILES) == {}


# -- what the controller's REST shows -----------------------------------------------------------


async def test_controller_rest_never_shows_a_secret(jupyter):
    registry = jupyter.controller.registry
    async with jupyter.http() as http:
        created = await http.post("/clients/local/agents", json={
            "name": "sealed", "provider": "cli", "config": secret_config()})
        assert created.status_code == 201, created.text
        agent_id = created.json()["id"]
        responses = [
            created,
            await http.get("/clients/local/agents"),
            await http.get(f"/clients/local/agents/{agent_id}"),
            await http.post(f"/clients/local/agents/{agent_id}/restart"),
            await http.get("/clients"),
            await http.get("/clients/local"),
        ]
    for response in responses[:4]:
        assert response.status_code in (200, 201), response.text
        agents_shown = response.json() if isinstance(response.json(), list) else [response.json()]
        shown = next(a for a in agents_shown if a["id"] == agent_id)
        assert shown["config"] == MASKED_CONFIG and "password" not in shown
    text = "".join(response.text for response in responses)
    assert leaked(text) == []
    password = await registry.password("local", agent_id)
    manager_key = (await registry.get_client("local")).api_key
    assert password and manager_key
    assert password not in text and manager_key not in text


# -- `agenstra-jupyter run`: the token is not on the command line ----------------------------------


def test_the_run_server_token_is_not_on_the_command_line(tmp_path):
    import httpx

    from agenstra_jupyter.sessions import start_server

    server = start_server(tmp_path / "data", env={"AGENSTRA_DEFAULT_PROVIDER": ""})
    try:
        assert server.process is not None
        proc = Path(f"/proc/{server.process.pid}")
        assert server.token.encode() not in (proc / "cmdline").read_bytes()
        assert server.token.encode() not in (proc / "environ").read_bytes()
        assert not (server.root / "token").exists()  # read at start, then deleted
        url = f"{server.url}agenstra/api/clients"
        assert httpx.get(url, headers={"Authorization": f"token {server.token}"}).status_code == 200
        assert httpx.get(url, headers={"Authorization": "token wrong"}).status_code == 403
    finally:
        server.stop()

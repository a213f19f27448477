"""The manager's store on a real SQLite file: schema versions and migrations."""

from __future__ import annotations

import json
import sqlite3

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from agenstra_jupyter.db import _migrate
from agenstra_jupyter.manager.models import AgentRecord
from agenstra_jupyter.manager.store import NameTaken, Store, migrations
from agenstra_jupyter.secrets import SecretBox


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(Fernet.generate_key())


def indexes(path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("select name from sqlite_master where type='index'")}


async def test_a_version_1_database_is_migrated_and_keeps_its_data(tmp_path, box):
    path = tmp_path / "old.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        _migrate(conn, migrations(box)[:1])  # what the first release created
        conn.execute(text(
            "insert into agents (id, name, provider, runtime, config, description, "
            "password_hash, state, provider_state, created_at, updated_at) values "
            "('a', 'old', 'echo', 'process', '{}', '', 'h', 'stopped', '{}', 't', 't')"))
        conn.execute(text(
            "insert into messages (id, agent_id, seq, sender, text, correlation_id, created_at) "
            "values ('m1', 'a', 1, 'user', 'hello', 'c1', 't')"))
    engine.dispose()
    with sqlite3.connect(path) as db:
        assert db.execute("select version from schema_version").fetchone() == (1,)
    assert "ix_messages_agent_correlation" not in indexes(path)

    store = Store(f"sqlite:///{path}", box)
    await store.open()
    try:
        assert (await store.get_agent("a")).name == "old"
        assert (await store.user_message("a", "c1"))["text"] == "hello"
        appended = await store.append_message("a", "agent", "c1", response={"type": "text",
                                                                          "result": "hi"})
        assert appended["seq"] == 2
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        version = db.execute("select version from schema_version").fetchone()
        assert version == (len(migrations(box)),)
        assert db.execute("pragma journal_mode").fetchone() == ("wal",)
    assert "ix_messages_agent_correlation" in indexes(path)


async def test_a_version_3_database_gets_projects_and_approvals(tmp_path, box):
    from agenstra_jupyter.manager.store import seal_config

    path = tmp_path / "v3.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        _migrate(conn, migrations(box)[:3])  # what the release before projects created
        conn.execute(text("alter table agents drop column project"))  # v1 made it without
        conn.execute(text(
            "insert into agents (id, name, provider, runtime, config, description, "
            "password_hash, state, provider_state, created_at, updated_at) values "
            "('a', 'old', 'acp', 'process', :config, '', 'h', 'running', '{}', 't', 't')"),
            {"config": json.dumps(seal_config(box, {"command": ["x"], "env": {"K": "v"}}))})
        conn.execute(text(
            "insert into messages (id, agent_id, seq, sender, text, correlation_id, created_at) "
            "values ('m1', 'a', 1, 'user', 'hello', 'c1', 't')"))
    engine.dispose()
    with sqlite3.connect(path) as db:
        assert db.execute("select version from schema_version").fetchone() == (3,)

    store = Store(f"sqlite:///{path}", box)
    await store.open()
    try:
        agent = await store.get_agent("a")
        assert (agent.name, agent.state, agent.project) == ("old", "running", None)
        assert agent.config == {"command": ["x"], "env": {"K": "v"}}
        assert (await store.user_message("a", "c1"))["text"] == "hello"
        await store.create_permission_request("r1", "a", "c1", {"kind": "permissionRequest"},
                                              "2030-01-01T00:00:00.000Z")
        assert [r["id"] for r in await store.permission_requests("a", pending=True)] == ["r1"]
        assert await store.settle_permission_request("r1", "allowed", "user", "yes", "ann")
        assert not await store.settle_permission_request("r1", "rejected", "user")  # settled
        await store.set_permission_rule("a", "edit", "allow")
        await store.set_permission_rule("a", "edit", "reject")  # the newest answer stays
        assert await store.permission_rule("a", "edit") == "reject"
        assert await store.delete_agent("a")
        assert await store.permission_requests() == []
        assert await store.permission_rule("a", "edit") is None
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        version = db.execute("select version from schema_version").fetchone()
        assert version == (len(migrations(box)),)
        columns = {row[1] for row in db.execute("pragma table_info(agents)")}
        assert "project" in columns


async def test_a_newer_schema_is_refused(tmp_path, box):
    path = tmp_path / "new.sqlite"
    store = Store(f"sqlite:///{path}", box)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("update schema_version set version = 99")
    try:
        await Store(f"sqlite:///{path}", box).open()
    except RuntimeError as exc:
        assert "newer" in str(exc)
    else:
        raise AssertionError("a newer schema must not be opened")


async def test_seq_is_dense_under_concurrent_writers(tmp_path, box):
    import asyncio

    store = Store(f"sqlite:///{tmp_path / 'c.sqlite'}", box)
    await store.open()
    now = "2026-01-01T00:00:00.000Z"
    await store.create_agent(AgentRecord(id="a", name="a", provider="echo", runtime="process",
                                         password_hash="h", created_at=now, updated_at=now))
    try:
        written = await asyncio.gather(
            *(store.append_message("a", "user", f"c{n}", text=str(n)) for n in range(50))
        )
        assert sorted(m["seq"] for m in written) == list(range(1, 51))
    finally:
        await store.close()


def test_the_decoy_hash_costs_what_a_real_one_does():
    import logging

    from agenstra_jupyter.manager.service import AgentService

    service = AgentService(None, {}, {}, "process", 6, logging.getLogger("t"))
    assert service._decoy_hash.startswith(b"$2b$06$")  # a wrong name costs a real check


async def test_a_version_5_database_gets_owners_and_names_unique_per_owner(tmp_path, box):
    from agenstra_jupyter.manager.models import messages as messages_table
    from agenstra_jupyter.manager.models import permission_requests, permission_rules
    from agenstra_jupyter.manager.store import seal_config

    path = tmp_path / "v5.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # the release before shared (Hub) managers, as it was
        _migrate(conn, migrations(box)[:5])
        table = conn.execute(text("select sql from sqlite_master where name = 'agents'"))
        old_sql = table.scalar().replace("PRIMARY KEY (id)", "PRIMARY KEY (id), UNIQUE (name)")
        for name in ("permission_rules", "permission_requests", "messages", "agents"):
            conn.execute(text(f"drop table {name}"))
        conn.execute(text(old_sql))
        conn.execute(text("alter table agents drop column owner"))
        for child in (messages_table, permission_requests, permission_rules):
            child.create(conn)
        conn.execute(text(
            "insert into agents (id, name, provider, runtime, config, description, "
            "password_hash, state, provider_state, created_at, updated_at) values "
            "('a', 'old', 'echo', 'process', :config, '', 'h', 'stopped', '{}', 't', 't')"),
            {"config": json.dumps(seal_config(box, {}))})
        conn.execute(text(
            "insert into messages (id, agent_id, seq, sender, text, correlation_id, created_at) "
            "values ('m1', 'a', 1, 'user', 'hello', 'c1', 't')"))
        conn.execute(text("insert into permission_rules values ('a', 'edit', 'reject', 't')"))
    engine.dispose()
    with sqlite3.connect(path) as db:
        assert "UNIQUE (name)" in db.execute(
            "select sql from sqlite_master where name = 'agents'").fetchone()[0]

    store = Store(f"sqlite:///{path}", box)
    await store.open()
    try:
        old = await store.get_agent("a")
        assert (old.name, old.owner) == ("old", None)  # the key holder's, as before
        assert (await store.user_message("a", "c1"))["text"] == "hello"  # history kept
        assert await store.permission_rule("a", "edit") == "reject"
        for agent_id, owner in (("b", "alice"), ("c", "bob")):  # the same name, per owner
            await store.create_agent(AgentRecord(
                id=agent_id, name="old", provider="echo", runtime="process",
                password_hash="h", created_at="t", updated_at="t", owner=owner))
        with pytest.raises(NameTaken):
            await store.create_agent(AgentRecord(
                id="d", name="old", provider="echo", runtime="process", password_hash="h",
                created_at="t", updated_at="t", owner="alice"))
        with pytest.raises(NameTaken):  # unowned agents' names stay unique among them
            await store.create_agent(AgentRecord(
                id="e", name="old", provider="echo", runtime="process", password_hash="h",
                created_at="t", updated_at="t"))
        assert (await store.get_agent_by_name("old")).id == "a"
        assert (await store.get_agent_by_name("old", "alice")).id == "b"
        assert await store.get_agent_by_name("old", "carol") is None
        assert (await store.get_agent("b")).to_wire()["owner"] == "alice"
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("select version from schema_version").fetchone() == (6,)
        assert db.execute("pragma foreign_key_check").fetchall() == []
        parents = {row[2] for row in db.execute("pragma foreign_key_list(messages)")}
        assert parents == {"agents"}
        indexes = {row[0] for row in db.execute("select name from sqlite_master")}
        assert {"ix_messages_agent_seq", "ix_messages_agent_correlation",
                "ix_agents_owner_name"} <= indexes
        assert not any(name.startswith("v6_") for name in indexes)

"""Async persistence of agents and their chat history (SQLAlchemy 2 async, SQLite WAL)."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, SAWarning

from .. import protocol
from ..db import Database, Migration
from ..secrets import SecretBox, SecretKeyError
from .message_log import MessageLog, wire_message
from .models import (
    AgentRecord,
    agents,
    messages,
    permission_requests,
    permission_rules,
)


class NameTaken(Exception):
    """An agent with that name exists already."""


def _v1_initial(conn: Connection) -> None:
    agents.create(conn)
    messages.create(conn)


def _v2_correlation_index(conn: Connection) -> None:
    # Chats are idempotent by correlation id: looking one up must not scan the history.
    conn.execute(
        text(
            "CREATE INDEX IF NOT EXISTS ix_messages_agent_correlation "
            "ON messages (agent_id, correlation_id)"
        )
    )


def _v3_seal_configs(box: SecretBox, conn: Connection) -> None:
    # Configs were plaintext JSON up to v2 (env values, files, API keys readable in the file).
    for row in conn.execute(select(agents.c.id, agents.c.config)).all():
        sealed = seal_config(box, row.config)
        conn.execute(update(agents).where(agents.c.id == row.id).values(config=sealed))


def _v4_projects_and_approvals(conn: Connection) -> None:
    # A new database has the column already (v1 creates today's `agents` table).
    if "project" not in {column["name"] for column in inspect(conn).get_columns("agents")}:
        conn.execute(text("ALTER TABLE agents ADD COLUMN project TEXT"))
    permission_requests.create(conn)
    permission_rules.create(conn)


def _v5_notebook_tokens(conn: Connection) -> None:
    # The notebook tools' token (sealed), a column of its own: never part of `config`.
    if "notebook_token" not in {column["name"] for column in inspect(conn).get_columns("agents")}:
        conn.execute(text("ALTER TABLE agents ADD COLUMN notebook_token TEXT"))


def _v6_owners(conn: Connection) -> None:
    # Agents of a shared (Hub) manager belong to a user; older ones to the key's holder.
    # Names become unique per owner: one user's name must not tell another it is taken.
    if "owner" not in {column["name"] for column in inspect(conn).get_columns("agents")}:
        conn.execute(text("ALTER TABLE agents ADD COLUMN owner VARCHAR(256)"))
    with warnings.catch_warnings():  # SQLAlchemy cannot reflect the expression index
        warnings.simplefilter("ignore", SAWarning)
        unique = [c for c in inspect(conn).get_unique_constraints("agents")
                  if c["column_names"] == ["name"]]
    if unique and conn.dialect.name == "sqlite":
        _rebuild_agents(conn)  # SQLite cannot drop a column's UNIQUE
    elif unique:
        conn.execute(text(f'ALTER TABLE agents DROP CONSTRAINT "{unique[0]["name"]}"'))
    # As OWNER_NAME_INDEX (which SQLAlchemy cannot find again by reflection to skip it).
    conn.execute(text("CREATE UNIQUE INDEX IF NOT EXISTS ix_agents_owner_name "
                      "ON agents (coalesce(owner, ''), name)"))


def _rebuild_agents(conn: Connection) -> None:
    """`agents` made again from today's table, its rows and its children's kept.

    Inside the migration's transaction foreign keys stay on, so the children are set aside
    first: dropping `agents` then cascades into nothing.
    """
    tables = [messages, permission_requests, permission_rules, agents]
    kept: dict[str, list[str]] = {}
    for table in tables:
        kept[table.name] = [column["name"] for column in inspect(conn).get_columns(table.name)]
        copy = f"CREATE TABLE v6_{table.name} AS SELECT * FROM {table.name}"  # noqa: S608
        conn.execute(text(copy))  # our own tables' names, as below
        conn.execute(text(f"DROP TABLE {table.name}"))
    for table in reversed(tables):
        table.create(conn)  # with its indexes
        names = ", ".join(f'"{c.name}"' for c in table.columns if c.name in kept[table.name])
        conn.execute(text(f"INSERT INTO {table.name} ({names}) "  # noqa: S608
                          f"SELECT {names} FROM v6_{table.name}"))
        conn.execute(text(f"DROP TABLE v6_{table.name}"))
    _v2_correlation_index(conn)


def migrations(box: SecretBox) -> list[Migration]:
    """The schema's steps; sealing the configs of older databases needs the key."""
    return [_v1_initial, _v2_correlation_index, partial(_v3_seal_configs, box),
            _v4_projects_and_approvals, _v5_notebook_tokens, _v6_owners]


def seal_config(box: SecretBox, config: dict[str, Any]) -> dict[str, str]:
    """A whole config encrypted, so every secret in it (env, files, keys, args) is covered."""
    return {"sealed": box.encrypt(json.dumps(config))}


def open_config(box: SecretBox, stored: Any) -> dict[str, Any]:
    if not isinstance(stored, dict) or not isinstance(stored.get("sealed"), str):
        raise SecretKeyError("An agent config in the database is not sealed")
    return json.loads(box.decrypt(stored["sealed"]))


class Store(Database):
    """Agents and messages. One instance per manager process; safe to share across tasks.

    Agent configs are stored sealed with `box` and are plaintext in every AgentRecord.
    """

    def __init__(self, url: str, box: SecretBox) -> None:
        super().__init__(url)
        self._box = box
        self.migrations = migrations(box)
        self._message_log: MessageLog | None = None

    async def open(self) -> None:
        """Open and migrate; SecretKeyError if the stored configs need another key."""
        await super().open()
        self._message_log = MessageLog(self.url)
        try:
            await self.list_agents()
        except SecretKeyError:
            await self.close()
            raise

    async def close(self) -> None:
        log, self._message_log = self._message_log, None
        if log is not None:
            await log.close()
        await super().close()

    # -- agents --------------------------------------------------------------------------

    def _record(self, row: Any) -> AgentRecord:
        token = self._box.decrypt(row.notebook_token) if row.notebook_token else None
        return AgentRecord.from_row(row, config=open_config(self._box, row.config),
                                    notebook_token=token)

    async def create_agent(self, record: AgentRecord) -> AgentRecord:
        token = record.notebook_token
        values = {**record.__dict__, "config": seal_config(self._box, record.config),
                  "notebook_token": self._box.encrypt(token) if token else None}
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(agents).values(**values))
        except IntegrityError:
            raise NameTaken(record.name) from None
        return record

    async def list_agents(self, owner: str | None = None) -> list[AgentRecord]:
        """Every agent, or only `owner`'s: filtered here, so no one else's config is opened."""
        query = select(agents).order_by(agents.c.created_at)
        if owner is not None:
            query = query.where(agents.c.owner == owner)
        async with self.engine.connect() as conn:
            return [self._record(row) for row in await conn.execute(query)]

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        return await self._one_agent(agents.c.id == agent_id)

    async def get_agent_by_name(self, name: str, owner: str | None = None) -> AgentRecord | None:
        """`owner`'s agent of that name (names are unique per owner; None: the key's)."""
        mine = agents.c.owner.is_(None) if owner is None else agents.c.owner == owner
        return await self._one_agent(and_(agents.c.name == name, mine))

    async def _one_agent(self, where: Any) -> AgentRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(agents).where(where))).first()
            return self._record(row) if row else None

    async def update_agent(self, agent_id: str, **values: Any) -> None:
        values["updated_at"] = protocol.utc_now()
        if "config" in values:
            values["config"] = seal_config(self._box, values["config"])
        if values.get("notebook_token"):
            values["notebook_token"] = self._box.encrypt(values["notebook_token"])
        async with self.engine.begin() as conn:
            await conn.execute(update(agents).where(agents.c.id == agent_id).values(**values))

    async def delete_agent(self, agent_id: str) -> bool:
        async with self.engine.begin() as conn:
            await conn.execute(delete(messages).where(messages.c.agent_id == agent_id))
            for table in (permission_requests, permission_rules):
                await conn.execute(delete(table).where(table.c.agent_id == agent_id))
            result = await conn.execute(delete(agents).where(agents.c.id == agent_id))
        self.message_log.forget(agent_id)
        return result.rowcount > 0

    # -- messages ------------------------------------------------------------------------

    async def append_message(
        self,
        agent_id: str,
        sender: protocol.Sender,
        correlation_id: str,
        *,
        text: str | None = None,
        response: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Persist a message with the agent's next `seq` and return it in wire form."""
        message, _ = await self.message_log.append(agent_id, sender, correlation_id,
                                                   text=text, response=response)
        return message

    async def append_user_message_once(
        self, agent_id: str, correlation_id: str, text: str
    ) -> tuple[dict[str, Any], bool]:
        """The user's message stored, and True; or, when one is stored under
        `correlation_id` already (a chat sent again), that one and False."""
        return await self.message_log.append(agent_id, "user", correlation_id, text=text,
                                             once=True)

    @property
    def message_log(self) -> MessageLog:
        if self._message_log is None:
            raise RuntimeError("Store is not open")
        return self._message_log

    async def messages(
        self, agent_id: str, after: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        query = (
            select(messages)
            .where(and_(messages.c.agent_id == agent_id, messages.c.seq > after))
            .order_by(messages.c.seq)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [wire_message(row) for row in await conn.execute(query)]

    async def iter_messages(
        self, agent_id: str, after: int = 0, page: int = 500
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """History after `after`, in `seq` order, a page at a time."""
        while batch := await self.messages(agent_id, after, page):
            yield batch
            after = batch[-1]["seq"]

    async def user_message(self, agent_id: str, correlation_id: str) -> dict[str, Any] | None:
        query = select(messages).where(
            and_(
                messages.c.agent_id == agent_id,
                messages.c.correlation_id == correlation_id,
                messages.c.sender == "user",
            )
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return wire_message(row) if row else None

    async def recent_messages(self, agent_id: str, limit: int) -> list[dict[str, Any]]:
        """The last `limit` messages, oldest first."""
        query = (
            select(messages)
            .where(messages.c.agent_id == agent_id)
            .order_by(messages.c.seq.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [wire_message(row) for row in reversed((await conn.execute(query)).all())]

    async def last_seq(self, agent_id: str) -> int:
        query = select(func.coalesce(func.max(messages.c.seq), 0)).where(
            messages.c.agent_id == agent_id
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).scalar_one()

    async def unanswered_turns(self) -> list[dict[str, Any]]:
        """User messages no agent message answers: turns cut short by a crash."""
        reply = messages.alias("reply")
        query = (
            select(messages)
            .where(messages.c.sender == "user")
            .where(
                ~select(reply.c.id)
                .where(
                    and_(
                        reply.c.agent_id == messages.c.agent_id,
                        reply.c.correlation_id == messages.c.correlation_id,
                        reply.c.sender == "agent",
                    )
                )
                .exists()
            )
            .order_by(messages.c.agent_id, messages.c.seq)
        )
        async with self.engine.connect() as conn:
            return [wire_message(row) for row in await conn.execute(query)]

    # -- approvals (used through manager/approvals.py only) --------------------------------

    async def create_permission_request(
        self, request_id: str, agent_id: str, correlation_id: str, event: dict[str, Any],
        expires_at: str,
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(permission_requests).values(
                id=request_id, agent_id=agent_id, correlation_id=correlation_id, event=event,
                state="pending", created_at=protocol.utc_now(), expires_at=expires_at))

    async def settle_permission_request(
        self, request_id: str, state: str, decided_by: str, option_id: str | None = None,
        user: str | None = None,
    ) -> bool:
        """Settle a pending request; False if it was not pending (the first answer wins)."""
        query = (
            update(permission_requests)
            .where(and_(permission_requests.c.id == request_id,
                        permission_requests.c.state == "pending"))
            .values(state=state, decided_by=decided_by, option_id=option_id, user=user,
                    resolved_at=protocol.utc_now())
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(query)).rowcount > 0

    async def permission_requests(
        self, agent_id: str | None = None, *, pending: bool = False,
        correlation_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Requests (rows as dicts), oldest first: of one agent, pending, of one turn."""
        table = permission_requests
        query = select(table).order_by(table.c.created_at, table.c.id)
        if agent_id is not None:
            query = query.where(table.c.agent_id == agent_id)
        if pending:
            query = query.where(table.c.state == "pending")
        if correlation_id is not None:
            query = query.where(table.c.correlation_id == correlation_id)
        async with self.engine.connect() as conn:
            return [dict(row._mapping) for row in await conn.execute(query)]

    async def permission_rule(self, agent_id: str, kind: str) -> str | None:
        """The remembered "always" decision ("allow" | "reject") for a tool kind, if any."""
        query = select(permission_rules.c.decision).where(
            and_(permission_rules.c.agent_id == agent_id, permission_rules.c.kind == kind))
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).scalar_one_or_none()

    async def set_permission_rule(self, agent_id: str, kind: str, decision: str) -> None:
        values = {"agent_id": agent_id, "kind": kind, "decision": decision,
                  "created_at": protocol.utc_now()}
        async with self.engine.begin() as conn:  # one transaction: the newest answer stays
            await conn.execute(delete(permission_rules).where(and_(
                permission_rules.c.agent_id == agent_id, permission_rules.c.kind == kind)))
            await conn.execute(insert(permission_rules).values(**values))

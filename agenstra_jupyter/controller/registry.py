"""The controller's registry: managers ("clients"), agent credentials and notebook-tool
grants; secrets encrypted."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    ForeignKey,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    and_,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from .. import protocol
from ..db import Database, Migration
from ..redact import redact_string
from ..secrets import SecretBox, SecretKeyError

LOCAL_CLIENT_ID = "local"

metadata = MetaData()

clients = Table(
    "clients",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("endpoint", String(2048), nullable=False),
    Column("api_key", String(1024), nullable=False),  # encrypted
    Column("local", Boolean, nullable=False, default=False),
    Column("created_at", String(32), nullable=False),
)

credentials = Table(
    "agent_credentials",
    metadata,
    Column("client_id", String(64), ForeignKey("clients.id", ondelete="CASCADE"), nullable=False),
    Column("agent_id", String(64), nullable=False),
    Column("agent_name", String(64), nullable=False),
    Column("password", String(1024), nullable=False),  # encrypted
    Column("created_at", String(32), nullable=False),
    PrimaryKeyConstraint("client_id", "agent_id"),
)


# Notebook tools (DESIGN.md "Notebook tools (MCP)"): one capability token per agent with a
# project. Found by the SHA-256 of the token (a token is 256 random bits: its digest is as
# good a key as the token and shows nothing); the token itself is kept encrypted.
grants = Table(
    "notebook_grants",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("token", String(1024), nullable=False),  # encrypted
    Column("client_id", String(64), ForeignKey("clients.id", ondelete="CASCADE"),
           nullable=False),
    Column("agent_id", String(64), nullable=False),
    Column("project", String(4096), nullable=False),  # absolute, resolved
    Column("created_at", String(32), nullable=False),
)


# Many managers (docs/many-hosts.md): the labels users place agents by, and a capacity.
placement = Table(
    "client_placement",
    metadata,
    Column("client_id", String(64), ForeignKey("clients.id", ondelete="CASCADE"),
           primary_key=True),
    Column("labels", String(4096), nullable=False, default="[]"),  # a JSON list
    Column("capacity", Integer, nullable=True),  # None: no limit
)


def _v1_initial(conn: Connection) -> None:
    metadata.create_all(conn)


def _v2_notebook_grants(conn: Connection) -> None:
    grants.create(conn, checkfirst=True)  # a new registry has it from v1's create_all


def _v3_client_placement(conn: Connection) -> None:
    placement.create(conn, checkfirst=True)


MIGRATIONS: list[Migration] = [_v1_initial, _v2_notebook_grants, _v3_client_placement]


class ClientNameTaken(Exception):
    """A manager with that name is registered already."""


@dataclass(frozen=True)
class GrantRecord:
    """Whom a notebook-tools token stands for: never the token itself."""

    client_id: str
    agent_id: str
    project: str


def _labels(stored: str | None) -> tuple[str, ...]:
    try:
        labels = json.loads(stored or "[]")
    except ValueError:
        return ()
    return tuple(label for label in labels if isinstance(label, str)) \
        if isinstance(labels, list) else ()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ClientRecord:
    id: str
    name: str
    endpoint: str
    api_key: str  # decrypted; never leaves the controller
    local: bool
    created_at: str
    labels: tuple[str, ...] = ()
    capacity: int | None = None  # registered limit on its agents; None: none

    def to_wire(self) -> dict[str, Any]:
        """The client as REST shows it: never its API key, nor credentials in its endpoint."""
        return {
            "id": self.id,
            "name": self.name,
            "endpoint": redact_string(self.endpoint),
            "local": self.local,
            "createdAt": self.created_at,
            "labels": list(self.labels),
            "capacity": self.capacity,
        }


class Registry(Database):
    migrations = MIGRATIONS

    def __init__(self, url: str, box: SecretBox) -> None:
        super().__init__(url)
        self._box = box
        self._local: ClientRecord | None = None  # what set_local() last registered

    async def open(self) -> None:
        """Open and migrate; SecretKeyError at once if the stored secrets need another key."""
        await super().open()
        try:
            await self.list_clients()  # decrypts every stored API key
        except SecretKeyError:
            await self.close()
            raise SecretKeyError(
                "The registry's secrets cannot be decrypted with this key (controller.key "
                "or AGENSTRA_SECRET_KEY changed?)"
            ) from None

    # -- clients -------------------------------------------------------------------------

    _with_placement = select(clients, placement.c.labels, placement.c.capacity).outerjoin(
        placement, placement.c.client_id == clients.c.id)

    async def list_clients(self) -> list[ClientRecord]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(self._with_placement.order_by(clients.c.created_at))
            return [self._own(self._client(row)) for row in rows]

    async def get_client(self, client_id: str) -> ClientRecord | None:
        query = self._with_placement.where(clients.c.id == client_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
            return self._own(self._client(row)) if row else None

    def _own(self, client: ClientRecord) -> ClientRecord:
        """Client `local` is always this server's own manager, whatever another server that
        shares the database wrote into its row (its labels and capacity are the row's)."""
        if client.local and self._local is not None:
            return replace(self._local, labels=client.labels, capacity=client.capacity)
        return client

    async def add_client(self, name: str, endpoint: str, api_key: str,
                         labels: list[str] | None = None,
                         capacity: int | None = None) -> ClientRecord:
        values = {
            "id": str(uuid.uuid4()), "name": name, "endpoint": endpoint,
            "api_key": self._box.encrypt(api_key), "local": False,
            "created_at": protocol.utc_now(),
        }
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(clients).values(**values))
                await conn.execute(insert(placement).values(
                    client_id=values["id"], labels=json.dumps(labels or []), capacity=capacity))
        except IntegrityError:
            raise ClientNameTaken(name) from None
        return self._client({**values, "labels": json.dumps(labels or []), "capacity": capacity})

    async def set_placement(self, client_id: str, labels: list[str],
                            capacity: int | None) -> None:
        """A manager's labels and capacity, replaced."""
        values = {"labels": json.dumps(labels), "capacity": capacity}
        async with self.engine.begin() as conn:
            changed = await conn.execute(
                update(placement).where(placement.c.client_id == client_id).values(**values))
            if changed.rowcount == 0:
                await conn.execute(insert(placement).values(client_id=client_id, **values))

    async def set_local(self, endpoint: str, api_key: str) -> ClientRecord:
        """Register (or point again) client `local` at this server's own manager."""
        values = {"endpoint": endpoint, "api_key": self._box.encrypt(api_key)}
        async with self.engine.begin() as conn:
            changed = await conn.execute(
                update(clients).where(clients.c.id == LOCAL_CLIENT_ID).values(**values)
            )
            if changed.rowcount == 0:
                await conn.execute(
                    insert(clients).values(
                        id=LOCAL_CLIENT_ID, name=LOCAL_CLIENT_ID, local=True,
                        created_at=protocol.utc_now(), **values,
                    )
                )
        self._local = None
        client = await self.get_client(LOCAL_CLIENT_ID)
        assert client is not None
        self._local = client
        return client

    async def delete_client(self, client_id: str) -> bool:
        async with self.engine.begin() as conn:
            await conn.execute(delete(credentials).where(credentials.c.client_id == client_id))
            await conn.execute(delete(grants).where(grants.c.client_id == client_id))
            await conn.execute(delete(placement).where(placement.c.client_id == client_id))
            result = await conn.execute(delete(clients).where(clients.c.id == client_id))
            return result.rowcount > 0

    def _client(self, row: Any) -> ClientRecord:
        data = dict(row._mapping) if hasattr(row, "_mapping") else row
        return ClientRecord(
            id=data["id"], name=data["name"], endpoint=data["endpoint"],
            api_key=self._box.decrypt(data["api_key"]), local=bool(data["local"]),
            created_at=data["created_at"], labels=_labels(data.get("labels")),
            capacity=data.get("capacity"),
        )

    # -- agent credentials ---------------------------------------------------------------

    async def save_password(
        self, client_id: str, agent_id: str, agent_name: str, password: str
    ) -> None:
        values = {"agent_name": agent_name, "password": self._box.encrypt(password)}
        where = and_(credentials.c.client_id == client_id, credentials.c.agent_id == agent_id)
        async with self.engine.begin() as conn:
            changed = await conn.execute(update(credentials).where(where).values(**values))
            if changed.rowcount == 0:
                await conn.execute(
                    insert(credentials).values(
                        client_id=client_id, agent_id=agent_id, created_at=protocol.utc_now(),
                        **values,
                    )
                )

    async def password(self, client_id: str, agent_id: str) -> str | None:
        where = and_(credentials.c.client_id == client_id, credentials.c.agent_id == agent_id)
        async with self.engine.connect() as conn:
            token = (await conn.execute(select(credentials.c.password).where(where))).scalar()
        return self._box.decrypt(token) if token else None

    async def has_credentials(self, client_id: str, agent_id: str) -> bool:
        where = and_(credentials.c.client_id == client_id, credentials.c.agent_id == agent_id)
        async with self.engine.connect() as conn:
            return (await conn.execute(select(credentials.c.agent_id).where(where))).first() \
                is not None

    async def known_agent_names(self, client_id: str) -> dict[str, str]:
        """The agents of `client_id` the controller holds a password for: id -> name."""
        query = select(credentials.c.agent_id, credentials.c.agent_name).where(
            credentials.c.client_id == client_id).order_by(credentials.c.created_at)
        async with self.engine.connect() as conn:
            return {row.agent_id: row.agent_name for row in await conn.execute(query)}

    async def known_agents(self, client_id: str) -> set[str]:
        query = select(credentials.c.agent_id).where(credentials.c.client_id == client_id)
        async with self.engine.connect() as conn:
            return set((await conn.execute(query)).scalars())

    async def forget_agent(self, client_id: str, agent_id: str) -> None:
        where = and_(credentials.c.client_id == client_id, credentials.c.agent_id == agent_id)
        async with self.engine.begin() as conn:
            await conn.execute(delete(credentials).where(where))

    # -- notebook-tools grants -----------------------------------------------------------

    @staticmethod
    def new_token() -> str:
        return secrets.token_urlsafe(32)

    async def save_grant(self, token: str, client_id: str, agent_id: str, project: str) -> None:
        """Keep `token` as the agent's one grant (a grant it had before is revoked)."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(grants).where(
                and_(grants.c.client_id == client_id, grants.c.agent_id == agent_id)))
            await conn.execute(insert(grants).values(
                digest=token_digest(token), token=self._box.encrypt(token),
                client_id=client_id, agent_id=agent_id, project=project,
                created_at=protocol.utc_now(),
            ))

    async def grant(self, token: str) -> GrantRecord | None:
        """The grant `token` stands for, or None (unknown, revoked)."""
        query = select(grants.c.client_id, grants.c.agent_id, grants.c.project).where(
            grants.c.digest == token_digest(token))
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return GrantRecord(row.client_id, row.agent_id, row.project) if row else None

    async def granted_projects(self) -> list[str]:
        """The projects of the agents that hold a grant."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(grants.c.project).distinct())
        return [row.project for row in rows]

    async def revoke_grant(self, client_id: str, agent_id: str) -> bool:
        where = and_(grants.c.client_id == client_id, grants.c.agent_id == agent_id)
        async with self.engine.begin() as conn:
            return (await conn.execute(delete(grants).where(where))).rowcount > 0

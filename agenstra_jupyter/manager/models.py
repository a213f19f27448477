"""SQLAlchemy tables of the manager database and the records read from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    literal_column,
)

from ..redact import redact

metadata = MetaData()

agents = Table(
    "agents",
    metadata,
    Column("id", String(64), primary_key=True),
    # Unique per owner (the index below): users of a shared manager name agents freely.
    Column("name", String(64), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("runtime", String(64), nullable=False),
    Column("image", String(256)),
    # Sealed: {"sealed": <Fernet token of the config's JSON>} (the store encrypts it).
    Column("config", JSON, nullable=False, default=dict),
    Column("description", Text, nullable=False, default=""),
    Column("password_hash", String(128), nullable=False),
    # Desired state: agents that were running come back up after a manager restart.
    Column("state", String(16), nullable=False, default="stopped"),
    # Opaque per-agent memory of its provider (e.g. a CLI's session id to resume).
    Column("provider_state", JSON, nullable=False, default=dict),
    Column("created_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
    # The user's folder the agent works in (absolute, on this host); NULL: a private one.
    Column("project", Text),
    # The controller's notebook-tools token, sealed like config (never in a view).
    Column("notebook_token", Text),
    # The Hub user who created it (hub mode); NULL: the API key's holder.
    Column("owner", String(256)),
)
OWNER_NAME_INDEX = Index(
    "ix_agents_owner_name", func.coalesce(agents.c.owner, literal_column("''")), agents.c.name,
    unique=True,
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("agent_id", String(64), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("sender", String(8), nullable=False),
    Column("text", Text),
    Column("response", JSON),
    Column("correlation_id", String(128), nullable=False),
    Column("created_at", String(32), nullable=False),
    Index("ix_messages_agent_seq", "agent_id", "seq", unique=True),
)

# Approvals (DESIGN.md "Approvals"): every request an agent made that a user was asked,
# pending until answered, expired or cancelled; pending ones are sent again at each login.
permission_requests = Table(
    "permission_requests",
    metadata,
    Column("id", String(64), primary_key=True),  # the requestId
    Column("agent_id", String(64), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
    Column("correlation_id", String(128), nullable=False),
    # The chatEvent as it was sent (agentId, correlationId, kind, payload, sequence).
    Column("event", JSON, nullable=False),
    Column("state", String(16), nullable=False, default="pending"),  # or an outcome
    Column("option_id", String(128)),
    Column("decided_by", String(16)),  # user | policy | timeout
    Column("user", String(256)),  # who answered, as the controller named them
    Column("created_at", String(32), nullable=False),
    Column("expires_at", String(32), nullable=False),
    Column("resolved_at", String(32)),
    Index("ix_permission_requests_agent_state", "agent_id", "state"),
)

# "Always" answers: one decision per agent and tool kind.
permission_rules = Table(
    "permission_rules",
    metadata,
    Column("agent_id", String(64), ForeignKey("agents.id", ondelete="CASCADE"),
           primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("decision", String(8), nullable=False),  # allow | reject
    Column("created_at", String(32), nullable=False),
)


@dataclass
class AgentRecord:
    id: str
    name: str
    provider: str
    runtime: str
    password_hash: str
    created_at: str
    updated_at: str
    image: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    state: str = "stopped"
    provider_state: dict[str, Any] = field(default_factory=dict)
    project: str | None = None
    # Plaintext here (the store seals it); never in to_wire, never in a repr.
    notebook_token: str | None = field(default=None, repr=False)
    owner: str | None = None

    @classmethod
    def from_row(cls, row: Any, **overrides: Any) -> AgentRecord:
        return cls(**{**dict(row._mapping), **overrides})

    def to_wire(self) -> dict[str, Any]:
        """The agent as REST shows it: no password hash, config masked (see `redact`)."""
        return {
            "id": self.id,
            "name": self.name,
            "provider": self.provider,
            "runtime": self.runtime,
            "image": self.image,
            "config": redact(self.config),
            "description": self.description,
            "state": self.state,
            "project": self.project,
            "owner": self.owner,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }

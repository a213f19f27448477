"""Async database engines with versioned schemas, shared by the manager and the controller."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Connection, Integer, MetaData, Table, event, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .secrets import create_private_file, private_dir, private_file

ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")

# One step moves a schema one version up; append steps, never edit released ones.
Migration = Callable[[Connection], None]


def async_url(url: str) -> str:
    """`sqlite:///x.db` -> `sqlite+aiosqlite:///x.db`; URLs naming a driver pass unchanged."""
    parsed = make_url(url)
    driver = ASYNC_DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver).render_as_string(hide_password=False) if driver else url


def sqlite_url(path: Path | str) -> str:
    return f"sqlite:///{path}"


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes in WAL mode
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    # Overwrite what is deleted or updated: a sealed config leaves no plaintext behind.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def private_sqlite_file(path: Path) -> None:
    """Make an SQLite database and its -wal/-shm files owner-only before SQLite opens them.

    SQLite creates -wal and -shm with the database file's mode, so a 0600 database keeps
    them 0600; the ones an older version left readable are tightened here.
    """
    if not path.parent.exists():
        private_dir(path.parent)
    create_private_file(path)
    for suffix in SQLITE_COMPANIONS:
        private_file(path.with_name(path.name + suffix))


async def open_engine(url: str, migrations: Sequence[Migration]) -> AsyncEngine:
    """Connect (creating an owner-only SQLite file) and bring the schema up to date."""
    url = async_url(url)
    parsed = make_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database not in (None, "", ":memory:"):
        private_sqlite_file(Path(parsed.database))
    engine = create_async_engine(url)
    if sqlite:
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    async with engine.begin() as conn:
        await conn.run_sync(_migrate, migrations)
    if sqlite:
        # Pages a migration rewrote (secrets sealed) leave the main file now, not at some
        # later checkpoint; the WAL is emptied with them.
        async with engine.connect() as conn:
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return engine


class Database:
    """An engine opened on a versioned schema; subclasses name their `migrations`.

    `migrations` may be set per instance when a step needs more than a connection (the
    manager's store seals configs with its key).
    """

    migrations: Sequence[Migration]

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError(f"{type(self).__name__} is not open")
        return self._engine

    async def open(self) -> None:
        self._engine = await open_engine(self.url, self.migrations)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


_version_table = Table("schema_version", MetaData(), Column("version", Integer, nullable=False))


def _migrate(conn: Connection, migrations: Sequence[Migration]) -> None:
    _version_table.create(conn, checkfirst=True)
    current = conn.execute(select(_version_table.c.version)).scalar()
    if current is None:
        conn.execute(insert(_version_table).values(version=0))
        current = 0
    if current > len(migrations):
        raise RuntimeError(
            f"Database schema version {current} is newer than this agenstra ({len(migrations)})"
        )
    for step in migrations[current:]:
        step(conn)
    conn.execute(update(_version_table).values(version=len(migrations)))

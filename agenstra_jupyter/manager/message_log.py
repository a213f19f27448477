"""The chat history's write path: one thread, one connection, group commit.

Every turn stores two messages (the user's, the answer). Through the async engine each
costs a transaction of several thread hops; here every message waiting while one write
runs goes into the next, one transaction and one hop for all of them. A caller's message
is committed when its `append` returns, so it is still persisted before it is announced
and a chat is still acknowledged only after its commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.engine import make_url

from .. import protocol
from ..db import sqlite_pragmas
from .bounds import fit_stored
from .models import messages

MAX_BATCH = 500  # messages per transaction; more wait for the next one

# Built once: SQLAlchemy compiles a statement built per call anew (~100 us a query, in the
# thread but holding the GIL the event loop needs); these are looked up in its cache.
_LAST_SEQ = select(func.coalesce(func.max(messages.c.seq), 0)).where(
    messages.c.agent_id == bindparam("agent_id"))
_USER_MESSAGE = select(messages).where(and_(
    messages.c.agent_id == bindparam("agent_id"),
    messages.c.correlation_id == bindparam("correlation_id"),
    messages.c.sender == "user"))
_INSERT = insert(messages)
_COLUMNS = [column.name for column in messages.columns]


class _Statement:
    """A statement compiled once for a dialect, run on the DBAPI cursor: SQLAlchemy's
    execute costs tens of microseconds of Python a call (bind processing, result set-up)
    in the writer thread, holding the GIL the event loop needs; a turn makes three."""

    def __init__(self, statement: Any, dialect: Any, **kwargs: Any) -> None:
        compiled = statement.compile(dialect=dialect, **kwargs)
        self.sql = str(compiled)
        self._fixed = dict(compiled.params)  # values in the statement ("user")
        self._order = list(compiled.positiontup or []) if compiled.positional else None

    def params(self, values: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        merged = {**self._fixed, **values}
        return tuple(merged[key] for key in self._order) if self._order is not None else merged


def _uuid4s() -> Iterator[str]:
    """Random (version 4) UUIDs from one urandom call per 256: a syscall per message was
    a visible share of a turn."""
    while True:
        pool = bytearray(os.urandom(16 * 256))
        for offset in range(0, len(pool), 16):
            pool[offset + 6] = pool[offset + 6] & 0x0F | 0x40  # version 4
            pool[offset + 8] = pool[offset + 8] & 0x3F | 0x80  # RFC 4122 variant
            h = pool[offset:offset + 16].hex()
            yield f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_message_ids = _uuid4s()


@dataclass
class _Append:
    agent_id: str
    sender: protocol.Sender
    correlation_id: str
    text: str | None
    response: dict[str, Any] | None
    once: bool  # a user message not stored again under its correlation id
    id: str = field(default_factory=lambda: next(_message_ids))
    timestamp: str = field(default_factory=protocol.utc_now)
    future: asyncio.Future[tuple[dict[str, Any], bool]] | None = None


def sync_url(url: str) -> str:
    """The URL with its backend's default (blocking) driver: this runs in a thread."""
    parsed = make_url(url)
    return parsed.set(drivername=parsed.get_backend_name()).render_as_string(
        hide_password=False)


class MessageLog:
    """Appends messages with the agent's next `seq`; at most one transaction in flight."""

    def __init__(self, url: str) -> None:
        self._engine: Engine = create_engine(sync_url(url))
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine, "connect", sqlite_pragmas)
        # Run on the DBAPI cursor where their binding is known (sqlite3's); others through
        # SQLAlchemy, as built above.
        self._raw = self._engine.dialect.name == "sqlite"
        dialect = self._engine.dialect
        self._insert = _Statement(_INSERT, dialect, column_keys=_COLUMNS)
        self._user_message = _Statement(_USER_MESSAGE, dialect)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="message-log")
        self._pending: list[_Append] = []
        self._writing: asyncio.Future[list[Any]] | None = None
        # Each agent's last seq, read once: every message is written here. The thread alone
        # touches it; a failed transaction forgets what it had advanced.
        self._seqs: dict[str, int] = {}
        # Held by the thread: a pool checkout per batch cost a rollback (its reset) too.
        self._conn: Connection | None = None

    async def append(
        self,
        agent_id: str,
        sender: protocol.Sender,
        correlation_id: str,
        *,
        text: str | None = None,
        response: dict[str, Any] | None = None,
        once: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """The message in wire form, committed, and whether it is new (False: `once` found
        the user message stored under `correlation_id` already, which is returned)."""
        entry = _Append(agent_id, sender, correlation_id, text, response, once)
        loop = asyncio.get_running_loop()
        entry.future = loop.create_future()
        self._pending.append(entry)
        self._write_next(loop)
        return await entry.future

    def _write_next(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start writing what waits, unless a write is in flight (its end calls again)."""
        if self._writing is not None or not self._pending:
            return
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        self._writing = loop.run_in_executor(self._thread, self._write_batch, batch)
        self._writing.add_done_callback(lambda done: self._written(loop, batch, done))

    def _written(self, loop: asyncio.AbstractEventLoop, batch: list[_Append],
                 done: asyncio.Future[list[Any]]) -> None:
        self._writing = None
        try:
            results: list[Any] = done.result()
        except BaseException as exc:  # cancelled, or worse: every waiter must hear of it
            failure = exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
            results = [failure] * len(batch)
        try:
            for entry, result in zip(batch, results, strict=True):
                _settle(entry, result)
        finally:
            self._write_next(loop)

    def _write_batch(self, batch: list[_Append]) -> list[tuple[dict[str, Any], bool] | Exception]:
        """In the thread. One bad message (its agent deleted meanwhile) must not fail the
        others: a failed batch is written again one message per transaction."""
        try:
            return list(self._write(batch))
        except Exception:
            results: list[tuple[dict[str, Any], bool] | Exception] = []
            for entry in batch:
                self._seqs.pop(entry.agent_id, None)  # read again: it may be what failed
                try:
                    results.extend(self._write([entry]))
                except Exception as exc:
                    results.append(exc)
            return results

    def forget(self, agent_id: str) -> None:
        """Drop a deleted agent's cached seq (after the writes queued before this call)."""
        with contextlib.suppress(RuntimeError):  # closed: nothing is cached any more
            self._thread.submit(self._seqs.pop, agent_id, None)

    def _write(self, batch: list[_Append]) -> list[tuple[dict[str, Any], bool]]:
        """In the thread: one transaction for the whole batch."""
        if self._conn is None:
            self._conn = self._engine.connect()
        conn = self._conn
        try:
            with conn.begin():
                results, rows, seqs = self._prepare(conn, batch)
                if rows and self._raw:
                    for row in rows:  # as SQLAlchemy's JSON type binds it
                        row["response"] = json.dumps(row["response"])
                    self._cursor(conn).executemany(
                        self._insert.sql, [self._insert.params(row) for row in rows])
                elif rows:
                    conn.execute(_INSERT, rows)
        except BaseException:
            self._conn = None  # a broken connection must not serve the next batch
            conn.close()
            raise
        self._seqs.update(seqs)
        return results

    def _prepare(self, conn: Connection, batch: list[_Append]) -> tuple[
            list[tuple[dict[str, Any], bool]], list[dict[str, Any]], dict[str, int]]:
        """The batch's answers, its rows to insert and each agent's last seq after them."""
        results: list[tuple[dict[str, Any], bool]] = []
        rows: list[dict[str, Any]] = []
        seqs: dict[str, int] = {}  # this batch's, into self._seqs once committed
        stored: dict[tuple[str, str], dict[str, Any]] = {}  # user messages of this batch
        for entry in batch:
            key = (entry.agent_id, entry.correlation_id)
            if entry.once:
                existing = stored.get(key) or self._stored_user_message(conn, *key)
                if existing is not None:
                    results.append((existing, False))
                    continue
            if entry.agent_id not in seqs:
                seqs[entry.agent_id] = self._last_seq(conn, entry.agent_id)
            seqs[entry.agent_id] += 1
            rows.append({"id": entry.id, "agent_id": entry.agent_id,
                         "seq": seqs[entry.agent_id], "sender": entry.sender,
                         "text": entry.text, "response": entry.response,
                         "correlation_id": entry.correlation_id,
                         "created_at": entry.timestamp})
            message = protocol.chat_message(
                id=entry.id, seq=seqs[entry.agent_id], agent_id=entry.agent_id,
                sender=entry.sender, timestamp=entry.timestamp,
                correlation_id=entry.correlation_id, text=entry.text,
                response=entry.response)
            if entry.sender == "user":
                stored[key] = message
            results.append((message, True))
        return results, rows, seqs

    @staticmethod
    def _cursor(conn: Connection) -> Any:
        """The DBAPI cursor, in the transaction `conn` began."""
        return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]

    def _stored_user_message(self, conn: Connection, agent_id: str,
                             correlation_id: str) -> dict[str, Any] | None:
        values = {"agent_id": agent_id, "correlation_id": correlation_id}
        if not self._raw:
            row = conn.execute(_USER_MESSAGE, values).first()
            return wire_message(row) if row is not None else None
        found = self._cursor(conn).execute(
            self._user_message.sql, self._user_message.params(values)).fetchone()
        if found is None:
            return None
        row = dict(zip(_COLUMNS, found, strict=True))
        response = row["response"]
        row["response"] = json.loads(response) if response is not None else None
        return wire_message(SimpleNamespace(**row))

    def _last_seq(self, conn: Any, agent_id: str) -> int:
        if agent_id not in self._seqs:
            self._seqs[agent_id] = conn.execute(_LAST_SEQ, {"agent_id": agent_id}).scalar_one()
        return self._seqs[agent_id]

    async def close(self) -> None:
        while self._writing is not None:
            await asyncio.wait({self._writing})
            await asyncio.sleep(0)  # its callback has run: the next batch started, if any
        await asyncio.get_running_loop().run_in_executor(self._thread, self._dispose)
        self._thread.shutdown(wait=True)


    def _dispose(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._engine.dispose()


def _settle(entry: _Append, result: tuple[dict[str, Any], bool] | Exception) -> None:
    assert entry.future is not None
    if entry.future.done():  # its caller was cancelled; the message is stored all the same
        return
    if isinstance(result, Exception):
        entry.future.set_exception(result)
    else:
        entry.future.set_result(result)


def wire_message(row: Any) -> dict[str, Any]:
    """A stored row in wire form. Rows stored before answers were capped are cut here, so
    no replay outgrows a frame."""
    return fit_stored(protocol.chat_message(
        id=row.id, seq=row.seq, agent_id=row.agent_id, sender=row.sender,
        timestamp=row.created_at, correlation_id=row.correlation_id, text=row.text,
        response=row.response))

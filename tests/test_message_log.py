"""The history's write path (manager/message_log.py) on a real SQLite file: group commit
keeps `seq` dense and per-agent ordered, stores a chat sent again once, commits before it
answers, and one message that cannot be stored does not fail the others."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import event

from agenstra_jupyter.manager.models import AgentRecord
from agenstra_jupyter.manager.store import Store
from agenstra_jupyter.secrets import SecretBox

NOW = "2026-01-01T00:00:00.000Z"


@contextlib.asynccontextmanager
async def opened(path: Path) -> AsyncIterator[Store]:
    """A store on `path` with agents "a" and "b"."""
    store = Store(f"sqlite:///{path}", SecretBox(Fernet.generate_key()))
    await store.open()
    try:
        for name in ("a", "b"):
            await store.create_agent(AgentRecord(id=name, name=name, provider="echo",
                                                 runtime="process", password_hash="h",
                                                 created_at=NOW, updated_at=NOW))
        yield store
    finally:
        await store.close()


def count_commits(store: Store) -> list[int]:
    commits: list[int] = []
    event.listen(store.message_log._engine, "commit", lambda conn: commits.append(1))
    return commits


async def test_concurrent_messages_share_transactions_and_keep_order(tmp_path):
    async with opened(tmp_path / 'm.sqlite') as store:
        commits = count_commits(store)
        written = await asyncio.gather(*(
            store.append_message(agent, "user", f"{agent}{n}", text=f"{agent} {n}")
            for n in range(200) for agent in ("a", "b")))
        # Group commit: far fewer transactions than messages.
        assert 1 <= len(commits) < len(written) / 4
        for agent in ("a", "b"):
            mine = [m for m in written if m["agentId"] == agent]
            # Dense, and in the order they were handed in.
            assert [m["seq"] for m in mine] == list(range(1, 201))
            assert [m["text"] for m in mine] == [f"{agent} {n}" for n in range(200)]
        # Committed by the time the caller has its answer: another connection reads them all.
        with sqlite3.connect(tmp_path / "m.sqlite") as db:
            assert db.execute("select count(*) from messages").fetchone() == (400,)
        assert [m["seq"] for m in await store.messages("a")] == list(range(1, 201))


async def test_a_chat_sent_again_is_stored_once(tmp_path):
    async with opened(tmp_path / 'm.sqlite') as store:
        first, new = await store.append_user_message_once("a", "c1", "hello")
        again, stored_again = await store.append_user_message_once("a", "c1", "hello")
        assert new and not stored_again and again == first
        # Both in one batch: still once.
        both = await asyncio.gather(store.append_user_message_once("a", "c2", "x"),
                                    store.append_user_message_once("a", "c2", "x"))
        assert [created for _, created in both] == [True, False]
        assert both[0][0] == both[1][0]
        # The same correlation id on another agent is another message.
        _, other = await store.append_user_message_once("b", "c1", "hello")
        assert other
        assert [m["correlationId"] for m in await store.messages("a")] == ["c1", "c2"]


async def test_a_message_that_cannot_be_stored_fails_alone(tmp_path):
    async with opened(tmp_path / 'm.sqlite') as store:
        await store.delete_agent("b")  # its messages now violate the foreign key
        results = await asyncio.gather(
            *(store.append_message("a", "user", f"a{n}", text="ok") for n in range(5)),
            store.append_message("b", "user", "gone", text="lost"),
            *(store.append_message("a", "user", f"a{n}", text="ok") for n in range(5, 10)),
            return_exceptions=True)
        failed = [r for r in results if isinstance(r, Exception)]
        assert len(failed) == 1 and "FOREIGN KEY" in str(failed[0])
        assert [m["seq"] for m in await store.messages("a")] == list(range(1, 11))
        # The write path goes on after the failure.
        answer = {"type": "text", "result": "r"}
        assert (await store.append_message("a", "agent", "a9", response=answer))["seq"] == 11


async def test_close_waits_for_messages_in_flight(tmp_path):
    path = tmp_path / "c.sqlite"
    store = Store(f"sqlite:///{path}", SecretBox(Fernet.generate_key()))
    await store.open()
    await store.create_agent(AgentRecord(id="a", name="a", provider="echo", runtime="process",
                                         password_hash="h", created_at=NOW, updated_at=NOW))
    writes = [asyncio.ensure_future(store.append_message("a", "user", f"c{n}", text="t"))
              for n in range(50)]
    await asyncio.sleep(0)  # handed in, some still waiting for their transaction
    await store.close()
    assert all(w.done() and not w.exception() for w in writes)
    with sqlite3.connect(path) as db:
        assert db.execute("select count(*) from messages").fetchone() == (50,)


async def test_a_write_failing_beyond_exception_fails_its_callers_not_the_log(tmp_path):
    """SystemExit or the like in the writer thread: every waiting caller hears of it, and
    the next write goes on (no caller left waiting forever on the agent's lock)."""
    async with opened(tmp_path / "m.sqlite") as store:
        log = store.message_log
        real = log._write_batch

        def broken(batch):
            raise SystemExit("writer gone")

        log._write_batch = broken
        with pytest.raises(RuntimeError, match="writer gone"):
            await asyncio.wait_for(store.append_message("a", "user", "x", text="t"), 10)
        log._write_batch = real
        assert (await store.append_message("a", "user", "y", text="t"))["seq"] == 1


async def test_a_seq_taken_behind_the_logs_back_is_read_again(tmp_path):
    """Each agent's last seq is cached. Should another writer take the next one, the
    write fails on the unique index once, is tried again with the seq read afresh, and
    stores the message: no message lost, seq still dense."""
    async with opened(tmp_path / "m.sqlite") as store:
        first = await store.append_message("a", "user", "c1", text="one")
        with sqlite3.connect(tmp_path / "m.sqlite") as db:
            db.execute("insert into messages (id, agent_id, seq, sender, text, correlation_id,"
                       " created_at) values ('x', 'a', 2, 'user', 'other', 'cx', ?)", (NOW,))
        second = await store.append_message("a", "agent", "c1", response={"type": "text"})
        assert (first["seq"], second["seq"]) == (1, 3)
        assert [m["seq"] for m in await store.messages("a", 0, 10)] == [1, 2, 3]


async def test_a_deleted_agents_cached_seq_is_forgotten(tmp_path):
    async with opened(tmp_path / "m.sqlite") as store:
        await store.append_message("b", "user", "c1", text="one")
        await store.delete_agent("b")
        await store.message_log.append("a", "user", "c2", text="flush the thread's queue")
        assert "b" not in store.message_log._seqs

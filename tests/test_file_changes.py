"""Files a turn changed (#15 items 3 and 4): the manager's workspace snapshots, the
`filesChanged` event and the before/after diffs, unit level and through real managers."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from agenstra_jupyter.manager import changes
from agenstra_jupyter.manager.bounds import TurnLimits, fit_response
from agenstra_jupyter.manager.changes import (
    DIR_FLAGS,
    MAX_DEPTH,
    MAX_PATHS,
    MAX_PATHS_BYTES,
    FileWatch,
    ScanBounds,
    Snapshot,
    _read_text,
    compare,
    event_paths,
    fit_diffs,
    scan,
)
from agenstra_jupyter.manager.channel import text_response
from agenstra_jupyter.manager.models import AgentRecord
from agenstra_jupyter.manager.providers import Provider, Turn, TurnResult
from agenstra_jupyter.manager.runtimes import Runtime
from agenstra_jupyter.protocol import ChatEventKind, ManagerEvent

from .conftest import TEST_IMAGE
from .fakes import ACP_AGENT_COMMAND
from .helpers import SECRET, AgentsClient, events_of

needs_bwrap = pytest.mark.usefixtures("sandbox_available")
BOUNDS = ScanBounds()


def write(root: Path, path: str, content: str | bytes) -> Path:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)
    return target


def changes_of(root: Path, change, bounds: ScanBounds = BOUNDS):
    """Snapshot `root`, run `change()`, snapshot again and compare (as around a turn)."""
    before = scan(root, bounds)
    change()
    return compare(before, scan(root, bounds, before))


@pytest.fixture
def root(tmp_path) -> Path:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    return workspace


# -- snapshots and comparisons -------------------------------------------------------------


def test_created_changed_and_deleted_files_with_their_diffs(root):
    write(root, "b.py", "x = 1\n")
    write(root, "docs/c.md", "# C\n")
    write(root, "same.txt", "kept\n")

    def turn():
        write(root, "a.txt", "new\n")
        write(root, "b.py", "x = 2\n")  # same size: found by its times and content
        (root / "docs" / "c.md").unlink()

    changes = changes_of(root, turn)
    assert (changes.created, changes.changed, changes.deleted) == (
        ["a.txt"], ["b.py"], ["docs/c.md"])
    assert changes.paths == ["a.txt", "b.py", "docs/c.md"]
    assert changes.diffs == [
        {"kind": "diff", "path": "a.txt", "oldText": "", "newText": "new\n"},
        {"kind": "diff", "path": "b.py", "oldText": "x = 1\n", "newText": "x = 2\n"},
        {"kind": "diff", "path": "docs/c.md", "oldText": "# C\n", "newText": ""},
    ]


def test_nothing_changed_and_a_touch_that_changed_nothing_are_no_change(root):
    target = write(root, "notes.txt", "same\n")
    write(root, "data.bin", b"\0\1\2")
    assert changes_of(root, lambda: None).paths == []

    def touch():
        os.utime(target, ns=(time.time_ns() + 5 * 10**9,) * 2)
        target.write_text("same\n")  # rewritten with the same content: new times only

    assert changes_of(root, touch).paths == []


def test_content_is_trusted_from_the_stat_only_when_it_settled_before_the_snapshot(root):
    """A same-size rewrite within the mtime tick of a snapshot (coarse kernel clocks) keeps
    every stat field: such recent files are read again, older ones are not."""
    target = write(root, "racy.txt", "real\n")
    seen = scan(root, BOUNDS).files["racy.txt"]
    stale = replace(seen, text="old!\n")  # what the previous snapshot believed
    recent = Snapshot({"racy.txt": stale}, taken_ns=seen.mtime_ns)
    assert scan(root, BOUNDS, recent).files["racy.txt"].text == "real\n"
    settled = Snapshot({"racy.txt": stale}, taken_ns=seen.mtime_ns + 10 * 10**9)
    assert scan(root, BOUNDS, settled).files["racy.txt"].text == "old!\n"
    assert target.read_text() == "real\n"


def test_binary_and_big_files_are_listed_without_a_diff(root):
    bounds = ScanBounds(text_file_bytes=1000)
    write(root, "grow.txt", "small\n")

    def turn():
        write(root, "image.png", b"\x89PNG\r\n\x1a\n\0\0\0")
        write(root, "latin1.txt", "caf\xe9\n".encode("latin-1"))  # not UTF-8
        write(root, "big.txt", "y" * 5000)
        write(root, "grow.txt", "z" * 5000)  # was text, now too big to keep

    changes = changes_of(root, turn, bounds)
    assert changes.created == ["big.txt", "image.png", "latin1.txt"]
    assert changes.changed == ["grow.txt"]
    assert changes.diffs == []


def test_hidden_files_are_listed_without_their_text(root):
    """`.env`, `.netrc`, `.aws/credentials`: named, their secrets never copied anywhere."""
    write(root, ".env", "TOKEN=old-secret\n")

    def turn():
        write(root, ".env", "TOKEN=new-secret\n")
        write(root, ".aws/credentials", "aws_secret_access_key=abc\n")
        write(root, "visible.txt", "shown\n")

    changes = changes_of(root, turn)
    assert changes.paths == [".aws/credentials", ".env", "visible.txt"]
    assert changes.diffs == [{"kind": "diff", "path": "visible.txt", "oldText": "",
                              "newText": "shown\n"}]


def test_kept_texts_have_a_total_budget(root):
    bounds = ScanBounds(text_bytes=250)
    for i in range(5):
        write(root, f"f{i}.txt", f"{i}" * 100)

    def edit_all():
        for i in range(5):
            write(root, f"f{i}.txt", "-" * 100)

    changes = changes_of(root, edit_all, bounds)
    assert changes.changed == [f"f{i}.txt" for i in range(5)]
    assert len(changes.diffs) == 2  # only two files' contents fit the budget


def test_skipped_folders_and_special_files_are_not_walked(root):
    def turn():
        for folder in (".git", "node_modules", "__pycache__", ".ipynb_checkpoints", ".venv",
                       "src/__pycache__"):
            write(root, f"{folder}/x.txt", "ignored\n")
        os.mkfifo(root / "pipe")  # opening it would block a careless walk forever
        write(root, "src/main.py", "print()\n")

    assert changes_of(root, turn).paths == ["src/main.py"]


@pytest.mark.parametrize("bound", ["entries", "seconds", "depth"])
def test_past_a_bound_nothing_is_reported(root, bound):
    bounds = ScanBounds(entries=20) if bound == "entries" else (
        ScanBounds(seconds=0) if bound == "seconds" else BOUNDS)
    if bound == "depth":
        write(root, "/".join(["d"] * (MAX_DEPTH + 1)) + "/deep.txt", "x")
    else:
        for i in range(30):
            write(root, f"f{i}.txt", "x")
    before = scan(root, bounds)
    assert before.problem and before.files == {}
    write(root, "new.txt", "y")
    assert compare(before, scan(root, bounds, before)).paths == []


def test_a_missing_workspace_is_a_problem_not_a_crash(tmp_path):
    assert scan(tmp_path / "gone", BOUNDS).problem.startswith("the workspace cannot be opened")


def test_a_workspace_that_is_a_symlink_is_not_walked(tmp_path, root):
    write(root, "x.txt", "x")
    link = tmp_path / "link"
    link.symlink_to(root)
    assert scan(link, BOUNDS).problem.startswith("the workspace cannot be opened")


# -- attackers: links and swaps that point the manager at the user's files ------------------


@pytest.fixture
def secrets_dir(tmp_path) -> Path:
    """The user's files outside the workspace, which the manager (unsandboxed) can read."""
    folder = tmp_path / "secrets"
    write(folder, "id_rsa", f"PRIVATE {SECRET}\n")
    return folder


def test_links_out_of_the_workspace_are_listed_never_followed(root, secrets_dir):
    write(root, "notes.txt", "mine\n")

    def turn():
        (root / "leak.txt").symlink_to(secrets_dir / "id_rsa")
        (root / "leakdir").symlink_to(secrets_dir)
        (root / "notes.txt").unlink()
        (root / "notes.txt").symlink_to(secrets_dir / "id_rsa")  # a file becomes a link

    before = scan(root, BOUNDS)
    turn()
    after = scan(root, BOUNDS, before)
    changes = compare(before, after)
    assert changes.created == ["leak.txt", "leakdir"]  # the folder's files are not walked
    assert changes.changed == ["notes.txt"]
    assert changes.diffs == []
    assert SECRET not in repr(after) + json.dumps(changes.diffs)


def test_retargeting_a_link_is_a_change(root, tmp_path):
    (root / "current").symlink_to("v1")
    changes = changes_of(root, lambda: ((root / "current").unlink(),
                                        (root / "current").symlink_to("v2")))
    assert changes.changed == ["current"]


def test_a_file_swapped_for_a_link_or_a_fifo_after_listing_is_not_opened(root, secrets_dir):
    target = write(root, "f.txt", "x")
    listed = target.lstat()
    fd = os.open(root, DIR_FLAGS)
    try:
        target.unlink()
        target.symlink_to(secrets_dir / "id_rsa")
        assert _read_text(fd, "f.txt", listed, 1000) is None  # O_NOFOLLOW
        target.unlink()
        os.mkfifo(target)
        started = time.monotonic()
        assert _read_text(fd, "f.txt", listed, 1000) is None  # O_NONBLOCK, then not regular
        assert time.monotonic() - started < 1
        (root / "sub").symlink_to(secrets_dir)
        with pytest.raises(OSError):
            os.open("sub", DIR_FLAGS, dir_fd=fd)  # a folder swapped for a link: refused
    finally:
        os.close(fd)


class _SwappingOs:
    """`os` for the walk, with an agent that swaps a name for a link to the user's secrets
    at the worst moment: after the walk saw a real folder or file, before it opens it."""

    def __init__(self, root: Path, secrets: Path) -> None:
        self._swaps = {"sub": secrets, "f.txt": secrets / "id_rsa"}
        self._root = root

    def __getattr__(self, name: str):
        return getattr(os, name)

    def open(self, path, flags, mode=0o777, *, dir_fd=None):
        target = self._swaps.pop(path, None) if dir_fd is not None else None
        if target is not None:
            moved = self._root / f"{path}.moved"
            os.rename(self._root / path, moved)
            (self._root / path).symlink_to(target)
        return os.open(path, flags, mode, dir_fd=dir_fd)


def test_names_swapped_for_links_between_listing_and_opening_are_not_followed(
        root, secrets_dir, monkeypatch):
    write(root, "sub/mine.txt", "mine\n")
    write(root, "f.txt", "mine\n")
    monkeypatch.setattr(changes, "os", _SwappingOs(root, secrets_dir))
    snapshot = scan(root, BOUNDS)
    monkeypatch.undo()
    assert (root / "sub").is_symlink() and (root / "f.txt").is_symlink()  # both swapped
    assert set(snapshot.files) == {"f.txt"}  # listed as the file it was; nothing read
    assert snapshot.files["f.txt"].text is None
    assert SECRET not in repr(snapshot)


# -- the turn's part budget ------------------------------------------------------------------


def test_diffs_fit_the_room_left_and_say_when_cut():
    diffs = [{"kind": "diff", "path": f"f{i}", "oldText": "o" * 100_000, "newText": "n"}
             for i in range(10)]
    kept, cut = fit_diffs(diffs, 200_000 - 2)  # the room inside the parts' brackets
    assert cut and 1 <= len(kept) < 10
    assert len(json.dumps(kept, separators=(",", ":"))) <= 200_000
    assert all(part["truncated"] and part["oldText"].endswith("[truncated]") for part in kept)
    small = [{"kind": "diff", "path": "a", "oldText": "", "newText": "é\n"}]
    assert fit_diffs(small, 10_000) == (small, False)
    assert fit_diffs(small, 50) == ([], True)


def test_an_event_names_at_most_1000_paths_in_bounded_bytes(root):
    changes = changes_of(root, lambda: [write(root, f"f{i:04}", "") for i in range(1500)])
    assert len(changes.paths) == 1500
    paths, cut = event_paths(changes.paths)
    assert cut and paths == changes.paths[:MAX_PATHS]
    long = ["d" * 400 + f"/{i}" for i in range(MAX_PATHS)]  # deep paths: 400 KiB of names
    kept, cut = event_paths(long)
    assert cut and len(kept) < MAX_PATHS
    assert len(json.dumps(kept, separators=(",", ":"))) <= MAX_PATHS_BYTES
    assert event_paths(["a", "b"]) == (["a", "b"], False)


class FolderRuntime(Runtime):
    name = "folder"
    description = "A host folder, for FileWatch's unit tests."

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def host_workspace(self, agent: AgentRecord) -> Path | None:
        return self.root


class EditingProvider(Provider):
    """Runs `edit()` as its turn and answers with one part of its own."""

    name = "editing"
    description = "Edits files in a unit test."

    def __init__(self, root: Path, edit, reports: bool = False) -> None:
        agent = AgentRecord(id="a1", name="a1", provider="editing", runtime="folder",
                            password_hash="", created_at="", updated_at="")
        super().__init__(agent=agent, runtime=FolderRuntime(root))
        self._edit = edit
        self.reports_diffs = reports  # type: ignore[misc]

    async def run_turn(self, turn: Turn) -> TurnResult:
        self._edit()
        return TurnResult("done", {"parts": [{"kind": "toolCall", "args": "x" * 2000}]})


def recording_turn(parts_bytes: int = 1024 * 1024, fail: bool = False) -> tuple[Turn, list]:
    sent: list = []

    async def emit(kind: str, payload: dict) -> None:
        if fail:
            raise ConnectionError("the outbox is gone")
        sent.append((kind, payload))

    return Turn("go", "c1", False, emit, TurnLimits(parts_bytes=parts_bytes)), sent


async def test_the_watch_adds_diffs_within_what_the_parts_have_left(root):
    provider = EditingProvider(root, lambda: [write(root, f"f{i}.txt", "é" * 3000)
                                              for i in range(3)])
    turn, sent = recording_turn(parts_bytes=30_000)
    result = await FileWatch().run(provider, turn)
    assert sent == [(ChatEventKind.FILES_CHANGED, {"paths": ["f0.txt", "f1.txt", "f2.txt"]})]
    parts = result.extra["parts"]
    assert parts[0]["kind"] == "toolCall" and [p["path"] for p in parts[1:]][:1] == ["f0.txt"]
    assert result.extra["truncated"] is True  # "é" is 6 wire bytes: not all three fit
    assert fit_response(text_response(result), turn.limits)["parts"] == parts  # none dropped


async def test_the_watch_never_breaks_a_turn_and_reports_failed_ones(root):
    provider = EditingProvider(root, lambda: write(root, "a.txt", "a"), reports=True)
    turn, _ = recording_turn(fail=True)  # the event cannot be sent: the answer still is
    result = await FileWatch().run(provider, turn)
    assert result.text == "done" and len(result.extra["parts"]) == 1  # reports its own diffs

    def crash():
        write(root, "b.txt", "b")
        raise RuntimeError("the agent crashed")

    turn, sent = recording_turn()
    with pytest.raises(RuntimeError):
        await FileWatch().run(EditingProvider(root, crash), turn)
    assert sent == [(ChatEventKind.FILES_CHANGED, {"paths": ["b.txt"]})]


def test_a_scan_of_a_5000_file_project_is_quick(root):
    past = time.time_ns() - 60 * 10**9
    for i in range(5000):
        path = write(root, f"pkg{i % 50}/module{i}.py", f"value = {i}\n" * 20)
        os.utime(path, ns=(past, past))  # settled long before the first scan
    started = time.perf_counter()
    first = scan(root, BOUNDS)  # reads every small file once
    cold = time.perf_counter() - started
    started = time.perf_counter()
    again = scan(root, BOUNDS, first)  # stats only: the texts are reused
    warm = time.perf_counter() - started
    assert first.problem is None and len(again.files) == 5000
    print(f"5000 files: first scan {cold * 1000:.0f} ms, next scans {warm * 1000:.0f} ms")
    # Unchanged files settled before the first scan are not read again: their texts are
    # the very objects the first scan kept (the speed itself is a benchmark's business).
    assert all(again.files[p].text is first.files[p].text for p in first.files)


# -- through a real manager: the shell agent in its sandbox -------------------------------------


async def shell_agent(manager, name: str = "sh", **config) -> tuple[dict, AgentsClient]:
    agent = await manager.create_agent(name=name, provider="shell", config=config)
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    return agent, client


def files_changed(client: AgentsClient, correlation_id: str) -> list[list[str]]:
    return [e["payload"]["paths"]
            for e in events_of(client, correlation_id, ChatEventKind.FILES_CHANGED)]


def diff_parts(answer: dict) -> list[dict]:
    return [p for p in answer["response"].get("parts", []) if p.get("kind") == "diff"]


@needs_bwrap
async def test_a_shell_turn_reports_its_files_and_diffs(manager):
    agent, client = await shell_agent(manager)
    await client.chat("printf 'x = 1\\n' > b.py && printf '# C\\n' > c.md", correlationId="t1")
    assert files_changed(client, "t1") == [["b.py", "c.md"]]
    answer = await client.chat(
        "printf 'hello\\n' > a.txt && printf 'x = 2\\n' > b.py && rm c.md", correlationId="t2")
    assert answer["response"]["exitCode"] == 0
    assert files_changed(client, "t2") == [["a.txt", "b.py", "c.md"]]
    # The event comes before the answer it belongs to.
    names = [(n, p.get("kind"), p.get("from")) for n, p in client.log.events
             if p.get("correlationId") == "t2"]
    assert names.index((ManagerEvent.CHAT_EVENT, "filesChanged", None)) < names.index(
        (ManagerEvent.CHAT_MESSAGE, None, "agent"))
    expected = [
        {"kind": "diff", "path": "a.txt", "oldText": "", "newText": "hello\n"},
        {"kind": "diff", "path": "b.py", "oldText": "x = 1\n", "newText": "x = 2\n"},
        {"kind": "diff", "path": "c.md", "oldText": "# C\n", "newText": ""},
    ]
    assert diff_parts(answer) == expected
    # Stored: a fresh login replays the same parts.
    replay = await AgentsClient().connect(manager)
    await replay.login(agent)
    stored = await replay.answer_to("t2")
    assert diff_parts(stored) == expected
    quiet = await client.chat("cat b.py", correlationId="t3")
    assert quiet["response"]["result"] == "x = 2\n[exit code 0]"
    assert files_changed(client, "t3") == [] and diff_parts(quiet) == []
    await replay.close()
    await client.close()


@needs_bwrap
async def test_a_project_agents_paths_are_relative_to_its_project(start_manager, tmp_path):
    project = tmp_path / "root" / "proj"
    write(project, "notes.md", "# Notes\n")
    manager = start_manager(env={"AGENSTRA_PROJECT_ROOTS": str(tmp_path / "root")})
    agent = await manager.create_agent(name="p", provider="shell", project=str(project))
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    answer = await client.chat("echo more >> notes.md && mkdir sub && echo 'x' > sub/new.py",
                               correlationId="p")
    assert files_changed(client, "p") == [["notes.md", "sub/new.py"]]
    assert diff_parts(answer) == [
        {"kind": "diff", "path": "notes.md", "oldText": "# Notes\n", "newText": "# Notes\nmore\n"},
        {"kind": "diff", "path": "sub/new.py", "oldText": "", "newText": "x\n"},
    ]
    await client.close()


@pytest.mark.docker
async def test_a_docker_project_agent_reports_its_files(start_manager, tmp_path,
                                                        docker_available):
    """The container's workspace is the user's folder on this host: it is watched too."""
    project = tmp_path / "root" / "dproj"
    write(project, "keep.txt", "old\n")
    os.chown(project, 4321, 4321)  # Docker agents never work as root
    os.chown(project / "keep.txt", 4321, 4321)
    manager = start_manager(env={"AGENSTRA_PROJECT_ROOTS": str(tmp_path / "root")})
    agent = await manager.create_agent(name="d", provider="shell", runtime="docker",
                                       image=TEST_IMAGE, project=str(project))
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    answer = await client.chat("echo new > keep.txt", correlationId="d", timeout=120)
    assert answer["response"]["exitCode"] == 0, answer
    assert files_changed(client, "d") == [["keep.txt"]]
    assert diff_parts(answer) == [
        {"kind": "diff", "path": "keep.txt", "oldText": "old\n", "newText": "new\n"}]
    async with manager.http() as http:
        await http.delete(f"/api/agents/{agent['id']}")
    await client.close()


@needs_bwrap
async def test_a_link_to_the_users_secrets_is_named_never_read(manager, tmp_path):
    secret = tmp_path / "user-secret.txt"  # readable by the manager, outside every workspace
    secret.write_text(f"token={SECRET}\n")
    _, client = await shell_agent(manager)
    answer = await client.chat(f"ln -s {secret} leak.txt && mkdir d && ln -s {tmp_path} d/all",
                               correlationId="l")
    assert files_changed(client, "l") == [["d/all", "leak.txt"]]
    assert diff_parts(answer) == []
    assert SECRET not in json.dumps(client.log.events)
    assert SECRET not in manager.log()
    await client.close()


@needs_bwrap
async def test_a_cancelled_turn_still_reports_what_it_changed(manager):
    agent, client = await shell_agent(manager)
    await client.emit(ManagerEvent.CHAT, {"message": "echo half > half.txt; sleep 30",
                                          "correlationId": "s"})
    await client.log.wait_for(lambda _: events_of(client, "s", ChatEventKind.STATUS))
    half = manager.data_dir / "workspaces" / agent["id"] / "half.txt"
    while not half.exists():  # the command has written its file
        await asyncio.sleep(0.05)
    await client.emit(ManagerEvent.CANCEL, {"correlationId": "s"})
    answer = await client.answer_to("s")
    assert answer["response"]["cancelled"] is True
    assert files_changed(client, "s") == [["half.txt"]]
    await client.close()


@needs_bwrap
async def test_a_failed_turn_still_reports_what_it_changed(manager):
    _, client = await shell_agent(manager, timeout=1)
    answer = await client.chat("echo x > slow.txt; sleep 10", correlationId="f")
    assert answer["response"] == {"type": "error",
                                  "result": "The command timed out and was stopped"}
    assert files_changed(client, "f") == [["slow.txt"]]
    await client.close()


@needs_bwrap
async def test_diffs_stay_within_the_turns_part_budget(start_manager):
    manager = start_manager(env={"AGENSTRA_MAX_TURN_PARTS_BYTES": "100000"})
    _, client = await shell_agent(manager)
    answer = await client.chat(
        "for i in 1 2 3 4 5; do head -c 60000 /dev/zero | tr '\\0' a > f$i.txt; done",
        correlationId="big")
    assert files_changed(client, "big") == [[f"f{i}.txt" for i in range(1, 6)]]
    parts = answer["response"]["parts"]
    assert answer["response"]["truncated"] is True
    assert parts[0] == {"kind": "diff", "path": "f1.txt", "oldText": "", "newText": "a" * 60000}
    assert all(part["truncated"] for part in parts[1:])  # the rest: cut to the room left
    assert len(json.dumps(parts, separators=(",", ":"))) <= 100000
    await client.close()


@needs_bwrap
async def test_a_workspace_past_the_bounds_reports_nothing_and_the_turn_goes_on(start_manager):
    manager = start_manager(env={"AGENSTRA_FILE_CHANGES_MAX_ENTRIES": "5"})
    _, client = await shell_agent(manager)
    first = await client.chat("for i in 1 2 3 4 5 6 7 8; do echo $i > f$i; done; echo done",
                              correlationId="a")
    second = await client.chat("echo 9 > f9; echo done", correlationId="b")
    for answer in (first, second):
        assert answer["response"]["result"] == "done\n[exit code 0]"
        assert diff_parts(answer) == []
    assert files_changed(client, "a") == files_changed(client, "b") == []
    assert manager.log().count("are not reported: more than 5 entries") == 1
    await client.close()


# -- through a real manager: an ACP agent reports its own diffs ---------------------------------


async def test_an_acp_turn_reports_files_without_manager_diffs(manager):
    agent = await manager.create_agent(
        name="acp", provider="acp", config={"command": ACP_AGENT_COMMAND, "permissions": "allow"})
    client = await AgentsClient().connect(manager)
    await client.login(agent)
    answer = await client.chat("approve", correlationId="w")
    assert answer["response"]["result"] == "approve: yes file=written"
    workspace = manager.data_dir / "workspaces" / agent["id"]
    assert (workspace / "approved.txt").read_text() == "approved content\n"
    assert files_changed(client, "w") == [["approved.txt"]]
    assert diff_parts(answer) == []  # no manager-made duplicate
    # ACP's own tool-call diff is what shows.
    calls = [p for p in answer["response"]["parts"] if p["kind"] == ChatEventKind.TOOL_CALL]
    assert [d["newText"] for c in calls for d in c.get("diff", [])][:1] == ["approved content\n"]
    await client.close()

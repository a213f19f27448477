"""What a turn did to the workspace's files: a snapshot before the turn, one after, compared.

The manager runs outside the sandbox while the agent controls every byte of its workspace,
so the walk trusts nothing in it: each directory and file is opened relative to its parent's
descriptor with O_NOFOLLOW (a symlink anywhere is recorded as a link, never followed, its
target never read), only regular files are opened, and with O_NONBLOCK (a FIFO swapped in
cannot hang the walk). The walk is bounded in entries, depth and time; past a bound the turn
reports no changes (the log says so once) and the turn itself goes on unharmed.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from traitlets import Float, Int, TraitError
from traitlets.config import LoggingConfigurable

from ..config import apply_env
from ..protocol import ChatEventKind
from .bounds import clip_text, wire_size
from .providers.base import Provider, Turn, TurnResult

# Never walked: version control, dependencies and caches (large, and not the agent's work).
SKIPPED_DIRS = frozenset({".git", "node_modules", "__pycache__", ".ipynb_checkpoints", ".venv"})
MAX_DEPTH = 64  # directories deep; each level holds one descriptor open during the walk
MAX_PATHS = 1000  # paths one filesChanged event names
MAX_PATHS_BYTES = 256 * 1024  # wire bytes of those paths
MAX_DIFF_TEXT = 64 * 1024  # wire bytes kept of one diff's old (and of its new) text
MIN_DIFF_ROOM = 256  # below this, a diff that does not fit is dropped rather than cut
# A file modified this shortly before a snapshot may change again within the same mtime
# tick (coarse kernel clocks): its content is read again rather than trusted from the stat.
RACY_NS = 1_000_000_000
_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_FLAGS = _NOFOLLOW | os.O_DIRECTORY
FILE_FLAGS = _NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY


@dataclass(frozen=True)
class ScanBounds:
    entries: int = 20_000
    seconds: float = 2.0
    text_file_bytes: int = 256 * 1024
    text_bytes: int = 8 * 1024 * 1024


@dataclass(slots=True)
class Entry:
    """One file or symlink as a snapshot saw it (never changed once made: shared by
    successive snapshots)."""

    kind: str  # "file" or "link"
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    link: str | None = None  # a symlink's own content (where it points); never followed
    text: str | None = None  # a small text file's content, kept for diffs

    def same_stat(self, other: Entry) -> bool:
        return (self.kind, self.size, self.mtime_ns, self.ctime_ns, self.ino) == (
            other.kind, other.size, other.mtime_ns, other.ctime_ns, other.ino)

    def matches(self, info: os.stat_result) -> bool:
        """Whether `info` is this regular file's stat, unchanged."""
        return self.kind == "file" and (self.size, self.mtime_ns, self.ctime_ns, self.ino) == (
            info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


@dataclass
class Snapshot:
    files: dict[str, Entry] = field(default_factory=dict)  # by path relative to the root
    taken_ns: int = 0  # wall clock when the walk began (file times use the wall clock)
    problem: str | None = None  # why the walk is incomplete and must not be compared


@dataclass
class Changes:
    created: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # {kind: "diff", path, oldText, newText} for text files, unclipped, in path order.
    diffs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return sorted({*self.created, *self.changed, *self.deleted})


class _Bound(Exception):
    """The walk went past one of its bounds."""


class _Walker:
    def __init__(self, bounds: ScanBounds, previous: Snapshot | None) -> None:
        self.bounds = bounds
        self.previous = previous.files if previous and not previous.problem else {}
        # Content older than this may be trusted from an unchanged stat (see RACY_NS).
        self.settled_ns = (previous.taken_ns if previous else 0) - RACY_NS
        self.deadline = time.monotonic() + bounds.seconds
        self.entries = 0
        self.text_total = 0
        self.files: dict[str, Entry] = {}

    def walk(self, fd: int, prefix: str, depth: int) -> None:
        subdirs: list[str] = []
        for entry in sorted(self._list(fd), key=lambda e: e.name):
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # gone meanwhile
            path = prefix + _display(entry.name)
            if stat.S_ISDIR(info.st_mode):
                if entry.name not in SKIPPED_DIRS:
                    subdirs.append(entry.name)
            elif stat.S_ISLNK(info.st_mode):
                self.files[path] = self._link(fd, entry.name, info)
            elif stat.S_ISREG(info.st_mode):
                self.files[path] = self._file(fd, entry.name, path, info)
            # Sockets, FIFOs and devices are not the agent's work: not recorded, never opened.
        for name in subdirs:
            if depth >= MAX_DEPTH:
                raise _Bound(f"directories more than {MAX_DEPTH} deep")
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue  # gone, or replaced by a symlink meanwhile (O_NOFOLLOW refused it)
            try:
                self.walk(child, f"{prefix}{_display(name)}/", depth + 1)
            finally:
                os.close(child)

    def _list(self, fd: int) -> Iterator[os.DirEntry[str]]:
        with os.scandir(fd) as listing:
            for entry in listing:
                self.entries += 1
                if self.entries > self.bounds.entries:
                    raise _Bound(f"more than {self.bounds.entries} entries")
                if time.monotonic() > self.deadline:
                    raise _Bound(f"a walk longer than {self.bounds.seconds:g} s")
                yield entry

    def _link(self, fd: int, name: str, info: os.stat_result) -> Entry:
        try:
            target = os.readlink(name, dir_fd=fd)  # the link itself, not what it points to
        except OSError:
            target = None
        return Entry("link", info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino,
                     link=target)

    def _file(self, fd: int, name: str, path: str, info: os.stat_result) -> Entry:
        old = self.previous.get(path)
        if old is not None and old.mtime_ns < self.settled_ns and old.matches(info):
            return self._keep(old)  # the common case, kept cheap: a stat, no read
        entry = _entry(info)
        if (info.st_size > self.bounds.text_file_bytes or _private(path)
                or self.text_total + info.st_size > self.bounds.text_bytes):
            return entry
        opened = _read_text(fd, name, info, self.bounds.text_file_bytes)
        return self._keep(opened) if opened else entry

    def _keep(self, entry: Entry) -> Entry:
        """`entry`, without its text if the texts kept are over budget."""
        if entry.text is None:
            return entry
        # The whole file was read and decoded: its UTF-8 text is `size` bytes.
        if self.text_total + entry.size > self.bounds.text_bytes:
            return replace(entry, text=None)
        self.text_total += entry.size
        return entry


def _private(path: str) -> bool:
    """Hidden files (`.env`, `.netrc`, `.aws/credentials`) are listed by path, their text
    never copied into events, stored answers or recorded sessions."""
    return any(part.startswith(".") for part in path.split("/"))


def _entry(info: os.stat_result) -> Entry:
    return Entry("file", info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


def _read_text(fd: int, name: str, info: os.stat_result, limit: int) -> Entry | None:
    """The file with its content if it is still the same small UTF-8 text file."""
    try:
        file = os.open(name, FILE_FLAGS, dir_fd=fd)
    except OSError:
        return None  # gone, or replaced by a symlink (O_NOFOLLOW refused it)
    try:
        opened = os.fstat(file)
        if not stat.S_ISREG(opened.st_mode) or opened.st_ino != info.st_ino:
            return None  # swapped for something else since it was listed
        data = _read_up_to(file, limit + 1)
    except OSError:
        return None
    finally:
        os.close(file)
    if len(data) > limit or len(data) != opened.st_size or b"\0" in data:
        return None  # too big, or written to while read (the next snapshot reads it again)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return replace(_entry(opened), text=text)


def _read_up_to(file: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := os.read(file, min(65536, limit - size))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _display(name: str) -> str:
    """A file name as text; bytes that are not UTF-8 become U+FFFD."""
    if name.isascii():
        return name
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def scan(root: Path, bounds: ScanBounds, previous: Snapshot | None = None) -> Snapshot:
    """Walk `root` (blocking: run it in a thread). Unchanged files reuse `previous`'s text."""
    snapshot = Snapshot(taken_ns=time.time_ns())
    walker = _Walker(bounds, previous)
    try:
        fd = os.open(root, DIR_FLAGS)
    except OSError as exc:
        snapshot.problem = f"the workspace cannot be opened ({exc.strerror})"
        return snapshot
    try:
        walker.walk(fd, "", 0)
    except _Bound as exc:
        snapshot.problem = str(exc)
    except OSError as exc:
        snapshot.problem = f"the workspace cannot be read ({exc.strerror})"
    finally:
        os.close(fd)
    snapshot.files = {} if snapshot.problem else walker.files
    return snapshot


def compare(before: Snapshot, after: Snapshot) -> Changes:
    """What differs between two complete snapshots (nothing if either is incomplete)."""
    changes = Changes()
    if before.problem or after.problem:
        return changes
    for path in sorted(before.files.keys() | after.files.keys()):
        old, new = before.files.get(path), after.files.get(path)
        if old is None:
            changes.created.append(path)
        elif new is None:
            changes.deleted.append(path)
        elif _differs(old, new):
            changes.changed.append(path)
        else:
            continue
        diff = _diff(path, old, new)
        if diff is not None:
            changes.diffs.append(diff)
    return changes


def _differs(old: Entry, new: Entry) -> bool:
    if old.kind != new.kind or old.link != new.link:
        return True
    if old.text is not None and new.text is not None:
        return old.text != new.text  # a touch that changed nothing is no change
    return not old.same_stat(new)


def _diff(path: str, old: Entry | None, new: Entry | None) -> dict[str, Any] | None:
    """A before/after of a text file; None for links, binary and big files."""
    if (old is not None and old.text is None) or (new is not None and new.text is None):
        return None
    return {"kind": "diff", "path": path, "oldText": old.text if old else "",
            "newText": new.text if new else ""}


def event_paths(paths: list[str]) -> tuple[list[str], bool]:
    """The leading `paths` one event may name; and whether any was left out."""
    kept: list[str] = []
    used = 2
    for path in paths[:MAX_PATHS]:
        used += wire_size(path) + 1
        if used > MAX_PATHS_BYTES:
            break
        kept.append(path)
    return kept, len(kept) < len(paths)


def fit_diffs(diffs: list[dict[str, Any]], room: int) -> tuple[list[dict[str, Any]], bool]:
    """Diff parts within `room` wire bytes, each text cut to MAX_DIFF_TEXT; and if any was cut.

    A diff that does not fit is cut to the room left, the shorter side first served.
    """
    kept: list[dict[str, Any]] = []
    cut = False
    for diff in diffs:
        free = room - wire_size({**diff, "oldText": "", "newText": "", "truncated": True}) - 1
        if free < MIN_DIFF_ROOM:
            return kept, True
        old_room, new_room = _shares(diff["oldText"], diff["newText"], free)
        old, old_cut = clip_text(diff["oldText"], old_room)
        new, new_cut = clip_text(diff["newText"], new_room)
        part = {**diff, "oldText": old, "newText": new}
        if old_cut or new_cut:
            part["truncated"] = cut = True
        kept.append(part)
        room -= wire_size(part) + 1
    return kept, cut


def _shares(old: str, new: str, free: int) -> tuple[int, int]:
    """Wire bytes for each side of a diff: what it needs, up to MAX_DIFF_TEXT and `free`."""
    old_size = min(wire_size(old) - 2, MAX_DIFF_TEXT)
    new_size = min(wire_size(new) - 2, MAX_DIFF_TEXT)
    if old_size + new_size <= free:
        return old_size, new_size
    if old_size <= new_size:
        old_size = min(old_size, free // 2)
        return old_size, free - old_size
    new_size = min(new_size, free // 2)
    return free - new_size, new_size


class FileWatch(LoggingConfigurable):
    """Snapshots one agent's host workspace around each of its turns and reports changes."""

    max_entries = Int(
        ScanBounds.entries,
        help="Directory entries walked to find the files a turn changed; past them the turn "
             "reports none; 0: never look (AGENSTRA_FILE_CHANGES_MAX_ENTRIES).",
    ).tag(config=True, env="AGENSTRA_FILE_CHANGES_MAX_ENTRIES")
    scan_seconds = Float(
        ScanBounds.seconds,
        help="Seconds one walk of the workspace may take; past them the turn reports no "
             "changes (AGENSTRA_FILE_CHANGES_SECONDS).",
    ).tag(config=True, env="AGENSTRA_FILE_CHANGES_SECONDS")
    max_text_file_bytes = Int(
        ScanBounds.text_file_bytes,
        help="Largest text file whose before/after is kept for a diff "
             "(AGENSTRA_FILE_CHANGES_TEXT_FILE_BYTES).",
    ).tag(config=True, env="AGENSTRA_FILE_CHANGES_TEXT_FILE_BYTES")
    max_text_bytes = Int(
        ScanBounds.text_bytes,
        help="Bytes of file contents kept per agent for diffs "
             "(AGENSTRA_FILE_CHANGES_TEXT_BYTES).",
    ).tag(config=True, env="AGENSTRA_FILE_CHANGES_TEXT_BYTES")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        apply_env(self)
        self._last: Snapshot | None = None  # the turn's before-snapshot: unchanged texts reused
        self._warned = False

    @property
    def bounds(self) -> ScanBounds:
        return ScanBounds(self.max_entries, self.scan_seconds, self.max_text_file_bytes,
                          self.max_text_bytes)

    async def snapshot(self, root: Path) -> Snapshot:
        snapshot = await asyncio.to_thread(scan, root, self.bounds, self._last)
        self._last = snapshot
        return snapshot

    async def run(self, provider: Provider, turn: Turn) -> TurnResult:
        """`provider.run_turn(turn)`, with the workspace's changes reported at its end.

        A turn that fails or is cancelled changed its files all the same: the event is sent
        then too. Diff parts are added to answers of providers that do not report their own.
        """
        root = self._root(provider)
        try:
            before = await self._safe_snapshot(root) if root is not None else None
            if root is None or before is None or before.problem:
                return await provider.run_turn(turn)
            try:
                result = await provider.run_turn(turn)
            except BaseException:
                await self._report(root, before, turn, None)
                raise
            await self._report(root, before, turn, None if provider.reports_diffs else result)
            return result
        finally:
            # The texts serve this turn's diffs only: an idle agent holds none of them.
            self._last = None

    def _root(self, provider: Provider) -> Path | None:
        if self.max_entries <= 0 or not provider.changes_files:
            return None
        try:
            runtime, agent = provider.runtime, provider.agent
        except TraitError:
            return None  # a provider made without a runtime (unit tests, plug-ins)
        try:
            return runtime.host_workspace(agent)
        except Exception:
            self.log.exception("No host workspace for agent %s", agent.id)
            return None

    async def _safe_snapshot(self, root: Path) -> Snapshot | None:
        try:
            snapshot = await self.snapshot(root)
        except Exception:
            self.log.exception("Could not look at the files of workspace %s", root)
            return None
        if snapshot.problem and not self._warned:
            self._warned = True
            self.log.warning("Files changed by turns in %s are not reported: %s", root,
                             snapshot.problem)
        return snapshot

    async def _report(self, root: Path, before: Snapshot, turn: Turn,
                      result: TurnResult | None) -> None:
        """Send filesChanged and add the diffs to `result` (if given); never raises."""
        try:
            after = await self._safe_snapshot(root)
            changes = compare(before, after) if after is not None else Changes()
            if not changes.paths:
                return
            paths, cut = event_paths(changes.paths)
            payload: dict[str, Any] = {"paths": paths}
            if cut:
                payload["truncated"] = True
            await turn.emit(ChatEventKind.FILES_CHANGED, payload)
            if result is not None and changes.diffs:
                _add_diffs(result, changes.diffs, turn.limits.parts_bytes)
        except Exception:
            self.log.exception("Could not report the files changed in %s", root)


def _add_diffs(result: TurnResult, diffs: list[dict[str, Any]], parts_bytes: int) -> None:
    parts = result.extra.get("parts")
    parts = parts if isinstance(parts, list) else []
    used = 2 + sum(wire_size(part) + 1 for part in parts)  # as bounds.clip_parts counts
    added, cut = fit_diffs(diffs, parts_bytes - used)
    result.extra["parts"] = [*parts, *added]
    if cut:
        result.extra["truncated"] = True

"""The notebook tools' files: paths inside an agent's project, limits, and the document
backend that loads and saves notebooks.

Every path an agent gives is relative to its project. It is refused when it is absolute,
climbs out (`..`), names a hidden file or folder, or resolves (symlinks followed) to a
place outside the project or to a hidden one inside it; what remains is also named as the
Jupyter server sees it (relative to its root: sessions, the contents manager's hooks).
Files are then opened without following any symlink (`open_folder`), so a path swapped
for a symlink after the check fails instead of leading out. `NotebookStore` is the one
place that loads and saves a notebook: as a file, or, when the notebook is open with
real-time collaboration, as the shared document (shared.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import stat
import weakref
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import nbformat
from nbformat.v4.nbbase import random_cell_id
from traitlets import Float, Int
from traitlets.config import Configurable

from ...config import apply_env

NOTEBOOK_SUFFIX = ".ipynb"
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")  # C:\ or C:/, as an agent used to Windows writes


class ToolError(Exception):
    """A message the agent sees as the tool's error result (never a traceback)."""


class NotebookToolLimits(Configurable):
    """Bounds of the notebook tools (MCP): what one call may read, run and return."""

    max_notebook_bytes = Int(
        20 * 1024 * 1024, help="Largest notebook file the tools open (bytes). "
        "AGENSTRA_MCP_MAX_NOTEBOOK_BYTES."
    ).tag(config=True, env="AGENSTRA_MCP_MAX_NOTEBOOK_BYTES")
    max_result_chars = Int(
        40_000, help="Text one tool call returns at most (characters); the rest is left "
        "out with a note. AGENSTRA_MCP_MAX_RESULT_CHARS."
    ).tag(config=True, env="AGENSTRA_MCP_MAX_RESULT_CHARS")
    max_output_chars = Int(
        8_000, help="Text of one cell output returned at most (characters). "
        "AGENSTRA_MCP_MAX_OUTPUT_CHARS."
    ).tag(config=True, env="AGENSTRA_MCP_MAX_OUTPUT_CHARS")
    max_source_chars = Int(
        200_000, help="Longest cell source an agent may write (characters). "
        "AGENSTRA_MCP_MAX_SOURCE_CHARS."
    ).tag(config=True, env="AGENSTRA_MCP_MAX_SOURCE_CHARS")
    max_cells_per_run = Int(
        20, help="Cells one run_cells call may run. AGENSTRA_MCP_MAX_CELLS_PER_RUN."
    ).tag(config=True, env="AGENSTRA_MCP_MAX_CELLS_PER_RUN")
    run_timeout = Float(
        120.0, help="Default time a run_cells call may take (s); the kernel is interrupted "
        "when it is over. AGENSTRA_MCP_RUN_TIMEOUT."
    ).tag(config=True, env="AGENSTRA_MCP_RUN_TIMEOUT")
    max_run_timeout = Float(
        600.0, help="Longest timeout an agent may ask run_cells for (s). "
        "AGENSTRA_MCP_MAX_RUN_TIMEOUT."
    ).tag(config=True, env="AGENSTRA_MCP_MAX_RUN_TIMEOUT")
    max_kept_output_bytes = Int(
        2 * 1024 * 1024, help="Output of one cell run by an agent kept in memory and in the "
        "notebook (bytes); more is dropped with a note. AGENSTRA_MCP_MAX_KEPT_OUTPUT_BYTES."
    ).tag(config=True, env="AGENSTRA_MCP_MAX_KEPT_OUTPUT_BYTES")
    max_image_bytes = Int(
        1024 * 1024, help="Largest image returned to an agent (bytes, decoded); larger "
        "ones are named only. AGENSTRA_MCP_MAX_IMAGE_BYTES."
    ).tag(config=True, env="AGENSTRA_MCP_MAX_IMAGE_BYTES")
    max_images = Int(
        8, help="Images one tool call returns at most. AGENSTRA_MCP_MAX_IMAGES."
    ).tag(config=True, env="AGENSTRA_MCP_MAX_IMAGES")
    max_listed_files = Int(
        500, help="Entries list_files returns at most. AGENSTRA_MCP_MAX_LISTED_FILES."
    ).tag(config=True, env="AGENSTRA_MCP_MAX_LISTED_FILES")
    max_cells = Int(
        10_000, help="Cells a notebook may have for the tools to open it (a notebook of "
        "many tiny cells costs far more memory than its bytes). AGENSTRA_MCP_MAX_CELLS."
    ).tag(config=True, env="AGENSTRA_MCP_MAX_CELLS")

# Notebooks parsed at once in this server: each may take many times its size in memory.
PARSING = asyncio.Semaphore(2)


@dataclass
class _ServerState:
    limits: NotebookToolLimits
    # A lock lives while someone holds or awaits it: the paths ever touched are not kept.
    locks: weakref.WeakValueDictionary[str, asyncio.Lock]


_states: weakref.WeakKeyDictionary[Any, _ServerState] = weakref.WeakKeyDictionary()


def _state(serverapp: Any) -> _ServerState:
    state = _states.get(serverapp)
    if state is None:
        limits = NotebookToolLimits(parent=serverapp)
        apply_env(limits)
        state = _states[serverapp] = _ServerState(limits, weakref.WeakValueDictionary())
    return state


def limits_of(serverapp: Any) -> NotebookToolLimits:
    """The limits configured for this server (`c.NotebookToolLimits.*` or AGENSTRA_MCP_*)."""
    return _state(serverapp).limits


def lock_of(serverapp: Any, key: str) -> asyncio.Lock:
    """One lock per notebook (or kernel start): a read-modify-write is never interleaved."""
    locks = _state(serverapp).locks
    lock = locks.get(key)
    if lock is None:
        lock = locks[key] = asyncio.Lock()
    return lock


# -- paths --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A checked path: as the agent names it, on disk, and for the contents manager."""

    shown: str  # relative to the project, as the agent (and the approval card) sees it
    real: Path  # absolute, symlinks resolved
    api_path: str  # relative to the Jupyter root
    project: Path  # the project folder, resolved
    parts: tuple[str, ...]  # `real` relative to `project`: no symlink, nothing hidden


def root_of(serverapp: Any) -> Path:
    contents = getattr(serverapp, "contents_manager", None)
    root = getattr(contents, "root_dir", None) or serverapp.root_dir
    return Path(os.path.realpath(os.path.expanduser(root)))


def _parts(path: Any) -> list[str]:
    """The path's components, or ToolError when it is not a plain relative path."""
    if not isinstance(path, str):
        raise ToolError("A path is a string, relative to the project folder")
    if "\0" in path or len(path) > 4096:
        raise ToolError("That is not a usable path")
    if PurePosixPath(path).is_absolute() or _DRIVE.match(path) or path == "~" or \
            path.startswith("~/"):
        raise ToolError(f"{path!r} is an absolute path: paths are relative to the project "
                        "folder")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ToolError(f"{path!r} climbs out of its folder (..): paths stay inside the "
                        "project folder")
    if any(part.startswith(".") for part in parts):
        raise ToolError(f"{path!r} is a hidden file or folder, or lies in one: the tools "
                        "do not open those")
    return parts


def _check(root: Path, project_dir: str, path: str, notebook: bool) -> Target:
    project = Path(os.path.realpath(project_dir))
    if root not in project.parents:
        raise ToolError("The project lies outside the Jupyter root")
    parts = _parts(path)
    shown = "/".join(parts)
    try:
        real = Path(os.path.realpath(project.joinpath(*parts)))
    except OSError:  # a symlink changed while it was being followed
        raise ToolError(f"{shown!r} changed while it was being checked: try again") from None
    if real != project and project not in real.parents:
        raise ToolError(f"{shown!r} leads outside the project folder (a symlink?): refused")
    inside = real.relative_to(project).parts
    if any(part.startswith(".") for part in inside):
        raise ToolError(f"{shown!r} leads to a hidden file or folder: refused")
    if notebook:
        if real.suffix != NOTEBOOK_SUFFIX or not shown.endswith(NOTEBOOK_SUFFIX):
            raise ToolError(f"{shown!r} is not a notebook (a .ipynb file)")
        if not real.is_file():
            raise ToolError(f"No notebook {shown!r} in the project")
    elif not real.is_dir():
        raise ToolError(f"No folder {shown or '.'!r} in the project")
    return Target(shown or ".", real, real.relative_to(root).as_posix(), project, inside)


async def resolve(serverapp: Any, project: str, path: Any, notebook: bool = True) -> Target:
    """`path` (relative to the caller's project) checked: ToolError when it is refused.
    Touches the disk, so it runs in a thread."""
    return await asyncio.to_thread(_check, root_of(serverapp), project, path, notebook)


def list_folder(target: Target, limit: int) -> tuple[list[tuple[str, str, int]], int]:
    """(name, kind, size) of a folder's visible entries, sorted, at most `limit`, and how
    many there are in all. Symlinks are not followed (named "link"). Run in a thread."""
    entries: list[tuple[str, str, int]] = []
    total = 0
    fd = open_folder(target, target.parts)
    try:
        found_entries = _scan(fd)
    except OSError as exc:
        raise ToolError(f"{target.shown!r} cannot be listed: {exc.strerror}") from None
    finally:
        os.close(fd)
    for entry in found_entries:
        if entry[0].startswith("."):
            continue
        total += 1
        entries.append(entry)
    entries.sort(key=lambda item: (item[1] != "folder", item[0]))
    return entries[:limit], total


def _scan(fd: int) -> list[tuple[str, str, int]]:
    found_entries: list[tuple[str, str, int]] = []
    with os.scandir(fd) as found:
        for entry in found:
            if entry.is_symlink():
                found_entries.append((entry.name, "link", 0))
            elif entry.is_dir(follow_symlinks=False):
                found_entries.append((entry.name, "folder", 0))
            else:
                size = entry.stat(follow_symlinks=False).st_size
                kind = "notebook" if entry.name.endswith(NOTEBOOK_SUFFIX) else "file"
                found_entries.append((entry.name, kind, size))
    return found_entries


# -- opening without following symlinks ----------------------------------------------------
# A path is checked (resolved, inside the project) and then opened: an agent that swaps a
# file or a folder of its project for a symlink in between must not reach outside. So
# files are opened component by component from the project folder, never following a
# symlink (O_NOFOLLOW): a swapped path fails to open instead.

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_folder(target: Target, parts: tuple[str, ...]) -> int:
    """A descriptor of the project's folder `parts`, opened without following symlinks."""
    try:
        fd = os.open(target.project, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise ToolError("The project folder cannot be opened (was it removed?)") from None
    try:
        for part in parts:
            inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
    except OSError:
        os.close(fd)
        raise ToolError(f"{target.shown} changed while it was being opened: try "
                        "again") from None
    return fd


def read_file(target: Target, limit: int) -> bytes:
    """The file's bytes, at most `limit` (else ToolError); a regular file only: a FIFO or
    device does not block or stream forever. Run in a thread."""
    folder = open_folder(target, target.parts[:-1])
    try:
        fd = os.open(target.parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK |
                     os.O_CLOEXEC, dir_fd=folder)
    except OSError:
        raise ToolError(f"{target.shown} changed while it was being opened: try "
                        "again") from None
    finally:
        os.close(folder)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ToolError(f"{target.shown} is not a regular file")
        if info.st_size > limit:
            raise ToolError(f"{target.shown} is {info.st_size:,} bytes: larger than the "
                            f"{limit:,} bytes the tools open")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ToolError(f"{target.shown} is larger than the {limit:,} bytes the tools open")
    return data


def write_file(target: Target, data: bytes) -> None:
    """Replace the file atomically (a temporary file renamed over it), in the folder opened
    without following symlinks; rename replaces a symlink put there, never its target."""
    folder = open_folder(target, target.parts[:-1])
    name = target.parts[-1]
    temporary = f".~{name}.{secrets.token_hex(6)}.agenstra"
    try:
        try:
            mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
        except FileNotFoundError:
            raise ToolError(f"{target.shown} was removed meanwhile") from None
        if not stat.S_ISREG(mode):
            raise ToolError(f"{target.shown} changed while it was being saved: nothing was "
                            "saved")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                     os.O_CLOEXEC, stat.S_IMODE(mode), dir_fd=folder)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=folder)
            raise
    finally:
        os.close(folder)


# -- the document backend ----------------------------------------------------------------------


class NotebookStore:
    """Loads and saves notebooks as the Jupyter server's contents manager does (its trust
    marks and signatures, pre- and post-save hooks, its "save" event), but reads and
    writes the bytes itself through descriptors that never follow a symlink (see
    open_folder): the contents manager opens paths by name, which an agent could swap for
    a symlink between the check and the open.

    Tools change a notebook only as load → change → save under the notebook's lock, so
    two tool calls never lose each other's edits. A notebook open with real-time
    collaboration (jupyter-collaboration) is loaded from its shared document instead, and
    a save replays the tool's change on that document (shared.apply): open views update
    at once and the user's typing meanwhile is kept. One store serves one tool call.
    """

    def __init__(self, serverapp: Any) -> None:
        self.serverapp = serverapp
        self.contents = serverapp.contents_manager
        self.limits = limits_of(serverapp)
        self.collaboration = _collaboration(serverapp)
        # Cells as loaded, by path, and whether from the shared document.
        self._read: dict[str, tuple[bool, list[dict[str, Any]]]] = {}

    def lock(self, target: Target) -> asyncio.Lock:
        return lock_of(self.serverapp, f"notebook:{target.api_path}")

    async def _shared(self, target: Target) -> Any | None:
        if self.collaboration is None:
            return None
        from . import shared  # needs jupyter-collaboration's packages

        return await shared.open_document(self.collaboration, target.api_path)

    async def load(self, target: Target) -> nbformat.NotebookNode:
        document = await self._shared(target)
        if document is not None:
            return self._load_shared(target, document)
        notebook = await self._load_file(target)
        self._read[target.api_path] = (False, [])
        return notebook

    def _load_shared(self, target: Target, document: Any) -> nbformat.NotebookNode:
        from . import shared

        if shared.cell_count(document) > self.limits.max_cells:
            raise ToolError(f"{target.shown} has {shared.cell_count(document):,} cells: the "
                            f"tools open notebooks of {self.limits.max_cells:,} cells at most")
        if shared.size(document) > self.limits.max_notebook_bytes:
            raise ToolError(f"{target.shown} is larger than the "
                            f"{self.limits.max_notebook_bytes:,} bytes the tools open")
        shared.repair_ids(document)
        content = shared.read(document)
        problem = _shape_problem(content)
        if problem:
            raise ToolError(f"{target.shown} is not a usable notebook: {problem}")
        self._read[target.api_path] = (True, content["cells"])
        return nbformat.from_dict(shared.read(document))  # a copy the tool may change

    async def _load_file(self, target: Target) -> nbformat.NotebookNode:
        # Reading and parsing (up to max_notebook_bytes of JSON) off the event loop.
        async with PARSING:
            notebook = await asyncio.to_thread(_parse, target, self.limits.max_notebook_bytes,
                                               self.limits.max_cells)
        problem = _shape_problem(notebook)
        if problem:
            raise ToolError(f"{target.shown} is not a usable notebook: {problem}")
        self.contents.mark_trusted_cells(notebook, target.api_path)
        return notebook

    async def save(self, target: Target, notebook: nbformat.NotebookNode) -> None:
        with_ids(notebook)
        document = await self._shared(target)
        from_shared, before = self._read.get(target.api_path, (False, []))
        if document is not None:
            if not from_shared:  # its room opened after the tool read the file
                raise ToolError(f"{target.shown} was opened in JupyterLab meanwhile: nothing "
                                "was changed; try again")
            from . import shared

            after = _plain(notebook.cells)
            try:
                shared.apply(document, before, after)  # the room saves it, as the user's edits
            except ValueError as exc:
                raise ToolError(f"{target.shown}: {exc}") from None
            self._read[target.api_path] = (True, after)
            return
        await self._save_file(target, notebook)

    async def _save_file(self, target: Target, notebook: nbformat.NotebookNode) -> None:
        model = {"type": "notebook", "format": "json", "content": notebook,
                 "path": target.api_path, "name": target.real.name}
        try:
            self.contents.run_pre_save_hooks(model=model, path=target.api_path)
            self.contents.check_and_sign(notebook, target.api_path)
        except Exception as exc:
            raise ToolError(f"{target.shown} could not be saved: "
                            f"{_first_line(str(exc) or type(exc).__name__)}") from None
        try:
            await asyncio.to_thread(_serialize_and_write, target, notebook)
        except OSError as exc:
            raise ToolError(f"{target.shown} could not be saved: {exc.strerror}") from None
        saved = {key: value for key, value in model.items() if key != "content"}
        self.contents.run_post_save_hooks(model=saved, os_path=str(target.real))
        self.contents.emit(data={"action": "save", "path": target.api_path})


def _collaboration(serverapp: Any) -> Any | None:
    """jupyter_server_ydoc's extension, when it runs with real-time collaboration on."""
    settings = getattr(getattr(serverapp, "web_app", None), "settings", None) or {}
    extension = settings.get("jupyter_server_ydoc")
    if extension is None or getattr(extension, "disable_rtc", False):
        return None
    return extension if hasattr(extension, "get_document") else None


def _plain(cells: list[Any]) -> list[dict[str, Any]]:
    """Cells as plain JSON values, with sources as one string (as the shared document
    holds them): what a save compares with what was loaded."""
    plain = json.loads(json.dumps(cells))
    for cell in plain:
        if isinstance(cell.get("source"), list):
            cell["source"] = "".join(cell["source"])
    return plain


def _parse(target: Target, limit: int, max_cells: int) -> nbformat.NotebookNode:
    data = read_file(target, limit)
    try:
        text = data.decode("utf-8")
        cells = json.loads(text).get("cells")  # plain JSON first: the count is cheap there
        if isinstance(cells, list) and len(cells) > max_cells:
            raise ToolError(f"{target.shown} has {len(cells):,} cells: the tools open "
                            f"notebooks of {max_cells:,} cells at most")
        del cells
        return nbformat.reads(text, as_version=4)
    except ToolError:
        raise
    except Exception as exc:  # bad UTF-8, bad JSON, not a notebook
        raise ToolError(f"{target.shown} cannot be read as a notebook: "
                        f"{_first_line(str(exc) or type(exc).__name__)}") from None


def _serialize_and_write(target: Target, notebook: nbformat.NotebookNode) -> None:
    write_file(target, nbformat.writes(notebook, version=nbformat.NO_CONVERT).encode("utf-8"))


def _shape_problem(notebook: Any) -> str | None:
    """What the tools rely on, checked (full validation would refuse notebooks JupyterLab
    opens): cells of a known type with text sources, code cells with lists of outputs."""
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        return "it has no list of cells"
    if not isinstance(notebook.get("metadata", {}), dict):
        return "its metadata is not an object"
    for index, cell in enumerate(notebook["cells"]):
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown",
                                                                       "raw"):
            return f"cell {index} is not a code, markdown or raw cell"
        source = cell.get("source", "")
        if not isinstance(source, str) and not (
                isinstance(source, list) and all(isinstance(line, str) for line in source)):
            return f"the source of cell {index} is not text"
        if not isinstance(cell.get("metadata", {}), dict):
            return f"the metadata of cell {index} is not an object"
        outputs = cell.get("outputs", [])
        if cell["cell_type"] == "code" and not (
                isinstance(outputs, list) and all(isinstance(o, dict) for o in outputs)):
            return f"the outputs of cell {index} are not a list of outputs"
    return None


def with_ids(notebook: nbformat.NotebookNode) -> None:
    """Give every cell an id (nbformat 4.5): tools and the approval card name cells by it,
    and it survives other cells being inserted or moved meanwhile."""
    if (notebook.get("nbformat"), notebook.get("nbformat_minor", 0)) < (4, 5):
        notebook["nbformat"], notebook["nbformat_minor"] = 4, 5
    seen: set[str] = set()
    for cell in notebook.cells:
        cell_id = cell.get("id")
        if not isinstance(cell_id, str) or not cell_id or cell_id in seen:
            cell["id"] = cell_id = random_cell_id()
        seen.add(cell_id)


def _first_line(text: str) -> str:
    return str(text).strip().splitlines()[0][:300] if str(text).strip() else "unknown error"

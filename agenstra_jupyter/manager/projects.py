"""Projects (DESIGN.md "Projects"): which of the user's folders an agent may work in.

Both the controller (a folder relative to the Jupyter root) and the manager (an absolute
folder under one of its `project_roots`) judge a project with `project_problem`: it must
be a real directory strictly inside a root, not hidden, and neither be, hold nor lie in a
secret place (the user's HOME itself, Jupyter's directories, the manager's data: the same
list the sandbox hides, `sandbox.secret_paths`). Symlinks are followed first, so a link
inside the root that points elsewhere is judged by where it points.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitlets import List, Unicode

from ..protocol import AgenstraError, ErrorCode
from .runtimes.sandbox import secret_paths

SUBFOLDER = "choose a subfolder"
# The host's own trees: a project never lies in one (a project is bound read-write, over
# the sandbox's own /proc, /dev and /tmp: "/proc" would show every process's environment).
SYSTEM_TREES = ("/proc", "/sys", "/dev", "/etc", "/usr", "/boot", "/bin", "/sbin", "/lib",
                "/lib32", "/lib64", "/libx32", "/run", "/var", "/snap")
# Shared scratch folders: a folder made in one may be a project, never the folder itself
# (it holds other programs' sockets: ssh-agent, tmux, X11).
SHARED_SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")


class PathList(List):
    """A list of folders; its environment variable separates them with os.pathsep."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(Unicode(), **kwargs)

    def from_string(self, s: str) -> list[str]:  # type: ignore[override]
        return [part for part in s.split(os.pathsep) if part.strip()]


def refused(message: str) -> AgenstraError:
    return AgenstraError(ErrorCode.INVALID_PAYLOAD, message)


def real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def _contains(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def project_problem(path: Path, roots: Sequence[Path], protected: Iterable[str | Path] = (),
                    name: str | None = None) -> str | None:
    """Why the folder `path` (resolved) cannot be a project; None when it can.

    `name` is how the user wrote it (for the messages); `roots` are resolved.
    """
    shown = repr(name if name is not None else str(path))
    root = next((r for r in roots if _contains(r, path)), None)
    if root is None:
        return f"The project {shown} lies outside the folders agents may work in"
    if path == root:
        return f"The project {shown} is the whole root folder: {SUBFOLDER}"
    if not path.exists():
        return f"The project {shown} does not exist"
    if not path.is_dir():
        return f"The project {shown} is not a folder"
    if any(part.startswith(".") for part in path.relative_to(root).parts):
        return f"The project {shown} is a hidden folder or lies in one: {SUBFOLDER}"
    return _secret_problem(path, shown, protected) or _system_problem(path, shown)


def _system_problem(path: Path, shown: str) -> str | None:
    """Folders whose contents run outside the sandbox or are the host's: the system's
    trees, the Python installation Jupyter runs from, every folder on PATH."""
    for scratch in map(Path, SHARED_SCRATCH):
        if _contains(path, scratch):
            return f"The project {shown} is the shared folder {scratch}: {SUBFOLDER}"
    scratch_child = any(scratch in path.parents for scratch in map(Path, SHARED_SCRATCH))
    for tree in map(Path, SYSTEM_TREES):
        if _contains(tree, path) and not scratch_child:
            return f"The project {shown} lies in the system folder {tree}"
    for code in _code_folders():
        if _contains(code, path) or _contains(path, code):
            return (f"The project {shown} holds or lies in {code}, whose programs run "
                    f"outside any sandbox: {SUBFOLDER}")
    return None


def _code_folders() -> list[Path]:
    """The Python installation this process runs from and the folders on its PATH."""
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix,
             *os.environ.get("PATH", "").split(os.pathsep)}
    return [real(p) for p in found if p and os.path.isabs(p) and p != "/"]


def _secret_problem(path: Path, shown: str, protected: Iterable[str | Path]) -> str | None:
    homes = {Path.home(), real(Path.home())}
    for secret in secret_paths(protected):
        if path == secret and secret in homes:
            return f"The project {shown} is your HOME folder: {SUBFOLDER}"
        if _contains(path, secret):
            return (f"The project {shown} holds {secret}, which agents must never see: "
                    f"{SUBFOLDER}")
        # HOME is where projects usually lie; any other secret directory is off limits.
        if secret not in homes and _contains(secret, path):
            return f"The project {shown} lies inside {secret}, which agents must never see"
    return None


def resolve_relative(root: str, project: str, protected: Iterable[str | Path] = ()) -> Path:
    """The controller's check: `project`, relative to the Jupyter root, as an absolute
    resolved folder; AgenstraError (400) when it cannot be one. Touches the disk: run it
    in a thread."""
    if "\0" in project:
        raise refused("The project must be a folder name")
    if os.path.isabs(project) or project.startswith("~"):
        raise refused("The project is a folder relative to the Jupyter root, not an "
                      "absolute path")
    base = real(root)
    path = real(base / project)
    problem = project_problem(path, [base], protected, name=project)
    if problem:
        raise refused(problem.replace("the folders agents may work in", "the Jupyter root"))
    return path


@dataclass
class ProjectPolicy:
    """The manager's projects: the folders they may lie under and what they must not hold."""

    roots: list[str] = field(default_factory=list)
    protected: list[str] = field(default_factory=list)  # its data, workspaces, key file

    @property
    def enabled(self) -> bool:
        return bool(self.roots)

    async def check(self, project: str) -> Path:
        """The resolved folder, or AgenstraError (400) saying why it cannot be a project."""
        if not self.enabled:
            raise refused("This manager cannot open your files (it has no project roots: "
                          "AGENSTRA_PROJECT_ROOTS)")
        if "\0" in project or not os.path.isabs(project):
            raise refused("A project sent to a manager is an absolute folder path")
        return await asyncio.to_thread(self._check, project)

    def _check(self, project: str) -> Path:
        path = real(project)
        problem = project_problem(path, [real(root) for root in self.roots], self.protected,
                                  name=project)
        if problem:
            raise refused(problem)
        return path


def relative_project(project: Any, root: str) -> str | None:
    """A manager's absolute project as the Jupyter root sees it (what a frontend opens
    documents with); None when there is none or it lies outside the root."""
    if not isinstance(project, str) or not project:
        return None
    base = real(root)
    path = Path(project)
    if base not in path.parents:
        return None
    return path.relative_to(base).as_posix()

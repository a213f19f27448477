"""One manager per data directory: two managers on one database would each replay,
recover and answer the other's turns. The lock lives as long as the manager's process."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "manager.lock"


class DataDirInUse(RuntimeError):
    def __init__(self, data_dir: Path, holder: str) -> None:
        super().__init__(
            f"{data_dir} is in use by another agenstra-manager (pid {holder}); give each "
            "manager its own data directory (a second Jupyter server: its own "
            "AGENSTRA_CONTROLLER_DATA_DIR)"
        )


def hold(data_dir: Path) -> int:
    """Take the directory's lock for this process (the fd stays open until exit)."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirInUse(data_dir, holder) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def check_free(data_dir: Path) -> None:
    """Raise DataDirInUse if a manager holds `data_dir` (for a supervisor, before it spawns)."""
    if not (data_dir / LOCK_FILE).exists():
        return
    with contextlib.suppress(FileNotFoundError):
        os.close(hold(data_dir))

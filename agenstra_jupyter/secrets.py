"""Secrets at rest, for both tiers: Fernet encryption with a key file, owner-only files.

The controller encrypts agent passwords and manager API keys with `controller.key`; the
manager encrypts agent configs with `manager.key`. Data directories are 0700 and the
files in them 0600 whatever the umask, and are tightened on every start.
"""

from __future__ import annotations

import binascii
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class SecretKeyError(ValueError):
    """The key is no Fernet key, or not the key the stored secrets were encrypted with."""


class SecretBox:
    """Fernet (AES-128-CBC + HMAC-SHA256) with one key per data directory."""

    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, binascii.Error):
            raise SecretKeyError("The secret key is not a Fernet key") from None

    @classmethod
    def from_key_file(cls, path: Path) -> SecretBox:
        """Load the key, creating it owner-only on first use (an existing one is tightened)."""
        if not path.parent.exists():
            private_dir(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        except FileExistsError:
            private_file(path)
        else:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), PRIVATE_FILE)  # os.open's mode is filtered by umask
                handle.write(Fernet.generate_key())
        try:
            return cls(path.read_bytes().strip())
        except SecretKeyError:
            raise SecretKeyError(f"{path} does not hold a Fernet key") from None

    def encrypt(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyError("A stored secret cannot be decrypted with this key") from None


def private_dir(path: Path) -> Path:
    """Create `path` if needed and make it owner-only (0700), also when it existed."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)  # mkdir's mode is filtered by the umask
    return path


def private_file(path: Path) -> None:
    """Make an existing file owner-only (0600); a missing one is left missing."""
    try:
        os.chmod(path, PRIVATE_FILE)
    except FileNotFoundError:
        pass


def create_private_file(path: Path) -> None:
    """Create an empty file owner-only unless it exists; tighten it if it does."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)

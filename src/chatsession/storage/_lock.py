"""One owner per data dir: an exclusive ``flock`` on ``DATA_DIR/.lock``.

Without Redis nothing tells two processes that they share a data dir, and a second one
would archive the first one's live dialogs as ``recovered`` at its start while the first
goes on appending to files that are gone. So a `ChatServer` over the YAML files takes this
lock before it touches a dialog. It is ``flock(2)`` on an open descriptor: the kernel
releases it when the process ends, however it ends (``kill -9`` included), so a lock file
left behind never blocks a restart. The file holds the owner's pid, host and address,
written once the lock is held, so that a refused process can name who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from chatsession._exceptions import DataDirLocked, StorageError
from chatsession.storage.files import YamlDialogStore

__all__ = ["LOCK_FILE", "DataDirLock", "files_root"]

LOCK_FILE = ".lock"


class DataDirLock:
    """The exclusive lock on one data dir; `acquire` it, `release` it (idempotent)."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, address: str | None = None) -> None:
        """Take the lock and record this process as its owner, serving at ``address``.

        Raises:
            DataDirLocked: another process holds it; the message names that process.
            StorageError: the data dir cannot be created or written.
        """
        if self._fd is not None:
            raise RuntimeError("The data dir lock is already held by this object.")
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot write the data dir {self.data_dir}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise DataDirLocked(_refusal(self.data_dir, owner)) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock the data dir {self.data_dir}: {exc}") from exc
        try:
            _write_owner(fd, address)
        except OSError as exc:
            os.close(fd)  # closing the descriptor releases the lock
            raise StorageError(f"cannot write the data dir {self.data_dir}: {exc}") from exc
        self._fd = fd

    def release(self) -> None:
        """Give the lock up; the file stays, empty of meaning once nobody holds it."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def files_root(store: object) -> Path | None:
    """The data dir of a YAML file store, looking through wrappers; None for other stores.

    A wrapper (such as the server's timing one) exposes the store it wraps as ``.store``.
    """
    seen = 0
    while not isinstance(store, YamlDialogStore) and hasattr(store, "store") and seen < 8:
        store, seen = store.store, seen + 1
    return store.root if isinstance(store, YamlDialogStore) else None


def _write_owner(fd: int, address: str | None) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "address": address}
    data = (json.dumps(owner) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        owner = json.loads(text)
    except (OSError, ValueError):
        return {}  # the owner is between taking the lock and writing its name
    return owner if isinstance(owner, dict) else {}


def _refusal(data_dir: Path, owner: dict[str, Any]) -> str:
    who = f"process {owner.get('pid', '?')}"
    if owner.get("host") and owner.get("host") != socket.gethostname():
        who += f" on {owner['host']}"
    if owner.get("address"):
        who += f" serving {owner['address']}"
    return (
        f"the data dir {data_dir} is in use by {who}; one data dir has one server "
        "(stop that one first, or give this one another DATA_DIR). "
        "Several instances share one DATA_DIR through Redis (REDIS_URL)."
    )

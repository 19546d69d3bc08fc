"""Current dialog files kept open between appends, so that storing a message is one write.

A bounded least-recently-used map from user id to an open ``current.yaml``: its file
descriptor (opened with ``O_APPEND``), its path and its length so far. The store is the
file's only writer, so it tracks the length itself instead of asking the file system on
every append. The bound leaves most of the process's descriptors to sockets and
everything else; a dialog pushed out is simply closed, and reopened on its next message.
"""

from __future__ import annotations

import logging
import os
import resource
import weakref
from collections import OrderedDict

__all__ = ["DialogFileGone", "OpenDialog", "OpenDialogs", "default_limit"]

logger = logging.getLogger("chatsession.storage")

MAX_OPEN_DIALOGS = 4096


def default_limit() -> int:
    """A quarter of the soft ``RLIMIT_NOFILE``, at most `MAX_OPEN_DIALOGS`."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return MAX_OPEN_DIALOGS
    return max(1, min(soft // 4, MAX_OPEN_DIALOGS))


class OpenDialog:
    """One user's ``current.yaml``, open for appending; ``size`` is its length in bytes."""

    __slots__ = ("fd", "path", "size")

    def __init__(self, fd: int, path: str, size: int) -> None:
        self.fd = fd
        self.path = path
        self.size = size


class OpenDialogs:
    """At most ``limit`` open dialogs; adding one past that closes the least recently used.

    Used from the event loop's thread only: a descriptor must never be written from a
    worker thread while the loop might close it.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"at least one dialog must be allowed open, got {limit}")
        self.limit = limit
        self._dialogs: OrderedDict[str, OpenDialog] = OrderedDict()
        # A store dropped without aclose() still gives its descriptors back.
        weakref.finalize(self, _close_all, self._dialogs)

    def __len__(self) -> int:
        return len(self._dialogs)

    def get(self, user_id: str) -> OpenDialog | None:
        """The user's open dialog, now the most recently used; None if it is not open."""
        dialog = self._dialogs.get(user_id)
        if dialog is not None:
            self._dialogs.move_to_end(user_id)
        return dialog

    def open(self, user_id: str, path: str) -> OpenDialog:
        """Open the user's ``current.yaml`` at ``path`` for appending, and keep it open.

        Raises:
            OSError: it cannot be opened.
        """
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        dialog = OpenDialog(fd, path, size)
        self.keep(user_id, dialog)
        return dialog

    def append(self, user_id: str, dialog: OpenDialog, data: bytes) -> None:
        """Append ``data`` to the user's open ``dialog`` whole, or not at all.

        Raises:
            DialogFileGone: the open file is no longer this store's alone (it was unlinked,
                replaced or written by another process); nothing was written; it is closed.
            OSError: the write failed; the file is cut back to its length before, and
                closed (the next append reopens it and measures it afresh).
        """
        # One fstat. The store is the file's only writer: a file with no name left, or a
        # length other than the one it wrote, was archived, recovered, replaced or written
        # by another process, and a message written here would be lost or would corrupt it.
        opened = os.fstat(dialog.fd)
        if opened.st_nlink == 0 or opened.st_size != dialog.size:
            self.close(user_id)
            logger.error(
                "%s was unlinked, replaced or written by another process while open: the "
                "message is refused, not stored (is a second server using this data dir?)",
                dialog.path,
            )
            raise DialogFileGone(dialog.path)
        try:
            written = os.write(dialog.fd, data)
            if written != len(data):  # the disk is filling up, most likely
                _write_all(dialog.fd, data[written:])
        except OSError:
            try:
                os.ftruncate(dialog.fd, dialog.size)  # never leave a partial record behind
            finally:
                self.close(user_id)
            raise
        dialog.size += len(data)

    def keep(self, user_id: str, dialog: OpenDialog) -> None:
        """Keep ``dialog`` open as the user's; the user must have none open already."""
        self._dialogs[user_id] = dialog
        if len(self._dialogs) > self.limit:
            _, oldest = self._dialogs.popitem(last=False)
            _close(oldest)

    def close(self, user_id: str) -> None:
        """Close the user's dialog if it is open; before anything renames or unlinks it."""
        dialog = self._dialogs.pop(user_id, None)
        if dialog is not None:
            _close(dialog)

    def close_all(self) -> None:
        _close_all(self._dialogs)


class DialogFileGone(OSError):
    """The open ``current.yaml`` was unlinked or replaced under the store."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} was unlinked, replaced or written by another process")
        self.path = path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _close_all(dialogs: OrderedDict[str, OpenDialog]) -> None:
    while dialogs:
        _, dialog = dialogs.popitem(last=False)
        _close(dialog)


def _close(dialog: OpenDialog) -> None:
    try:
        os.close(dialog.fd)
    except OSError as exc:  # its writes were reported done; a late error can only be logged
        logger.error("closing %s failed: %s", dialog.path, exc.strerror)

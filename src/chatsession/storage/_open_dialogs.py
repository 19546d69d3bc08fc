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

__all__ = ["DialogFileGone", "OpenDialog", "OpenDialogs", "append_record", "default_limit"]

logger = logging.getLogger("chatsession.storage")

MAX_OPEN_DIALOGS = 4096


def default_limit() -> int:
    """A quarter of the soft ``RLIMIT_NOFILE``, at most `MAX_OPEN_DIALOGS`."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return MAX_OPEN_DIALOGS
    return max(1, min(soft // 4, MAX_OPEN_DIALOGS))


class OpenDialog:
    """One user's ``current.yaml``, open for appending; ``size`` is its length in bytes,
    ``epoch`` the one the store took it for writing at (None: unfenced)."""

    __slots__ = ("epoch", "fd", "path", "size")

    def __init__(self, fd: int, path: str, size: int, epoch: int | None = None) -> None:
        self.fd = fd
        self.path = path
        self.size = size
        self.epoch = epoch


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

    def open(self, user_id: str, path: str, epoch: int | None = None) -> OpenDialog:
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
        dialog = OpenDialog(fd, path, size, epoch)
        self.keep(user_id, dialog)
        return dialog

    def append(self, user_id: str, dialog: OpenDialog, data: bytes) -> None:
        """`append_record` to the user's open ``dialog``; closed if that raises."""
        try:
            append_record(dialog, data, sync=False)
        except OSError:
            self.close(user_id)
            raise

    def pop(self, user_id: str) -> OpenDialog | None:
        """Take the user's dialog out, open (a write in a thread holds it meanwhile)."""
        return self._dialogs.pop(user_id, None)

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


def append_record(dialog: OpenDialog, data: bytes, *, sync: bool) -> None:
    """Append ``data`` to the open ``dialog`` whole, or not at all (fsynced with ``sync``).

    One fstat first. The store is the file's only writer at its epoch, so:

    - a file with no name left, or shorter than what the store wrote, was archived,
      recovered or taken over by a newer owner (which rewrites it under a new name):
      `DialogFileGone`, nothing written;
    - a file longer than that was appended to by a *former* owner that was paused past
      its lease (a newer owner would have replaced the file): those bytes were never part
      of the dialog, and are cut off, durably, before the record is appended.

    Raises:
        DialogFileGone: see above.
        OSError: the write failed; the file is cut back to its length before.
    """
    opened = os.fstat(dialog.fd)
    if opened.st_size > dialog.size and not _still_at(dialog.path, opened):
        raise DialogFileGone(dialog.path)  # archived under another name, then written to
    if opened.st_nlink == 0 or opened.st_size < dialog.size:
        logger.warning(
            "%s was archived, recovered or taken over while open here; reading it afresh",
            dialog.path,
        )
        raise DialogFileGone(dialog.path)
    if opened.st_size > dialog.size:
        os.ftruncate(dialog.fd, dialog.size)
        os.fsync(dialog.fd)
        logger.warning(
            "%s: cut off %d bytes a former owner wrote after it lost the dialog",
            dialog.path,
            opened.st_size - dialog.size,
        )
    try:
        written = os.write(dialog.fd, data)
        if written != len(data):  # the disk is filling up, most likely
            _write_all(dialog.fd, data[written:])
        if sync:
            os.fsync(dialog.fd)
    except OSError:
        os.ftruncate(dialog.fd, dialog.size)  # never leave a partial record behind
        raise
    dialog.size += len(data)


def _still_at(path: str, opened: os.stat_result) -> bool:
    """Whether ``path`` still names the open file (checked only when it grew)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


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

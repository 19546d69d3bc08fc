"""The default store: one directory of YAML files per user.

::

    {data_dir}/users/{user}/dialogs/
    ├── current.yaml                 the active conversation, gone once archived
    └── archived/
        └── 2024-01-15-10-30-00.yaml UTC time of archival; a clash gets -1, -2, ...

How it keeps its promises:

- *Appending costs the same at any length.* ``current.yaml`` is created with its header
  and first message by writing a temporary file and renaming it into place; every later
  message is one ``O_APPEND`` write of one record (see `_yaml_format`). Under ``batch``
  and ``never`` the file stays open between messages (see `_open_dialogs`), so a message
  costs that one write; the store must then be the only writer of its directory.
- *A failed write leaves nothing behind.* A short or failed append is truncated back to
  the previous length, and a full disk raises `StorageFullError`.
- *Archiving is atomic and never overwrites.* The end-of-session lines are appended, the
  file is hard-linked under its archive name (``link`` fails rather than replace an
  existing file) and ``current.yaml`` is unlinked. A crash between the two leaves a
  ``current.yaml`` with two links, which recovery recognises and simply unlinks.
- *Durability* follows `Settings.durability`: ``always`` fsyncs the file (and, when a
  name was added, its directory) before a call returns, ``batch`` leaves that to `flush`,
  which the server calls every ``FSYNC_INTERVAL``, and ``never`` leaves it to the system.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import logging
import os
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from chatsession._exceptions import (
    CorruptDialogError,
    DialogNotFound,
    FencedOff,
    InvalidUserId,
    StorageError,
    StorageFullError,
)
from chatsession._types import Durability, EndReason
from chatsession.domain import ArchiveSummary, Dialog, Message
from chatsession.storage import _yaml_format as fmt
from chatsession.storage._index import ArchiveIndex
from chatsession.storage._journal import ArchiveJournal, ExpiredArchive
from chatsession.storage._open_dialogs import (
    DialogFileGone,
    OpenDialog,
    OpenDialogs,
    append_record,
    default_limit,
)
from chatsession.storage._paths import directory_name, user_id_from_directory

__all__ = ["YamlDialogStore"]

logger = logging.getLogger("chatsession.storage")

T = TypeVar("T")

CURRENT = "current.yaml"
ARCHIVED = "archived"
_ARCHIVE_ID = re.compile(r"\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}(-\d{1,6})?")
_FULL_DISK = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EFBIG))
# Past this many files waiting for a batched fsync, one syncfs() of the data's file system
# is cheaper.
_SYNC_ALL_THRESHOLD = 256


class YamlDialogStore:
    """Dialogs as YAML files under ``data_dir``; see the module docstring for the layout.

    ``max_open_dialogs`` bounds how many current dialogs stay open between appends under
    ``batch`` and ``never``; by default a quarter of the process's soft limit on open
    files, at most 4,096.
    """

    def __init__(
        self,
        data_dir: Path | str,
        durability: Durability = "batch",
        *,
        max_open_dialogs: int | None = None,
    ) -> None:
        self.root = Path(data_dir)
        self._users = str(self.root / "users")
        self.durability = durability
        self._unsynced: set[str] = set()  # files and directories waiting for a batched fsync
        # Under ``batch`` and ``never``: current dialogs kept open between appends.
        limit = default_limit() if max_open_dialogs is None else max_open_dialogs
        self._open = OpenDialogs(limit)
        self._closed = False
        self._journal = ArchiveJournal(self.root)

    def dialogs_dir(self, user_id: str) -> Path:
        """The directory holding one user's dialogs (validates the user id)."""
        return self.root / "users" / directory_name(user_id) / "dialogs"

    # -- writing ----------------------------------------------------------------------

    async def open_for_writing(self, user_id: str, *, epoch: int) -> Dialog | None:
        self._open.close(user_id)
        dialog, opened = await self._take(user_id, epoch)
        if opened is not None:
            self._keep(user_id, opened)
            if self._closed:
                _close_quietly(opened)
        return dialog

    async def append(
        self,
        user_id: str,
        session_id: str,
        started_at: datetime,
        message: Message,
        *,
        first: bool = False,
        epoch: int | None = None,
    ) -> None:
        record = fmt.dump_message(message).encode("utf-8")
        if first:
            await self._start(user_id, session_id, started_at, record, epoch)
            return
        # The hot path: one write to the open file, no path built, the id checked already.
        dialog = self._open.get(user_id)
        if dialog is None or dialog.epoch != epoch:
            dialog = await self._take_current(user_id, epoch)
        try:
            await self._append_open(user_id, dialog, record)
        except DialogFileGone:
            # Archived, recovered or taken over meanwhile: read it afresh (refused if a
            # newer owner holds it), then append once more.
            dialog = await self._take_current(user_id, epoch)
            await self._append_open(user_id, dialog, record)
        if self._closed:  # a closed store keeps nothing open
            self._open.close(user_id)
            _close_quietly(dialog)

    async def _start(
        self, user_id: str, session_id: str, started_at: datetime, record: bytes, epoch: int | None
    ) -> None:
        self._open.close(user_id)  # a dialog left behind is archived, so it must be closed
        directory = self.dialogs_dir(user_id)
        header = fmt.dump_header(user_id, session_id, started_at, epoch).encode("utf-8")
        content = header + record
        fd = await self._run(lambda: self._create(directory, content, keep_open=True))
        assert fd is not None
        self._keep(user_id, OpenDialog(fd, str(directory / CURRENT), len(content), epoch))
        if self._closed:
            self._open.close(user_id)

    async def _take(
        self, user_id: str, epoch: int | None
    ) -> tuple[Dialog | None, OpenDialog | None]:
        """The one way into a dialog for writing, for every path (a takeover, a handover,
        a reopen): fenced at ``epoch``, repaired, and open for appending."""
        directory = self.dialogs_dir(user_id)
        return await asyncio.to_thread(self._take_file, directory, epoch)

    async def _take_current(self, user_id: str, epoch: int | None) -> OpenDialog:
        self._open.close(user_id)
        _, dialog = await self._take(user_id, epoch)
        if dialog is None:
            path = self._current_path(user_id)
            logger.error(
                "%s was unlinked, replaced or written by another process while open: the "
                "message is refused, not stored (is a second server using this data dir?)",
                path,
            )
            raise StorageError(
                f"{path} was unlinked, replaced or written by another process; the message "
                "was not stored"
            )
        self._keep(user_id, dialog)
        return dialog

    def _keep(self, user_id: str, dialog: OpenDialog) -> None:
        """Keep ``dialog`` open for the user's next append (a closed store closes it once
        the write at hand is done)."""
        self._open.keep(user_id, dialog)

    def _take_file(
        self, directory: Path, epoch: int | None
    ) -> tuple[Dialog | None, OpenDialog | None]:
        """`_take` in a thread: refuse a stale ``epoch``, cut what a crash tore, and give
        a new owner a file of its own, so that a former owner writes to no name."""
        path = directory / CURRENT
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            raise _storage_error(exc, path) from exc
        try:
            if os.fstat(fd).st_nlink > 1:  # archived by a run that stopped before the unlink
                os.close(fd)
                path.unlink(missing_ok=True)
                return None, None
            data = _read_all(fd)
            try:
                dialog, whole = fmt.parse_dialog_checked(data.decode("utf-8"), path)
            except UnicodeDecodeError as exc:
                raise CorruptDialogError(path, "not UTF-8 text") from exc
            held = dialog.epoch or 0
            if epoch is not None and held > epoch:
                raise FencedOff(
                    f"the dialog of {dialog.user_id!r} is owned at epoch {held} now, not "
                    f"{epoch}; nothing was stored: send it again, or reconnect"
                )
            if whole and dialog.ended_at is None and (epoch is None or epoch == held):
                return dialog, OpenDialog(fd, str(path), len(data), epoch)
        except BaseException:
            _close_fd(fd)
            raise
        os.close(fd)
        # Rewritten whole under a new name: what a crash tore is gone before anything is
        # appended, the new epoch is in the header, and a former owner's descriptor now
        # points at a file no one reads.
        if epoch is not None:
            dialog.epoch = epoch
        dialog.ended_at, dialog.end_reason = None, None
        content = fmt.dump_dialog(dialog).encode("utf-8")
        temporary = directory / (CURRENT + ".tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(temporary, flags, 0o600)
            try:
                _write_all(fd, content)
                os.fsync(fd)
                os.replace(temporary, path)
                _fsync_directory(directory)
            except BaseException:
                _close_fd(fd)
                raise
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise _storage_error(exc, path) from exc
        if not whole:
            logger.warning("%s: repaired before appending to it", path)
        return dialog, OpenDialog(fd, str(path), len(content), epoch)

    def _current_path(self, user_id: str) -> str:
        # A plain string path, cheaper to build than a Path.
        return f"{self._users}/{directory_name(user_id)}/dialogs/{CURRENT}"

    async def archive_current(
        self, user_id: str, *, ended_at: datetime, reason: EndReason, epoch: int | None = None
    ) -> str | None:
        # Archiving unlinks current.yaml: the next one is new, so this one is closed after.
        dialog = self._open.pop(user_id)
        if dialog is None or dialog.epoch != epoch:
            if dialog is not None:
                _close_quietly(dialog)
            # Not written here at this epoch: fenced and repaired first, so that the trailer
            # never lands behind a torn record.
            _, dialog = await self._take(user_id, epoch)
            if dialog is None:
                return None
        directory = self.dialogs_dir(user_id)
        trailer = fmt.dump_trailer(ended_at, reason).encode("utf-8")
        opened = dialog
        try:
            return await self._run(lambda: self._archive(directory, opened, ended_at, trailer))
        finally:
            _close_quietly(opened)

    async def delete_archive(self, user_id: str, archive_id: str) -> None:
        path = self._archive_path(user_id, archive_id)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            raise DialogNotFound(f"user {user_id!r} has no archive {archive_id!r}") from None
        except OSError as exc:
            raise StorageError(f"cannot delete {path}: {exc.strerror}") from exc

    async def purge_user(self, user_id: str, *, epoch: int | None = None) -> int:
        # A file system cannot fence a removal: the registry's ownership check does.
        self._open.close(user_id)
        user_directory = self.dialogs_dir(user_id).parent
        return await asyncio.to_thread(_purge, user_directory)

    async def expire_archives(self, before: datetime) -> list[tuple[str, str]]:
        users = Path(self._users)

        def delete(user_directory: str, archive_id: str) -> bool:
            if not (_is_user_directory(user_directory) and _ARCHIVE_ID.fullmatch(archive_id)):
                return False  # a foreign line never names a path outside the data dir
            path = users / user_directory / "dialogs" / ARCHIVED / f"{archive_id}.yaml"
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            return True

        expired: list[ExpiredArchive] = await asyncio.to_thread(
            self._journal.expire, before, delete
        )
        return [(user_id_from_directory(e.user_directory) or "", e.archive_id) for e in expired]

    def forget(self, user_id: str) -> None:
        self._open.close(user_id)

    async def flush(self) -> None:
        if not self._unsynced:
            return
        paths, self._unsynced = self._unsynced, set()
        await asyncio.to_thread(_sync_paths, paths, self.root)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._open.close_all()
            await self.flush()

    async def _run(self, operation: Callable[[], T]) -> T:
        # Under ``always`` each call waits for fsync, so it runs in a thread; otherwise it is
        # a few small writes to the page cache, cheaper inline than a thread hop.
        if self.durability != "always":
            return operation()
        future = asyncio.ensure_future(asyncio.to_thread(operation))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The thread cannot be stopped: let the write finish, so that the caller knows
            # it happened, then pass the cancellation on.
            await asyncio.wait([future])
            raise

    async def _append_open(self, user_id: str, dialog: OpenDialog, record: bytes) -> None:
        if self.durability == "always":
            # The write and its fsync run in a thread, holding the dialog out of the map so
            # that nothing closes it meanwhile.
            self._open.pop(user_id)
            try:
                await self._run(lambda: append_record(dialog, record, sync=True))
            except OSError as exc:
                _close_quietly(dialog)
                if isinstance(exc, DialogFileGone):
                    raise
                raise _storage_error(exc, dialog.path) from exc
            self._keep(user_id, dialog)
            return
        try:
            self._open.append(user_id, dialog, record)
        except DialogFileGone:
            raise
        except OSError as exc:
            raise _storage_error(exc, dialog.path) from exc
        if self.durability == "batch":
            self._unsynced.add(dialog.path)

    def _create(self, directory: Path, content: bytes, *, keep_open: bool) -> int | None:
        """Start a session's dialog; a dialog left by an earlier session is archived first.

        With ``keep_open`` the new ``current.yaml`` is returned open for appending; the
        user's open dialog, if any, must have been closed before.
        """
        path = directory / CURRENT
        temporary = directory / (CURRENT + ".new")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = self._open_new(directory, temporary, flags)
            try:
                _write_all(fd, content)
                if self.durability == "always":
                    os.fsync(fd)
                # link, unlike rename, refuses to replace a dialog an earlier session left.
                while not _link_if_absent(temporary, path):
                    self._set_aside_leftover(directory)
                temporary.unlink()
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise _storage_error(exc, path) from exc
        if not keep_open:
            os.close(fd)
        if self.durability == "batch":
            self._unsynced.add(str(path))
        self._directory_changed(directory)  # can fail only under "always", never kept open
        return fd if keep_open else None

    def _open_new(self, directory: Path, temporary: Path, flags: int) -> int:
        """Open a new file in a user's directory, making the directories if need be (again,
        if an erase of the user removed them meanwhile)."""
        for attempt in range(3):
            if not directory.exists():
                self._make_directories(directory)
            try:
                return os.open(temporary, flags, 0o600)
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _make_directories(self, directory: Path) -> None:
        """Create a user's directories; their new names are made durable like files."""
        (directory / ARCHIVED).mkdir(parents=True, exist_ok=True)
        parent = directory
        while parent != self.root and self.root in parent.parents:
            self._directory_changed(parent.parent)
            parent = parent.parent

    def _set_aside_leftover(self, directory: Path) -> None:
        now = datetime.now(UTC)
        try:
            archive_id = self._recover(directory, now)
        except CorruptDialogError as exc:
            corrupt = directory / f"corrupt-{now.strftime('%Y-%m-%d-%H-%M-%S-%f')}.yaml"
            os.rename(directory / CURRENT, corrupt)
            logger.error("%s; set aside as %s so the user can go on", exc, corrupt)
            return
        logger.warning("archived a dialog left by an earlier session as %s", archive_id)

    def _archive(
        self, directory: Path, dialog: OpenDialog, ended_at: datetime, trailer: bytes
    ) -> str | None:
        length = dialog.size
        try:
            append_record(dialog, trailer, sync=self.durability == "always")
        except OSError as exc:
            raise _storage_error(exc, dialog.path) from exc
        if self.durability == "batch":
            self._unsynced.add(dialog.path)
        try:
            return self._move_to_archive(directory, ended_at)
        except StorageError:
            os.ftruncate(dialog.fd, length)  # still current: later messages must follow its list
            dialog.size = length
            raise

    def _move_to_archive(self, directory: Path, ended_at: datetime) -> str:
        """Link ``current.yaml`` under a fresh archive name, then unlink it."""
        path = directory / CURRENT
        archived = directory / ARCHIVED
        archive_id = _link_unique(path, archived, ended_at.strftime("%Y-%m-%d-%H-%M-%S"))
        if self.durability == "batch" and str(path) in self._unsynced:
            # The data still waits for its fsync; reach it by its new name.
            self._unsynced.discard(str(path))
            self._unsynced.add(str(archived / f"{archive_id}.yaml"))
        archive = archived / f"{archive_id}.yaml"
        self._journal.record(directory.parent.name, archive_id)
        try:
            self._directory_changed(archived)  # the archive's name is durable first
            path.unlink()
        except OSError as exc:
            archive.unlink(missing_ok=True)  # still current, so not archived as well
            raise _storage_error(exc, path) from exc
        try:
            self._directory_changed(directory)
        except OSError as exc:  # archived all the same; only its durability is in doubt
            logger.error("fsync of %s failed after archiving: %s", directory, exc.strerror)
        return archive_id

    def _directory_changed(self, directory: Path) -> None:
        if self.durability == "always":
            _fsync_directory(directory)
        elif self.durability == "batch":
            self._unsynced.add(str(directory))

    # -- reading ----------------------------------------------------------------------

    async def load_current(self, user_id: str) -> Dialog | None:
        path = self.dialogs_dir(user_id) / CURRENT
        try:
            return await asyncio.to_thread(_load, path)
        except FileNotFoundError:
            return None

    async def list_archives(self, user_id: str) -> list[ArchiveSummary]:
        return await asyncio.to_thread(self._index(user_id).summaries)

    async def search_archives(self, user_id: str, query: str) -> list[ArchiveSummary]:
        return await asyncio.to_thread(self._index(user_id).search, query)

    def _index(self, user_id: str) -> ArchiveIndex:
        directory = self.dialogs_dir(user_id) / ARCHIVED
        return ArchiveIndex(directory, _load, _archive_order, _ARCHIVE_ID)

    async def load_archive(self, user_id: str, archive_id: str) -> Dialog:
        path = self._archive_path(user_id, archive_id)
        try:
            return await asyncio.to_thread(_load, path)
        except FileNotFoundError:
            raise DialogNotFound(f"user {user_id!r} has no archive {archive_id!r}") from None

    async def users_with_current(self) -> list[str]:
        return await asyncio.to_thread(self._users_with_current)

    def _users_with_current(self) -> list[str]:
        users: list[str] = []
        try:
            entries = list(os.scandir(self.root / "users"))
        except FileNotFoundError:
            return users
        for entry in entries:
            if not _is_user_directory(entry.name):
                logger.warning("ignoring %s: not a directory name chatsession makes", entry.path)
                continue
            if os.path.exists(os.path.join(entry.path, "dialogs", CURRENT)):
                users.append(user_id_from_directory(entry.name) or "")
        return users

    def _archive_path(self, user_id: str, archive_id: str) -> Path:
        if not _ARCHIVE_ID.fullmatch(archive_id):
            raise DialogNotFound(f"{archive_id!r} is not an archive id (2024-01-15-10-30-00)")
        return self.dialogs_dir(user_id) / ARCHIVED / f"{archive_id}.yaml"

    # -- recovery ---------------------------------------------------------------------

    async def recover_current(self, user_id: str, *, ended_at: datetime) -> str | None:
        """Archive a current dialog left by a previous run, with reason ``recovered``.

        A torn last message is dropped; a file that was already linked into the archive
        when the previous run stopped is only unlinked; an empty one is removed. A file that
        does not parse is left in place and `CorruptDialogError` is raised.
        """
        self._open.close(user_id)  # the file is rewritten and archived
        directory = self.dialogs_dir(user_id)
        return await asyncio.to_thread(self._recover, directory, ended_at)

    def _recover(self, directory: Path, ended_at: datetime) -> str | None:
        path = directory / CURRENT
        (directory / (CURRENT + ".tmp")).unlink(missing_ok=True)
        new = directory / (CURRENT + ".new")
        try:
            if new.exists() and os.path.samefile(new, path):
                new.unlink()  # a crash inside _create, after its link: the dialog is current
            if os.stat(path).st_nlink > 1:  # archived already; the unlink did not happen
                path.unlink()
                return None
            dialog = _load(path)
        except FileNotFoundError:
            return None
        if not dialog.messages:
            path.unlink()
            return None
        if dialog.ended_at is None:
            dialog.ended_at, dialog.end_reason = ended_at, "recovered"
        # Rewritten whole rather than appended to, so a torn tail does not reach the archive.
        temporary = directory / (CURRENT + ".tmp")
        try:
            # 0600 like every other dialog file: a dialog is its user's alone.
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                _write_all(fd, fmt.dump_dialog(dialog).encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise _storage_error(exc, path) from exc
        (directory / ARCHIVED).mkdir(parents=True, exist_ok=True)
        archive_id = self._move_to_archive(directory, dialog.ended_at)
        _fsync_directory(directory / ARCHIVED)
        return archive_id


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):  # its writes were reported already
        os.close(fd)


def _close_quietly(dialog: OpenDialog) -> None:
    _close_fd(dialog.fd)


def _link_if_absent(source: Path, target: Path) -> bool:
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    return True


def _link_unique(source: Path, directory: Path, base: str) -> str:
    archive_id = base
    for attempt in range(1, 1_000_000):
        try:
            os.link(source, directory / f"{archive_id}.yaml")
            return archive_id
        except FileExistsError:
            archive_id = f"{base}-{attempt}"
        except OSError as exc:
            raise _storage_error(exc, directory) from exc
    raise StorageError(f"{directory}: no free archive name for {base}")


def _load(path: Path) -> Dialog:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptDialogError(path, "not UTF-8 text") from exc
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _storage_error(exc, path) from exc
    return fmt.parse_dialog(text, path)


def _purge(user_directory: Path) -> int:
    """Remove a user's directory (current dialog, archives, index); count the archives."""
    archived = user_directory / "dialogs" / ARCHIVED
    try:
        count = sum(1 for name in os.listdir(archived) if name.endswith(".yaml"))
    except FileNotFoundError:
        count = 0
    for attempt in range(3):
        try:
            shutil.rmtree(user_directory)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # A listing running at the same time may add an index file as the tree goes.
            if exc.errno == errno.ENOTEMPTY and attempt < 2:
                continue
            raise _storage_error(exc, user_directory) from exc
        break
    return count


def _archive_order(name: str) -> tuple[str, int]:
    """Archives in time order: ``...-00-2`` before ``...-00-10``."""
    stem = name.removesuffix(".yaml")
    base, _, suffix = stem[:19], stem[19:20], stem[20:]
    return base, int(suffix) if suffix.isdigit() else 0


def _is_user_directory(name: str) -> bool:
    user_id = user_id_from_directory(name)
    if user_id is None:
        return False
    try:
        return directory_name(user_id) == name
    except InvalidUserId:
        return False


def _sync_paths(paths: set[str], root: Path) -> None:
    if len(paths) > _SYNC_ALL_THRESHOLD and _sync_file_system(root):
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # archived or deleted since; its new name was recorded too
        try:
            os.fsync(fd)
        except OSError as exc:
            logger.error("fsync of %s failed: %s", path, exc.strerror)
        finally:
            os.close(fd)


def _sync_file_system(root: Path) -> bool:
    """syncfs(2) the file system holding ``root``: one call instead of thousands of fsyncs,
    and unlike sync(2) it does not wait for other file systems. False where unavailable."""
    syncfs = getattr(_libc(), "syncfs", None)
    if syncfs is None:
        return False
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return bool(syncfs(fd) == 0)
    finally:
        os.close(fd)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(exc: OSError, path: Path | str) -> StorageError:
    if isinstance(exc, DialogFileGone):
        return StorageError(f"{exc}; the message was not stored")
    if exc.errno in _FULL_DISK:
        return StorageFullError(f"{path}: the disk is full ({exc.strerror}); nothing was stored")
    return StorageError(f"{path}: {exc.strerror or exc}")

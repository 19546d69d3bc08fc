"""The `DialogStore` contract every storage backend follows."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from chatsession._types import EndReason
from chatsession.domain import ArchiveSummary, Dialog, Message

__all__ = ["DialogStore"]


class DialogStore(Protocol):
    """Where dialogs live: each user's current dialog and their archives.

    Calls for one user are never made concurrently (the session manager serializes them);
    calls for different users may be. Cancelling a write does not undo it: a write that
    has begun completes (or fails) before the cancellation is raised. Every method raises
    only `StorageError` subclasses (or `InvalidUserId`, or `FencedOff`).

    **Fencing.** A user's dialog has one writer at a time: the instance that owns the
    user's session, at an *epoch* the registry hands out with the ownership and that only
    grows. The owner first calls `open_for_writing` with its epoch, then passes the same
    epoch to every write. A store refuses (`FencedOff`) a write whose epoch is below one it
    has already seen for the user, so a former owner that was paused or cut off past its
    lease can never write after a newer owner took over. ``epoch=None`` is a write outside
    any session (an operator's purge, an import); it is not fenced.
    """

    async def open_for_writing(self, user_id: str, *, epoch: int) -> Dialog | None:
        """Take the user's dialog for writing at ``epoch``; return the current dialog.

        Every path that starts writing a user's dialog goes through here first: a new
        owner after a takeover or a handover, a start after a crash. The store raises its
        fence to ``epoch`` (refusing, from then on, every write of a lower one), repairs
        the dialog durably (a record torn by a crash is cut off before anything is
        appended behind it, stale records are dropped) and returns what is current, or
        None. `FencedOff` if it has already seen a higher epoch for the user.
        """

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
        """Append ``message`` to the user's current dialog.

        ``first`` marks a session's first message: the dialog is created then, and a
        dialog that an earlier session left behind is archived (``recovered``) first.
        """

    async def load_current(self, user_id: str) -> Dialog | None:
        """The user's current dialog, or None if there is none."""

    async def archive_current(
        self, user_id: str, *, ended_at: datetime, reason: EndReason, epoch: int | None = None
    ) -> str | None:
        """Move the current dialog to the archive; return its id, or None if it was empty.

        Afterwards the user has no current dialog. An existing archive is never overwritten.
        """

    async def list_archives(self, user_id: str) -> list[ArchiveSummary]:
        """The user's archives, oldest first."""

    async def search_archives(self, user_id: str, query: str) -> list[ArchiveSummary]:
        """The user's archives whose messages contain every word of ``query``, oldest first."""

    async def purge_user(self, user_id: str, *, epoch: int | None = None) -> int:
        """Remove the user's current dialog and every archive; return how many archives."""

    async def expire_archives(self, before: datetime) -> list[tuple[str, str]]:
        """Delete every archive made before ``before``; return (user id, archive id) pairs."""

    async def load_archive(self, user_id: str, archive_id: str) -> Dialog:
        """One archived dialog; `DialogNotFound` if there is no such archive."""

    async def delete_archive(self, user_id: str, archive_id: str) -> None:
        """Delete one archive; `DialogNotFound` if there is no such archive."""

    async def users_with_current(self) -> list[str]:
        """Users that have a current dialog: at startup, those left by a previous run."""

    async def recover_current(self, user_id: str, *, ended_at: datetime) -> str | None:
        """Archive a current dialog left by a previous run with reason ``recovered``."""

    def forget(self, user_id: str) -> None:
        """Drop what is kept open or cached for the user: another writer takes over."""

    async def flush(self) -> None:
        """Make every write so far durable (a no-op where writes already are)."""

    async def aclose(self) -> None:
        """Flush and release resources. Idempotent."""

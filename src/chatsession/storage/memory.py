"""A store that keeps dialogs in memory: for tests, and for embedding without a disk."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import datetime

from chatsession._exceptions import DialogNotFound, FencedOff
from chatsession._types import EndReason
from chatsession.domain import ArchiveSummary, Dialog, Message, utc_now
from chatsession.storage._index import first_words, matches, query_words, searchable_text
from chatsession.storage._paths import check_user_id

__all__ = ["MemoryDialogStore"]


class MemoryDialogStore:
    """The `DialogStore` contract over dictionaries; nothing survives the process."""

    def __init__(self) -> None:
        self._current: dict[str, Dialog] = {}
        self._archives: dict[str, dict[str, Dialog]] = {}
        self._epochs: dict[str, int] = {}  # the highest epoch seen for each user

    def _fence(self, user_id: str, epoch: int | None) -> None:
        if epoch is None:
            return
        highest = self._epochs.get(user_id, 0)
        if epoch < highest:
            raise FencedOff(
                f"a write of {user_id!r}'s dialog at epoch {epoch} was refused: it is owned "
                f"at epoch {highest} now"
            )
        self._epochs[user_id] = epoch

    async def open_for_writing(self, user_id: str, *, epoch: int) -> Dialog | None:
        self._fence(check_user_id(user_id), epoch)
        return await self.load_current(user_id)

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
        self._fence(check_user_id(user_id), epoch)
        dialog = self._current.get(user_id)
        if first and dialog is not None:
            await self.recover_current(user_id, ended_at=utc_now())
            dialog = None
        if dialog is None:
            dialog = self._current[user_id] = Dialog(user_id, session_id, started_at)
        dialog.messages.append(message)

    async def load_current(self, user_id: str) -> Dialog | None:
        dialog = self._current.get(check_user_id(user_id))
        return copy.deepcopy(dialog)

    async def archive_current(
        self, user_id: str, *, ended_at: datetime, reason: EndReason, epoch: int | None = None
    ) -> str | None:
        self._fence(check_user_id(user_id), epoch)
        dialog = self._current.pop(user_id, None)
        if dialog is None or not dialog.messages:
            return None
        archives = self._archives.setdefault(user_id, {})
        base = archive_id = ended_at.strftime("%Y-%m-%d-%H-%M-%S")
        attempt = 0
        while archive_id in archives:
            attempt += 1
            archive_id = f"{base}-{attempt}"
        archives[archive_id] = replace(dialog, ended_at=ended_at, end_reason=reason)
        return archive_id

    async def list_archives(self, user_id: str) -> list[ArchiveSummary]:
        archives = self._archives.get(check_user_id(user_id), {})
        return [_summary(archive_id, dialog) for archive_id, dialog in sorted(archives.items())]

    async def search_archives(self, user_id: str, query: str) -> list[ArchiveSummary]:
        archives = self._archives.get(check_user_id(user_id), {})
        words = query_words(query)
        return [
            _summary(archive_id, dialog)
            for archive_id, dialog in sorted(archives.items())
            if matches(searchable_text(dialog), words)
        ]

    async def purge_user(self, user_id: str, *, epoch: int | None = None) -> int:
        self._fence(check_user_id(user_id), epoch)
        self._current.pop(user_id, None)
        return len(self._archives.pop(user_id, {}))

    async def expire_archives(self, before: datetime) -> list[tuple[str, str]]:
        expired: list[tuple[str, str]] = []
        for user_id, archives in self._archives.items():
            for archive_id, dialog in list(archives.items()):
                if dialog.ended_at is not None and dialog.ended_at < before:
                    del archives[archive_id]
                    expired.append((user_id, archive_id))
        return expired

    async def load_archive(self, user_id: str, archive_id: str) -> Dialog:
        try:
            return copy.deepcopy(self._archives[check_user_id(user_id)][archive_id])
        except KeyError:
            raise DialogNotFound(f"user {user_id!r} has no archive {archive_id!r}") from None

    async def delete_archive(self, user_id: str, archive_id: str) -> None:
        try:
            del self._archives[check_user_id(user_id)][archive_id]
        except KeyError:
            raise DialogNotFound(f"user {user_id!r} has no archive {archive_id!r}") from None

    async def users_with_current(self) -> list[str]:
        return list(self._current)

    async def recover_current(self, user_id: str, *, ended_at: datetime) -> str | None:
        return await self.archive_current(user_id, ended_at=ended_at, reason="recovered")

    def forget(self, user_id: str) -> None:
        pass  # nothing is cached apart from the dialogs themselves

    async def flush(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def _summary(archive_id: str, dialog: Dialog) -> ArchiveSummary:
    return ArchiveSummary(
        archive_id=archive_id,
        session_id=dialog.session_id,
        started_at=dialog.started_at,
        ended_at=dialog.ended_at,
        end_reason=dialog.end_reason,
        message_count=len(dialog.messages),
        first_words=first_words(dialog),
    )

"""The archive journal: which archives were made on which day, for retention.

::

    {data_dir}/archive-journal/2024-01-15.jsonl   {"user": "<directory>", "archive": "<id>"}

Every archive adds one line to the file of its day (UTC). Expiring archives older than a
cutoff then reads only the files of the days before it, and the one of the cutoff's day,
so its cost grows with what is deleted, never with what is kept. A line whose archive is
already gone (deleted by hand, erased with its user) is skipped.

Archives made before the journal existed are journalled once, by the first expiry, which
lists (without reading) every user's archives and then leaves a ``.complete`` marker.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

__all__ = ["ArchiveJournal", "ExpiredArchive"]

logger = logging.getLogger("chatsession.storage")

JOURNAL = "archive-journal"
COMPLETE = ".complete"  # every archive older than the journal has been journalled
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\.jsonl")
_ARCHIVE = re.compile(r"\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}(-\d{1,6})?\.yaml")


@dataclass(frozen=True, slots=True)
class ExpiredArchive:
    """One archive removed by retention: its user's directory name and its id."""

    user_directory: str
    archive_id: str


class ArchiveJournal:
    """The per-day journal under ``root``. Blocking: call it from a thread."""

    def __init__(self, root: Path) -> None:
        self.directory = root / JOURNAL

    def record(self, user_directory: str, archive_id: str) -> None:
        """Note a new archive in its day's file (the archive id starts with its date)."""
        line = json.dumps({"user": user_directory, "archive": archive_id}) + "\n"
        path = self.directory / f"{archive_id[:10]}.jsonl"
        try:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)
        except OSError as exc:  # the archive itself is safe; only its expiry is in doubt
            logger.error("cannot journal archive %s for retention: %s", archive_id, exc.strerror)

    def expire(self, cutoff: datetime, delete: Callable[[str, str], bool]) -> list[ExpiredArchive]:
        """Delete every journalled archive made before ``cutoff`` (UTC).

        ``delete(user_directory, archive_id)`` removes one archive and says whether it
        existed. Days wholly before the cutoff are deleted and their file removed; the
        cutoff's own day keeps the lines of archives that are not old enough yet.
        """
        if not (self.directory / COMPLETE).exists():
            self._backfill()
        cutoff_day = cutoff.strftime("%Y-%m-%d")
        cutoff_id = cutoff.strftime("%Y-%m-%d-%H-%M-%S")
        try:
            names = sorted(n for n in os.listdir(self.directory) if _DAY.fullmatch(n))
        except FileNotFoundError:
            return []
        expired: list[ExpiredArchive] = []
        for name in names:
            day = name.removesuffix(".jsonl")
            if day > cutoff_day:
                break
            path = self.directory / name
            kept: list[str] = []
            changed = False
            for line in _read_lines(path):
                try:
                    record = json.loads(line)
                    user, archive_id = str(record["user"]), str(record["archive"])
                except (ValueError, KeyError, TypeError):
                    changed = True
                    continue  # a torn line
                if archive_id[:19] >= cutoff_id:
                    kept.append(line)
                    continue
                changed = True
                if delete(user, archive_id):
                    expired.append(ExpiredArchive(user, archive_id))
            if kept:
                if changed:
                    _rewrite(path, kept)
            else:
                path.unlink(missing_ok=True)
        return expired

    def _backfill(self) -> None:
        """Journal every archive on disk (a line twice does no harm), then mark it done."""
        days: dict[str, list[str]] = {}
        users = self.directory.parent / "users"
        try:
            user_directories = os.listdir(users)
        except FileNotFoundError:
            user_directories = []
        for user in user_directories:
            try:
                names = os.listdir(users / user / "dialogs" / "archived")
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                if _ARCHIVE.fullmatch(name):
                    archive_id = name.removesuffix(".yaml")
                    line = json.dumps({"user": user, "archive": archive_id})
                    days.setdefault(archive_id[:10], []).append(line)
        self.directory.mkdir(parents=True, exist_ok=True)
        for day, lines in days.items():
            _append(self.directory / f"{day}.jsonl", "".join(line + "\n" for line in lines))
        (self.directory / COMPLETE).touch()
        if days:
            logger.info(
                "journalled %d archives made before the retention journal",
                sum(map(len, days.values())),
            )


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []


def _append(path: Path, text: str) -> None:
    # Private like the dialogs: the journal names users and when they talked.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as file:
        file.write(text)


def _rewrite(path: Path, lines: list[str]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    _append(temporary, "".join(line + "\n" for line in lines))
    os.replace(temporary, path)

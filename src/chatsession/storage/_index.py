"""Each user's archive index: a summary and the searchable text of every archive.

Two append-only JSON Lines files beside the archives, so that listing and searching read
one file instead of parsing every archive::

    archived/.index.jsonl   {"id", "session", "started", "ended", "reason", "count", "first"}
    archived/.text.jsonl    {"id", "text"}   every message's content, lower-cased

The YAML files stay the truth. Before each use the index is reconciled with the
directory's listing: an archive the index lacks is parsed and appended, and entries whose
file is gone (deleted, expired, or removed by hand) make the index be rewritten without
them. A lost or torn index is therefore rebuilt, not trusted. Plain appends and renames
work on network file systems, where SQLite's locking does not.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from chatsession._exceptions import CorruptDialogError
from chatsession.domain import ArchiveSummary, Dialog

__all__ = ["ArchiveIndex", "first_words", "searchable_text"]

logger = logging.getLogger("chatsession.storage")

SUMMARIES = ".index.jsonl"
TEXTS = ".text.jsonl"
FIRST_WORDS = 80  # characters of the first message shown in a listing


def first_words(dialog: Dialog) -> str:
    """The start of the dialog's first user message (else its first message), one line."""
    messages = [m for m in dialog.messages if m.role == "user"] or dialog.messages
    if not messages:
        return ""
    text = " ".join(messages[0].content.split())
    return text if len(text) <= FIRST_WORDS else text[: FIRST_WORDS - 1] + "…"


def searchable_text(dialog: Dialog) -> str:
    return "\n".join(m.content for m in dialog.messages).lower()


def matches(text: str, words: list[str]) -> bool:
    return all(word in text for word in words)


def query_words(query: str) -> list[str]:
    return query.lower().split()


class ArchiveIndex:
    """The index of one user's ``archived`` directory. Blocking: call it from a thread.

    ``load`` parses one archive (the store's own reader); ``order`` sorts archive ids in
    time order.
    """

    def __init__(self, directory: Path, load: Any, order: Any, pattern: Any) -> None:
        self.directory = directory
        self._load = load
        self._order = order
        self._pattern = pattern

    def summaries(self) -> list[ArchiveSummary]:
        """Every archive's summary, oldest first, after reconciling with the directory."""
        entries = self._reconciled()
        return [_summary(entries[i]) for i in sorted(entries, key=lambda i: self._order(i))]

    def search(self, query: str) -> list[ArchiveSummary]:
        """Archives whose messages contain every word of ``query`` (any case), oldest first."""
        entries = self._reconciled()
        words = query_words(query)
        # A cheap test on the raw line first (the words as JSON escapes them), so only
        # lines that may match are parsed.
        escaped = [json.dumps(w, ensure_ascii=False)[1:-1] for w in words]
        found: set[str] = set()
        for line in _lines(self.directory / TEXTS):
            if not all(w in line for w in escaped):
                continue
            record = _parse(line)
            if record is not None and matches(str(record.get("text", "")), words):
                found.add(str(record["id"]))
        hits = [i for i in entries if i in found]
        return [_summary(entries[i]) for i in sorted(hits, key=lambda i: self._order(i))]

    # -- keeping it true --------------------------------------------------------------

    def _on_disk(self) -> set[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return set()
        ids = (name.removesuffix(".yaml") for name in names if name.endswith(".yaml"))
        return {i for i in ids if self._pattern.fullmatch(i)}

    def _reconciled(self) -> dict[str, dict[str, Any]]:
        on_disk = self._on_disk()
        if not (self.directory / TEXTS).exists():
            (self.directory / SUMMARIES).unlink(missing_ok=True)  # rebuild both together
        entries = {str(r["id"]): r for r in map(_parse, _lines(self.directory / SUMMARIES)) if r}
        texts_known = set(entries)
        gone = set(entries) - on_disk
        if gone:
            for archive_id in gone:
                del entries[archive_id]
            texts_known = self._rewrite(entries)
        missing = sorted(on_disk - set(entries), key=lambda i: self._order(i))
        if missing:
            self._add(missing, entries, texts_known)
        return entries

    def _add(
        self, missing: list[str], entries: dict[str, dict[str, Any]], texts_known: set[str]
    ) -> None:
        summaries: list[str] = []
        texts: list[str] = []
        for archive_id in missing:
            try:
                dialog = self._load(self.directory / f"{archive_id}.yaml")
            except CorruptDialogError as exc:
                logger.error("skipping unreadable archive %s", exc)
                continue
            except FileNotFoundError:
                continue  # deleted meanwhile
            entry = _entry(archive_id, dialog)
            entries[archive_id] = entry
            summaries.append(_dump(entry))
            if archive_id not in texts_known:
                texts.append(_dump({"id": archive_id, "text": searchable_text(dialog)}))
        _append(self.directory / SUMMARIES, summaries)
        _append(self.directory / TEXTS, texts)

    def _rewrite(self, entries: dict[str, dict[str, Any]]) -> set[str]:
        """Write the index anew with only ``entries``; return the ids whose text was kept."""
        kept: list[str] = []
        ids: set[str] = set()
        for line in _lines(self.directory / TEXTS):
            record = _parse(line)
            if record is not None and record.get("id") in entries and record["id"] not in ids:
                ids.add(str(record["id"]))
                kept.append(line)
        _replace(self.directory / TEXTS, kept)
        _replace(self.directory / SUMMARIES, [_dump(e) for e in entries.values()])
        return ids


def _entry(archive_id: str, dialog: Dialog) -> dict[str, Any]:
    return {
        "id": archive_id,
        "session": dialog.session_id,
        "started": dialog.started_at.isoformat(),
        "ended": dialog.ended_at.isoformat() if dialog.ended_at else None,
        "reason": dialog.end_reason,
        "count": len(dialog.messages),
        "first": first_words(dialog),
    }


def _summary(entry: dict[str, Any]) -> ArchiveSummary:
    ended = entry.get("ended")
    return ArchiveSummary(
        archive_id=entry["id"],
        session_id=entry["session"],
        started_at=datetime.fromisoformat(entry["started"]),
        ended_at=datetime.fromisoformat(ended) if ended else None,
        end_reason=entry.get("reason"),
        message_count=int(entry["count"]),
        first_words=entry.get("first", ""),
    )


def _dump(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _parse(line: str) -> dict[str, Any] | None:
    """One record, or None for a torn or foreign line (the reconciliation repairs it)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("id"), str) else None


def _lines(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            yield from file
    except FileNotFoundError:
        return


def _append(path: Path, lines: Iterable[str]) -> None:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if not data:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # an index that cannot be written is rebuilt next time
        logger.warning("cannot update the archive index %s: %s", path, exc.strerror)
        return
    try:
        os.write(fd, data)
    except OSError as exc:
        logger.warning("cannot update the archive index %s: %s", path, exc.strerror)
    finally:
        os.close(fd)


def _replace(path: Path, lines: list[str]) -> None:
    # Named for this thread, so two rewrites at once never write one temporary file.
    temporary = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        # The index holds the archives' words: private like the archives themselves.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "w", encoding="utf-8") as file:
            file.writelines(line if line.endswith("\n") else line + "\n" for line in lines)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        logger.warning("cannot rewrite the archive index %s: %s", path, exc.strerror)

"""The archive index, retention and erasure in the stores: the YAML files stay the truth."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chatsession.domain import Message
from chatsession.storage import MemoryDialogStore, YamlDialogStore, _journal
from chatsession.storage._index import SUMMARIES, TEXTS
from chatsession.storage.base import DialogStore

T0 = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)


async def add_archive(store: DialogStore, user: str, text: str, ended_at: datetime) -> str:
    started = ended_at - timedelta(minutes=5)
    await store.append(user, "s-" + text[:8], started, Message("user", text, started), first=True)
    await store.append(user, "s-" + text[:8], started, Message("assistant", "echo: " + text))
    archive_id = await store.archive_current(user, ended_at=ended_at, reason="timeout")
    assert archive_id is not None
    return archive_id


@pytest.fixture(params=["yaml", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> DialogStore:
    if request.param == "yaml":
        return YamlDialogStore(tmp_path / "data")
    return MemoryDialogStore()


async def test_listing_and_search_agree_across_stores(store: DialogStore) -> None:
    """Both stores list with first words and search every message's words, in any case."""
    await add_archive(store, "amy", "Apples and pears", T0)
    await add_archive(store, "amy", "just pears", T0 + timedelta(hours=1))
    listed = await store.list_archives("amy")
    assert [a.first_words for a in listed] == ["Apples and pears", "just pears"]
    assert [a.first_words for a in await store.search_archives("amy", "PEARS")] == [
        "Apples and pears",
        "just pears",
    ]
    assert [a.first_words for a in await store.search_archives("amy", "echo: apples")] == [
        "Apples and pears"
    ]
    assert await store.search_archives("amy", "kiwi") == []
    assert await store.search_archives("bea", "pears") == []


async def test_purge_removes_one_user_only(store: DialogStore) -> None:
    """purge_user removes the current dialog and every archive of that user, nobody else's."""
    await add_archive(store, "amy", "one", T0)
    await add_archive(store, "amy", "two", T0 + timedelta(hours=1))
    await add_archive(store, "bea", "bea's", T0)
    await store.append("amy", "s", T0, Message("user", "current"), first=True)
    assert await store.purge_user("amy") == 2
    assert await store.list_archives("amy") == []
    assert await store.load_current("amy") is None
    assert len(await store.list_archives("bea")) == 1
    assert await store.purge_user("nobody") == 0


async def test_expiry_deletes_only_what_is_older(store: DialogStore) -> None:
    """expire_archives removes archives older than the cutoff; newer ones and current stay."""
    old = await add_archive(store, "amy", "old", T0)
    same_day_old = await add_archive(store, "bea", "early", T0 + timedelta(days=2, hours=1))
    await add_archive(store, "bea", "late", T0 + timedelta(days=2, hours=5))
    await add_archive(store, "amy", "new", T0 + timedelta(days=5))
    await store.append("amy", "s", T0, Message("user", "current"), first=True)
    expired = await store.expire_archives(T0 + timedelta(days=2, hours=3))
    assert sorted(expired) == [("amy", old), ("bea", same_day_old)]
    assert [a.first_words for a in await store.list_archives("amy")] == ["new"]
    assert [a.first_words for a in await store.list_archives("bea")] == ["late"]
    current = await store.load_current("amy")
    assert current is not None
    assert await store.expire_archives(T0 + timedelta(days=2, hours=3)) == []


async def test_expiry_reads_only_the_journals_of_expired_days(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention opens no journal of a day after the cutoff: its cost follows what it deletes."""
    store = YamlDialogStore(tmp_path / "data")
    await add_archive(store, "amy", "old", T0)
    for day in range(1, 6):
        await add_archive(store, "amy", f"kept {day}", T0 + timedelta(days=day))
    assert len(os.listdir(tmp_path / "data" / "archive-journal")) == 6
    read: list[str] = []
    real = _journal._read_lines

    def reading(path: Path) -> list[str]:
        read.append(path.name)
        return real(path)

    monkeypatch.setattr(_journal, "_read_lines", reading)
    expired = await store.expire_archives(T0 + timedelta(hours=1))
    assert [archive_id for _, archive_id in expired] == ["2024-01-15-10-00-00"]
    assert read == ["2024-01-15.jsonl"]
    assert len(await store.list_archives("amy")) == 5


async def test_a_lost_or_stale_index_is_rebuilt_from_the_files(tmp_path: Path) -> None:
    """Deleting the index, removing or adding an archive by hand, or a torn line: still true."""
    store = YamlDialogStore(tmp_path / "data")
    first = await add_archive(store, "amy", "one", T0)
    await add_archive(store, "amy", "two", T0 + timedelta(hours=1))
    archived = store.dialogs_dir("amy") / "archived"
    assert len(await store.list_archives("amy")) == 2
    (archived / SUMMARIES).unlink()
    assert [a.first_words for a in await store.list_archives("amy")] == ["one", "two"]
    (archived / f"{first}.yaml").unlink()
    assert [a.first_words for a in await store.list_archives("amy")] == ["two"]
    assert await store.search_archives("amy", "one") == []
    with open(archived / SUMMARIES, "a") as index:
        index.write('{"id": "2024-01-1')  # torn by a crash
    third = await add_archive(store, "amy", "three", T0 + timedelta(hours=2))
    assert [a.archive_id for a in await store.list_archives("amy")][-1] == third
    assert [a.first_words for a in await store.search_archives("amy", "three")] == ["three"]
    (archived / TEXTS).unlink()
    assert [a.first_words for a in await store.search_archives("amy", "two")] == ["two"]


async def test_deleting_one_archive_keeps_the_index_true(tmp_path: Path) -> None:
    """delete_archive leaves the rest listed and searchable."""
    store = YamlDialogStore(tmp_path / "data")
    first = await add_archive(store, "amy", "alpha", T0)
    await add_archive(store, "amy", "beta", T0 + timedelta(hours=1))
    await store.list_archives("amy")
    await store.delete_archive("amy", first)
    assert [a.first_words for a in await store.list_archives("amy")] == ["beta"]
    assert await store.search_archives("amy", "alpha") == []


async def test_archives_older_than_the_journal_are_journalled_once(tmp_path: Path) -> None:
    """Archives made before the journal existed expire too; newer ones and others stay."""
    store = YamlDialogStore(tmp_path / "data")
    old = await add_archive(store, "amy", "old", T0)
    await add_archive(store, "amy", "new", T0 + timedelta(days=3))
    journal = tmp_path / "data" / "archive-journal"
    for name in os.listdir(journal):
        (journal / name).unlink()
    journal.rmdir()  # as an older version left it
    (tmp_path / "data" / "users" / "stray-file").write_text("not a user")
    expired = await store.expire_archives(T0 + timedelta(days=1))
    assert expired == [("amy", old)]
    assert [a.first_words for a in await store.list_archives("amy")] == ["new"]
    assert (journal / ".complete").exists()
    assert await store.expire_archives(T0 + timedelta(days=1)) == []


async def test_the_index_and_journal_are_private_like_the_dialogs(tmp_path: Path) -> None:
    """The index holds the dialogs' text and the journal who talked when: both are 0600."""
    store = YamlDialogStore(tmp_path / "data")
    await add_archive(store, "amy", "private words", T0)
    await add_archive(store, "amy", "more", T0 + timedelta(hours=1))
    await store.list_archives("amy")
    archived = store.dialogs_dir("amy") / "archived"
    (archived / f"{T0:%Y-%m-%d-%H-%M-%S}.yaml").unlink()
    await store.list_archives("amy")  # rewrites the index
    paths = [archived / SUMMARIES, archived / TEXTS]
    paths += list((tmp_path / "data" / "archive-journal").iterdir())
    assert {path.stat().st_mode & 0o777 for path in paths} == {0o600}

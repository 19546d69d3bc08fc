"""Fencing tokens in the stores: a dialog taken for writing at an epoch refuses every older
one, and taking it repairs what a crash tore before anything is appended."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from chatsession._exceptions import FencedOff
from chatsession.domain import Message
from chatsession.storage import YamlDialogStore
from chatsession.storage.base import DialogStore
from chatsession.storage.memory import MemoryDialogStore

T0 = datetime(2024, 1, 15, 10, 25, tzinfo=UTC)


def _message(text: str) -> Message:
    return Message("user", text, T0)


@pytest.fixture(params=["yaml", "memory"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[DialogStore, DialogStore]:
    """Two stores over the same dialogs, as two instances see them."""
    if request.param == "memory":
        memory = MemoryDialogStore()
        return memory, memory
    return YamlDialogStore(tmp_path, "batch"), YamlDialogStore(tmp_path, "always")


async def test_a_takeover_fences_off_the_former_owner(
    stores: tuple[DialogStore, DialogStore],
) -> None:
    """Once B takes the dialog at a higher epoch, A's appends and archive are refused and
    nothing of A's reaches the dialog; B's appends go on."""
    a, b = stores
    await a.append("amy", "s", T0, _message("one"), first=True, epoch=10)
    await a.append("amy", "s", T0, _message("two"), epoch=10)
    taken = await b.open_for_writing("amy", epoch=11)
    assert taken is not None
    assert [m.content for m in taken.messages] == ["one", "two"]
    with pytest.raises(FencedOff):
        await a.append("amy", "s", T0, _message("stale"), epoch=10)
    with pytest.raises(FencedOff):
        await a.archive_current("amy", ended_at=T0, reason="timeout", epoch=10)
    await b.append("amy", "s", T0, _message("three"), epoch=11)
    dialog = await b.load_current("amy")
    assert dialog is not None
    assert [m.content for m in dialog.messages] == ["one", "two", "three"]
    with pytest.raises(FencedOff):
        await a.open_for_writing("amy", epoch=10)


async def test_a_torn_record_is_cut_before_the_next_owner_appends(tmp_path: Path) -> None:
    """A record torn by a crash is gone from the file when a new owner has taken it, so
    its appends and the archive parse."""
    a = YamlDialogStore(tmp_path, "batch")
    await a.append("bo", "s", T0, _message("whole"), first=True, epoch=1)
    await a.aclose()
    current = tmp_path / "users" / "bo" / "dialogs" / "current.yaml"
    with current.open("ab") as file:
        file.write(b"- role: assistant\n  content: torn")
    b = YamlDialogStore(tmp_path, "batch")
    await b.open_for_writing("bo", epoch=2)
    assert b"torn" not in current.read_bytes()
    await b.append("bo", "s", T0, _message("after"), epoch=2)
    archive_id = await b.archive_current("bo", ended_at=T0, reason="manual", epoch=2)
    assert archive_id is not None
    archived = await b.load_archive("bo", archive_id)
    assert [m.content for m in archived.messages] == ["whole", "after"]
    await b.aclose()


async def test_bytes_a_former_owner_wrote_behind_the_owner_are_cut(tmp_path: Path) -> None:
    """Bytes appended to an open dialog by another writer are cut off before the owner's
    next record: they never become part of the dialog."""
    store = YamlDialogStore(tmp_path, "batch")
    await store.append("cy", "s", T0, _message("mine"), first=True, epoch=5)
    current = tmp_path / "users" / "cy" / "dialogs" / "current.yaml"
    with current.open("ab") as file:
        file.write(b"- role: user\n  content: stale\n  timestamp: '2024-01-15T10:25:00+00:00'\n")
    await store.append("cy", "s", T0, _message("mine too"), epoch=5)
    dialog = await store.load_current("cy")
    assert dialog is not None
    assert [m.content for m in dialog.messages] == ["mine", "mine too"]
    await store.aclose()


async def test_unfenced_writes_and_old_files_without_an_epoch_still_work(tmp_path: Path) -> None:
    """A dialog written without an epoch (an older file) is taken by any owner, and writes
    outside a session (epoch None) are not fenced."""
    store = YamlDialogStore(tmp_path, "batch")
    await store.append("di", "s", T0, _message("old"), first=True)
    taken = await store.open_for_writing("di", epoch=3)
    assert taken is not None
    assert taken.epoch == 3
    await store.append("di", "s", T0, _message("new"), epoch=3)
    await store.append("di", "s", T0, _message("operator"))
    dialog = await store.load_current("di")
    assert dialog is not None
    assert [m.content for m in dialog.messages] == ["old", "new", "operator"]
    await store.aclose()

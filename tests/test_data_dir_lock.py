"""One data dir, one owner: the library's lock, and a store whose file vanished under it."""

from __future__ import annotations

import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chatsession import ChatServer, DataDirLocked, Settings, StorageError
from chatsession._exceptions import FencedOff
from chatsession.models import EchoModel
from chatsession.storage import MemoryDialogStore, YamlDialogStore
from chatsession.storage._lock import DataDirLock
from tests.conftest import collect

_NOW = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


def _current(data: Path, user: str) -> Path:
    return data / "users" / user / "dialogs" / "current.yaml"


async def test_a_second_chat_server_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    """A second ChatServer on a data dir in use raises DataDirLocked and recovers nothing."""
    settings = Settings(chat_model="echo", data_dir=tmp_path)
    async with ChatServer(settings) as first:
        await collect(first, "alice", "hello")
        with pytest.raises(DataDirLocked, match=f"process {os.getpid()}.*REDIS_URL"):
            async with ChatServer(settings):
                pass
        await collect(first, "alice", "still mine")
        dialog = await first.get_current_dialog("alice")
        assert dialog is not None
        assert len(dialog.messages) == 4
        assert await first.list_archives("alice") == []


async def test_the_lock_is_released_when_the_server_closes(tmp_path: Path) -> None:
    """Leaving the block gives the data dir up: the next server takes it at once."""
    settings = Settings(chat_model="echo", data_dir=tmp_path)
    async with ChatServer(settings):
        pass
    async with ChatServer(settings) as again:
        assert again.running


async def test_a_memory_store_takes_no_lock(tmp_path: Path) -> None:
    """A server over a memory store leaves the data dir alone."""
    settings = Settings(data_dir=tmp_path)
    async with (
        ChatServer(settings, store=MemoryDialogStore(), model=EchoModel()),
        ChatServer(settings, store=MemoryDialogStore(), model=EchoModel()),
    ):
        assert not (tmp_path / ".lock").exists()


def test_the_lock_file_names_its_owner(tmp_path: Path) -> None:
    """The lock file holds the owner's pid and address; a refusal quotes them."""
    lock = DataDirLock(tmp_path)
    lock.acquire("http://127.0.0.1:8123")
    try:
        assert f'"pid": {os.getpid()}' in (tmp_path / ".lock").read_text()
        with pytest.raises(DataDirLocked, match=r"serving http://127\.0\.0\.1:8123"):
            DataDirLock(tmp_path).acquire()
    finally:
        lock.release()
    DataDirLock(tmp_path).acquire()  # released: anyone may take it


async def test_a_dialog_archived_by_another_process_refuses_the_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """current.yaml archived by another store (as a second server would): StorageError, an
    ERROR naming the file, and nothing written to the archive it became."""
    async with ChatServer(Settings(chat_model="echo", data_dir=tmp_path)) as chat:
        await collect(chat, "alice", "one")
        path = _current(tmp_path, "alice")
        other = YamlDialogStore(tmp_path)  # the store of another process, no lock taken
        archive_id = await other.archive_current("alice", ended_at=_NOW, reason="recovered")
        assert archive_id is not None
        archived = (await other.load_archive("alice", archive_id)).messages
        with (
            caplog.at_level(logging.ERROR, "chatsession.storage"),
            pytest.raises(StorageError, match="unlinked, replaced or written by another"),
        ):
            await collect(chat, "alice", "two")
        assert str(path) in caplog.text
        assert (await other.load_archive("alice", archive_id)).messages == archived


async def test_a_dialog_unlinked_under_the_store_refuses_the_message(tmp_path: Path) -> None:
    """current.yaml deleted while open: the message is refused, not written to nowhere."""
    async with ChatServer(Settings(chat_model="echo", data_dir=tmp_path)) as chat:
        await collect(chat, "alice", "one")
        _current(tmp_path, "alice").unlink()
        with pytest.raises(StorageError, match="unlinked, replaced or written by another"):
            await collect(chat, "alice", "two")


async def test_a_dialog_replaced_by_a_newer_owner_refuses_the_message(tmp_path: Path) -> None:
    """A current.yaml renamed over by a newer owner (a higher epoch in its header): the
    store writes neither to the old file nor to the new one, and says so."""
    async with ChatServer(Settings(chat_model="echo", data_dir=tmp_path)) as chat:
        await collect(chat, "alice", "one")
        path = _current(tmp_path, "alice")
        text = path.read_text()
        found = re.search(r"^epoch: (\d+)$", text, re.MULTILINE)
        assert found is not None  # the server always writes its epoch
        epoch = int(found.group(1))
        replacement = path.with_name("other.yaml")
        replacement.write_text(text.replace(f"epoch: {epoch}", f"epoch: {epoch + 1}"))
        os.replace(replacement, path)
        with pytest.raises(FencedOff, match="reconnect"):
            await collect(chat, "alice", "two")
        assert "two" not in path.read_text()


async def test_a_hard_link_to_the_open_dialog_is_harmless(tmp_path: Path) -> None:
    """A backup's hard link leaves the file current: appends go on."""
    async with ChatServer(Settings(chat_model="echo", data_dir=tmp_path)) as chat:
        await collect(chat, "alice", "one")
        path = _current(tmp_path, "alice")
        os.link(path, tmp_path / "backup.yaml")
        await collect(chat, "alice", "two")
        dialog = await chat.get_current_dialog("alice")
        assert dialog is not None
        assert [m.content for m in dialog.messages][-2:] == [
            "two",
            "echo: two",
        ]

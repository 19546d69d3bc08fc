"""The YAML file store: append-only writes, atomic archives, recovery, a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chatsession import (
    ChatServer,
    CorruptDialogError,
    DialogNotFound,
    Message,
    Settings,
    StorageError,
    StorageFullError,
)
from chatsession.models import EchoModel
from chatsession.storage import _yaml_format as fmt
from chatsession.storage.files import YamlDialogStore
from tests.conftest import collect

T0 = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


def _current(data: Path, user: str) -> Path:
    return data / "users" / user / "dialogs" / "current.yaml"


def _leave_dialog(data: Path, user: str, *contents: str, tail: str = "") -> Path:
    """Write a current.yaml as a previous run would have left it."""
    path = _current(data, user)
    path.parent.mkdir(parents=True)
    (path.parent / "archived").mkdir()
    text = fmt.dump_header(user, "old-session", T0)
    text += "".join(fmt.dump_message(Message("user", c, T0)) for c in contents)
    path.write_text(text + tail)
    return path


async def test_append_only_adds_bytes_at_the_end(tmp_path: Path) -> None:
    """Each message appends to the same file; earlier bytes are never rewritten."""
    async with ChatServer(Settings(chat_model="echo", data_dir=tmp_path)) as chat:
        await collect(chat, "alice", "one")
        path = _current(tmp_path, "alice")
        before, inode = path.read_bytes(), path.stat().st_ino
        await collect(chat, "alice", "two")
        after = path.read_bytes()
        assert path.stat().st_ino == inode
        assert after.startswith(before)
        assert len(after) > len(before)


async def test_archive_clash_gets_a_suffix_and_never_overwrites(tmp_path: Path) -> None:
    """Archives ended in the same second get -1, -2: none is replaced."""
    store = YamlDialogStore(tmp_path)
    ids: list[str] = []
    for n in range(3):
        await store.append("bob", f"s{n}", T0, Message("user", f"m{n}", T0), first=True)
        archive_id = await store.archive_current("bob", ended_at=T0, reason="manual")
        assert archive_id is not None
        ids.append(archive_id)
    assert ids == ["2024-01-15-10-30-00", "2024-01-15-10-30-00-1", "2024-01-15-10-30-00-2"]
    contents = [(await store.load_archive("bob", i)).messages[0].content for i in ids]
    assert contents == ["m0", "m1", "m2"]


async def test_archive_ids_cannot_name_other_files(tmp_path: Path) -> None:
    """An archive id is a time stamp, never a path."""
    store = YamlDialogStore(tmp_path)
    for bad in ("../current", "..%2f", "/etc/passwd", "2024-01-15"):
        with pytest.raises(DialogNotFound):
            await store.load_archive("bob", bad)
        with pytest.raises(DialogNotFound):
            await store.delete_archive("bob", bad)


async def test_delete_archive(tmp_path: Path) -> None:
    """Deleting removes one archive; deleting it again is DialogNotFound."""
    async with ChatServer(Settings(chat_model="echo", data_dir=tmp_path)) as chat:
        await collect(chat, "cy", "hi")
        archive_id = await chat.end_user_session("cy")
        assert archive_id is not None
        await chat.delete_archive("cy", archive_id)
        assert await chat.list_archives("cy") == []
        with pytest.raises(DialogNotFound):
            await chat.delete_archive("cy", archive_id)


async def test_leftover_dialog_is_recovered_at_start(tmp_path: Path) -> None:
    """A current.yaml with messages and no live session is archived as recovered."""
    _leave_dialog(tmp_path, "dora", "hello", "still there", tail="- role: user\n  conte")
    _leave_dialog(tmp_path, "empty")
    async with ChatServer(Settings(chat_model="echo", data_dir=tmp_path)) as chat:
        [archive] = await chat.list_archives("dora")
        assert (archive.end_reason, archive.message_count) == ("recovered", 2)
        dialog = await chat.get_archive("dora", archive.archive_id)
        assert [m.content for m in dialog.messages] == ["hello", "still there"]
        assert dialog.session_id == "old-session"
        assert await chat.get_current_dialog("dora") is None
        assert not _current(tmp_path, "empty").exists()
        assert await chat.list_archives("empty") == []


async def test_half_done_archive_is_finished_not_duplicated(tmp_path: Path) -> None:
    """A crash between link and unlink leaves two links; recovery only unlinks."""
    path = _leave_dialog(tmp_path, "eli", "hi")
    os.link(path, path.parent / "archived" / "2024-01-15-10-30-00.yaml")
    async with ChatServer(Settings(chat_model="echo", data_dir=tmp_path)) as chat:
        archives = await chat.list_archives("eli")
    assert [a.archive_id for a in archives] == ["2024-01-15-10-30-00"]
    assert not path.exists()


async def test_corrupt_leftover_names_the_file_and_others_carry_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A corrupt current.yaml is logged by name, kept, and set aside on the user's return."""
    path = _current(tmp_path, "fred")
    path.parent.mkdir(parents=True)
    path.write_text("user_id: [this is not\n")
    _leave_dialog(tmp_path, "gina", "fine")
    async with ChatServer(Settings(chat_model="echo", data_dir=tmp_path)) as chat:
        assert str(path) in caplog.text
        assert [a.end_reason for a in await chat.list_archives("gina")] == ["recovered"]
        with pytest.raises(CorruptDialogError) as caught:
            await chat.get_current_dialog("fred")
        assert caught.value.path == path
        assert await collect(chat, "fred", "new start") == "echo: new start"
        dialog = await chat.get_current_dialog("fred")
        assert dialog is not None
        assert [m.content for m in dialog.messages] == ["new start", "echo: new start"]
    aside = list(path.parent.glob("corrupt-*.yaml"))
    assert len(aside) == 1
    assert aside[0].read_text() == "user_id: [this is not\n"


async def test_leftover_met_by_a_new_session_is_archived_first(tmp_path: Path) -> None:
    """A dialog left behind is never mixed into the next session's file."""
    store = YamlDialogStore(tmp_path)
    await store.append("hugo", "old", T0, Message("user", "old", T0), first=True)
    await store.append("hugo", "new", T0, Message("user", "new", T0), first=True)
    [archive] = await store.list_archives("hugo")
    assert (archive.session_id, archive.end_reason) == ("old", "recovered")
    current = await store.load_current("hugo")
    assert current is not None
    assert (current.session_id, [m.content for m in current.messages]) == ("new", ["new"])


async def test_always_fsyncs_before_the_first_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under durability=always the user's message is written and fsynced before any reply."""
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    async with ChatServer(
        Settings(chat_model="echo", data_dir=tmp_path, durability="always")
    ) as chat:
        monkeypatch.setattr(os, "fsync", counting_fsync)
        stream = chat.chat_with_history("ida", "persist me")
        await anext(stream)
        assert "persist me" in _current(tmp_path, "ida").read_text()
        assert len(synced) >= 2  # the file and its directory
        await stream.aclose()


async def test_batch_durability_flushes_periodically(tmp_path: Path) -> None:
    """Under batch the store collects files to fsync and the server flushes them."""
    store = YamlDialogStore(tmp_path, "batch")
    settings = Settings(chat_model="echo", data_dir=tmp_path, fsync_interval=0.01)
    async with ChatServer(settings, store=store) as chat:
        await collect(chat, "jay", "hi")
        assert store._unsynced
        for _ in range(100):
            if not store._unsynced:
                break
            await asyncio.sleep(0.01)
        assert not store._unsynced


@contextlib.contextmanager
def _small_disk(path: Path) -> Iterator[Path]:
    """A real file system of 64 KiB (tmpfs); without mount rights, a file size limit."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode == 0:
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
        return
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, previous[1]))
    try:
        yield path
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        signal.signal(signal.SIGXFSZ, handler)


async def test_full_disk_is_a_clear_error_and_damages_nothing(tmp_path: Path) -> None:
    """A full disk raises StorageFullError; the dialog keeps every earlier message whole."""
    with _small_disk(tmp_path / "disk") as data:
        async with ChatServer(
            Settings(chat_model="echo", data_dir=data), model=EchoModel()
        ) as chat:
            await collect(chat, "kai", "before the disk filled")
            with pytest.raises(StorageFullError, match=r"disk is full|File too large"):
                await collect(chat, "kai", "x" * 100_000)
            dialog = await chat.get_current_dialog("kai")
            assert dialog is not None
            assert [m.content for m in dialog.messages] == [
                "before the disk filled",
                "echo: before the disk filled",
            ]
            assert await collect(chat, "kai", "small again") == "echo: small again"
            archive_id = await chat.end_user_session("kai")
            assert archive_id is not None
            archive = await chat.get_archive("kai", archive_id)
            assert len(archive.messages) == 4


async def test_full_disk_at_archive_keeps_the_session(tmp_path: Path) -> None:
    """If archiving fails the dialog stays current and appendable; nothing is lost."""
    with _small_disk(tmp_path / "disk") as data:
        store = YamlDialogStore(data)
        await store.append("lea", "s", T0, Message("user", "keep me", T0), first=True)
        filler = data / f"filler-{uuid.uuid4().hex}"
        with contextlib.suppress(OSError), open(filler, "wb") as file:
            file.write(b"\0" * 200_000)
        with contextlib.suppress(StorageFullError):
            await store.archive_current("lea", ended_at=T0, reason="manual")
        filler.unlink()
        current = await store.load_current("lea")
        if current is not None:  # the archive failed: still current, still whole
            assert [m.content for m in current.messages] == ["keep me"]
            await store.append("lea", "s", T0, Message("user", "more", T0))
            current = await store.load_current("lea")
            assert current is not None
            assert [m.content for m in current.messages] == ["keep me", "more"]
        else:
            [summary] = await store.list_archives("lea")
            assert summary.message_count == 1


async def test_large_batched_flush_syncs_the_file_system_once(tmp_path: Path) -> None:
    """Hundreds of files waiting for fsync are flushed with one syncfs of the data's disk."""
    store = YamlDialogStore(tmp_path, "batch")
    for n in range(300):
        await store.append(f"u{n}", "s", T0, Message("user", "hi", T0), first=True)
    assert len(store._unsynced) > 300
    await store.flush()
    assert not store._unsynced


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("durability", ["batch", "never"])
async def test_many_appends_then_archive_keep_every_message_in_order(
    tmp_path: Path, durability: str
) -> None:
    """Appends through the open file reach the archive whole and in order."""
    store = YamlDialogStore(tmp_path, durability)  # type: ignore[arg-type]
    texts = [f"message {n}" for n in range(500)]
    await store.append("mia", "s", T0, Message("user", texts[0], T0), first=True)
    for text in texts[1:]:
        await store.append("mia", "s", T0, Message("assistant", text, T0))
    archive_id = await store.archive_current("mia", ended_at=T0, reason="manual")
    assert archive_id is not None
    archive = await store.load_archive("mia", archive_id)
    assert [m.content for m in archive.messages] == texts
    await store.aclose()


async def test_more_users_than_open_files_still_store_every_message(tmp_path: Path) -> None:
    """Past the bound the least recently used dialog is closed, and reopened when needed."""
    store = YamlDialogStore(tmp_path, "batch", max_open_dialogs=3)
    users = [f"u{n}" for n in range(10)]
    for user in users:
        await store.append(user, "s", T0, Message("user", f"{user} 0", T0), first=True)
    for round_ in range(1, 6):
        for user in users:
            await store.append(user, "s", T0, Message("user", f"{user} {round_}", T0))
            assert len(store._open) <= 3
    for user in users:
        dialog = await store.load_current(user)
        assert dialog is not None
        assert [m.content for m in dialog.messages] == [f"{user} {n}" for n in range(6)]
    await store.aclose()


async def test_failed_write_to_an_open_file_leaves_it_as_it_was(tmp_path: Path) -> None:
    """A full disk under an open dialog: the file is unchanged, and later appends work."""
    with _small_disk(tmp_path / "disk") as data:
        store = YamlDialogStore(data, "batch")
        await store.append("ned", "s", T0, Message("user", "first", T0), first=True)
        await store.append("ned", "s", T0, Message("assistant", "second", T0))
        path = _current(data, "ned")
        before = path.read_bytes()
        for _ in range(2):  # from the file kept open at creation, then from a reopened one
            with pytest.raises(StorageFullError):
                await store.append("ned", "s", T0, Message("user", "x" * 100_000, T0))
            assert path.read_bytes() == before
            await store.append("ned", "s", T0, Message("user", "small again", T0))
            before = path.read_bytes()
        dialog = await store.load_current("ned")
        assert dialog is not None
        contents = [m.content for m in dialog.messages]
        assert contents == ["first", "second", "small again", "small again"]
        await store.aclose()


async def test_archive_then_a_new_session_writes_a_new_file(tmp_path: Path) -> None:
    """After archiving, nothing is written into the archived file, by any later append."""
    store = YamlDialogStore(tmp_path, "never")
    await store.append("ora", "old", T0, Message("user", "old 1", T0), first=True)
    await store.append("ora", "old", T0, Message("user", "old 2", T0))
    archive_id = await store.archive_current("ora", ended_at=T0, reason="manual")
    assert archive_id is not None
    with pytest.raises(StorageError):  # no current dialog: nothing may reach the archive
        await store.append("ora", "old", T0, Message("user", "late", T0))
    await store.append("ora", "new", T0, Message("user", "new 1", T0), first=True)
    await store.append("ora", "new", T0, Message("user", "new 2", T0))
    archive = await store.load_archive("ora", archive_id)
    assert [m.content for m in archive.messages] == ["old 1", "old 2"]
    current = await store.load_current("ora")
    assert current is not None
    assert (current.session_id, [m.content for m in current.messages]) == (
        "new",
        ["new 1", "new 2"],
    )
    await store.aclose()


async def test_a_session_over_an_open_leftover_archives_all_of_it(tmp_path: Path) -> None:
    """A dialog still open when a new session starts is archived whole; the new one is apart."""
    store = YamlDialogStore(tmp_path, "batch")
    await store.append("pat", "old", T0, Message("user", "old 1", T0), first=True)
    await store.append("pat", "old", T0, Message("user", "old 2", T0))
    await store.append("pat", "new", T0, Message("user", "new 1", T0), first=True)
    await store.append("pat", "new", T0, Message("user", "new 2", T0))
    [summary] = await store.list_archives("pat")
    archive = await store.load_archive("pat", summary.archive_id)
    assert [m.content for m in archive.messages] == ["old 1", "old 2"]
    current = await store.load_current("pat")
    assert current is not None
    assert [m.content for m in current.messages] == ["new 1", "new 2"]
    await store.aclose()


async def test_recovering_an_open_dialog_closes_it_first(tmp_path: Path) -> None:
    """recover_current on a dialog the store holds open archives it; nothing follows it."""
    store = YamlDialogStore(tmp_path, "never")
    await store.append("quin", "s", T0, Message("user", "one", T0), first=True)
    await store.append("quin", "s", T0, Message("user", "two", T0))
    archive_id = await store.recover_current("quin", ended_at=T0)
    assert archive_id is not None
    with pytest.raises(StorageError):
        await store.append("quin", "s", T0, Message("user", "late", T0))
    await store.append("quin", "t", T0, Message("user", "three", T0), first=True)
    archive = await store.load_archive("quin", archive_id)
    assert [m.content for m in archive.messages] == ["one", "two"]
    await store.aclose()


async def test_aclose_closes_every_open_dialog(tmp_path: Path) -> None:
    """No descriptor outlives aclose(); a closed store still appends, keeping nothing open."""
    before = _open_descriptors()
    store = YamlDialogStore(tmp_path, "batch")
    for n in range(20):
        await store.append(f"r{n}", "s", T0, Message("user", "hi", T0), first=True)
    assert _open_descriptors() == before + 20
    await store.aclose()
    assert _open_descriptors() == before
    await store.append("r0", "s", T0, Message("user", "after", T0))
    assert _open_descriptors() == before
    dialog = await store.load_current("r0")
    assert dialog is not None
    assert [m.content for m in dialog.messages] == ["hi", "after"]


async def test_always_keeps_the_dialog_open_between_fsynced_appends(tmp_path: Path) -> None:
    """Under always each append is written and fsynced in a worker thread; the dialog stays
    open between appends, as under batch, so an append never reads the file again."""
    store = YamlDialogStore(tmp_path, "always")
    await store.append("sam", "s", T0, Message("user", "one", T0), first=True)
    await store.append("sam", "s", T0, Message("user", "two", T0))
    assert len(store._open) == 1
    await store.aclose()

"""Edge cases at the boundaries: torn trailers, odd files, failing syscalls, odd callers."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chatsession import (
    ChatServer,
    Chunk,
    CorruptDialogError,
    InvalidMessage,
    InvalidUserId,
    Message,
    Settings,
    StorageError,
)
from chatsession.storage import _yaml_format as fmt
from chatsession.storage.files import YamlDialogStore
from tests.conftest import ServerFactory, collect

T0 = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


def _dialog_text() -> str:
    text = fmt.dump_header("amy", "s", T0)
    text += fmt.dump_message(Message("user", "question", T0))
    return text + fmt.dump_message(Message("assistant", "whole answer", T0))


def test_every_cut_inside_the_end_record_keeps_every_message() -> None:
    """A crash anywhere while the end-of-session lines are written loses no message."""
    body = _dialog_text()
    trailer = fmt.dump_trailer(T0, "shutdown")
    for cut in range(len(trailer) + 1):
        dialog = fmt.parse_dialog(body + trailer[:cut], Path("current.yaml"))
        assert [m.content for m in dialog.messages] == ["question", "whole answer"], cut
        if cut == len(trailer):
            assert dialog.end_reason == "shutdown"


async def test_torn_end_record_is_recovered_not_set_aside(tmp_path: Path) -> None:
    """A dialog whose end record tore is archived as recovered, whole."""
    path = tmp_path / "users" / "amy" / "dialogs" / "current.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(_dialog_text() + "ended_at: '2024-01-15T10:30:00+00:00'\nend_reason: sh")
    async with ChatServer(Settings(chat_model="echo", data_dir=tmp_path)) as chat:
        [archive] = await chat.list_archives("amy")
        assert (archive.message_count, archive.end_reason) == (2, "recovered")


async def test_impossible_date_is_corrupt_and_does_not_stop_the_start(tmp_path: Path) -> None:
    """A loader error other than a YAML error still names the file; the server starts."""
    path = tmp_path / "users" / "ben" / "dialogs" / "current.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("user_id: ben\nsession_id: s\nstarted_at: 2024-13-01\nmessages:\n")
    async with ChatServer(Settings(chat_model="echo", data_dir=tmp_path)) as chat:
        with pytest.raises(CorruptDialogError, match=str(path)):
            await chat.get_current_dialog("ben")


async def test_stray_directories_are_ignored_at_start(tmp_path: Path) -> None:
    """A directory chatsession never makes (~aaaa decodes to NULs) does not stop the start."""
    for name in ("~aaaa", "~!!", ".hidden"):
        stray = tmp_path / "users" / name / "dialogs"
        stray.mkdir(parents=True)
        (stray / "current.yaml").write_text("user_id: x\n")
    async with ChatServer(Settings(chat_model="echo", data_dir=tmp_path)) as chat:
        assert await collect(chat, "cal", "hi") == "echo: hi"


async def test_failed_fsync_is_a_storage_error_and_leaves_no_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If fsync fails the message is not acknowledged and not left in the file."""
    async with ChatServer(
        Settings(chat_model="echo", data_dir=tmp_path, durability="always")
    ) as chat:
        await collect(chat, "dee", "kept")
        path = tmp_path / "users" / "dee" / "dialogs" / "current.yaml"
        before = path.read_bytes()

        def failing_fsync(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(StorageError, match="Input/output error"):
            await collect(chat, "dee", "not acknowledged")
        monkeypatch.undo()
        assert path.read_bytes() == before
        assert await collect(chat, "dee", "again") == "echo: again"


async def test_model_returning_a_plain_async_iterator(server: ServerFactory) -> None:
    """A model's stream need not be a generator; one without aclose works."""

    class Chunks:
        def __init__(self, parts: list[str]) -> None:
            self.parts = parts

        def __aiter__(self) -> Chunks:
            return self

        async def __anext__(self) -> str:
            if not self.parts:
                raise StopAsyncIteration
            return self.parts.pop(0)

    class PlainModel:
        name = "plain"

        def stream(
            self, messages: Sequence[Message], *, json_output: bool, reasoning_enabled: bool
        ) -> AsyncIterator[Chunk]:
            return Chunks(["a", "b"])

        async def aclose(self) -> None:
            pass

    async with server(model=PlainModel()) as chat:
        assert await collect(chat, "eli", "hi") == "ab"
        dialog = await chat.get_current_dialog("eli")
        assert dialog is not None
        assert not dialog.messages[-1].interrupted


async def test_unknown_end_reason_is_refused(server: ServerFactory) -> None:
    """end_user_session takes only the documented reasons; archives stay readable."""
    async with server() as chat:
        await collect(chat, "fin", "hi")
        with pytest.raises(ValueError, match="reason must be one of"):
            await chat.end_user_session("fin", reason="logout")  # type: ignore[arg-type]
        assert await chat.end_user_session("fin", reason="disconnect") is not None


async def test_lone_surrogates_are_refused_at_the_edge(server: ServerFactory) -> None:
    """Text or ids that UTF-8 cannot store get a chatsession error, not UnicodeEncodeError."""
    async with server() as chat:
        with pytest.raises(InvalidMessage, match="valid Unicode"):
            await collect(chat, "gil", "hi \ud83d")
        with pytest.raises(InvalidUserId, match="valid Unicode"):
            await collect(chat, "gil\ud83d", "hi")


async def test_handler_removing_itself_does_not_skip_the_next(server: ServerFactory) -> None:
    """Every handler registered at emit time runs, even if one unregisters itself."""
    calls: list[str] = []
    async with server() as chat:

        def once(user: str, session_id: str) -> None:
            calls.append("once")
            chat.off("session_started", once)

        chat.on("session_started", once)
        chat.on("session_started", lambda user, sid: calls.append("always"))
        await chat.start_user_session("hal")
        await chat.end_user_session("hal")
        await chat.start_user_session("hal")
    assert calls == ["once", "always", "always"]


async def test_async_handlers_run_for_the_sessions_ended_at_shutdown(
    server: ServerFactory,
) -> None:
    """session_ended coroutine handlers run for shutdown's ends too."""
    ended: list[str] = []

    async def record(user: str, archive_id: str | None) -> None:
        await asyncio.sleep(0)
        ended.append(user)

    async with server() as chat:
        chat.on("session_ended", record)
        await collect(chat, "ivy", "hi")
        await chat.start_user_session("jan")
    assert sorted(ended) == ["ivy", "jan"]


async def test_many_archives_in_one_second_list_in_order(tmp_path: Path) -> None:
    """-10 comes after -2."""
    store = YamlDialogStore(tmp_path)
    for n in range(12):
        await store.append("kim", f"s{n}", T0, Message("user", f"m{n}", T0), first=True)
        await store.archive_current("kim", ended_at=T0, reason="manual")
    summaries = await store.list_archives("kim")
    assert [s.session_id for s in summaries] == [f"s{n}" for n in range(12)]


async def test_crash_inside_create_leaves_the_dialog_current(tmp_path: Path) -> None:
    """A crash after create's link, before its unlink, is not mistaken for an archive."""
    store = YamlDialogStore(tmp_path)
    await store.append("lou", "s", T0, Message("user", "first", T0), first=True)
    directory = tmp_path / "users" / "lou" / "dialogs"
    os.link(directory / "current.yaml", directory / "current.yaml.new")
    async with ChatServer(Settings(chat_model="echo", data_dir=tmp_path)) as chat:
        [archive] = await chat.list_archives("lou")
        dialog = await chat.get_archive("lou", archive.archive_id)
        assert [m.content for m in dialog.messages] == ["first"]


async def test_no_turn_outlives_shutdown_even_when_its_model_is_slow_to_stop(
    tmp_path: Path,
) -> None:
    """A model that takes longer than both grace periods to stop once cancelled: shutdown
    waits for its turn, so the partial reply is stored before the store closes."""
    events: list[str] = []

    class SlowToStop:
        name = "slow-to-stop"

        async def stream(
            self, messages: Sequence[Message], *, json_output: bool, reasoning_enabled: bool
        ) -> AsyncIterator[Chunk]:
            yield "partial "
            try:
                await asyncio.sleep(30)
            finally:
                # Cleanup that takes a while whatever happens, like a stream being released.
                await asyncio.shield(asyncio.sleep(1.5))
                events.append("model stopped")

        async def aclose(self) -> None:
            events.append("model closed")

    class RecordingStore(YamlDialogStore):
        async def append(self, *args: object, **kwargs: object) -> None:
            events.append(f"append, store {'closed' if self._closed else 'open'}")
            await super().append(*args, **kwargs)  # type: ignore[arg-type]

        async def aclose(self) -> None:
            events.append("store closed")
            await super().aclose()

    settings = Settings(data_dir=tmp_path, shutdown_grace=0.2)
    chat = ChatServer(settings, store=RecordingStore(tmp_path), model=SlowToStop())
    await chat.__aenter__()

    async def consume() -> None:
        async for _ in chat.chat_with_history("amy", "hi"):
            pass

    consumer = asyncio.ensure_future(consume())
    await asyncio.sleep(0.05)
    await chat.aclose()
    assert events == [
        "append, store open",
        "model stopped",
        "append, store open",
        "store closed",
        "model closed",
    ]
    await asyncio.gather(consumer, return_exceptions=True)
    dialog = await YamlDialogStore(tmp_path).load_current("amy")
    assert dialog is not None  # the end gave up on it: the next start recovers it
    assert [m.content for m in dialog.messages] == ["hi", "partial "]
    assert dialog.messages[-1].interrupted

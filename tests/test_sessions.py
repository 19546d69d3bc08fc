"""The session lifecycle over every store: start, activity, end, events, chat, connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from chatsession import (
    ChatServer,
    Chunk,
    InvalidSessionId,
    Message,
    ModelError,
    ModelOutputError,
    Reasoning,
    ServerClosedError,
    SessionEvent,
    Settings,
)
from chatsession.models import EchoModel
from chatsession.storage import DialogStore, MemoryDialogStore
from tests.conftest import ServerFactory, collect


async def test_start_returns_info_and_is_idempotent(server: ServerFactory) -> None:
    """start_user_session starts once; a second call returns the same session."""
    async with server() as chat:
        info = await chat.start_user_session("alice", "s-1")
        assert (info.user_id, info.session_id, info.is_active, info.connections) == (
            "alice",
            "s-1",
            True,
            0,
        )
        again = await chat.start_user_session("alice", "s-2")
        assert again.session_id == "s-1"
        assert await chat.get_active_session_count() == 1
        assert dict(chat.sessions)["alice"].session_id == "s-1"


async def test_end_archives_and_clears_the_current_dialog(server: ServerFactory) -> None:
    """Ending archives the messages, clears current, leaves the registry, fires once."""
    ended: list[tuple[str, str | None]] = []
    async with server() as chat:
        chat.on("session_ended", lambda user, archive: ended.append((user, archive)))
        assert await collect(chat, "alice", "hello") == "echo: hello"
        archive_id = await chat.end_user_session("alice")
        assert archive_id is not None
        assert await chat.get_current_dialog("alice") is None
        assert await chat.get_user_session_info("alice") is None
        archive = await chat.get_archive("alice", archive_id)
        assert [m.content for m in archive.messages] == ["hello", "echo: hello"]
        assert archive.end_reason == "manual"
        assert archive.ended_at is not None
        assert ended == [("alice", archive_id)]


async def test_session_without_messages_archives_nothing(server: ServerFactory) -> None:
    """An empty session ends with archive id None."""
    ended: list[str | None] = []
    async with server() as chat:
        chat.on("session_ended", lambda user, archive: ended.append(archive))
        await chat.start_user_session("bob")
        assert await chat.end_user_session("bob") is None
        assert await chat.list_archives("bob") == []
    assert ended == [None]


async def test_ending_an_unknown_user_returns_none(server: ServerFactory) -> None:
    """No session, nothing to end."""
    async with server() as chat:
        assert await chat.end_user_session("nobody") is None


async def test_events_sync_async_and_failing_handlers(server: ServerFactory) -> None:
    """Handlers may be sync or async; a failing one is logged, never fatal."""
    seen: list[str] = []
    events: list[SessionEvent] = []

    async def async_handler(user: str, session_id: str) -> None:
        await asyncio.sleep(0)
        seen.append(f"async:{user}")

    def failing(*args: Any) -> None:
        raise RuntimeError("handler bug")

    async def failing_async(*args: Any) -> None:
        raise RuntimeError("async handler bug")

    async with server() as chat:
        chat.on("session_started", failing)
        chat.on("session_started", failing_async)
        chat.on("session_started", async_handler)
        chat.on("session_started", lambda user, sid: seen.append(f"sync:{user}"))
        chat.on("session_event", events.append)
        await chat.start_user_session("carol")
        await collect(chat, "carol", "x")
        await chat.end_user_session("carol")
        await asyncio.sleep(0.01)
    assert seen == ["sync:carol", "async:carol"]
    assert [e.type for e in events] == ["session_started", "session_ended"]
    assert events[1].reason == "manual"
    assert events[1].archive_id is not None


async def test_unknown_event_name_is_refused(server: ServerFactory) -> None:
    """A typo in an event name fails loudly."""
    async with server() as chat:
        with pytest.raises(ValueError, match="unknown event 'sessionEnded'"):
            chat.on("sessionEnded", print)


async def test_leaving_the_block_archives_every_session(
    server: ServerFactory, make_store: Callable[..., DialogStore], tmp_path: Path
) -> None:
    """Shutdown archives each active session with reason shutdown."""
    store = make_store(Settings(data_dir=tmp_path / "data"))
    async with server(store=store) as chat:
        for user in ("u1", "u2", "u3"):
            await collect(chat, user, f"hi {user}")
        await chat.start_user_session("empty")
    for user in ("u1", "u2", "u3"):  # read from the store the server closed
        archives = await store.list_archives(user)
        assert [(a.end_reason, a.message_count) for a in archives] == [("shutdown", 2)]
    assert await store.list_archives("empty") == []


async def test_closed_server_refuses_work(server: ServerFactory) -> None:
    """Using a server outside its block raises a plain sentence."""
    async with server() as chat:
        pass
    with pytest.raises(ServerClosedError, match="has been closed"):
        await chat.start_user_session("alice")
    with pytest.raises(RuntimeError, match="Cannot reopen"):
        await chat.__aenter__()
    fresh = ChatServer(Settings(chat_model="echo"))
    with pytest.raises(ServerClosedError, match="async with"):
        fresh.chat_with_history("alice", "hi")


async def test_activity_postpones_expiry(server: ServerFactory) -> None:
    """An idle session times out; activity keeps it alive."""
    async with server(session_timeout=0.2) as chat:
        await collect(chat, "idle", "a")
        await collect(chat, "busy", "b")
        await asyncio.sleep(0.15)
        assert await chat.update_user_activity("busy")
        await asyncio.sleep(0.1)
        assert await chat.expire_idle_sessions() == 1
        assert await chat.get_user_session_info("idle") is None
        assert await chat.get_user_session_info("busy") is not None
        archives = await chat.list_archives("idle")
        assert [a.end_reason for a in archives] == ["timeout"]


async def test_sweeper_runs_by_itself(server: ServerFactory) -> None:
    """The background sweep ends idle sessions every check interval."""
    ended = asyncio.Event()
    async with server(session_timeout=0.05, session_check_interval=0.02) as chat:
        chat.on("session_ended", lambda user, archive: ended.set())
        await collect(chat, "alice", "hi")
        await asyncio.wait_for(ended.wait(), 2)
        assert [a.end_reason for a in await chat.list_archives("alice")] == ["timeout"]


async def test_chat_without_session_starts_one(server: ServerFactory) -> None:
    """chat_with_history starts a session when there is none."""
    started: list[str] = []
    async with server() as chat:
        chat.on("session_started", lambda user, sid: started.append(user))
        await collect(chat, "dave", "hi")
        assert started == ["dave"]
        info = await chat.get_user_session_info("dave")
        assert info is not None
        assert info.is_active


async def test_history_reaches_the_model(server: ServerFactory) -> None:
    """The model sees the user's whole dialog, and only that user's."""
    seen: list[list[str]] = []

    class Recorder(EchoModel):
        async def stream(
            self, messages: Sequence[Message], *, json_output: bool, reasoning_enabled: bool
        ) -> AsyncIterator[Chunk]:
            seen.append([m.content for m in messages])
            async for chunk in super().stream(
                messages, json_output=json_output, reasoning_enabled=reasoning_enabled
            ):
                yield chunk

    async with server(model=Recorder()) as chat:
        await collect(chat, "alice", "one")
        await collect(chat, "bob", "other")
        await collect(chat, "alice", "two")
    assert seen == [["one"], ["other"], ["one", "echo: one", "two"]]


async def test_reasoning_is_streamed_and_stored_apart(server: ServerFactory) -> None:
    """Reasoning chunks come as Reasoning and land in the reply's reasoning field."""
    async with server() as chat:
        chunks = [c async for c in chat.chat_with_history("eve", "hm", reasoning_enabled=True)]
        assert isinstance(chunks[0], Reasoning)
        assert all(isinstance(c, str) for c in chunks[1:])
        dialog = await chat.get_current_dialog("eve")
        assert dialog is not None
        reply = dialog.messages[-1]
        assert reply.content == "echo: hm"
        assert reply.reasoning is not None
        assert "2 characters" in reply.reasoning


async def test_json_output_that_does_not_parse_is_stored_marked(server: ServerFactory) -> None:
    """A JSON reply that does not parse raises ModelOutputError and is stored marked."""

    class Broken(EchoModel):
        async def stream(
            self, messages: Sequence[Message], *, json_output: bool, reasoning_enabled: bool
        ) -> AsyncIterator[Chunk]:
            yield '{"half": '

    async with server(model=Broken()) as chat:
        with pytest.raises(ModelOutputError, match="not valid JSON"):
            await collect(chat, "fay", "give json", json_output=True)
        dialog = await chat.get_current_dialog("fay")
        assert dialog is not None
        assert dialog.messages[-1].content == '{"half": '
        assert dialog.messages[-1].error is not None
    async with server() as chat:
        assert await collect(chat, "fay", "ok", json_output=True) == '{"echo": "ok"}'


async def test_model_failure_midway_stores_partial_reply(server: ServerFactory) -> None:
    """A model that breaks midway: ModelError, and the partial reply stored interrupted."""
    async with server(model=EchoModel(fail_after=2)) as chat:
        with pytest.raises(ModelError, match="failed after 2 chunks"):
            await collect(chat, "gus", "one two three four")
        dialog = await chat.get_current_dialog("gus")
        assert dialog is not None
        assert [(m.content, m.interrupted) for m in dialog.messages] == [
            ("one two three four", False),
            ("echo: one ", True),
        ]


async def test_foreign_model_errors_are_translated(server: ServerFactory) -> None:
    """An exception from inside a model reaches the caller as ModelError."""

    class Exploding(EchoModel):
        async def stream(
            self, messages: Sequence[Message], *, json_output: bool, reasoning_enabled: bool
        ) -> AsyncIterator[Chunk]:
            raise ConnectionResetError("peer went away")
            yield ""  # pragma: no cover

    async with server(model=Exploding()) as chat:
        with pytest.raises(ModelError, match="peer went away") as caught:
            await collect(chat, "hal", "hi")
        assert isinstance(caught.value.__cause__, ConnectionResetError)


async def test_consumer_that_stops_early_stores_an_interrupted_reply(
    server: ServerFactory,
) -> None:
    """Closing the stream mid-reply stops the model and stores what it produced, marked."""
    async with server(model=EchoModel(delay=0.02)) as chat:
        stream = chat.chat_with_history("ivy", "a b c d e f g h")
        first = await anext(stream)
        assert isinstance(first, str)
        await stream.aclose()
        dialog = await chat.get_current_dialog("ivy")
        assert dialog is not None
        reply = dialog.messages[-1]
        assert reply.interrupted
        assert reply.content.startswith(first)
        assert len(reply.content) < len("echo: a b c d e f g h")


async def test_a_fast_reply_is_stored_whole_even_if_unread(server: ServerFactory) -> None:
    """The reply is produced and stored whether or not the caller reads it all."""
    async with server() as chat:
        stream = chat.chat_with_history("ivy", "a b c d")
        await anext(stream)
        await asyncio.sleep(0.01)
        await stream.aclose()
        dialog = await chat.get_current_dialog("ivy")
        assert dialog is not None
        assert dialog.messages[-1].content == "echo: a b c d"


async def test_calling_into_the_server_while_reading_a_reply_never_deadlocks(
    server: ServerFactory,
) -> None:
    """Ending, starting or connecting between chunks of one's own reply just works."""
    async with server(model=EchoModel(delay=0.001)) as chat:
        async for _ in chat.chat_with_history("joy", "a b c"):
            archive_id = await asyncio.wait_for(chat.end_user_session("joy"), 2)
            assert archive_id is not None
            break
        stream = chat.chat_with_history("kay", "a b c d e")

        async def broken() -> None:
            async with chat.connect("kay"):
                async for _ in stream:
                    raise ConnectionError("peer went away")

        with pytest.raises(ConnectionError):
            await asyncio.wait_for(broken(), 2)
        assert await chat.get_user_session_info("kay") is None


async def test_cancelled_chat_stores_what_was_produced(server: ServerFactory) -> None:
    """Cancelling the consuming task mid-reply stores the partial reply."""
    async with server(model=EchoModel(delay=0.01)) as chat:
        got: list[Chunk] = []
        three = asyncio.Event()

        async def consume() -> None:
            async for chunk in chat.chat_with_history("jon", "w " * 50):
                got.append(chunk)
                if len(got) == 3:
                    three.set()

        task = asyncio.create_task(consume())
        await three.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        dialog = await chat.get_current_dialog("jon")
        assert dialog is not None
        reply = dialog.messages[-1]
        assert reply.interrupted
        assert reply.content.startswith("".join(map(str, got)))


async def test_concurrent_chats_of_one_user_are_served_in_order(server: ServerFactory) -> None:
    """Two chats at once: the second waits, and the dialog never interleaves."""
    async with server(model=EchoModel(delay=0.002)) as chat:
        replies = await asyncio.gather(*(collect(chat, "kim", f"m{i} x y z") for i in range(5)))
        assert replies == [f"echo: m{i} x y z" for i in range(5)]
        dialog = await chat.get_current_dialog("kim")
        assert dialog is not None
        expected = []
        for i in range(5):
            expected += [f"m{i} x y z", f"echo: m{i} x y z"]
        assert [m.content for m in dialog.messages] == expected


async def test_debug_session_logs(server: ServerFactory, caplog: pytest.LogCaptureFixture) -> None:
    """DEBUG=session:* logs each session's start and end."""
    caplog.set_level("DEBUG", logger="chatsession.sessions")
    async with server(debug="session:*") as chat:
        await chat.start_user_session("zed")
        await chat.end_user_session("zed")
    assert "started for 'zed'" in caplog.text
    assert "of 'zed' ended (manual)" in caplog.text


@pytest.mark.parametrize("session_id", ["", "has space", "x" * 129, "new\nline", "../x"])
async def test_unacceptable_session_ids_are_refused(server: ServerFactory, session_id: str) -> None:
    """A client-chosen session id must be short and plain; it lands in files and headers."""
    async with server() as chat:
        with pytest.raises(InvalidSessionId, match="session id"):
            await chat.start_user_session("alice", session_id)
        assert await chat.get_active_session_count() == 0


async def test_a_failing_background_task_never_stops_the_server(server: ServerFactory) -> None:
    """An end triggered in the background that fails is logged; the server runs on."""

    class BrokenArchive(MemoryDialogStore):
        async def archive_current(self, user_id: str, **kwargs: Any) -> str | None:
            raise RuntimeError("bug in a store")

    async with server(store=BrokenArchive(), disconnect_grace=0.01) as chat:
        async with chat.connect("ann"):
            await collect(chat, "ann", "hi")
        await asyncio.sleep(0.05)
        assert await collect(chat, "ann", "still here") == "echo: still here"


async def test_shutdown_waits_for_replies_then_cancels_past_the_grace(
    server: ServerFactory, make_store: Callable[..., DialogStore], tmp_path: Path
) -> None:
    """A reply still streaming at shutdown gets SHUTDOWN_GRACE, then is stored interrupted.

    The caller is told with ServerClosedError; its own task is never cancelled.
    """
    data = tmp_path / "grace"
    outcome: list[str] = []
    streaming = asyncio.Event()

    async def slow_chat(chat: ChatServer) -> None:
        try:
            async for _ in chat.chat_with_history("kit", "w " * 1000):
                streaming.set()
        except ServerClosedError as exc:
            outcome.append(str(exc))

    loop = asyncio.get_running_loop()
    store = make_store(Settings(data_dir=data))
    model = EchoModel(delay=0.01)
    async with server(model=model, shutdown_grace=0.1, data_dir=data, store=store) as chat:
        task = asyncio.create_task(slow_chat(chat))
        await streaming.wait()
        started = loop.time()
    assert loop.time() - started < 2
    await task
    assert outcome == ["The server shut down before the reply finished."]
    [summary] = await store.list_archives("kit")  # read from the store the server closed
    assert summary.end_reason == "shutdown"
    reply = (await store.load_archive("kit", summary.archive_id)).messages[-1]
    assert reply.interrupted
    assert reply.content.startswith("echo: w w")


async def test_chunks_that_pile_up_are_joined_by_kind(server: ServerFactory) -> None:
    """A caller that falls behind gets the waiting chunks joined; reasoning stays apart."""

    class Burst(EchoModel):
        async def stream(
            self, messages: Sequence[Message], *, json_output: bool, reasoning_enabled: bool
        ) -> AsyncIterator[Chunk]:
            for chunk in (Reasoning("a"), Reasoning("b"), "x", "y", Reasoning("c"), "z"):
                yield chunk

    async with server(model=Burst()) as chat:
        stream = chat.chat_with_history("lee", "go", reasoning_enabled=True)
        await asyncio.sleep(0)  # the turn starts
        await asyncio.sleep(0.01)  # and runs to the end before anything is read
        chunks = [chunk async for chunk in stream]
        assert chunks == [Reasoning("ab"), "xy", Reasoning("c"), "z"]
        dialog = await chat.get_current_dialog("lee")
        assert dialog is not None
        assert (dialog.messages[-1].content, dialog.messages[-1].reasoning) == ("xyz", "abc")

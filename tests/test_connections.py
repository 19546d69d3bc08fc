"""Connections: a session ends when its user's last connection closes, not the first."""

from __future__ import annotations

import asyncio

import pytest

from chatsession import SessionEvent
from tests.conftest import ServerFactory, collect


async def test_second_tab_never_cuts_the_first(server: ServerFactory) -> None:
    """Closing one of two connections keeps the session and its dialog whole."""
    async with server() as chat:
        async with chat.connect("alice") as first:
            async with chat.connect("alice") as second:
                assert second.session_id == first.session_id
                await collect(chat, "alice", "from tab two")
                info = await chat.get_user_session_info("alice")
                assert info is not None
                assert info.connections == 2
            await collect(chat, "alice", "from tab one")
            assert await chat.list_archives("alice") == []
        archives = await chat.list_archives("alice")
        assert [(a.end_reason, a.message_count) for a in archives] == [("disconnect", 4)]


async def test_connection_error_ends_with_reason_error(server: ServerFactory) -> None:
    """A block that raises ends the session as error; fail() does the same."""
    async with server() as chat:

        async def broken_connection() -> None:
            async with chat.connect("bob"):
                await collect(chat, "bob", "hi")
                raise ConnectionError("peer reset")

        with pytest.raises(ConnectionError):
            await broken_connection()
        async with chat.connect("carol") as connection:
            await collect(chat, "carol", "hi")
            connection.fail()
        assert [a.end_reason for a in await chat.list_archives("bob")] == ["error"]
        assert [a.end_reason for a in await chat.list_archives("carol")] == ["error"]


async def test_reconnect_within_grace_keeps_the_session(server: ServerFactory) -> None:
    """With DISCONNECT_GRACE, a quick reconnect continues the same session."""
    async with server(disconnect_grace=0.2) as chat:
        async with chat.connect("dan") as connection:
            await collect(chat, "dan", "before")
        await asyncio.sleep(0.05)
        async with chat.connect("dan") as again:
            assert again.session_id == connection.session_id
            await collect(chat, "dan", "after")
        ended = asyncio.Event()
        chat.on("session_ended", lambda user, archive: ended.set())
        await asyncio.wait_for(ended.wait(), 2)
        archives = await chat.list_archives("dan")
        assert [(a.end_reason, a.message_count) for a in archives] == [("disconnect", 4)]


async def test_connected_sessions_do_not_time_out(server: ServerFactory) -> None:
    """An open connection keeps its session alive; idle ones expire."""
    async with server(session_timeout=0.05) as chat, chat.connect("eve"):
        await collect(chat, "eve", "hi")
        await collect(chat, "idle", "hi")
        await asyncio.sleep(0.1)
        assert await chat.expire_idle_sessions() == 1
        assert await chat.get_user_session_info("eve") is not None


async def test_without_auto_archive_only_the_timeout_ends_it(server: ServerFactory) -> None:
    """AUTO_ARCHIVE_ON_DISCONNECT=false: closing keeps the session until it times out."""
    async with server(auto_archive_on_disconnect=False, session_timeout=0.05) as chat:
        async with chat.connect("fay"):
            await collect(chat, "fay", "hi")
        assert await chat.get_user_session_info("fay") is not None
        await asyncio.sleep(0.1)
        assert await chat.expire_idle_sessions() == 1
        assert [a.end_reason for a in await chat.list_archives("fay")] == ["timeout"]


async def test_connection_events(server: ServerFactory) -> None:
    """session_event reports connections opening and closing."""
    events: list[SessionEvent] = []
    async with server() as chat:
        chat.on("session_event", events.append)
        async with chat.connect("gil"):
            pass
    assert [e.type for e in events] == [
        "session_started",
        "connection_opened",
        "connection_closed",
        "session_ended",
    ]
    assert events[-1].reason == "disconnect"


async def test_connection_given_session_id_names_the_new_session(server: ServerFactory) -> None:
    """A client that sends its session id back gets it when the session is new."""
    async with server() as chat, chat.connect("hal", "client-chosen") as connection:
        assert connection.session_id == "client-chosen"

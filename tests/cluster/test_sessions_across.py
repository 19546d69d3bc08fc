"""One session per user across instances: lookups, tabs, grace, order, channels and limits."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from websockets.exceptions import InvalidStatus

from tests.cluster.conftest import (
    Instances,
    RedisServer,
    chat,
    eventually,
    health,
    reply_of,
    say,
    sessions,
    user,
    websocket,
)


def shared(redis: RedisServer, **env: str) -> dict[str, str]:
    """The environment of instances sharing ``redis``; a dead one is noticed within 1 s."""
    return {"REDIS_URL": redis.url, "INSTANCE_TTL": "1", **env}


async def current_texts(rig: Instances, user_id: str) -> list[str]:
    dialog = await rig.store().load_current(user_id)
    return [] if dialog is None else [m.content for m in dialog.messages]


async def test_any_instance_answers_for_the_users_one_session(
    instances: Instances, redis_server: RedisServer
) -> None:
    """A session started on A is the one B reports, lists and continues when named."""
    a, b = instances(2, shared(redis_server))
    started = await chat(a.url, "alice", "hello")
    assert started.status_code == 200, started.text
    session_id = started.headers["x-session-id"]

    status, report = await health(b.url)
    assert status == 200
    assert report["activeSessions"] == 1
    assert report["redis"] == "ok"
    assert report["instance"]["id"] == b.id
    listed = await sessions(b.url)
    assert [(s["userId"], s["sessionId"], s["instance"]) for s in listed] == [
        ("alice", session_id, a.id)
    ]

    went_on = await chat(b.url, "alice", "again", session_id)
    assert went_on.status_code == 200, went_on.text
    assert went_on.headers["x-session-id"] == session_id
    async with websocket(b.ws_url, "alice") as (_, ws_session):
        assert ws_session == session_id
        dialog = await instances.store().load_current("alice")  # before the close ends it
    assert dialog is not None
    assert dialog.session_id == session_id
    assert [m.content for m in dialog.messages] == ["hello", "echo: hello", "again", "echo: again"]


async def test_a_tab_on_each_instance_is_one_session_that_ends_once_with_the_last(
    instances: Instances, redis_server: RedisServer
) -> None:
    """Tabs on A and B share a session; closing A's keeps it, closing B's ends it once."""
    a, b = instances(2, shared(redis_server))
    async with websocket(a.ws_url, "alice") as (tab_a, session_id):
        await say(tab_a, "from a")
        async with websocket(b.ws_url, "alice") as (tab_b, other):
            assert other == session_id
            _, report = await health(a.url)
            assert report["activeSessions"] == 1
            await tab_a.close()
            await asyncio.sleep(1.0)
            assert await instances.store().list_archives("alice") == []
            assert reply_of(await say(tab_b, "from b")) == "echo: from b"
    archives = await instances.settled_archives("alice")
    assert [(x.session_id, x.end_reason, x.message_count) for x in archives] == [
        (session_id, "disconnect", 4)
    ]
    for instance in (a, b):
        _, report = await health(instance.url)
        assert (report["activeSessions"], report["instance"]["activeSessions"]) == (0, 0), report


async def test_a_client_that_drops_from_a_keeps_its_session_on_b_within_the_grace(
    instances: Instances, redis_server: RedisServer
) -> None:
    """DISCONNECT_GRACE holds across instances: gone from A, back on B, same session."""
    a, b = instances(2, shared(redis_server, DISCONNECT_GRACE="3"))
    async with websocket(a.ws_url, "alice") as (ws, session_id):
        await say(ws, "one")
    async with websocket(b.ws_url, "alice", session_id) as (ws, again):
        assert again == session_id
        await say(ws, "two")
    archives = await instances.settled_archives("alice", settle=4.0)
    assert len(archives) == 1
    assert (archives[0].session_id, archives[0].end_reason) == (session_id, "disconnect")
    dialog = await instances.store().load_archive("alice", archives[0].archive_id)
    assert [m.content for m in dialog.messages] == ["one", "echo: one", "two", "echo: two"]


async def test_chats_alternating_between_instances_stay_in_arrival_order(
    instances: Instances, redis_server: RedisServer
) -> None:
    """Consecutive messages sent to A, B, A, ... are stored in the order they arrived."""
    a, b = instances(2, shared(redis_server))
    first = await chat(a.url, "alice", "m0")
    session_id = first.headers["x-session-id"]
    for index in range(1, 20):
        target = (a, b)[index % 2]
        response = await chat(target.url, "alice", f"m{index}", session_id)
        assert response.status_code == 200, response.text
        assert response.headers["x-session-id"] == session_id
    expected = [t for i in range(20) for t in (f"m{i}", f"echo: m{i}")]
    assert await current_texts(instances, "alice") == expected


async def test_concurrent_chats_on_two_instances_are_each_stored_whole_once(
    instances: Instances, redis_server: RedisServer
) -> None:
    """Chats racing on A and B never interleave inside a turn, and none is lost or doubled."""
    a, b = instances(2, shared(redis_server, RATE_LIMIT="0"))
    first = await chat(a.url, "alice", "start")
    session_id = first.headers["x-session-id"]
    texts = [f"race {i}" for i in range(12)]
    responses = await asyncio.gather(
        *(chat((a, b)[i % 2].url, "alice", text, session_id) for i, text in enumerate(texts))
    )
    assert [r.status_code for r in responses] == [200] * len(texts)
    stored = (await current_texts(instances, "alice"))[2:]
    pairs = list(zip(stored[::2], stored[1::2], strict=True))
    assert all(reply == f"echo: {text}" for text, reply in pairs), pairs
    assert sorted(text for text, _ in pairs) == sorted(texts)


async def test_a_chat_posted_on_a_reaches_the_users_sse_channel_on_b(
    instances: Instances, redis_server: RedisServer
) -> None:
    """POST /chat handled by A pushes its reply to the user's SSE channel held open on B."""
    a, b = instances(2, shared(redis_server))
    async with (
        httpx.AsyncClient(timeout=10) as http,
        aconnect_sse(http, "GET", f"{b.url}/chat-stream", headers=user("alice")) as source,
    ):
        events = source.aiter_sse()
        opened = json.loads((await anext(events)).data)
        assert opened["type"] == "session"
        response = await chat(a.url, "alice", "over there", opened["sessionId"])
        assert response.status_code == 200, response.text
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while not frames or frames[-1]["type"] != "done":
                frame = json.loads((await anext(events)).data)
                if frame["type"] in ("response", "done"):
                    frames.append(frame)
        assert reply_of(frames) == "echo: over there"


async def test_the_sse_channel_on_b_hears_of_a_tab_opened_on_a(
    instances: Instances, redis_server: RedisServer
) -> None:
    """Session events caused on A (a tab opening) reach the user's SSE channel on B."""
    a, b = instances(2, shared(redis_server))
    async with (
        httpx.AsyncClient(timeout=10) as http,
        aconnect_sse(http, "GET", f"{b.url}/chat-stream", headers=user("alice")) as source,
    ):
        events = source.aiter_sse()
        session_id = json.loads((await anext(events)).data)["sessionId"]
        async with websocket(a.ws_url, "alice") as (_, ws_session):
            assert ws_session == session_id
            async with asyncio.timeout(10):
                frame = json.loads((await anext(events)).data)
                while frame["type"] != "session_event":
                    frame = json.loads((await anext(events)).data)
        assert (frame["event"], frame["sessionId"]) == ("connection_opened", session_id)


async def test_a_websocket_on_b_sees_session_events_caused_on_a(
    instances: Instances, redis_server: RedisServer
) -> None:
    """A WebSocket on B is sent the session events of a tab that opens and closes on A."""
    a, b = instances(2, shared(redis_server))
    async with websocket(b.ws_url, "alice") as (watcher, session_id):
        async with websocket(a.ws_url, "alice"):
            pass
        seen: list[str] = []
        async with asyncio.timeout(10):
            while "connection_closed" not in seen:
                frame = json.loads(await watcher.recv())
                if frame["type"] == "session_event":
                    assert frame["sessionId"] == session_id
                    seen.append(frame["event"])
        assert seen[:2] == ["connection_opened", "connection_closed"]


async def test_connections_per_user_are_counted_on_every_instance(
    instances: Instances, redis_server: RedisServer
) -> None:
    """MAX_CONNECTIONS_PER_USER=2: one tab on A and one on B leave no room on either."""
    a, b = instances(2, shared(redis_server, MAX_CONNECTIONS_PER_USER="2"))
    async with websocket(a.ws_url, "alice"), websocket(b.ws_url, "alice"):
        for target in (a, b):
            with pytest.raises(InvalidStatus) as refused:
                async with websocket(target.ws_url, "alice"):
                    pass
            assert refused.value.response.status_code == 429
        async with websocket(a.ws_url, "bob"):
            pass  # another user is not affected
    # Once closed, the slots are free again on both.
    await eventually(lambda: _opens(b.ws_url, "alice"), 5, "a slot free again")


async def _opens(ws_url: str, user_id: str) -> bool:
    try:
        async with websocket(ws_url, user_id):
            return True
    except InvalidStatus:
        return False


async def test_the_rate_limit_counts_messages_on_every_instance(
    instances: Instances, redis_server: RedisServer
) -> None:
    """RATE_LIMIT=4 a minute: two chats on A and two on B use it up on both."""
    a, b = instances(2, shared(redis_server, RATE_LIMIT="4"))
    first = await chat(a.url, "alice", "1")
    session_id = first.headers["x-session-id"]
    for target, text in ((b, "2"), (a, "3"), (b, "4")):
        assert (await chat(target.url, "alice", text, session_id)).status_code == 200
    for target in (a, b):
        limited = await chat(target.url, "alice", "5", session_id)
        assert limited.status_code == 429, limited.text
    async with websocket(b.ws_url, "alice") as (ws, _):
        frames = await say(ws, "6")
        assert (frames[-1]["type"], frames[-1]["status"]) == ("error", 429)
    assert (await chat(b.url, "bob", "hi")).status_code == 200  # another user carries on
    # Closing the WebSocket, alice's only connection, ended and archived the session; the
    # refused messages are nowhere in it.
    (archive,) = await instances.settled_archives("alice")
    assert archive.session_id == session_id
    dialog = await instances.store().load_archive("alice", archive.archive_id)
    assert [m.content for m in dialog.messages] == [t for i in "1234" for t in (i, f"echo: {i}")]

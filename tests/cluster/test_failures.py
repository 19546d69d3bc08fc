"""Failures: an instance killed or stopped, Redis killed, restarted empty, or down at start."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.cluster.conftest import (
    Instances,
    RedisServer,
    chat,
    eventually,
    health,
    reply_of,
    say,
    websocket,
)


def shared(redis: RedisServer, **env: str) -> dict[str, str]:
    return {"REDIS_URL": redis.url, "INSTANCE_TTL": "1", **env}


async def test_kill_9_ends_the_dead_instances_sessions_as_error_once_on_a_survivor(
    instances: Instances, redis_server: RedisServer
) -> None:
    """After kill -9 of A, its connection-only sessions are archived by B within about
    INSTANCE_TTL, as error, once, with every acknowledged message; a session that also has
    a tab on B goes on."""
    a, b = instances(2, shared(redis_server))
    users = [f"user{i}" for i in range(5)]
    async with AsyncExitStack() as stack:
        tab_b, shared_session = await stack.enter_async_context(websocket(b.ws_url, "shared"))
        tabs = [await stack.enter_async_context(websocket(a.ws_url, u)) for u in users]
        tab_a, _ = await stack.enter_async_context(websocket(a.ws_url, "shared"))
        for ws, _ in tabs:
            for turn in range(3):
                assert reply_of(await say(ws, f"turn {turn}")) == f"echo: turn {turn}"
        await say(tab_a, "shared on a")
        a.kill()
        killed = time.monotonic()
        for user_id in users:
            archives = await instances.archives(user_id, within=15)
            assert [(x.end_reason, x.message_count) for x in archives] == [("error", 6)]
        elapsed = time.monotonic() - killed
        assert elapsed < 1.0 + 5.0, elapsed  # INSTANCE_TTL + a few sweeps of slack
        await asyncio.sleep(1.5)
        for user_id in users:
            assert len(await instances.store().list_archives(user_id)) == 1
        assert await instances.store().list_archives("shared") == []
        assert reply_of(await say(tab_b, "still here")) == "echo: still here"
        _, report = await health(b.url)
        assert report["activeSessions"] == 1
    archives = await instances.settled_archives("shared")
    assert [(x.session_id, x.end_reason, x.message_count) for x in archives] == [
        (shared_session, "disconnect", 4)
    ]


async def test_while_redis_is_down_chats_get_503_and_error_frames_and_nothing_is_damaged(
    instances: Instances, redis_server: RedisServer
) -> None:
    """Redis killed: POST /chat gets 503 with Retry-After, a WebSocket an error frame,
    /health 503; the dialog stored before is intact and goes on once Redis is back."""
    a, b = instances(2, shared(redis_server))
    async with websocket(a.ws_url, "alice") as (ws, session_id):
        await say(ws, "before")
        redis_server.kill()

        async def unhealthy(url: str) -> bool:
            status, report = await health(url)
            return status == 503 and report["redis"] == "unavailable"

        for instance in (a, b):
            await eventually(partial(unhealthy, instance.url), 10, f"{instance.id} 503")
        refused = await chat(b.url, "alice", "during", session_id)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        frames = await say(ws, "during")
        assert frames[-1]["type"] == "error", frames
        dialog = await instances.store().load_current("alice")
        assert dialog is not None
        assert [m.content for m in dialog.messages] == ["before", "echo: before"]

        redis_server.start()
        for instance in (a, b):
            await eventually(partial(_healthy, instance.url), 15, f"{instance.id} healthy")
        assert reply_of(await say(ws, "after")) == "echo: after"
    archives = await instances.settled_archives("alice")
    assert len(archives) == 1
    texts = [
        m.content
        for m in (await instances.store().load_archive("alice", archives[0].archive_id)).messages
    ]
    assert texts == ["before", "echo: before", "after", "echo: after"]


async def _healthy(url: str) -> bool:
    status, report = await health(url)
    return status == 200 and report["redis"] == "ok"


async def test_redis_restarted_empty_gets_the_cluster_state_back_with_nothing_ended_twice(
    instances: Instances, redis_server: RedisServer
) -> None:
    """After Redis restarts empty the instances re-establish their sessions: counts and
    owners come back, each session still ends once, none is forgotten."""
    env = shared(redis_server, SESSION_TIMEOUT="4000", SESSION_CHECK_INTERVAL="200")
    a, b = instances(2, env)
    async with websocket(a.ws_url, "alice") as (ws, session_id):
        await say(ws, "one")
        http = await chat(b.url, "bob", "hello")
        assert http.status_code == 200
        redis_server.restart()

        async def both_back() -> bool:
            status, report = await health(b.url)
            return status == 200 and report["activeSessions"] == 2

        await eventually(both_back, 15, "both sessions counted again")
        async with websocket(b.ws_url, "alice") as (_, again):
            assert again == session_id
        assert reply_of(await say(ws, "two")) == "echo: two"
    alice = await instances.settled_archives("alice")
    assert [(x.session_id, x.end_reason, x.message_count) for x in alice] == [
        (session_id, "disconnect", 4)
    ]
    bob = await instances.settled_archives("bob", settle=5.0)
    assert [(x.end_reason, x.message_count) for x in bob] == [("timeout", 2)]


async def test_an_instance_started_while_redis_is_down_serves_health_503_and_says_why(
    instances: Instances, redis_server: RedisServer
) -> None:
    """With Redis down at start the server still starts, /health answers 503 naming Redis,
    its log says why; once Redis is up it becomes healthy."""
    redis_server.stop()
    instance = instances.one(shared(redis_server), healthy=False)
    status, report = await health(instance.url)
    assert status == 503
    assert report["redis"] == "unavailable"
    assert "redis" in instance.log().lower()
    refused = await chat(instance.url, "alice", "hello")
    assert refused.status_code == 503
    assert "retry-after" in refused.headers
    redis_server.start()
    await eventually(lambda: _healthy(instance.url), 15, "healthy once Redis is up")
    assert (await chat(instance.url, "alice", "hello")).status_code == 200


async def test_sigterm_of_one_instance_ends_only_the_sessions_that_lived_there(
    instances: Instances, redis_server: RedisServer
) -> None:
    """SIGTERM of A archives as shutdown a session whose only tab was on A; a session with a
    tab on B goes on there."""
    a, b = instances(2, shared(redis_server))
    async with (
        websocket(a.ws_url, "alice") as (alice, _),
        websocket(a.ws_url, "bob") as (bob_a, bob_session),
        websocket(b.ws_url, "bob") as (bob_b, _),
    ):
        await say(alice, "alice")
        await say(bob_a, "bob on a")
        a.terminate()
        assert await a.wait(30) == 0
        with pytest.raises(ConnectionClosed):  # after the session's end, told as an event
            await _read_until_closed(alice)
        archives = await instances.archives("alice")
        assert [(x.end_reason, x.message_count) for x in archives] == [("shutdown", 2)]
        assert await instances.store().list_archives("bob") == []
        assert reply_of(await say(bob_b, "bob on b")) == "echo: bob on b"
        _, report = await health(b.url)
        assert report["activeSessions"] == 1
    archives = await instances.settled_archives("bob")
    assert [(x.session_id, x.end_reason, x.message_count) for x in archives] == [
        (bob_session, "disconnect", 4)
    ]


async def _read_until_closed(ws: Any) -> None:
    async with asyncio.timeout(10):
        while True:
            await ws.recv()

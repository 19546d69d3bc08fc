"""Many clients at once on one instance over Redis: every one gets its session and replies."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from tests.cluster.conftest import Instances, RedisServer, reply_of, say, websocket

CLIENTS = 150  # more than redis-py's default pool of 100 connections


async def test_more_clients_at_once_than_redis_pool_connections_all_get_replies(
    instances: Instances, redis_server: RedisServer
) -> None:
    """150 WebSockets opened and chatting at once on one instance all get their session and
    a whole reply: a busy Redis client pool makes them wait, never fails or loses a turn."""
    env = {"REDIS_URL": redis_server.url, "RATE_LIMIT": "0", "MAX_CONNECTIONS_PER_USER": "8"}
    (a,) = instances(1, env)
    async with AsyncExitStack() as stack:
        opened = await asyncio.gather(
            *(stack.enter_async_context(websocket(a.ws_url, f"many{i}")) for i in range(CLIENTS))
        )
        async with asyncio.timeout(30):
            replies = await asyncio.gather(
                *(say(ws, f"hi {i}") for i, (ws, _) in enumerate(opened))
            )
    assert [reply_of(frames) for frames in replies] == [f"echo: hi {i}" for i in range(CLIENTS)]

"""Exactly-once ends across instances: racing closes, sweeps on every instance, dead owners."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from tests.cluster.conftest import Instances, RedisServer, chat, say, websocket

ROUNDS = 8


def shared(redis: RedisServer, **env: str) -> dict[str, str]:
    return {"REDIS_URL": redis.url, "INSTANCE_TTL": "1", "RATE_LIMIT": "0", **env}


async def stored_user_texts(rig: Instances, user_id: str) -> Counter[str]:
    """How often each user message is stored, over every archive and the current dialog,
    each followed by its whole reply."""
    store = rig.store()
    dialogs = [
        await store.load_archive(user_id, a.archive_id) for a in await store.list_archives(user_id)
    ]
    current = await store.load_current(user_id)
    if current is not None:
        dialogs.append(current)
    counts: Counter[str] = Counter()
    for dialog in dialogs:
        messages = dialog.messages
        for index, message in enumerate(messages):
            if message.role == "user":
                counts[message.content] += 1
                if index + 1 < len(messages):
                    assert messages[index + 1].content == f"echo: {message.content}"
    return counts


async def test_closing_the_last_tabs_on_two_instances_at_once_ends_each_session_once(
    instances: Instances, redis_server: RedisServer
) -> None:
    """Many users close their tab on A and their tab on B at the same moment: one archive each."""
    a, b = instances(2, shared(redis_server))
    users = [f"closer{i}" for i in range(ROUNDS)]

    async def both_tabs(user_id: str) -> str:
        async with (
            websocket(a.ws_url, user_id) as (tab_a, session_id),
            websocket(b.ws_url, user_id) as (tab_b, other),
        ):
            assert other == session_id
            await say(tab_a, f"{user_id} on a")
            await say(tab_b, f"{user_id} on b")
            await asyncio.gather(tab_a.close(), tab_b.close())
        return session_id

    session_ids = await asyncio.gather(*(both_tabs(u) for u in users))
    for user_id, session_id in zip(users, session_ids, strict=True):
        archives = await instances.settled_archives(user_id, settle=0.2)
        assert [(x.session_id, x.end_reason, x.message_count) for x in archives] == [
            (session_id, "disconnect", 4)
        ], user_id


async def test_an_idle_session_swept_by_every_instance_ends_once_as_timeout(
    instances: Instances, redis_server: RedisServer
) -> None:
    """Both instances sweep every 100 ms; each idle session is archived once, as timeout."""
    env = shared(redis_server, SESSION_TIMEOUT="1000", SESSION_CHECK_INTERVAL="100")
    a, b = instances(2, env)
    users = [f"idle{i}" for i in range(ROUNDS)]
    for index, user_id in enumerate(users):
        first = await chat((a, b)[index % 2].url, user_id, "hello")
        second = (b, a)[index % 2]
        await chat(second.url, user_id, "again", first.headers["x-session-id"])
    for user_id in users:
        archives = await instances.settled_archives(user_id, settle=0.3)
        assert [(x.end_reason, x.message_count) for x in archives] == [("timeout", 4)], user_id
    assert await instances.store().load_current(users[0]) is None


async def test_a_chat_racing_a_close_on_the_other_instance_lands_once(
    instances: Instances, redis_server: RedisServer
) -> None:
    """A POST /chat on B racing the close of the last tab on A is stored once: whole in the
    archive or in the next session, never both, never lost."""
    a, b = instances(2, shared(redis_server))
    users = [f"racer{i}" for i in range(ROUNDS)]

    async def race(user_id: str, delay: float) -> int:
        async with websocket(a.ws_url, user_id) as (tab, session_id):
            await say(tab, "before")

            async def close() -> None:
                await asyncio.sleep(delay)
                await tab.close()

            _, response = await asyncio.gather(close(), chat(b.url, user_id, "racing", session_id))
        return response.status_code

    codes = await asyncio.gather(*(race(u, 0.002 * i) for i, u in enumerate(users)))
    for user_id, code in zip(users, codes, strict=True):
        await instances.archives(user_id)
        await asyncio.sleep(0.3)
        counts = await stored_user_texts(instances, user_id)
        assert counts["before"] == 1, (user_id, counts)
        # An acknowledged chat is stored exactly once; a refused one (503 while the
        # session ended) at most once.
        if code == 200:
            assert counts["racing"] == 1, (user_id, counts)
        else:
            assert counts["racing"] <= 1, (user_id, code, counts)
        assert len(await instances.store().list_archives(user_id)) == 1


async def test_a_session_whose_instance_died_still_expires_once_on_a_survivor(
    instances: Instances, redis_server: RedisServer
) -> None:
    """SESSION_TIMEOUT is cluster-wide: after kill -9 of the instance that served a session,
    a survivor ends it once, as timeout."""
    env = shared(redis_server, SESSION_TIMEOUT="2000", SESSION_CHECK_INTERVAL="200")
    a, b = instances(2, env)
    response = await chat(a.url, "alice", "hello")
    session_id = response.headers["x-session-id"]
    a.kill()
    started = time.monotonic()
    archives = await instances.settled_archives("alice")
    waited = time.monotonic() - started
    assert [(x.session_id, x.end_reason, x.message_count) for x in archives] == [
        (session_id, "timeout", 2)
    ]
    assert waited < 2.0 + 1.0 + 5.0  # SESSION_TIMEOUT + INSTANCE_TTL + slack
    assert b.running

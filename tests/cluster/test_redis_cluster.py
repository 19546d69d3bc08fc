"""The core flows on a real three-master Redis Cluster (REDIS_CLUSTER=true)."""

from __future__ import annotations

import re

from tests.cluster.conftest import (
    Instances,
    RedisCluster,
    chat,
    health,
    reply_of,
    say,
    sessions,
    websocket,
)


def on_cluster(cluster: RedisCluster, **env: str) -> dict[str, str]:
    """Instances on the cluster; REDIS_URL names one node, the client finds the others."""
    return {"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true", "INSTANCE_TTL": "1", **env}


async def test_one_session_across_instances_on_a_redis_cluster(
    instances: Instances, redis_cluster: RedisCluster
) -> None:
    """On a Redis Cluster a session started on A is B's, and its tabs end it once."""
    a, b = instances(2, on_cluster(redis_cluster))
    started = await chat(a.url, "alice", "hello")
    assert started.status_code == 200, started.text
    session_id = started.headers["x-session-id"]
    status, report = await health(b.url)
    assert (status, report["redis"], report["activeSessions"]) == (200, "ok", 1)
    assert [(s["sessionId"], s["instance"]) for s in await sessions(b.url)] == [(session_id, a.id)]
    async with (
        websocket(a.ws_url, "alice", session_id) as (tab_a, first),
        websocket(b.ws_url, "alice") as (tab_b, second),
    ):
        assert first == second == session_id
        assert reply_of(await say(tab_b, "from b")) == "echo: from b"
        await tab_a.close()
        assert reply_of(await say(tab_b, "still")) == "echo: still"
    archives = await instances.settled_archives("alice")
    assert [(x.session_id, x.end_reason, x.message_count) for x in archives] == [
        (session_id, "disconnect", 6)
    ]


async def test_every_key_of_a_user_shares_one_hash_slot(
    instances: Instances, redis_cluster: RedisCluster
) -> None:
    """All of a user's keys carry one hash tag, so each atomic step stays on one slot."""
    (a,) = instances(1, on_cluster(redis_cluster, RATE_LIMIT="60"))
    for name in ("alice", "bob.smith@example.org"):
        assert (await chat(a.url, name, "hello")).status_code == 200
    client = redis_cluster.client()
    try:
        keys = [key async for key in client.scan_iter(match=f"{instances.prefix}*")]
        for name in ("alice", "bob.smith@example.org"):
            mine = [key for key in keys if name in key]
            assert mine, keys
            assert all(re.search(r"\{[^}]+\}", key) for key in mine), mine
            slots = {await client.cluster_keyslot(key) for key in mine}
            assert len(slots) == 1, mine
    finally:
        await client.aclose()


async def test_kill_9_on_a_redis_cluster_ends_the_dead_instances_session_once(
    instances: Instances, redis_cluster: RedisCluster
) -> None:
    """On a Redis Cluster, kill -9 of A still ends its WebSocket session as error, once."""
    a, _b = instances(2, on_cluster(redis_cluster))
    async with websocket(a.ws_url, "alice") as (ws, session_id):
        await say(ws, "one")
        a.kill()
    archives = await instances.settled_archives("alice")
    assert [(x.session_id, x.end_reason, x.message_count) for x in archives] == [
        (session_id, "error", 2)
    ]

"""What the instances keep in Redis: per-deployment prefixes, no leftovers, bad settings."""

from __future__ import annotations

import subprocess
import sys

from tests.cluster.conftest import (
    HOST,
    Instances,
    RedisServer,
    chat,
    health,
    say,
    websocket,
)
from tests.web.conftest import free_port


def shared(redis: RedisServer, **env: str) -> dict[str, str]:
    return {"REDIS_URL": redis.url, "INSTANCE_TTL": "1", **env}


async def test_deployments_with_different_prefixes_share_a_redis_without_meeting(
    instances: Instances, redis_server: RedisServer
) -> None:
    """Two REDIS_PREFIXes on one Redis are two clusters: neither sees the other's sessions."""
    (a,) = instances(1, shared(redis_server))
    other = instances.one(shared(redis_server, REDIS_PREFIX="other-deployment:"))
    assert (await chat(a.url, "alice", "hello")).status_code == 200
    _, mine = await health(a.url)
    _, theirs = await health(other.url)
    assert (mine["activeSessions"], theirs["activeSessions"]) == (1, 0)
    client = redis_server.client()
    try:
        keys = [key async for key in client.scan_iter(match="*")]
    finally:
        await client.aclose()
    assert keys
    assert all(k.startswith((instances.prefix, "other-deployment:")) for k in keys), keys


async def test_an_ended_session_leaves_no_keys_of_its_user_but_the_rate_list(
    instances: Instances, redis_server: RedisServer
) -> None:
    """Once a session ended, Redis holds nothing of its user but the expiring rate list."""
    a, b = instances(2, shared(redis_server))
    async with websocket(a.ws_url, "alice") as (tab_a, _), websocket(b.ws_url, "alice"):
        await say(tab_a, "hello")
    await instances.settled_archives("alice")
    client = redis_server.client()
    try:
        keys = [key async for key in client.scan_iter(match=f"{instances.prefix}*alice*")]
        leftovers = [key for key in keys if not key.endswith(":rate")]
        assert leftovers == []
        for key in keys:
            assert await client.ttl(key) > 0, key  # the rate list expires on its own
        for instance in (a, b):
            users = f"{instances.prefix}instance:{instance.id}:users"
            assert "alice" not in await client.smembers(users)
    finally:
        await client.aclose()


def test_a_redis_url_that_is_not_redis_stops_the_start_with_a_message() -> None:
    """REDIS_URL=http://... is refused at start, naming the setting; nothing is served."""
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "chatsession", "serve", "--host", HOST, "--port", str(port)],
        env={"REDIS_URL": f"http://{HOST}:6379", "CHAT_MODEL": "echo", "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "redis_url" in (done.stdout + done.stderr).lower()

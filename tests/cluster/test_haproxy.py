"""Behind HAProxy with deploy/haproxy.cfg as shipped: sticky routing, and surviving a kill -9."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.cluster.conftest import (
    HAPROXY,
    HAPROXY_CFG,
    HAProxy,
    Instance,
    Instances,
    RedisServer,
    chat,
    haproxy_environment,
    reply_of,
    say,
    sessions,
    websocket,
)

HAProxyFactory = Callable[[list[Instance]], HAProxy]


def shared(redis: RedisServer, **env: str) -> dict[str, str]:
    return {"REDIS_URL": redis.url, "INSTANCE_TTL": "1", **env}


@pytest.mark.parametrize("servers", [1, 2, 3])
def test_the_shipped_haproxy_config_is_valid_for_one_to_three_servers(servers: int) -> None:
    """``haproxy -c`` accepts deploy/haproxy.cfg with one, two or three servers named."""
    backends = [f"127.0.0.1:{8001 + i}" for i in range(servers)]
    done = subprocess.run(
        [HAPROXY, "-c", "-f", str(HAPROXY_CFG)],
        env=haproxy_environment(8080, backends),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def answering_instance(url: str, session_id: str | None = None) -> str:
    """The id of the instance HAProxy sends a request to (``/health`` names it)."""
    headers = {} if session_id is None else {"x-session-id": session_id}
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{url}/health", headers=headers)
    instance_id: str = response.json()["instance"]["id"]
    return instance_id


async def test_haproxy_keeps_a_session_on_its_instance_and_spreads_the_rest(
    instances: Instances, redis_server: RedisServer, haproxy: HAProxyFactory
) -> None:
    """Requests naming a session id go to one instance; requests naming none go round."""
    a, b = instances(2, shared(redis_server))
    proxy = haproxy([a, b])
    started = await chat(proxy.url, "alice", "hello")
    session_id = started.headers["x-session-id"]
    owner = (await sessions(a.url))[0]["instance"]
    for _ in range(6):
        assert await answering_instance(proxy.url, session_id) == owner
        response = await chat(proxy.url, "alice", "again", session_id)
        assert response.headers["x-session-id"] == session_id
    spread = {await answering_instance(proxy.url) for _ in range(6)}
    assert spread == {a.id, b.id}


async def test_a_websocket_conversation_through_haproxy_survives_kill_9_of_its_instance(
    instances: Instances, redis_server: RedisServer, haproxy: HAProxyFactory
) -> None:
    """Through HAProxy: kill -9 the instance holding a WebSocket conversation; the client
    reconnects with its session id, lands on the other instance, goes on in the same
    session; the archive holds every acknowledged message, once, in order."""
    a, b = instances(2, shared(redis_server, DISCONNECT_GRACE="5"))
    by_id = {a.id: a, b.id: b}
    proxy = haproxy([a, b])
    acknowledged: list[str] = []
    async with websocket(proxy.ws_url, "alice") as (ws, session_id):
        for turn in range(3):
            text = f"before {turn}"
            assert reply_of(await say(ws, text)) == f"echo: {text}"
            acknowledged += [text, f"echo: {text}"]
        holder = by_id[(await sessions(a.url))[0]["instance"]]
        survivor = b if holder is a else a
        holder.kill()

    started = time.monotonic()
    while True:
        try:
            async with websocket(proxy.ws_url, "alice", session_id) as (ws, again):
                assert again == session_id
                landed = (await sessions(survivor.url))[0]["instance"]
                for turn in range(3):
                    text = f"after {turn}"
                    assert reply_of(await say(ws, text)) == f"echo: {text}"
                    acknowledged += [text, f"echo: {text}"]
            break
        except (OSError, InvalidStatus):
            # HAProxy may try the dead server once before its checks mark it down.
            assert time.monotonic() - started < 5, proxy.log()
            await asyncio.sleep(0.2)
    assert landed == survivor.id

    archives = await instances.archives("alice", within=15)
    await asyncio.sleep(1.5)
    archives = await instances.store().list_archives("alice")
    assert [(x.session_id, x.end_reason) for x in archives] == [(session_id, "disconnect")]
    dialog = await instances.store().load_archive("alice", archives[0].archive_id)
    assert [m.content for m in dialog.messages] == acknowledged

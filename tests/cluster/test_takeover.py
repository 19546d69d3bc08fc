"""Takeover is safe: a torn record is cut before anyone appends behind it, and an owner
that was paused past its lease stores and acknowledges nothing once another took over."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from contextlib import AsyncExitStack
from typing import Any

import httpx

from tests.cluster.conftest import (
    Instances,
    RedisServer,
    chat,
    eventually,
    user,
    websocket,
)

USERS = 20  # each race runs for this many users at once
TORN = b"- role: assistant\n  content: cut short by a cr"


def shared(redis: RedisServer, **env: str) -> dict[str, str]:
    return {"REDIS_URL": redis.url, "INSTANCE_TTL": "1", **env}


async def _end_session(url: str, user_id: str) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.delete(f"{url}/session", headers=user(user_id))
    assert response.status_code == 200, response.text


async def _dialog_api(url: str, user_id: str, archive_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{url}/dialogs/{archive_id}", headers=user(user_id))
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


async def test_a_torn_record_left_by_a_killed_owner_is_cut_before_the_survivor_appends(
    instances: Instances, redis_server: RedisServer
) -> None:
    """A is killed -9 with a torn last record in each of 20 users' current.yaml; B takes
    every session over, appends, and each archive parses with every whole message, A's
    and B's, in order, and none of the torn bytes."""
    a, b = instances(2, shared(redis_server))
    users = [f"torn{i}" for i in range(USERS)]
    for user_id in users:
        for turn in range(2):
            reply = await chat(a.url, user_id, f"a{turn}")
            assert reply.status_code == 200, reply.text
    for user_id in users:
        current = instances.data_dir / "users" / user_id / "dialogs" / "current.yaml"
        with current.open("ab") as file:  # what a write cut short by the kill leaves
            file.write(TORN)
    a.kill()
    for user_id in users:
        reply = await chat(b.url, user_id, "b0")
        assert reply.status_code == 200, reply.text
        assert reply.json()["response"] == "echo: b0"
    for user_id in users:
        await _end_session(b.url, user_id)
        archives = await instances.archives(user_id)
        assert [(x.end_reason, x.message_count) for x in archives] == [("manual", 6)]
        document = await _dialog_api(b.url, user_id, archives[0].archive_id)
        contents = [m["content"] for m in document["dialog"]["messages"]]
        assert contents == ["a0", "echo: a0", "a1", "echo: a1", "b0", "echo: b0"]
        text = instances.archive_files(user_id)[0].read_bytes()
        assert b"cut short" not in text


async def test_an_owner_paused_past_its_lease_stores_and_acknowledges_nothing(
    instances: Instances, redis_server: RedisServer
) -> None:
    """A is SIGSTOPped in the middle of 20 replies, past its lease; B takes the sessions
    over and the users chat on; A wakes (SIGCONT): its sockets get an error frame and no
    ``done``, none of its cut-short replies reaches a dialog, and B's next message of
    every user succeeds, in order."""
    env = shared(redis_server, CHAT_MODEL="echo?delay=0.2")
    a, b = instances(2, env)
    users = [f"paused{i}" for i in range(USERS)]
    async with AsyncExitStack() as stack:
        tabs = [await stack.enter_async_context(websocket(a.ws_url, u)) for u in users]
        words = " ".join(f"w{n}" for n in range(30))
        for ws, _ in tabs:
            await ws.send(json.dumps({"text": words}))
        for ws, _ in tabs:  # every reply is streaming when A stops
            while json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] != "response":
                pass
        os.kill(a.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(2.5)  # INSTANCE_TTL 1 s: A is taken for dead meanwhile
            for user_id in users:
                reply = await chat(b.url, user_id, "on b")
                assert reply.status_code == 200, reply.text
        finally:
            os.kill(a.pid, signal.SIGCONT)
        for ws, _ in tabs:
            seen: list[dict[str, Any]] = []

            async def until_error(ws: Any = ws, seen: list[dict[str, Any]] = seen) -> bool:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                seen.append(frame)
                return frame["type"] in ("error", "done")

            await eventually(until_error, 15, "A answering its paused reply")
            assert seen[-1]["type"] == "error", seen
        for user_id in users:
            reply = await chat(b.url, user_id, "after")
            assert reply.status_code == 200, reply.text
    store = instances.store()
    for user_id in users:
        # A's sockets were taken for broken when A was: the session may have ended (as
        # error) and the chats on B gone on in the next one. Every dialog, in order:
        messages = []
        for archive in await store.list_archives(user_id):
            messages += (await store.load_archive(user_id, archive.archive_id)).messages
        current = await store.load_current(user_id)
        messages += current.messages if current is not None else []
        contents = [m.content for m in messages]
        assert contents == [words, "on b", "echo: on b", "after", "echo: after"], contents
        assert not any(m.interrupted for m in messages)
    assert "Traceback" not in a.log()


async def test_a_session_id_the_client_names_is_ignored(
    instances: Instances, redis_server: RedisServer
) -> None:
    """``?sessionId=`` and ``x-session-id`` naming no live session of the caller start a
    session with an id the server issues; two users naming one id get two sessions."""
    (a,) = instances(1, shared(redis_server))
    async with websocket(a.ws_url, "ann", "chosen-1") as (_, first):
        assert first != "chosen-1"
    reply = await chat(a.url, "bob", "hi", "chosen-1")
    assert reply.headers["x-session-id"] not in ("chosen-1", first)
    await _end_session(a.url, "bob")
    archives = await instances.archives("bob")
    assert archives[0].session_id == reply.headers["x-session-id"]


async def test_an_erase_racing_a_chat_on_another_instance_leaves_the_chat_whole(
    instances: Instances, redis_server: RedisServer
) -> None:
    """DELETE /users/{id} on B while the user chats on A, 20 times: no chat is a 500;
    each message is erased with the dialog or stored whole in the next session."""
    a, b = instances(2, shared(redis_server, CHAT_MODEL="echo?delay=0.02"))
    for index in range(USERS):
        user_id = f"erased{index}"
        async with websocket(a.ws_url, user_id) as (ws, _):
            await ws.send(json.dumps({"text": "first"}))
            while json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] != "done":
                pass

            async def erase(user_id: str = user_id, pause: float = 0.01 * (index % 5)) -> Any:
                await asyncio.sleep(pause)  # lands at a different point of the chats
                async with httpx.AsyncClient(timeout=10) as http:
                    return await http.delete(f"{b.url}/users/{user_id}", headers=user(user_id))

            async def chats(ws: Any = ws) -> list[dict[str, Any]]:
                ends = []
                for turn in range(4):
                    await ws.send(json.dumps({"text": f"m{turn}"}))
                    while True:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                        if frame["type"] in ("done", "error"):
                            ends.append(frame)
                            break
                return ends

            erased, ends = await asyncio.gather(erase(), chats())
            assert erased.status_code == 200, erased.text
            assert [frame["type"] for frame in ends] == ["done"] * 4, ends
        store = instances.store()
        kept = [
            m.content
            for x in await store.list_archives(user_id)
            for m in (await store.load_archive(user_id, x.archive_id)).messages
        ]
        current = await store.load_current(user_id)
        kept += [m.content for m in current.messages] if current is not None else []
        whole = [part for turn in range(4) for part in (f"m{turn}", f"echo: m{turn}")]
        assert "first" not in kept
        assert kept == whole[len(whole) - len(kept) :], kept  # what came after the erase

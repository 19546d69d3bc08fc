"""Shutdown: connections closed properly, every session archived, crashes recovered."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from chatsession.storage import YamlDialogStore
from tests.web.conftest import LiveFactory, serve_process
from tests.web.test_connections import TEXT, assert_whole


async def until_closed(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    """Every frame until the server closes the socket, and the close code it sent."""
    frames = []
    try:
        while True:
            frames.append(json.loads(await ws.recv()))
    except ConnectionClosed as closed:
        return frames, closed.rcvd.code if closed.rcvd is not None else None


async def test_stopping_closes_websockets_with_1001_and_ends_sse_streams(
    live: LiveFactory,
) -> None:
    """At shutdown WebSockets get 1001, SSE streams a last shutdown frame; all archived."""
    async with live() as server, httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        async with (
            connect(server.ws_url, additional_headers={"x-user-id": "alice"}) as ws,
            aconnect_sse(http, "GET", "/chat-stream", headers={"x-user-id": "bob"}) as source,
        ):
            await ws.recv()
            await ws.send(json.dumps({"text": "hello"}))
            while json.loads(await ws.recv())["type"] != "done":
                pass
            await http.post("/chat", json={"message": "hi"}, headers={"x-user-id": "bob"})
            server.server.should_exit = True
            _, code = await until_closed(ws)
            assert code == 1001
            frames = [json.loads(event.data) async for event in source.aiter_sse()]
            assert frames[-1] == {"type": "shutdown"}
        for user in ("alice", "bob"):
            archives = await server.archives(user)
            assert [(a.end_reason, a.message_count) for a in archives] == [("shutdown", 2)]


async def test_reply_in_flight_at_shutdown_is_stored(live: LiveFactory) -> None:
    """A reply still streaming at shutdown finishes within the grace and is archived."""
    async with live(chat_model="echo?delay=0.02", shutdown_grace=5) as server:
        async with connect(server.ws_url, additional_headers={"x-user-id": "alice"}) as ws:
            await ws.recv()
            await ws.send(json.dumps({"text": "one two three four five"}))
            assert json.loads(await ws.recv())["type"] == "response"
            server.server.should_exit = True
            frames, _ = await until_closed(ws)
        replies = [f for f in frames if f["type"] != "session_event"]
        assert replies[-1] == {"type": "done"}
        ended = [f for f in frames if f.get("event") == "session_ended"]
        assert [f["reason"] for f in ended] == ["shutdown"]  # the page learns why
        archives = await server.archives("alice")
        dialog = await server.store().load_archive("alice", archives[0].archive_id)
        assert dialog.messages[-1].content == "echo: one two three four five"
        assert not dialog.messages[-1].interrupted
        assert dialog.end_reason == "shutdown"


async def test_sigterm_to_a_real_process_archives_everything_and_exits_0(tmp_path: Path) -> None:
    """SIGTERM: 1001 to WebSockets, every session archived (shutdown), exit 0; one start line."""
    data_dir = tmp_path / "data"
    with serve_process(data_dir, "--shutdown-grace", "3") as process:
        url = f"ws://127.0.0.1:{process.port}/ws"
        async with connect(url, additional_headers={"x-user-id": "alice"}) as ws:
            await ws.recv()
            await ws.send(json.dumps({"text": "before the signal"}))
            while json.loads(await ws.recv())["type"] != "done":
                pass
            async with httpx.AsyncClient(base_url=process.url) as http:
                for user in ("bob", "carol"):
                    reply = await http.post(
                        "/chat", json={"message": "hi"}, headers={"x-user-id": user}
                    )
                    assert reply.status_code == 200
            started = time.monotonic()
            process.signal(signal.SIGTERM)
            _, code = await until_closed(ws)
            assert code == 1001
        code = await asyncio.to_thread(process.wait, 15)
        assert code == 0
        assert time.monotonic() - started < 10
        assert process.popen.stdout is not None
        log = process.popen.stdout.read()
        assert f"listening on http://127.0.0.1:{process.port}" in log
        assert f"data dir {data_dir}" in log
        assert "model echo" in log
        assert "auth dev" in log
    store = YamlDialogStore(data_dir)
    for user in ("alice", "bob", "carol"):
        archives = await store.list_archives(user)
        assert [(a.end_reason, a.message_count) for a in archives] == [("shutdown", 2)]
        assert await store.load_current(user) is None


async def test_kill_9_then_restart_recovers_the_dialogs(tmp_path: Path) -> None:
    """After kill -9 the next start archives every dialog left behind as recovered."""
    data_dir = tmp_path / "data"
    with serve_process(data_dir, "--durability", "always") as process:
        async with httpx.AsyncClient(base_url=process.url) as http:
            for user in ("alice", "bob"):
                for text in ("one", "two"):
                    await http.post("/chat", json={"message": text}, headers={"x-user-id": user})
        process.signal(signal.SIGKILL)
        assert await asyncio.to_thread(process.wait, 10) == -signal.SIGKILL
    with serve_process(data_dir) as process:
        async with httpx.AsyncClient(base_url=process.url) as http:
            for user in ("alice", "bob"):
                listing = (await http.get("/dialogs", headers={"x-user-id": user})).json()
                assert [(a["endReason"], a["messageCount"]) for a in listing["archives"]] == [
                    ("recovered", 4)
                ]
                archive_id = listing["archives"][0]["archiveId"]
                dialog = (
                    await http.get(f"/dialogs/{archive_id}", headers={"x-user-id": user})
                ).json()
                assert [m["content"] for m in dialog["dialog"]["messages"]] == [
                    "one",
                    "echo: one",
                    "two",
                    "echo: two",
                ]
        process.signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 15) == 0


async def test_a_second_signal_exits_at_once_and_the_next_start_recovers(tmp_path: Path) -> None:
    """A second SIGTERM during a slow shutdown exits 1 at once; the next start recovers."""
    data_dir = tmp_path / "data"
    with serve_process(data_dir, "--model", "echo?delay=0.5", "--shutdown-grace", "30") as process:
        url = f"ws://127.0.0.1:{process.port}/ws"
        async with connect(url, additional_headers={"x-user-id": "alice"}) as ws:
            await ws.recv()
            await ws.send(json.dumps({"text": "a reply that takes many seconds " * 3}))
            assert json.loads(await ws.recv())["type"] == "response"
            started = time.monotonic()
            process.signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            process.signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 10) == 1
            assert time.monotonic() - started < 5
    with serve_process(data_dir) as process:
        async with httpx.AsyncClient(base_url=process.url) as http:
            listing = (await http.get("/dialogs", headers={"x-user-id": "alice"})).json()
        assert [a["endReason"] for a in listing["archives"]] == ["recovered"]
        process.signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 15) == 0


async def test_sigint_shuts_down_like_sigterm(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) archives every session as shutdown and exits 0, like SIGTERM."""
    data_dir = tmp_path / "data"
    with serve_process(data_dir) as process:
        async with httpx.AsyncClient(base_url=process.url) as http:
            reply = await http.post("/chat", json={"message": "hi"}, headers={"x-user-id": "dan"})
            assert reply.status_code == 200
        process.signal(signal.SIGINT)
        assert await asyncio.to_thread(process.wait, 15) == 0
    archives = await YamlDialogStore(data_dir).list_archives("dan")
    assert [(a.end_reason, a.message_count) for a in archives] == [("shutdown", 2)]


@pytest.mark.parametrize("seed", range(3))
async def test_shutdown_in_every_state_closes_with_1001_and_archives_once(
    live: LiveFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    seed: int,
) -> None:
    """Connections idle, mid-reply (before and after a reader took over), with frames
    queued, or exchanging pings, stopped at a random moment: each closes with 1001 within
    the grace; each session is archived at most once, as shutdown, with whole turns; every
    reply a client began to receive is in its archive; nothing is logged as an error.

    Every client is connected before the shutdown; it may still come before the server has
    read a client's first chat frame: that session then has nothing to archive, which is
    no loss (nothing was acknowledged).
    """
    monkeypatch.setattr("chatsession.web.ws._WATCH_AFTER", 0.05)
    rng = random.Random(seed)
    codes: dict[str, int | None] = {}
    replies_seen: dict[str, int] = {}  # replies whose first frame reached the client
    users = {f"s{i}": rng.choice(["idle", "chat", "ping"]) for i in range(30)}
    sends = {
        user: {"idle": 0, "chat": rng.randint(1, 3), "ping": 20}[m] for user, m in users.items()
    }
    connected = {user: asyncio.Event() for user in users}

    async def client(user: str, url: str) -> None:
        frame = json.dumps({"type": "ping"} if users[user] == "ping" else {"text": TEXT})
        async with connect(url, additional_headers={"x-user-id": user}) as ws:
            await ws.recv()  # the session frame: the server holds the connection
            connected[user].set()
            try:
                for _ in range(sends[user]):
                    await ws.send(frame)
            except ConnectionClosed:
                pass  # the shutdown came first; the close code is read below
            frames, codes[user] = await until_closed(ws)
            replies_seen[user] = _replies_begun(frames)

    async with live(chat_model="echo?delay=0.02", shutdown_grace=0.5) as server:
        clients = [asyncio.ensure_future(client(user, server.ws_url)) for user in users]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in connected.values())), 15)
        await asyncio.sleep(rng.uniform(0.0, 0.2))  # stop while they chat, ping or idle
        stopped = time.monotonic()
        server.server.should_exit = True
        await asyncio.wait_for(asyncio.gather(*clients), 15)
        assert time.monotonic() - stopped < 8
    assert set(codes.values()) == {1001}, codes
    for user, mode in users.items():
        archives = await server.archives(user)
        assert len(archives) <= 1, (user, archives)
        if mode != "chat":
            assert archives == [], (user, mode)  # pings and idling store nothing
            continue
        if not archives:
            assert replies_seen[user] == 0, user  # a reply streamed, yet nothing was kept
            continue
        assert archives[0].end_reason == "shutdown"
        dialog = await server.store().load_archive(user, archives[0].archive_id)
        assert_whole(dialog)
        replies = [m for m in dialog.messages if m.role == "assistant"]
        assert len(replies) >= replies_seen[user], user
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _replies_begun(frames: list[dict[str, Any]]) -> int:
    """How many replies began streaming: a response frame after the start or a done."""
    begun, streaming = 0, False
    for frame in frames:
        if frame["type"] == "response" and not streaming:
            begun, streaming = begun + 1, True
        elif frame["type"] == "done":
            streaming = False
    return begun

"""Connections: tabs, dead peers, and clients that leave while a reply streams."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import socket
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from websockets.asyncio.client import connect

from tests.web.conftest import LiveFactory

ALICE = {"x-user-id": "alice"}
LONG = " ".join(f"word{i}" for i in range(40))


async def test_a_second_tab_does_not_cut_the_first(live: LiveFactory) -> None:
    """Closing one of two WebSockets keeps the session; closing the last archives it once."""
    async with live() as server:
        async with connect(server.ws_url, additional_headers=ALICE) as first:
            session = json.loads(await first.recv())["sessionId"]
            async with connect(server.ws_url, additional_headers=ALICE) as second:
                assert json.loads(await second.recv())["sessionId"] == session
                await second.send(json.dumps({"text": "from tab two"}))
                while json.loads(await second.recv())["type"] != "done":
                    pass
            await first.send(json.dumps({"text": "from tab one"}))
            while json.loads(await first.recv())["type"] != "done":
                pass
            assert await server.archives("alice") == []
        archives = await server.wait_for_archives("alice")
        assert [(a.session_id, a.message_count, a.end_reason) for a in archives] == [
            (session, 4, "disconnect")
        ]


async def test_leaving_mid_reply_cancels_the_model_and_stores_the_partial_reply(
    live: LiveFactory,
) -> None:
    """A WebSocket closed mid-reply stops the model; the partial reply is kept, interrupted."""
    async with live(chat_model="echo?delay=0.05") as server:
        async with connect(server.ws_url, additional_headers=ALICE) as ws:
            await ws.recv()
            await ws.send(json.dumps({"text": LONG}))
            assert json.loads(await ws.recv())["type"] == "response"
        archives = await server.wait_for_archives("alice")
        dialog = await server.store().load_archive("alice", archives[0].archive_id)
        user, reply = dialog.messages
        assert user.content == LONG
        assert reply.interrupted
        assert f"echo: {LONG}".startswith(reply.content)
        assert len(reply.content) < len(f"echo: {LONG}") / 2
        assert dialog.end_reason == "disconnect"


async def test_http_client_leaving_mid_reply_cancels_the_model(live: LiveFactory) -> None:
    """A POST /chat client that goes away stops the model; the partial reply is stored."""
    async with live(chat_model="echo?delay=0.05") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=0.3) as http:
            with contextlib.suppress(httpx.ReadTimeout):
                await http.post("/chat", json={"message": LONG}, headers=ALICE)
        dialog = await server.wait_for_reply("alice")
        assert dialog is not None
        _user, reply = dialog.messages
        assert reply.interrupted
        assert len(reply.content) < len(f"echo: {LONG}") / 2


async def test_post_chat_streams_as_sse_when_asked(live: LiveFactory) -> None:
    """POST /chat with Accept: text/event-stream streams response frames, then done."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        stream = aconnect_sse(
            http,
            "POST",
            "/chat",
            json={"message": "stream me", "reasoningEnabled": True},
            headers=dict(ALICE),
        )
        async with stream as source:
            frames = [json.loads(event.data) async for event in source.aiter_sse()]
            session_id = source.response.headers["x-session-id"]
        assert frames[0]["type"] == "reasoning"
        assert "".join(f["content"] for f in frames if f["type"] == "response") == (
            "echo: stream me"
        )
        assert frames[-1] == {"type": "done"}
        info = (await http.get("/dialogs/current", headers=ALICE)).json()
        assert info["dialog"]["sessionId"] == session_id


async def test_sse_channel_sends_heartbeats(live: LiveFactory) -> None:
    """An idle /chat-stream sends a heartbeat frame every HEARTBEAT_INTERVAL, and lives on."""
    async with (
        live(heartbeat_interval=0.1) as server,
        httpx.AsyncClient(base_url=server.url) as http,
        aconnect_sse(http, "GET", "/chat-stream", headers=dict(ALICE)) as source,
    ):
        events = source.aiter_sse()
        assert json.loads((await anext(events)).data)["type"] == "session"
        assert json.loads((await anext(events)).data) == {"type": "heartbeat"}
        assert json.loads((await anext(events)).data) == {"type": "heartbeat"}
        await http.post("/chat", json={"message": "still there"}, headers=ALICE)
        reply = ""
        frame = json.loads((await anext(events)).data)
        while frame["type"] != "done":
            if frame["type"] == "response":
                reply += frame["content"]
            frame = json.loads((await anext(events)).data)
        assert reply == "echo: still there"


def _handshake(port: int) -> socket.socket:
    """A WebSocket client that will never answer a ping: a raw socket after the handshake."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "x-user-id: alice\r\n\r\n"
    )
    sock.sendall(request.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101")
    return sock


async def test_dead_peer_is_found_by_ping_and_its_session_ends(live: LiveFactory) -> None:
    """A peer that stops answering pings is dropped by keepalive, and its session ends.

    uvicorn reports a keepalive timeout like a lost connection (code 1005), so the end
    reason is ``disconnect``; what matters is that the session does not linger.
    """
    async with (
        live(ws_ping_interval=0.2, ws_ping_timeout=0.2) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        sock = await asyncio.to_thread(_handshake, server.port)
        try:
            reply = await http.post("/chat", json={"message": "then silence"}, headers=ALICE)
            assert reply.status_code == 200
            archives = await server.wait_for_archives("alice")
            assert [(a.end_reason, a.message_count) for a in archives] == [("disconnect", 2)]
            assert (await http.get("/health")).json()["activeSessions"] == 0
        finally:
            sock.close()


async def test_a_connection_closed_with_an_error_code_ends_the_session_as_error(
    live: LiveFactory,
) -> None:
    """A WebSocket closed with an error code (1011) ends its session with reason error."""
    async with live() as server:
        async with connect(server.ws_url, additional_headers=ALICE) as ws:
            await ws.recv()
            await ws.send(json.dumps({"text": "about to break"}))
            while json.loads(await ws.recv())["type"] != "done":
                pass
            await ws.close(code=1011, reason="client crashed")
        archives = await server.wait_for_archives("alice")
        assert [(a.end_reason, a.message_count) for a in archives] == [("error", 2)]


async def test_sse_reply_client_leaving_mid_reply_cancels_the_model(live: LiveFactory) -> None:
    """A POST /chat SSE client that goes away mid-reply stops the model; the reply is kept."""
    async with live(chat_model="echo?delay=0.05") as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            stream = aconnect_sse(
                http, "POST", "/chat", json={"message": LONG}, headers=dict(ALICE)
            )
            async with stream as source:
                events = source.aiter_sse()
                assert json.loads((await anext(events)).data)["type"] == "response"
        dialog = await server.wait_for_reply("alice")
        assert dialog is not None
        _user, reply = dialog.messages
        assert reply.interrupted
        assert len(reply.content) < len(f"echo: {LONG}") / 2


async def test_heartbeats_interleave_with_a_slow_sse_reply(live: LiveFactory) -> None:
    """Heartbeats fall between the chunks of a slow SSE reply without cutting it short."""
    async with (
        live(chat_model="echo?delay=0.25", heartbeat_interval=0.1) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        stream = aconnect_sse(
            http, "POST", "/chat", json={"message": "slow one"}, headers=dict(ALICE)
        )
        async with stream as source:
            frames = [json.loads(event.data) async for event in source.aiter_sse()]
        kinds = [frame["type"] for frame in frames]
        assert "heartbeat" in kinds
        assert kinds[-1] == "done"
        assert "".join(f["content"] for f in frames if f["type"] == "response") == (
            "echo: slow one"
        )
        dialog = await server.store().load_current("alice")
        assert dialog is not None
        assert not dialog.messages[-1].interrupted


async def test_sse_channel_carries_session_events(live: LiveFactory) -> None:
    """The user's SSE channel is told when another connection of theirs opens and closes."""
    async with (
        live() as server,
        httpx.AsyncClient(base_url=server.url) as http,
        aconnect_sse(http, "GET", "/chat-stream", headers=dict(ALICE)) as source,
    ):
        events = source.aiter_sse()
        session = json.loads((await anext(events)).data)["sessionId"]
        async with connect(server.ws_url, additional_headers=ALICE) as ws:
            await ws.recv()
        frame = json.loads((await anext(events)).data)
        while frame["type"] != "session_event":
            frame = json.loads((await anext(events)).data)
        assert frame["event"] == "connection_opened"
        assert (frame["userId"], frame["sessionId"]) == ("alice", session)


TEXT = "one two three four five six"
FULL = f"echo: {TEXT}"


def assert_whole(dialog: Any) -> None:
    """Every user message is followed by its reply, whole or cut and marked interrupted;
    only a last one may have none (its client left before the reply began)."""
    roles = [m.role for m in dialog.messages]
    assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2)
    for reply in dialog.messages[1::2]:
        assert reply.content == FULL or (reply.interrupted and FULL.startswith(reply.content))


@pytest.mark.parametrize("watch_after", [None, 0.0, 0.005])
async def test_leaving_at_any_moment_ends_each_session_once_with_every_turn_whole(
    live: LiveFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    watch_after: float | None,
) -> None:
    """Clients that chat, ping and send garbage, then leave at random moments — before,
    during or after a reply, with more frames queued, with or without a reader task
    watching them — never break the server or a dialog: each session is archived once,
    every turn is whole, and nothing is logged as an error.
    """
    if watch_after is not None:
        monkeypatch.setattr("chatsession.web.ws._WATCH_AFTER", watch_after)
    rng = random.Random(7)

    async def one(user: str, server_url: str) -> None:
        async with connect(server_url, additional_headers={"x-user-id": user}) as ws:
            await ws.recv()
            for _ in range(rng.randint(1, 4)):
                kind = rng.random()
                if kind < 0.2:
                    await ws.send(json.dumps({"type": "ping"}))
                elif kind < 0.3:
                    await ws.send("not json")
                else:
                    await ws.send(json.dumps({"text": TEXT}))
            await asyncio.sleep(rng.uniform(0, 0.03))

    async with live(chat_model="echo?delay=0.002") as server:
        users = [f"leaver{i}" for i in range(60)]
        for batch in range(0, len(users), 15):
            await asyncio.gather(*(one(user, server.ws_url) for user in users[batch : batch + 15]))
        async with httpx.AsyncClient(base_url=server.url) as http:
            deadline = asyncio.get_running_loop().time() + 5
            while (await http.get("/health")).json()["activeSessions"]:
                assert asyncio.get_running_loop().time() < deadline, "sessions linger"
                await asyncio.sleep(0.05)
        for user in users:
            archives = await server.archives(user)
            assert len(archives) <= 1, archives  # ended once (none: it never chatted)
            if archives:
                assert archives[0].end_reason == "disconnect"
                assert_whole(await server.store().load_archive(user, archives[0].archive_id))
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_long_reply_notices_the_client_leaving_at_once(
    live: LiveFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a reply runs long, a reader watches the peer: the model is stopped as soon as
    the client leaves, not when the next chunk fails to send."""
    monkeypatch.setattr("chatsession.web.ws._WATCH_AFTER", 0.05)
    async with live(chat_model="echo?delay=1.0") as server:
        async with connect(server.ws_url, additional_headers=ALICE) as ws:
            await ws.recv()
            await ws.send(json.dumps({"text": "one two three four five"}))
            assert json.loads(await ws.recv()) == {"type": "response", "content": "echo: "}
        left = asyncio.get_running_loop().time()
        archives = await server.wait_for_archives("alice")
        assert asyncio.get_running_loop().time() - left < 0.6  # the next chunk was 1 s off
        dialog = await server.store().load_archive("alice", archives[0].archive_id)
        assert dialog.messages[-1].interrupted
        assert dialog.messages[-1].content == "echo: "
        assert dialog.end_reason == "disconnect"


async def test_shutdown_closes_a_watched_connection_with_1001(
    live: LiveFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection whose reader task took over (after a long reply) still closes with
    1001 at shutdown, its session archived as shutdown."""
    monkeypatch.setattr("chatsession.web.ws._WATCH_AFTER", 0.01)
    async with live(chat_model="echo?delay=0.05") as server:
        async with connect(server.ws_url, additional_headers=ALICE) as ws:
            await ws.recv()
            await ws.send(json.dumps({"text": "slow reply"}))
            while json.loads(await ws.recv())["type"] != "done":
                pass
            server.server.should_exit = True
            with contextlib.suppress(Exception):
                while True:
                    await ws.recv()
            assert ws.close_code == 1001
        archives = await server.archives("alice")
        assert [(a.end_reason, a.message_count) for a in archives] == [("shutdown", 2)]

"""Limits and bad input: each gets a clear error, the connection stays usable, no dialog is hurt."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.web.conftest import Live, LiveFactory

ALICE = {"x-user-id": "alice"}


async def chat_over(ws: ClientConnection, text: str) -> str:
    await ws.send(json.dumps({"text": text}))
    parts: list[str] = []
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] == "done":
            return "".join(parts)
        assert frame["type"] == "response", frame
        parts.append(frame["content"])


async def next_frame(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await ws.recv())
    return frame


async def assert_dialog_intact(server: Live, user_id: str, texts: list[str]) -> None:
    """The user's current dialog loads and holds exactly the good messages and their replies."""
    dialog = await server.store().load_current(user_id)
    expected = [t for text in texts for t in (text, f"echo: {text}")]
    assert dialog is not None
    assert [m.content for m in dialog.messages] == expected
    assert not any(m.interrupted for m in dialog.messages)


@pytest.mark.parametrize(
    ("frame", "status", "words"),
    [
        ("{not json", 400, "malformed JSON"),
        ("[1, 2]", 422, "expected a JSON object"),
        (json.dumps({"text": 42}), 422, "'text' must be a string"),
        (
            json.dumps({"text": "hi", "jsonOutput": "yes"}),
            422,
            "'jsonOutput' must be true or false",
        ),
        (json.dumps({"type": "subscribe", "text": "hi"}), 400, "unknown message type 'subscribe'"),
        (json.dumps({"text": "x" * 2000}), 413, "over the limit of 1024"),
        (json.dumps({"text": "\ud800"}), 422, "lone surrogate"),
    ],
)
async def test_bad_websocket_frames_get_an_error_frame(
    live: LiveFactory, frame: str, status: int, words: str
) -> None:
    """A bad frame gets an error frame with its status; the socket and the dialog carry on."""
    async with (
        live(max_message_bytes=1024) as server,
        connect(server.ws_url, additional_headers=ALICE) as ws,
    ):
        await ws.recv()
        assert await chat_over(ws, "before") == "echo: before"
        await ws.send(frame)
        error = await next_frame(ws)
        assert error["type"] == "error"
        assert error["status"] == status
        assert words in error["message"]
        assert await chat_over(ws, "after") == "echo: after"
        await assert_dialog_intact(server, "alice", ["before", "after"])


async def test_frame_over_the_hard_limit_closes_with_1009(live: LiveFactory) -> None:
    """A frame past the protocol limit closes the socket (1009); the dialog is kept whole."""
    async with live(max_message_bytes=1024) as server:
        async with connect(server.ws_url, additional_headers=ALICE) as ws:
            await ws.recv()
            assert await chat_over(ws, "kept") == "echo: kept"
            await ws.send(json.dumps({"text": "x" * 4100}))  # past 4 x 1024
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1009
        archives = await server.wait_for_archives("alice")
        dialog = await server.store().load_archive("alice", archives[0].archive_id)
        assert [m.content for m in dialog.messages] == ["kept", "echo: kept"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "malformed JSON"),
        (json.dumps({"text": "wrong field"}).encode(), 422, "'message' must be a string"),
        (json.dumps({"message": "hi", "reasoningEnabled": 1}).encode(), 422, "reasoningEnabled"),
        (json.dumps({"message": "x" * 2000}).encode(), 413, "over the limit of 1024"),
        (json.dumps({"message": "\ud800"}).encode(), 422, "lone surrogate"),
    ],
)
async def test_bad_http_bodies_get_a_clear_status(
    live: LiveFactory, body: bytes, status: int, words: str
) -> None:
    """A bad POST /chat body gets 400, 413 or 422 with a message; the dialog is untouched."""
    async with (
        live(max_message_bytes=1024) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        assert (
            await http.post("/chat", json={"message": "good"}, headers=ALICE)
        ).status_code == 200
        reply = await http.post(
            "/chat", content=body, headers={**ALICE, "content-type": "application/json"}
        )
        assert reply.status_code == status
        assert words in reply.json()["error"]
        assert reply.headers["x-session-id"]
        await assert_dialog_intact(server, "alice", ["good"])


async def test_messages_per_minute_are_limited_per_user(live: LiveFactory) -> None:
    """Past RATE_LIMIT a minute a user gets 429 or an error frame; other users carry on."""
    async with (
        live(rate_limit=3) as server,
        httpx.AsyncClient(base_url=server.url) as http,
        connect(server.ws_url, additional_headers=ALICE) as ws,
    ):
        await ws.recv()
        for text in ("one", "two"):
            assert await chat_over(ws, text) == f"echo: {text}"
        assert (
            await http.post("/chat", json={"message": "three"}, headers=ALICE)
        ).status_code == 200
        limited = await http.post("/chat", json={"message": "four"}, headers=ALICE)
        assert limited.status_code == 429
        assert "3 a minute" in limited.json()["error"]
        await ws.send(json.dumps({"text": "five"}))
        error = await next_frame(ws)
        assert (error["type"], error["status"]) == ("error", 429)
        bob = await http.post("/chat", json={"message": "hi"}, headers={"x-user-id": "bob"})
        assert bob.status_code == 200
        await assert_dialog_intact(server, "alice", ["one", "two", "three"])


async def test_connections_per_user_are_limited(live: LiveFactory) -> None:
    """Past MAX_CONNECTIONS_PER_USER a WebSocket handshake or SSE stream gets 429."""
    async with (
        live(max_connections_per_user=2) as server,
        httpx.AsyncClient(base_url=server.url) as http,
        connect(server.ws_url, additional_headers=ALICE) as first,
        connect(server.ws_url, additional_headers=ALICE) as second,
    ):
        await first.recv()
        await second.recv()
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.ws_url, additional_headers=ALICE):
                pass
        assert refused.value.response.status_code == 429
        stream = await http.get("/chat-stream", headers=ALICE)
        assert stream.status_code == 429
        assert "too many connections" in stream.json()["error"]
        assert await chat_over(second, "still fine") == "echo: still fine"
        await assert_dialog_intact(server, "alice", ["still fine"])


async def test_cors_only_for_configured_origins(live: LiveFactory) -> None:
    """A configured origin gets CORS headers; any other origin gets none."""
    async with (
        live(cors_origins=("https://app.example",)) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        allowed = await http.get("/health", headers={"origin": "https://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = await http.get("/health", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        preflight = await http.options(
            "/chat",
            headers={
                "origin": "https://evil.example",
                "access-control-request-method": "POST",
            },
        )
        assert preflight.status_code == 400
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        plain = await http.get("/health", headers={"origin": "https://app.example"})
        assert "access-control-allow-origin" not in plain.headers


async def test_a_client_far_ahead_of_quick_replies_is_slowed_not_refused(
    live: LiveFactory,
) -> None:
    """Frames sent far ahead of quick replies wait their turn (TCP flow control slows the
    client); every one is answered, in order."""
    async with (
        live(rate_limit=0) as server,
        connect(server.ws_url, additional_headers=ALICE) as ws,
    ):
        await ws.recv()
        for i in range(200):
            await ws.send(json.dumps({"text": f"m{i}"}))
        answers: list[str] = []
        while len(answers) < 200:
            frame = await next_frame(ws)
            assert frame["type"] in ("response", "done"), frame
            if frame["type"] == "response":
                answers.append(frame["content"])
        assert answers == [f"echo: m{i}" for i in range(200)]
        dialog = await server.store().load_current("alice")
        assert dialog is not None
        assert len(dialog.messages) == 400


async def test_a_client_far_ahead_of_slow_replies_gets_429_frames(
    live: LiveFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While slow replies stream, frames sent when 32 already wait are refused with 429;
    the rest are answered whole."""
    monkeypatch.setattr("chatsession.web.ws._WATCH_AFTER", 0.01)
    async with (
        live(chat_model="echo?delay=0.03", rate_limit=0) as server,
        connect(server.ws_url, additional_headers=ALICE) as ws,
    ):
        await ws.recv()
        for i in range(60):
            await ws.send(json.dumps({"text": f"m{i}"}))
        done = refused = 0
        while done + refused < 60:
            frame = await next_frame(ws)
            if frame["type"] == "done":
                done += 1
            elif frame["type"] == "error":
                assert frame["status"] == 429
                assert "too many messages waiting" in frame["message"]
                refused += 1
        assert refused > 0
        assert done >= 33
        dialog = await server.store().load_current("alice")
        assert dialog is not None
        assert len(dialog.messages) == 2 * done
        assert not any(m.interrupted for m in dialog.messages)
        assert await chat_over(ws, "still here") == "echo: still here"

"""The guide's three integration examples, end to end against a real server."""

from __future__ import annotations

import json
import signal

import httpx
import pytest
from httpx_sse import aconnect_sse
from websockets.asyncio.client import connect

from chatsession.storage import YamlDialogStore
from tests.web.conftest import LiveFactory, serve_process


async def test_websocket_example_chats_and_archives_on_close(live: LiveFactory) -> None:
    """Guide 1: a WebSocket chat streams response frames, and closing archives the dialog."""
    async with live() as server:
        async with connect(server.ws_url, additional_headers={"x-user-id": "alice"}) as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "session"
            await ws.send(json.dumps({"text": "hello there", "jsonOutput": False}))
            frames = []
            while True:
                frame = json.loads(await ws.recv())
                frames.append(frame)
                if frame["type"] == "done":
                    break
        assert "".join(f["content"] for f in frames if f["type"] == "response") == (
            "echo: hello there"
        )
        archives = await server.wait_for_archives("alice")
        assert [(a.end_reason, a.message_count, a.session_id) for a in archives] == [
            ("disconnect", 2, hello["sessionId"])
        ]


async def test_http_example_chats_and_sigterm_archives(tmp_path: pytest.TempPathFactory) -> None:
    """Guide 2: POST /chat answers as JSON, 401 without a user, SIGTERM archives and exits 0."""
    data_dir = tmp_path / "data"  # type: ignore[operator]
    with serve_process(data_dir) as process:
        async with httpx.AsyncClient(base_url=process.url) as http:
            anonymous = await http.post("/chat", json={"message": "hi"})
            assert anonymous.status_code == 401
            assert anonymous.json()["error"] == "User not authenticated"
            assert "x-user-id" in anonymous.json()["hint"]  # development mode says what to send
            reply = await http.post(
                "/chat", json={"message": "hi", "jsonOutput": False}, headers={"x-user-id": "bob"}
            )
            assert reply.status_code == 200
            assert reply.json() == {"response": "echo: hi"}
            assert reply.headers["x-session-id"]
        process.signal(signal.SIGTERM)
        assert process.wait(15) == 0
    archives = await YamlDialogStore(data_dir).list_archives("bob")
    assert [(a.end_reason, a.message_count) for a in archives] == [("shutdown", 2)]


async def test_sse_example_streams_replies_and_archives_on_close(live: LiveFactory) -> None:
    """Guide 3: /chat-stream/{userId} carries the user's replies; closing it archives."""
    async with live() as server, httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        headers = {"x-user-id": "carol"}
        stream = aconnect_sse(http, "GET", "/chat-stream/carol", headers=dict(headers))
        async with stream as source:
            assert source.response.headers["x-session-id"]
            events = source.aiter_sse()
            first = json.loads((await anext(events)).data)
            assert first["type"] == "session"
            reply = await http.post("/chat", json={"message": "over sse"}, headers=headers)
            assert reply.json() == {"response": "echo: over sse"}
            seen: list[dict[str, str]] = []
            while not seen or seen[-1]["type"] != "done":
                frame = json.loads((await anext(events)).data)
                if frame["type"] in ("response", "done"):
                    seen.append(frame)
            assert "".join(f.get("content", "") for f in seen) == "echo: over sse"
        archives = await server.wait_for_archives("carol")
        assert [(a.end_reason, a.message_count) for a in archives] == [("disconnect", 2)]

"""Shutdown bounded whatever clients do: streams nobody reads, replies still running."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from chatsession.storage import YamlDialogStore
from tests.web.conftest import serve_process

GRACE = 1.0
USERS = ("ann", "ben", "cat")
# The echo model sends each word as a frame on the user's channel: a few big words fill
# a stalled stream's buffers quickly, many small ones make a reply that runs for long.
BIG_WORDS = ("x" * 2000 + " ") * 30
LONG_MESSAGE = "ab " * 20_000
FILLS = 40


async def stalled_stream(port: int, user: str) -> socket.socket:
    """An SSE channel whose client never reads, with a receive buffer as small as allowed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    request = f"GET /chat-stream HTTP/1.1\r\nHost: localhost\r\nx-user-id: {user}\r\n\r\n"
    await asyncio.get_running_loop().sock_sendall(sock, request.encode())
    return sock


async def fill(url: str, user: str) -> None:
    """Chats whose replies pile up in the user's stalled stream."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for _ in range(FILLS):
            reply = await http.post(
                "/chat", json={"message": BIG_WORDS}, headers={"x-user-id": user}
            )
            assert reply.status_code == 200


async def long_chat(port: int, user: str) -> asyncio.StreamWriter:
    """A POST /chat with a long reply, sent and never read (closed by the test)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"message": LONG_MESSAGE}).encode()
    writer.write(
        f"POST /chat HTTP/1.1\r\nHost: localhost\r\nx-user-id: {user}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    return writer


async def test_shutdown_is_bounded_with_streams_nobody_reads(tmp_path: Path) -> None:
    """Three unread SSE streams and long replies: SIGTERM exits 0 within ~2x the grace."""
    data_dir = tmp_path / "data"
    with serve_process(
        data_dir,
        "--shutdown-grace",
        str(GRACE),
        "--rate-limit",
        "0",
        CHAT_MODEL="echo?delay=0.0002",
    ) as process:
        output: list[str] = []
        assert process.popen.stdout is not None
        # Read as it comes: the server must never block on a full pipe.
        reader = threading.Thread(target=lambda: output.extend(process.popen.stdout or ()))
        reader.start()
        held: list[socket.socket | asyncio.StreamWriter] = [
            await stalled_stream(process.port, user) for user in USERS
        ]
        await asyncio.gather(*(fill(process.url, user) for user in USERS))
        held += [await long_chat(process.port, user) for user in USERS]
        await asyncio.sleep(0.5)  # the long replies are running
        started = time.monotonic()
        process.signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 30)
        elapsed = time.monotonic() - started
        for sock in held:
            sock.close()
        reader.join(10)
        log = "".join(output)
    assert code == 0, log
    assert elapsed < 2 * GRACE + 1, f"took {elapsed:.1f} s\n{log}"
    assert "Traceback" not in log
    assert "CancelledError" not in log
    assert "ERROR" not in log
    store = YamlDialogStore(data_dir)
    for user in USERS:
        archives = await store.list_archives(user)
        assert [a.end_reason for a in archives] == ["shutdown"], user


async def test_shutdown_is_bounded_with_websockets_nobody_reads(tmp_path: Path) -> None:
    """Three WebSockets that stopped reading mid-reply: SIGTERM exits 0 within ~2x the grace."""
    data_dir = tmp_path / "data"
    with serve_process(
        data_dir,
        "--shutdown-grace",
        str(GRACE),
        "--rate-limit",
        "0",
        CHAT_MODEL="echo?delay=0.0002",
    ) as process:
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(process.popen.stdout or ()))
        reader.start()
        clients = []
        for user in USERS:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.connect(("127.0.0.1", process.port))
            ws = await connect(
                f"ws://127.0.0.1:{process.port}/ws",
                sock=sock,
                additional_headers={"x-user-id": user},
                max_queue=1,
                ping_interval=None,
            )
            for _ in range(FILLS):
                await ws.send(json.dumps({"text": BIG_WORDS}))
            await ws.send(json.dumps({"text": LONG_MESSAGE}))
            clients.append(ws)
        await asyncio.sleep(1.5)  # replies run until the sockets' buffers are full
        started = time.monotonic()
        process.signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 30)
        elapsed = time.monotonic() - started
        for ws in clients:
            ws.transport.abort()
        reader.join(10)
        log = "".join(output)
    assert code == 0, log
    assert elapsed < 2 * GRACE + 1, f"took {elapsed:.1f} s\n{log}"
    assert "Traceback" not in log
    assert "ERROR" not in log
    store = YamlDialogStore(data_dir)
    for user in USERS:
        archives = await store.list_archives(user)
        assert [a.end_reason for a in archives] == ["shutdown"], user

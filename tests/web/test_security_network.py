"""Networks and slow clients as the weapon: huge headers, slowloris, floods, nested JSON."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from chatsession import Settings
from tests.web.conftest import LiveFactory, serve_process
from tests.web.test_security_browsers import ALICE, raw_handshake_status, ws_status

NESTED = "[" * 60_000  # under the 64 KiB frame limit, far past the parser's recursion limit


async def open_raw(
    port: int, head: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if head:
        writer.write(head)
        await writer.drain()
    return reader, writer


async def status_or_eof(reader: asyncio.StreamReader, within: float) -> int | None:
    """The status the server answers with, None if it closes without one."""
    line = await asyncio.wait_for(reader.readline(), within)
    return int(line.split()[1]) if line else None


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_deeply_nested_json_gets_400_and_keeps_the_connection(live: LiveFactory) -> None:
    """60,000 nested brackets: an error frame on the open WebSocket, 400 over HTTP, no 500."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        async with connect(server.ws_url, additional_headers=ALICE) as ws:
            await ws.recv()
            await ws.send(NESTED)
            error = json.loads(await ws.recv())
            assert error["type"] == "error"
            assert error["status"] == 400
            assert "nested" in error["message"]
            await ws.send(json.dumps({"text": "still here"}))
            assert json.loads(await ws.recv())["content"].startswith("echo:")
        reply = await http.post(
            "/chat", content=NESTED, headers={**ALICE, "content-type": "application/json"}
        )
        assert reply.status_code == 400
        archives = await server.wait_for_archives("alice")
        assert [a.end_reason for a in archives] == ["disconnect"]


async def test_an_oversized_header_gets_431(live: LiveFactory) -> None:
    """A request head past MAX_HEADER_BYTES is answered 431 and the connection closed."""
    async with live(max_header_bytes=8192) as server:
        head = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 100_000
        reader, writer = await open_raw(server.port, head)
        assert await status_or_eof(reader, 5) == 431
        assert await asyncio.wait_for(reader.read(), 5)  # the reason, then the end
        writer.close()
        ordinary = (
            b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Fine: " + b"a" * 4000 + b"\r\n\r\n"
        )
        reader, writer = await open_raw(server.port, ordinary)
        assert await status_or_eof(reader, 5) == 200
        writer.close()


async def test_an_unterminated_huge_header_does_not_grow_the_server(tmp_path: Path) -> None:
    """32 MB of one unterminated header grows a real server by far less than 32 MB."""
    with serve_process(tmp_path / "data") as process:
        before = rss_bytes(process.popen.pid)
        _, writer = await open_raw(process.port, b"GET / HTTP/1.1\r\nHost: localhost\r\nX: ")
        chunk = b"a" * (1 << 20)
        try:
            for _ in range(32):
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 5)
        except (ConnectionError, TimeoutError):
            pass  # refused and closed, as it should be
        grown = rss_bytes(process.popen.pid) - before
        writer.close()
        assert grown < 8 << 20, f"the server grew by {grown >> 20} MB"


async def test_slow_and_silent_connections_are_closed_after_the_header_timeout(
    live: LiveFactory,
) -> None:
    """Unfinished heads and silent connections get 408 and are closed within HEADER_TIMEOUT."""
    assert Settings().header_timeout <= 10
    async with live(header_timeout=0.5) as server:
        slow = [await open_raw(server.port, b"GET /health HTTP/1.1\r\nHost: lo") for _ in range(10)]
        silent = [await open_raw(server.port) for _ in range(10)]
        started = time.monotonic()
        assert [await status_or_eof(reader, 5) for reader, _ in slow] == [408] * 10
        assert [await status_or_eof(reader, 5) for reader, _ in silent] == [408] * 10
        assert [await asyncio.wait_for(reader.read(), 5) for reader, _ in slow + silent]
        assert time.monotonic() - started < 3
        for _, writer in slow + silent:
            writer.close()
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/health")).status_code == 200


async def test_a_trickled_body_gets_408_and_nothing_is_stored(live: LiveFactory) -> None:
    """A POST /chat body that stops arriving gets 408 within HEADER_TIMEOUT; nothing stored."""
    async with live(header_timeout=0.5) as server:
        head = (
            b"POST /chat HTTP/1.1\r\nHost: localhost\r\nx-user-id: alice\r\n"
            b'content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"message"'
        )
        reader, writer = await open_raw(server.port, head)
        assert await status_or_eof(reader, 3) == 408
        writer.close()
        assert await server.store().load_current("alice") is None


async def test_connections_past_max_connections_get_503(live: LiveFactory) -> None:
    """Past MAX_CONNECTIONS open connections, new ones get 503 at once, handshakes too."""
    async with live(max_connections=3, header_timeout=30) as server:
        held = [await open_raw(server.port, b"GET / HTTP/1.1\r\n") for _ in range(3)]
        await asyncio.sleep(0.1)  # accepted by the server
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/health")).status_code == 503
        assert await raw_handshake_status(server.port, "localhost") == 503
        reader, writer = await open_raw(server.port)  # one more that sends nothing
        assert await status_or_eof(reader, 2) == 503  # at once, not after the header timeout
        writer.close()
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/health")).status_code == 200
        assert await ws_status(server.ws_url, ALICE) == 101


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_header_timeout_must_be_positive(value: str) -> None:
    """HEADER_TIMEOUT takes a number of seconds greater than 0; else a clear error."""
    from chatsession import ConfigError

    with pytest.raises(ConfigError, match="HEADER_TIMEOUT"):
        Settings.from_env({"HEADER_TIMEOUT": value})


async def test_an_over_long_request_line_gets_431_with_the_json_error(live: LiveFactory) -> None:
    """A 100 KB request line is answered 431 with the API's JSON error body, not the
    parser's plain 400; a request after it on a new connection is served."""
    async with live() as server:
        line = b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
        reader, writer = await open_raw(server.port, line)
        assert await status_or_eof(reader, 5) == 431
        head_and_body = (await asyncio.wait_for(reader.read(), 5)).decode()
        head, _, body = head_and_body.partition("\r\n\r\n")
        assert "content-type: application/json" in head.lower()
        assert "over" in json.loads(body)["error"]
        writer.close()
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/health")).status_code == 200


async def test_a_keep_alive_connection_bounds_every_request_head(live: LiveFactory) -> None:
    """After a first request is served, the next one on the same connection is bounded too."""
    async with live(max_header_bytes=8192) as server:
        first = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
        reader, writer = await open_raw(server.port, first)
        assert await status_or_eof(reader, 5) == 200
        while (await asyncio.wait_for(reader.readline(), 5)) != b"\r\n":
            pass
        writer.write(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"}"), 5)  # the first response's body
        assert await status_or_eof(reader, 5) == 431
        writer.close()


async def test_chatsession_serve_closes_100_slowloris_connections(tmp_path: Path) -> None:
    """Under `chatsession serve`, 100 connections that trickle a valid head one byte at a
    time, or send nothing, are all answered 408 or closed within HEADER_TIMEOUT plus slack,
    while /health is answered meanwhile."""
    with serve_process(tmp_path / "data", HEADER_TIMEOUT="1") as process:
        trickling = [await open_raw(process.port, b"GET / HTTP/1.1\r\n") for _ in range(50)]
        silent = [await open_raw(process.port) for _ in range(50)]
        header = b"Host: 127.0.0.1\r\nX-Slow: abcdefghijklmnopqrstuvwxyz\r\n"

        async def trickle() -> None:
            for byte in range(len(header)):
                for _, writer in trickling:
                    if not writer.is_closing():
                        writer.write(header[byte : byte + 1])
                await asyncio.sleep(0.25)

        feeding = asyncio.create_task(trickle())
        try:
            async with httpx.AsyncClient(base_url=process.url) as http:
                assert (await http.get("/health")).status_code == 200
            answers = [await status_or_eof(reader, 10) for reader, _ in trickling + silent]
            assert set(answers) <= {408, None}, answers
            for reader, _ in trickling + silent:
                assert await asyncio.wait_for(reader.read(), 10) is not None  # closed: EOF
        finally:
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
            for _, writer in trickling + silent:
                writer.close()

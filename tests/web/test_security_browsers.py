"""Browsers as the weapon: foreign origins, cross-site POSTs, DNS rebinding, proxy headers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
from pathlib import Path

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from tests.web.conftest import LiveFactory, serve_process

ALICE = {"x-user-id": "alice"}
EVIL = "https://evil.example"


async def ws_status(url: str, headers: dict[str, str], origin: str | None = None) -> int:
    """The HTTP status a WebSocket handshake gets (101 once accepted)."""
    try:
        async with connect(
            url, additional_headers=headers, origin=Origin(origin) if origin else None
        ) as ws:
            json.loads(await ws.recv())
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


async def raw_handshake_status(port: int, host: str) -> int:
    """The status of a handshake sent with exactly this Host (clients set their own)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws?userId=alice HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


async def test_websocket_from_a_foreign_origin_is_refused_before_accept(
    live: LiveFactory,
) -> None:
    """A /ws handshake with a foreign Origin gets 403 and starts no session; others pass."""
    async with (
        live(
            cors_origins=("https://cors.example",), allowed_origins=("https://app.example",)
        ) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        assert await ws_status(server.ws_url, ALICE, EVIL) == 403
        assert await ws_status(server.ws_url, ALICE, "null") == 403
        assert (await http.get("/health")).json()["activeSessions"] == 0
        assert await ws_status(server.ws_url, ALICE) == 101  # no Origin: not a browser
        assert await ws_status(server.ws_url, ALICE, server.url) == 101  # its own page
        assert await ws_status(server.ws_url, ALICE, "https://app.example") == 101
        assert await ws_status(server.ws_url, ALICE, "https://cors.example") == 101


async def test_a_cross_site_text_plain_post_is_refused_with_415(live: LiveFactory) -> None:
    """POST /chat with a body that is not declared JSON gets 415; nothing is stored."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        body = json.dumps({"message": "hi"})
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {**ALICE, **({"content-type": content_type} if content_type else {})}
            reply = await http.post("/chat", content=body, headers=headers)
            assert reply.status_code == 415
            assert "application/json" in reply.json()["error"]
        assert await server.store().load_current("alice") is None
        headers = {**ALICE, "content-type": "application/json; charset=utf-8"}
        assert (await http.post("/chat", content=body, headers=headers)).status_code == 200


async def test_post_and_delete_from_a_foreign_origin_are_refused(live: LiveFactory) -> None:
    """POST, DELETE and SSE channels with a foreign Origin get 403; others pass."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        foreign = {**ALICE, "origin": EVIL}
        reply = await http.post("/chat", json={"message": "hi"}, headers=foreign)
        assert reply.status_code == 403
        assert await server.store().load_current("alice") is None
        deleted = await http.delete("/dialogs/2024-01-15-10-30-00", headers=foreign)
        assert deleted.status_code == 403
        own = {**ALICE, "origin": server.url}
        assert (await http.post("/chat", json={"message": "hi"}, headers=own)).status_code == 200
        assert (await http.post("/chat", json={"message": "hi"}, headers=ALICE)).status_code == 200
        assert (await http.get("/dialogs/current", headers=foreign)).status_code == 200
        channel = await http.get("/chat-stream", headers={**foreign, "x-user-id": "bob"})
        assert channel.status_code == 403
        assert (await http.get("/health")).json()["activeSessions"] == 1  # alice's alone


async def test_dns_rebinding_host_is_refused_in_development_mode(live: LiveFactory) -> None:
    """In development mode a non-loopback Host gets 400, over HTTP and WebSocket alike."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        await http.post("/chat", json={"message": "hi"}, headers=ALICE)
        rebound = {"host": f"attacker.example:{server.port}"}
        reply = await http.get("/dialogs/current?userId=alice", headers=rebound)
        assert reply.status_code == 400
        assert "alice" not in reply.text
        admin = {**rebound, "x-user-id": "mallory", "x-user-roles": "admin"}
        assert (await http.get("/sessions", headers=admin)).status_code == 400
        assert await raw_handshake_status(server.port, rebound["host"]) == 400
        assert await raw_handshake_status(server.port, f"localhost:{server.port}") == 101
        # HTTP/1.0 health checks (HAProxy's) send no Host at all; a browser always sends one.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /health HTTP/1.0\r\n\r\n")
        assert (await reader.readline()).split()[1] == b"200"
        writer.close()
        for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "[::1]", "localhost"):
            reply = await http.get("/dialogs/current", headers={**ALICE, "host": host})
            assert reply.status_code == 200, host


async def test_allowed_hosts_names_the_hosts_served(live: LiveFactory) -> None:
    """ALLOWED_HOSTS replaces the loopback rule: its names (and wildcards) are served, no others."""
    async with (
        live(allowed_hosts=("chat.example", "*.corp.example")) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        for host, status in (
            ("chat.example", 200),
            (f"chat.example:{server.port}", 200),
            ("eu.corp.example", 200),
            ("attacker.example", 400),
            (f"127.0.0.1:{server.port}", 400),
        ):
            reply = await http.get("/dialogs", headers={**ALICE, "host": host})
            assert reply.status_code == status, host


async def test_trusted_proxy_takes_the_identity_from_its_header_only(live: LiveFactory) -> None:
    """Behind a trusted proxy ?userId= names nobody and a client's x-user-roles is ignored."""
    async with live(trusted_proxy=True) as server, httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/dialogs/current?userId=alice")).status_code == 401
        assert await ws_status(server.ws_url + "?userId=alice", {}) == 401
        client_roles = {"x-user-id": "mallory", "x-user-roles": "admin"}
        assert (await http.get("/sessions", headers=client_roles)).status_code == 403
        assert (await http.get("/dialogs/current", headers=ALICE)).status_code == 200


async def test_trusted_proxy_admin_header_is_opt_in(live: LiveFactory) -> None:
    """TRUSTED_PROXY_ADMIN_HEADER names the one header that grants admin rights."""
    async with (
        live(trusted_proxy=True, trusted_proxy_admin_header="X-Proxy-Roles") as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        granted = {"x-user-id": "root", "x-proxy-roles": "staff, admin"}
        assert (await http.get("/sessions", headers=granted)).status_code == 200
        wrong = {"x-user-id": "root", "x-user-roles": "admin"}
        assert (await http.get("/sessions", headers=wrong)).status_code == 403


async def test_refused_handshakes_log_no_error(tmp_path: Path) -> None:
    """401, 403 and 429 handshakes are refused with their status, and nothing is logged as ERROR."""
    with serve_process(tmp_path / "data", "--max-connections-per-user", "1") as process:
        url = f"ws://127.0.0.1:{process.port}/ws"
        assert await ws_status(url, {}) == 401
        assert await ws_status(url, ALICE, EVIL) == 403
        async with connect(url, additional_headers=ALICE) as first:
            await first.recv()
            assert await ws_status(url, ALICE) == 429
        process.signal(signal.SIGTERM)
        assert process.wait(20) == 0
        output = process.popen.stdout.read() if process.popen.stdout else ""
    assert " ERROR " not in output
    assert "without completing handshake" not in output

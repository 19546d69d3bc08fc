"""Health, metrics, the dialog API and the x-session-id header, over real HTTP."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
from websockets.asyncio.client import connect

from chatsession.cli import build_parser
from chatsession.settings import environment_variables
from tests.web.conftest import LiveFactory

ALICE = {"x-user-id": "alice"}


async def test_health_reports_status_sessions_and_uptime(live: LiveFactory) -> None:
    """GET /health is the guide's body: status, activeSessions, uptime."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        await http.post("/chat", json={"message": "hi"}, headers=ALICE)
        body = (await http.get("/health")).json()
        assert body["status"] == "healthy"
        assert body["activeSessions"] == 1
        assert body["uptime"] >= 0


async def test_metrics_count_sessions_messages_and_latency(live: LiveFactory) -> None:
    """GET /metrics exposes sessions started/ended by reason, archive time, messages, latency."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        async with connect(server.ws_url, additional_headers=ALICE) as ws:
            await ws.recv()
            await ws.send(json.dumps({"text": "hi"}))
            while json.loads(await ws.recv())["type"] != "done":
                pass
        await server.wait_for_archives("alice")
        text = (await http.get("/metrics")).text
        assert "chatsession_active_sessions 0.0" in text
        assert "chatsession_sessions_started_total 1.0" in text
        assert 'chatsession_sessions_ended_total{reason="disconnect"} 1.0' in text
        assert "chatsession_archive_duration_seconds_count 1.0" in text
        assert 'chatsession_messages_total{transport="websocket"} 1.0' in text
        assert "chatsession_model_latency_seconds_count 1.0" in text


async def test_dialog_api_lists_reads_and_deletes_archives(live: LiveFactory) -> None:
    """/dialogs lists archives, /dialogs/{id} reads one, DELETE removes it, unknown is 404."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        await http.post("/chat", json={"message": "first"}, headers=ALICE)
        current = (await http.get("/dialogs/current", headers=ALICE)).json()
        assert [m["content"] for m in current["dialog"]["messages"]] == ["first", "echo: first"]
        async with connect(server.ws_url, additional_headers=ALICE) as ws:
            await ws.recv()  # the session now has a connection; closing it archives
        await server.wait_for_archives("alice")
        listing = (await http.get("/dialogs", headers=ALICE)).json()
        (archive,) = listing["archives"]
        assert (archive["endReason"], archive["messageCount"]) == ("disconnect", 2)
        one = (await http.get(f"/dialogs/{archive['archiveId']}", headers=ALICE)).json()
        assert one["dialog"]["messages"][1]["role"] == "assistant"
        assert (await http.get("/dialogs/current", headers=ALICE)).json()["dialog"] is None
        deleted = await http.delete(f"/dialogs/{archive['archiveId']}", headers=ALICE)
        assert deleted.status_code == 204
        missing = await http.get(f"/dialogs/{archive['archiveId']}", headers=ALICE)
        assert missing.status_code == 404
        assert (await http.get("/dialogs", headers=ALICE)).json()["archives"] == []


async def test_every_response_carries_x_session_id_issued_by_the_server(
    live: LiveFactory,
) -> None:
    """x-session-id is on every response; an id the client names is ignored: the server
    issues the session's id, which then stays the same for the whole session."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        for response in (
            await http.get("/health"),
            await http.get("/metrics"),
            await http.post("/chat", json={"message": "hi"}),
            await http.get("/dialogs/nope", headers=ALICE),
        ):
            assert response.headers["x-session-id"], response.request.url
        chosen = {**ALICE, "x-session-id": "my-session-1"}
        reply = await http.post("/chat", json={"message": "hi"}, headers=chosen)
        issued = reply.headers["x-session-id"]
        assert issued != "my-session-1"
        again = await http.post("/chat", json={"message": "again"}, headers=chosen)
        assert again.headers["x-session-id"] == issued
        listing = await http.get("/dialogs", headers=ALICE)
        assert listing.headers["x-session-id"] == issued
        unknown = await http.get("/dialogs/nope", headers={"x-session-id": "my-session-1"})
        assert unknown.headers["x-session-id"] != "my-session-1"


def test_serve_has_a_flag_for_every_setting() -> None:
    """serve mirrors every variable with a flag (--model for CHAT_MODEL), secrets excepted."""
    parser = build_parser()
    args = parser.parse_args(["serve", "--host", "::1", "--port", "9000", "--model", "echo"])
    assert (args.host, args.port, args.chat_model) == ("::1", "9000", "echo")
    serve_help = subprocess.run(
        [sys.executable, "-m", "chatsession", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # A flag would show them in the process list (a Redis URL may hold a password).
    secrets = {"JWT_SECRET", "OPENAI_API_KEY", "REDIS_URL"}
    for variable in environment_variables():
        assert (f"${variable}" in serve_help) is (variable not in secrets), variable


async def test_archive_ids_cannot_reach_outside_the_users_archive(live: LiveFactory) -> None:
    """An archive id that is a path (../, encoded or not) is simply not found."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        await http.post("/chat", json={"message": "hi"}, headers=ALICE)
        for archive_id in ("..%2Fcurrent", "..%2F..%2F..%2Fbob%2Fdialogs%2Fcurrent", "%2E%2E"):
            reply = await http.get(f"/dialogs/{archive_id}", headers=ALICE)
            assert reply.status_code == 404, archive_id
            deleted = await http.delete(f"/dialogs/{archive_id}", headers=ALICE)
            assert deleted.status_code == 404, archive_id
        deleted = await http.delete("/dialogs/current", headers=ALICE)
        assert deleted.status_code == 404  # the current dialog is not an archive
        dialog = await server.store().load_current("alice")
        assert dialog is not None
        assert len(dialog.messages) == 2


async def test_development_mode_401_says_what_to_send(live: LiveFactory) -> None:
    """Without an identity, dev mode's 401 names the x-user-id header and ?userId=."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        reply = await http.post("/chat", json={"message": "hi"})
        assert reply.status_code == 401
        assert reply.json() == {
            "error": "User not authenticated",
            "hint": "development mode: send an x-user-id header, or ?userId= for browsers",
        }


async def test_unknown_routes_and_methods_answer_in_the_apis_error_shape(live: LiveFactory) -> None:
    """404 and 405 are {"error": ...}, like every other error of the API."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        missing = await http.get("/no-such-route")
        assert (missing.status_code, missing.json()) == (404, {"error": "Not Found"})
        wrong = await http.put("/health")
        assert (wrong.status_code, wrong.json()) == (405, {"error": "Method Not Allowed"})
        assert "GET" in wrong.headers["allow"]

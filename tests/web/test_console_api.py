"""The console's API against a real server: the caller's session, archives, erasure, admin."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import Any

import httpx
import pytest
import yaml
from websockets.asyncio.client import ClientConnection, connect

from tests.web.conftest import Live, LiveFactory

ALICE = {"x-user-id": "alice"}
BOB = {"x-user-id": "bob"}
ADMIN = {"x-user-id": "root", "x-user-roles": "admin"}


async def chat(http: httpx.AsyncClient, headers: dict[str, str], text: str) -> None:
    response = await http.post("/chat", headers=headers, json={"message": text})
    assert response.status_code == 200, response.text


async def archive_dialogs(
    server: Live, http: httpx.AsyncClient, user: str, texts: list[str]
) -> None:
    """One archive per text, each ended by the caller (reason manual), oldest first."""
    headers = {"x-user-id": user}
    for count, text in enumerate(texts, 1):
        await chat(http, headers, text)
        assert (await http.delete("/session", headers=headers)).json()["archiveId"]
        await server.wait_for_archives(user, count)
        if count < len(texts):
            await asyncio.sleep(1.01)  # archive ids name seconds: keep the order plain


async def next_event(ws: ClientConnection) -> dict[str, Any]:
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if frame["type"] == "session_event":
            return dict(frame)


async def test_session_is_null_then_shows_the_caller_s_session(live: LiveFactory) -> None:
    """GET /session is null without a session; after a chat it has the times for a countdown."""
    async with live(session_timeout=120) as server, httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/session", headers=ALICE)).json() == {
            "userId": "alice",
            "session": None,
        }
        await chat(http, ALICE, "hello")
        session = (await http.get("/session", headers=ALICE)).json()["session"]
        assert session["connections"] == 0
        assert session["timeoutSeconds"] == 120
        expires = datetime.fromisoformat(session["expiresAt"])
        activity = datetime.fromisoformat(session["lastActivity"])
        assert (expires - activity).total_seconds() == 120
        assert (await http.get("/session")).json()["error"] == "User not authenticated"


async def test_a_held_session_has_no_expiry_and_counts_its_connections(live: LiveFactory) -> None:
    """While WebSockets hold the session it does not time out: expiresAt is null, count is 2."""
    async with (
        live() as server,
        httpx.AsyncClient(base_url=server.url) as http,
        connect(server.ws_url, additional_headers=ALICE) as one,
        connect(server.ws_url, additional_headers=ALICE) as two,
    ):
        await one.recv()
        await two.recv()
        session = (await http.get("/session", headers=ALICE)).json()["session"]
        assert session["connections"] == 2
        assert session["expiresAt"] is None


async def test_delete_session_ends_it_manually_and_answers_the_archive(live: LiveFactory) -> None:
    """DELETE /session archives the dialog with reason manual; a second call ends nothing."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        await chat(http, ALICE, "hello")
        ended = (await http.delete("/session", headers=ALICE)).json()
        assert ended["ended"] is True
        [archive] = await server.archives("alice")
        assert ended["archiveId"] == archive.archive_id
        assert archive.end_reason == "manual"
        again = (await http.delete("/session", headers=ALICE)).json()
        assert again == {"userId": "alice", "ended": False, "archiveId": None}


async def test_websocket_carries_the_user_s_session_events(live: LiveFactory) -> None:
    """A page's socket hears a second tab open and its session end; replies are unchanged."""
    async with (
        live() as server,
        httpx.AsyncClient(base_url=server.url) as http,
        connect(server.ws_url, additional_headers=ALICE) as page,
    ):
        session_id = json.loads(await page.recv())["sessionId"]
        async with connect(server.ws_url, additional_headers=ALICE) as tab:
            await tab.recv()
            opened = await next_event(page)
            assert (opened["event"], opened["sessionId"]) == ("connection_opened", session_id)
        await page.send(json.dumps({"text": "hi"}))
        frames = []
        while (frame := json.loads(await page.recv()))["type"] != "done":
            frames.append(frame)
        replies = [f for f in frames if f["type"] == "response"]
        assert "".join(f["content"] for f in replies) == "echo: hi"
        ended = (await http.delete("/session", headers=ALICE)).json()
        event = await next_event(page)
        while event["event"] != "session_ended":
            event = await next_event(page)
        assert (event["reason"], event["archiveId"]) == ("manual", ended["archiveId"])


async def test_another_user_s_events_do_not_reach_a_socket(live: LiveFactory) -> None:
    """Bob's session events never reach Alice's socket."""
    async with (
        live() as server,
        httpx.AsyncClient(base_url=server.url) as http,
        connect(server.ws_url, additional_headers=ALICE) as page,
    ):
        await page.recv()
        await chat(http, BOB, "hello")
        await http.delete("/session", headers=BOB)
        await page.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(page.recv(), 5)) == {"type": "pong"}


async def test_archives_are_listed_newest_first_in_pages(live: LiveFactory) -> None:
    """GET /archives pages newest first with a cursor, with the first words of each."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        await archive_dialogs(server, http, "alice", ["first one", "second one", "third one"])
        page = (await http.get("/archives?limit=2", headers=ALICE)).json()
        assert page["total"] == 3
        assert [a["firstWords"] for a in page["archives"]] == ["third one", "second one"]
        assert page["archives"][0]["messageCount"] == 2
        assert page["archives"][0]["endReason"] == "manual"
        rest = (await http.get(f"/archives?limit=2&before={page['next']}", headers=ALICE)).json()
        assert [a["firstWords"] for a in rest["archives"]] == ["first one"]
        assert rest["next"] is None


async def test_archives_search_finds_words_in_any_message(live: LiveFactory) -> None:
    """?q= lists only the caller's archives holding every word, in any case."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        await archive_dialogs(server, http, "alice", ["Apples and pears", "only pears"])
        await archive_dialogs(server, http, "bob", ["apples for bob"])
        found = (await http.get("/archives?q=APPLES", headers=ALICE)).json()
        assert [a["firstWords"] for a in found["archives"]] == ["Apples and pears"]
        both = (await http.get("/archives?q=pears", headers=ALICE)).json()
        assert both["total"] == 2
        none = (await http.get("/archives?q=apples%20kiwi", headers=ALICE)).json()
        assert none["archives"] == []


async def test_bad_archive_queries_get_the_api_error_shape(live: LiveFactory) -> None:
    """A limit out of range or an unknown format is a 422 with {"error": ...}."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get("/archives?limit=0", headers=ALICE)
        assert response.status_code == 422
        assert "limit" in response.json()["error"]
        response = await http.get("/archives/export?format=pdf", headers=ALICE)
        assert response.status_code == 422
        assert set(response.json()) == {"error"}
        response = await http.get("/archives?before=../../etc", headers=ALICE)
        assert response.status_code == 422
        assert "not an archive id" in response.json()["error"]
        response = await http.get("/archives?userId=bob", headers=ALICE)
        assert response.status_code == 403


async def test_export_one_or_all_as_yaml_json_markdown(live: LiveFactory) -> None:
    """Export gives one archive or all, as YAML documents, JSON or Markdown, to download."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        await archive_dialogs(server, http, "alice", ["first", "second"])
        archives = await server.archives("alice")
        one = await http.get(
            f"/archives/export?format=yaml&archiveId={archives[0].archive_id}", headers=ALICE
        )
        assert "attachment" in one.headers["content-disposition"]
        document = yaml.safe_load(one.text)
        assert [m["content"] for m in document["messages"]] == ["first", "echo: first"]
        everything = await http.get("/archives/export?format=yaml", headers=ALICE)
        assert len(list(yaml.safe_load_all(everything.text))) == 2
        exported = (await http.get("/archives/export?format=json", headers=ALICE)).json()
        assert [d["archiveId"] for d in exported] == [a.archive_id for a in archives]
        markdown = (await http.get("/archives/export?format=markdown", headers=ALICE)).text
        assert markdown.count("## user") == 2
        assert "echo: second" in markdown
        missing = await http.get("/archives/export?archiveId=2020-01-01-00-00-00", headers=ALICE)
        assert missing.status_code == 404


async def test_erase_me_removes_everything_of_the_user_and_nothing_else(
    live: LiveFactory,
) -> None:
    """DELETE /users/{me} ends the session, removes dialog and archives; Bob's stay whole."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        await archive_dialogs(server, http, "alice", ["old"])
        await archive_dialogs(server, http, "bob", ["bob's"])
        await chat(http, ALICE, "current")
        await chat(http, BOB, "bob's current")
        refused = await http.delete("/users/bob", headers=ALICE)
        assert refused.status_code == 403
        erased = (await http.delete("/users/alice", headers=ALICE)).json()
        assert erased == {
            "userId": "alice",
            "sessionEnded": True,
            "currentDialogRemoved": True,
            "archivesRemoved": 2,
        }
        assert await server.archives("alice") == []
        assert await server.store().load_current("alice") is None
        assert not (server.data_dir / "users" / "alice").exists()
        assert (await http.get("/session", headers=ALICE)).json()["session"] is None
        assert len(await server.archives("bob")) == 1
        bob_current = await server.store().load_current("bob")
        assert bob_current is not None
        assert [m.content for m in bob_current.messages] == ["bob's current", "echo: bob's current"]
        by_admin = (await http.delete("/users/bob", headers=ADMIN)).json()
        assert by_admin["archivesRemoved"] == 2


async def test_admin_ends_a_user_s_session_and_reads_stats(live: LiveFactory) -> None:
    """Admins end anyone's session and read per-minute stats; others get 403."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        await chat(http, BOB, "hello")
        assert (await http.delete("/sessions/bob", headers=ALICE)).status_code == 403
        assert (await http.get("/admin/stats", headers=ALICE)).status_code == 403
        ended = (await http.delete("/sessions/bob", headers=ADMIN)).json()
        assert ended["ended"] is True
        assert ended["archiveId"] == (await server.archives("bob"))[0].archive_id
        stats = (await http.get("/admin/stats", headers=ADMIN)).json()
        assert len(stats["minutes"]) == 60
        assert sum(m["started"] for m in stats["minutes"]) == 1
        assert sum(m["ended"].get("manual", 0) for m in stats["minutes"]) == 1
        assert sum(m["archives"] for m in stats["minutes"]) == 1
        assert stats["minutes"][-1]["archiveMeanSeconds"] is not None


async def test_the_api_is_documented_offline(live: LiveFactory) -> None:
    """/openapi.json lists the console's API with the error shape; /docs needs no network."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        schema = (await http.get("/openapi.json")).json()
        for path in ("/session", "/archives", "/archives/export", "/users/{user_id}"):
            assert path in schema["paths"]
        assert "ErrorBody" in schema["components"]["schemas"]
        docs = await http.get("/docs")
        assert docs.headers["content-type"].startswith("text/html")
        assert "https://" not in docs.text
        assert "http://" not in docs.text
        assert (await http.get("/static/docs.js")).status_code == 200


async def test_retention_deletes_expired_archives_only_and_counts_them(
    live: LiveFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """ARCHIVE_RETENTION_DAYS deletes old archives in the sweep, logs and counts each one;
    a newer archive, the current dialog and other files stay."""
    caplog.set_level(logging.INFO, logger="chatsession.retention")
    days = 4 / 86_400  # four seconds
    async with (
        live(archive_retention_days=days, session_check_interval=0.2) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        await archive_dialogs(server, http, "alice", ["old"])
        [old] = await server.archives("alice")
        await asyncio.sleep(2.5)
        await archive_dialogs(server, http, "bob", ["newer"])
        await chat(http, ALICE, "current")
        deadline = asyncio.get_running_loop().time() + 8
        while await server.archives("alice"):
            assert asyncio.get_running_loop().time() < deadline, "never expired"
            await asyncio.sleep(0.1)
        assert [a.first_words for a in await server.archives("bob")] == ["newer"]
        current = await server.store().load_current("alice")
        assert current is not None
        assert current.messages[0].content == "current"
        metrics = (await http.get("/metrics")).text
        assert "chatsession_archives_expired_total 1.0" in metrics
    assert f"deleted archive {old.archive_id} of 'alice'" in caplog.text


async def test_a_stop_frame_stops_the_reply_and_stores_it_interrupted(live: LiveFactory) -> None:
    """{"type": "stop"} cuts a streaming reply, keeps the connection and the session."""
    text = " ".join(f"w{i}" for i in range(80))
    async with (
        live(chat_model="echo?delay=0.05") as server,
        connect(server.ws_url, additional_headers=ALICE) as ws,
    ):
        await ws.recv()
        await ws.send(json.dumps({"type": "stop"}))  # nothing streams: ignored
        await ws.send(json.dumps({"text": text}))
        assert json.loads(await ws.recv())["type"] == "response"
        await ws.send(json.dumps({"type": "stop"}))
        dialog = await server.wait_for_reply("alice")
        assert dialog.messages[-1].interrupted
        assert f"echo: {text}".startswith(dialog.messages[-1].content)
        await ws.send(json.dumps({"type": "ping"}))
        while (frame := json.loads(await ws.recv()))["type"] != "pong":
            assert frame["type"] in ("response", "session_event")  # chunks already sent
        assert await server.archives("alice") == []

"""Small leaks and weak defaults: server paths, PyJWT's text, short secrets, file modes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect

from chatsession import ConfigError, Settings
from chatsession import settings as settings_module
from chatsession.domain import Message
from chatsession.settings import environment_variables
from chatsession.storage import YamlDialogStore
from chatsession.web.app import create_app
from tests.test_files_store import T0, _small_disk
from tests.web.conftest import LiveFactory
from tests.web.test_auth import SECRET, bearer, token
from tests.web.test_security_browsers import ALICE

ARCHIVE_ID = "2024-01-15-10-30-00"


async def test_a_full_disk_is_reported_without_the_servers_paths(
    live: LiveFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """507 over HTTP and an error frame over WebSocket name no path; the log does."""
    caplog.set_level(logging.ERROR, logger="chatsession")
    with _small_disk(tmp_path / "disk") as data:
        async with live(data_dir=data) as server, httpx.AsyncClient(base_url=server.url) as http:
            reply = await http.post("/chat", json={"message": "x" * 60_000}, headers=ALICE)
            assert reply.status_code == 507
            assert str(data) not in reply.text
            assert "storage is full" in reply.json()["error"]
            async with connect(server.ws_url, additional_headers={"x-user-id": "bob"}) as ws:
                await ws.recv()
                await ws.send(json.dumps({"text": "y" * 60_000}))
                frame = json.loads(await ws.recv())
                assert frame["type"] == "error"
                assert frame["status"] == 507
                assert str(data) not in frame["message"]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert str(data) in logged


async def test_a_corrupt_archive_is_reported_without_the_servers_paths(
    live: LiveFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A corrupt archive gets 500 with no path in the body; the log names the file."""
    caplog.set_level(logging.ERROR, logger="chatsession")
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        archived = server.store().dialogs_dir("alice") / "archived"
        archived.mkdir(parents=True)
        (archived / f"{ARCHIVE_ID}.yaml").write_text("{{{ not: [yaml\n")
        reply = await http.get(f"/dialogs/{ARCHIVE_ID}", headers=ALICE)
        assert reply.status_code == 500
        assert str(server.data_dir) not in reply.text
        assert "/" not in reply.json()["error"]
        assert (archived / f"{ARCHIVE_ID}.yaml").read_text() == "{{{ not: [yaml\n"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert str(archived / f"{ARCHIVE_ID}.yaml") in logged


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": "soon"}, "the token is malformed"),
        ({"aud": [1, 2]}, "the token is for another audience"),
        ({"exp": int(time.time()) - 10}, "the token has expired"),
    ],
)
async def test_auth_errors_give_a_short_reason_without_pyjwt_internals(
    live: LiveFactory, claims: dict[str, object], reason: str
) -> None:
    """A token that does not verify gets 401 and a short reason, not PyJWT's own text."""
    payload = {"sub": "alice", "exp": int(time.time()) + 60, **claims}
    bad = jwt.api_jws.encode(json.dumps(payload).encode(), SECRET, algorithm="HS256")
    async with (
        live(jwt_secret=SECRET, jwt_audience="chat") as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        reply = await http.get("/dialogs", headers=bearer(bad))
        assert reply.status_code == 401
        assert reply.json() == {"error": f"User not authenticated: {reason}"}
        good = await http.get("/dialogs", headers=bearer(token(aud="chat")))
        assert good.status_code == 200


def test_a_short_hs256_secret_is_refused_at_start(tmp_path: Path) -> None:
    """JWT_SECRET under 32 bytes stops the start (exit 2) with how to make a good one."""
    with pytest.raises(ConfigError, match="token_urlsafe"):
        Settings(jwt_secret="x" * 31)
    create_app(Settings(jwt_secret="x" * 32))
    result = subprocess.run(
        [sys.executable, "-m", "chatsession", "serve", "--port", "0"],
        env={**os.environ, "JWT_SECRET": "x", "DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "(JWT_SECRET) is 1 bytes" in result.stderr
    assert "python -c 'import secrets; print(secrets.token_urlsafe(32))'" in result.stderr


async def test_archives_written_by_crash_recovery_are_private(
    live: LiveFactory, tmp_path: Path
) -> None:
    """A dialog left by a crash is archived at the next start as 0600, like every dialog."""
    store = YamlDialogStore(tmp_path / "data")
    await store.append("alice", "s", T0, Message("user", "left behind", T0), first=True)
    async with live(data_dir=tmp_path / "data") as server:
        archives = await server.wait_for_archives("alice")
        assert [a.end_reason for a in archives] == ["recovered"]
        archived = server.store().dialogs_dir("alice") / "archived"
        modes = {path.name: path.stat().st_mode & 0o777 for path in archived.iterdir()}
        assert modes[f"{archives[0].archive_id}.yaml"] == 0o600
        assert set(modes.values()) == {0o600}  # the archive index holds their words too


def test_security_settings_are_documented() -> None:
    """Each security setting is in the README's tables and the settings docstring."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "### Security" in readme
    for variable in (
        "TRUSTED_PROXY_ADMIN_HEADER",
        "ALLOWED_ORIGINS",
        "ALLOWED_HOSTS",
        "MAX_HEADER_BYTES",
        "HEADER_TIMEOUT",
        "MAX_CONNECTIONS",
    ):
        assert f"| `{variable}` |" in readme, variable
        assert f"``{variable}``" in (settings_module.__doc__ or ""), variable
        assert variable in environment_variables(), variable

"""Authentication: JWT (HS256, RS256, ES256) with its claims, dev mode, admins, other users."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from chatsession import ConfigError, Settings
from chatsession.web.auth import check_bind
from tests.web.conftest import LiveFactory

SECRET = "s3cret-for-tests-only-0123456789abcdef"


def token(sub: str = "alice", key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    payload = {"sub": sub, "exp": int(time.time()) + 60, **claims}
    return jwt.encode(payload, key, algorithm=algorithm)


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


async def test_hs256_token_identifies_the_user(live: LiveFactory) -> None:
    """A valid HS256 bearer token's sub is the user; x-user-id is ignored in JWT mode."""
    async with live(jwt_secret=SECRET) as server, httpx.AsyncClient(base_url=server.url) as http:
        reply = await http.post("/chat", json={"message": "hi"}, headers=bearer(token()))
        assert reply.status_code == 200
        assert (await http.get("/dialogs/current", headers=bearer(token()))).json()[
            "userId"
        ] == "alice"
        trusted = await http.post("/chat", json={"message": "hi"}, headers={"x-user-id": "bob"})
        assert trusted.status_code == 401


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"exp": int(time.time()) - 10}, "expired"),
        ({"nbf": int(time.time()) + 600}, "not yet valid"),
        ({"aud": "someone-else"}, "audience"),
        ({"iss": "mallory"}, "issuer"),
    ],
)
async def test_tokens_failing_a_claim_are_refused(
    live: LiveFactory, claims: dict[str, Any], why: str
) -> None:
    """exp, nbf, aud and iss are checked: a token failing one gets 401."""
    async with (
        live(jwt_secret=SECRET, jwt_audience="chat", jwt_issuer="auth.example") as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        good = token(aud="chat", iss="auth.example")
        assert (await http.get("/dialogs", headers=bearer(good))).status_code == 200
        bad = token(**{"aud": "chat", "iss": "auth.example", **claims})
        reply = await http.get("/dialogs", headers=bearer(bad))
        assert reply.status_code == 401, why
        assert reply.json()["error"].startswith("User not authenticated")


async def test_wrong_signature_and_missing_token_are_refused(live: LiveFactory) -> None:
    """A token signed with another secret, or none at all, gets 401."""
    async with live(jwt_secret=SECRET) as server, httpx.AsyncClient(base_url=server.url) as http:
        forged = token(key="another-secret-of-enough-length-0123456789")
        assert (await http.get("/dialogs", headers=bearer(forged))).status_code == 401
        assert (await http.get("/dialogs")).status_code == 401


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
async def test_public_key_tokens(live: LiveFactory, tmp_path: Path, kind: str) -> None:
    """RS256 and ES256 tokens verify against a public key given as a PEM file."""
    private: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(pem)
    async with (
        live(jwt_public_key=str(key_file)) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        good = token("dora", key=private, algorithm=kind)
        reply = await http.post("/chat", json={"message": "hi"}, headers=bearer(good))
        assert reply.status_code == 200
        assert reply.json() == {"response": "echo: hi"}
        hmac = token("dora")  # an HS256 token must not pass as a public-key one
        assert (await http.get("/dialogs", headers=bearer(hmac))).status_code == 401


async def test_browsers_pass_the_token_as_query_parameter_or_cookie(live: LiveFactory) -> None:
    """WebSocket takes ?token=; HTTP takes the token cookie; a bad one is refused at handshake."""
    async with live(jwt_secret=SECRET) as server:
        async with connect(f"{server.ws_url}?token={token('erin')}") as ws:
            assert "session" in await ws.recv()
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{server.ws_url}?token=not-a-token"):
                pass
        assert refused.value.response.status_code == 401
        async with httpx.AsyncClient(base_url=server.url, cookies={"token": token("erin")}) as http:
            assert (await http.get("/dialogs")).json()["userId"] == "erin"


async def test_admin_claim_grants_the_sessions_list(live: LiveFactory) -> None:
    """GET /sessions needs the admin claim: 403 without it, the session list with it."""
    async with live(jwt_secret=SECRET) as server, httpx.AsyncClient(base_url=server.url) as http:
        await http.post("/chat", json={"message": "hi"}, headers=bearer(token("frank")))
        assert (await http.get("/sessions", headers=bearer(token("frank")))).status_code == 403
        admin = bearer(token("root", admin=True))
        listing = (await http.get("/sessions", headers=admin)).json()
        assert [s["userId"] for s in listing["sessions"]] == ["frank"]
        others = await http.get("/dialogs/current", params={"userId": "frank"}, headers=admin)
        assert others.json()["dialog"]["messages"][0]["content"] == "hi"


async def test_other_users_streams_and_dialogs_are_forbidden(live: LiveFactory) -> None:
    """Asking for another user's SSE stream or dialogs is 403, and nothing is started."""
    async with live() as server, httpx.AsyncClient(base_url=server.url) as http:
        alice = {"x-user-id": "alice"}
        assert (await http.get("/chat-stream/bob", headers=alice)).status_code == 403
        assert (
            await http.get("/dialogs", params={"userId": "bob"}, headers=alice)
        ).status_code == 403
        assert (
            await http.get("/dialogs/2024-01-01-00-00-00", params={"userId": "bob"}, headers=alice)
        ).status_code == 403
        health = (await http.get("/health")).json()
        assert health["activeSessions"] == 0


def test_dev_mode_is_refused_on_a_public_address() -> None:
    """Development auth on 0.0.0.0 is a configuration error naming JWT and the proxy option."""
    with pytest.raises(ConfigError, match=r"JWT_SECRET.*TRUSTED_PROXY"):
        check_bind(Settings(host="0.0.0.0"))
    check_bind(Settings(host="0.0.0.0", trusted_proxy=True))
    check_bind(Settings(host="0.0.0.0", jwt_secret=SECRET))
    check_bind(Settings(host="::1"))


def test_serve_exits_non_zero_in_dev_mode_on_a_public_address(tmp_path: Path) -> None:
    """chatsession serve --host 0.0.0.0 without JWT exits 2 with a message that says what to do."""
    command = [sys.executable, "-m", "chatsession", "serve", "--host", "0.0.0.0", "--port", "0"]
    result = subprocess.run(
        [*command, "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert "JWT_SECRET" in result.stderr
    assert "TRUSTED_PROXY" in result.stderr

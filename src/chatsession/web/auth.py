"""Who is calling: JWT bearer tokens, or the ``x-user-id`` header in development mode.

A token comes from the ``Authorization: Bearer`` header, or, for browsers' WebSocket and
EventSource (which cannot set headers), from a ``token`` query parameter or cookie. Its
``sub`` is the user id; ``exp`` is required, and ``nbf``, ``aud`` and ``iss`` are checked
when configured. Admin rights come from the claim ``JWT_ADMIN_CLAIM`` being true (or a list
holding ``"admin"``).

Development mode trusts ``x-user-id`` (or a ``userId`` query parameter) and
``x-user-roles: admin``; `check_bind` refuses it on a non-loopback address unless a
trusted proxy is declared. Behind a trusted proxy only the ``x-user-id`` header names the
caller, and admin rights come only from the header named by ``TRUSTED_PROXY_ADMIN_HEADER``
(none by default): the proxy sets those headers and strips any a client sent.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from starlette.requests import HTTPConnection

from chatsession._exceptions import AuthenticationError, ConfigError, InvalidUserId
from chatsession.settings import Settings
from chatsession.storage._paths import check_user_id

__all__ = ["Authenticator", "Identity", "check_bind", "is_loopback"]

logger = logging.getLogger("chatsession.web")

_HMAC = ("HS256", "HS384", "HS512")
# What a client is told about a token that does not verify; PyJWT's own text stays in the log.
_TOKEN_PROBLEMS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAudienceError, "the token is for another audience"),
    (jwt.InvalidIssuerError, "the token is from another issuer"),
    (jwt.MissingRequiredClaimError, "the token lacks a required claim (sub, exp)"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted"),
    (jwt.DecodeError, "the token is malformed"),
)
_PUBLIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "EdDSA")


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller."""

    user_id: str
    admin: bool = False


class Authenticator:
    """Turns a request's credentials into an `Identity`, or raises `AuthenticationError`."""

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.auth_mode
        self._trusted_proxy = settings.trusted_proxy
        self._admin_header = settings.trusted_proxy_admin_header.lower()
        self._audience = settings.jwt_audience or None
        self._issuer = settings.jwt_issuer or None
        self._admin_claim = settings.jwt_admin_claim
        self._key: Any = settings.jwt_secret or _public_key(settings.jwt_public_key)
        allowed = _HMAC if settings.jwt_secret else _PUBLIC
        default = ("HS256",) if settings.jwt_secret else ("RS256", "ES256")
        self._algorithms = list(settings.jwt_algorithms or default)
        if self.mode == "jwt":
            wrong = [a for a in self._algorithms if a not in allowed]
            if wrong:
                kind = "JWT_SECRET" if settings.jwt_secret else "JWT_PUBLIC_KEY"
                raise ConfigError(f"JWT_ALGORITHMS {', '.join(wrong)} cannot be used with {kind}")

    def identify(self, connection: HTTPConnection) -> Identity:
        if self.mode == "jwt":
            return self.verify(_token(connection))
        if self._trusted_proxy:
            return self._proxy_headers(connection)
        return self._trusted_header(connection)

    def verify(self, token: str | None) -> Identity:
        """The identity a JWT carries; `AuthenticationError` if it does not verify."""
        if not token:
            raise AuthenticationError("User not authenticated")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["sub", "exp"]},
            )
        except jwt.PyJWTError as exc:
            logger.info("refused a token: %s: %s", type(exc).__name__, exc)
            reason = next((r for kind, r in _TOKEN_PROBLEMS if isinstance(exc, kind)), None)
            raise AuthenticationError(
                f"User not authenticated: {reason or 'the token does not verify'}"
            ) from None
        return Identity(_user_id(claims["sub"]), _is_admin(claims.get(self._admin_claim)))

    @staticmethod
    def _trusted_header(connection: HTTPConnection) -> Identity:
        user_id = connection.headers.get("x-user-id") or connection.query_params.get("userId")
        if not user_id:
            raise AuthenticationError("User not authenticated")
        return Identity(_user_id(user_id), _has_admin_role(connection, "x-user-roles"))

    def _proxy_headers(self, connection: HTTPConnection) -> Identity:
        # Only what the proxy sets: a query parameter or a role header would come from the
        # client, straight through a proxy that does not know to strip them.
        user_id = connection.headers.get("x-user-id")
        if not user_id:
            raise AuthenticationError("User not authenticated")
        admin = bool(self._admin_header) and _has_admin_role(connection, self._admin_header)
        return Identity(_user_id(user_id), admin)


def _has_admin_role(connection: HTTPConnection, header: str) -> bool:
    roles = connection.headers.get(header, "")
    return "admin" in roles.replace(",", " ").split()


def _token(connection: HTTPConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return connection.query_params.get("token") or connection.cookies.get("token")


def _user_id(value: object) -> str:
    if not isinstance(value, str):
        raise AuthenticationError("User not authenticated: the user id must be a string")
    try:
        return check_user_id(value)
    except InvalidUserId as exc:
        raise AuthenticationError(f"User not authenticated: {exc}") from None


def _is_admin(claim: object) -> bool:
    if isinstance(claim, list):
        return "admin" in claim
    return claim is True or claim == "true"


def _public_key(value: str) -> str:
    if not value or value.lstrip().startswith("-----BEGIN"):
        return value
    try:
        return Path(value).read_text()
    except OSError as exc:
        raise ConfigError(f"JWT_PUBLIC_KEY: cannot read {value!r}: {exc.strerror}") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse development auth on a public address: anyone could claim any user id there."""
    if settings.auth_mode != "dev" or settings.trusted_proxy or is_loopback(settings.host):
        return
    raise ConfigError(
        f"refusing to listen on {settings.host} in development mode, where the x-user-id "
        "header is trusted and anyone could act as any user. Configure JWT authentication "
        "with JWT_SECRET (HS256) or JWT_PUBLIC_KEY (RS256/ES256), or, if an authenticating "
        "proxy in front of this server sets x-user-id, declare it with TRUSTED_PROXY=true "
        "(--trusted-proxy)."
    )

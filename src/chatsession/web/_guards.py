"""Checks made before any endpoint runs: which ``Host`` is served, and which pages may act.

Browsers are the weapon here. A page on another site can open a WebSocket to this server,
or send it a ``POST``, and the browser adds the user's ``token`` cookie; only the ``Origin``
header tells such a request apart. So a WebSocket handshake, an SSE channel
(``/chat-stream``), a ``POST`` or a ``DELETE`` that carries an ``Origin`` must come from
the server's own origin (its ``Host``), ``CORS_ORIGINS`` or ``ALLOWED_ORIGINS``; without
``Origin`` (curl, SDKs, servers) it is not a browser's and passes. A page can also make its
own name resolve to 127.0.0.1 (DNS rebinding) and reach a loopback server as "same
origin": the ``Host`` it sends is then its own name, so in development mode only loopback
``Host`` values are served, unless ``ALLOWED_HOSTS`` names others.
"""

from __future__ import annotations

import logging
from contextlib import suppress

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from chatsession.settings import Settings
from chatsession.web.auth import is_loopback

__all__ = ["RequestGuard", "deny_websocket"]

logger = logging.getLogger("chatsession.web")

# Requests that change what is stored; a browser sends them cross-site without asking.
_UNSAFE_METHODS = frozenset(("POST", "PUT", "PATCH", "DELETE"))
_CHANNEL_PATH = "/chat-stream"
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


class RequestGuard:
    """Refuses requests for a ``Host`` not served (400) and foreign-origin actions (403)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.hosts = tuple(host.lower() for host in settings.allowed_hosts)
        # Development mode trusts whoever reaches it, so only loopback names may reach it.
        self.loopback_only = not self.hosts and settings.auth_mode == "dev"
        self.loopback_only &= not settings.trusted_proxy
        named = (*settings.cors_origins, *settings.allowed_origins)
        self.origins = frozenset(origin.rstrip("/").lower() for origin in named)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not self._host_allowed(host):
            logger.info("refused a request for host %r", host)
            await _refuse(scope, receive, send, 400, "this server does not serve that host name")
            return
        origin = headers.get("origin")
        checked = scope["type"] == "websocket" or scope["method"] in _UNSAFE_METHODS
        # An SSE channel holds the user's session open, like a WebSocket.
        checked = checked or scope["path"].startswith(_CHANNEL_PATH)
        if checked and origin is not None and not self._origin_allowed(origin, host):
            logger.info("refused a %s from origin %r", _what(scope), origin)
            await _refuse(scope, receive, send, 403, "requests from this origin are not allowed")
            return
        await self.app(scope, receive, send)

    def _host_allowed(self, host: str) -> bool:
        if not host:
            return True  # HTTP/1.0 health checks send none; a browser always sends one
        name = _host_name(host.lower())
        if self.loopback_only:
            return is_loopback(name)
        if not self.hosts:
            return True
        return any(_host_matches(name, pattern) for pattern in self.hosts)

    def _origin_allowed(self, origin: str, host: str) -> bool:
        origin = origin.rstrip("/").lower()
        if origin in self.origins or "*" in self.origins:
            return True
        scheme, separator, authority = origin.partition("://")
        if not separator or scheme not in _DEFAULT_PORTS or not host:
            return False  # "null" (sandboxed frames, file: pages) is nobody's origin
        default = _DEFAULT_PORTS[scheme]
        return _with_port(authority, default) == _with_port(host.lower(), default)


def _host_name(host: str) -> str:
    """``host`` without its port: ``[::1]:8000`` → ``[::1]``, ``localhost:80`` → ``localhost``."""
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if ":" in host else host


def _host_matches(name: str, pattern: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern


def _with_port(authority: str, default: str) -> str:
    if authority.endswith("]") or ":" not in authority.rpartition("]")[2]:
        return f"{authority}:{default}"
    return authority


def _what(scope: Scope) -> str:
    return "WebSocket" if scope["type"] == "websocket" else str(scope["method"])


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    if scope["type"] == "websocket":
        await deny_websocket(WebSocket(scope, receive, send), status, message)
    else:
        await JSONResponse({"error": message}, status)(scope, receive, send)


async def deny_websocket(websocket: WebSocket, status: int, message: str) -> None:
    """Refuse a handshake with an HTTP status where the server supports that, else close it.

    Either way the handshake is completed, so the server logs nothing alarming.
    """
    with suppress(WebSocketDisconnect, OSError, RuntimeError):  # the client may be gone
        if websocket.client_state is not WebSocketState.CONNECTING:
            return
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(JSONResponse({"error": message}, status))
        else:
            await websocket.close(1008, message[:120])

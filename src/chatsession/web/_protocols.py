"""uvicorn's HTTP and WebSocket protocols with the bounds a public server needs.

uvicorn's httptools parser keeps an unfinished request line or header in memory however
long it grows, and waits for it however long it takes: one client can take hundreds of
megabytes, and a few thousand slow ones every file descriptor. `bounded_http_protocol`
answers 431 once the unfinished head passes ``MAX_HEADER_BYTES``, 408 when it takes longer
than ``HEADER_TIMEOUT``, and 503 to a connection past ``MAX_CONNECTIONS`` as soon as it
is made (uvicorn's ``limit_concurrency`` answers only once a request's head is in, and
not for WebSocket handshakes). httptools stays the parser, as uvicorn chooses it; the
bounds cost a counter and a timer per request.

`RefusingWebSocketProtocol` lets the app refuse a handshake with an HTTP response without
uvicorn logging "ASGI callable returned without completing handshake" as an ERROR.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["RefusingWebSocketProtocol", "bounded_http_protocol"]

# How long a refused client may go on sending before its connection is closed: closing with
# unread data resets the connection, and the client would never read the status.
_LINGER = 1.0
_REASONS = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def bounded_http_protocol(
    max_header_bytes: int, header_timeout: float, max_connections: int
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with these bounds (``max_connections`` 0: none)."""
    return type(
        "BoundedHttpToolsProtocol",
        (_BoundedHttpToolsProtocol,),
        {
            "max_header_bytes": max_header_bytes,
            "header_timeout": header_timeout,
            "max_connections": max_connections,
        },
    )


class _BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = 32768
    header_timeout = 10.0
    max_connections = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._reading_head = False
        self._awaiting_head = True  # no request head complete yet on this connection
        self._refused = False
        # A connection that sends nothing at all is timed out like one that stops halfway.
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.header_timeout, self._head_too_slow
        )
        if self.max_connections and len(self.connections) > self.max_connections:
            # Refused at once rather than when its head is in: a flood of connections that
            # never send one would otherwise hold a descriptor each until the timeout.
            self.logger.warning("Exceeded concurrency limit.")
            self._refuse(503, "too many connections")

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped until the connection closes
        if self._awaiting_head:
            # Counted before the parser sees it: httptools rejects an over-long request
            # line with its own plain 400, and would keep an unfinished one in memory.
            end = data.find(b"\r\n\r\n")
            head = len(data) if end < 0 else end + 4
            if self._head_bytes + head > self.max_header_bytes:
                self._refuse(431, f"request line and headers over {self.max_header_bytes} bytes")
                return
            if end >= 0:
                self._awaiting_head = False
            else:
                self._head_bytes += len(data)
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._awaiting_head = True  # a kept-alive connection's next request head
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._awaiting_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._refused:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is being written: no room for a status
            return
        self._refuse(408, f"request headers not received within {self.header_timeout:g} s")

    def _refuse(self, status: int, message: str) -> None:
        self._refused = True
        # No longer one of the connections served: it must not count against the cap.
        self.connections.discard(self)
        self._reading_head = False
        self._stop_head_timer()
        body = json.dumps({"error": message}).encode()  # the API's error shape
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, _REASONS[status], len(body), body)
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER, self.transport.close)


class RefusingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, where a handshake refused with a response is complete."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Wrapped once per connection rather than checking every send: sends are the hot path.
        app = self.app

        async def app_refusing_properly(scope: Any, receive: Any, send: Any) -> None:
            await app(scope, receive, send)
            if self.initial_response is not None and self.close_sent:
                # The handshake ended with an HTTP response; uvicorn would call it abandoned.
                self.handshake_complete = True

        self.app = app_refusing_properly

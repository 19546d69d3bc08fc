"""``/ws``: chat over a WebSocket, one connection of the user's session.

After the handshake the server sends ``{"type": "session", "sessionId": ...}``; each chat
frame is answered with ``response`` frames and ``done``. Bad frames get an ``error`` frame
and the connection stays usable. A frame over the hard protocol limit (four times
``MAX_MESSAGE_BYTES``) closes it with 1009. While a reply streams, the client going away
cancels it (its partial reply is stored marked interrupted). At shutdown the server closes
with 1001.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing, suppress
from typing import Any

from fastapi import APIRouter
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from chatsession._exceptions import ChatSessionError, RequestError
from chatsession._state import Connection
from chatsession.web._race import race
from chatsession.web._state import WebState, identify, requested_session_id, web_state
from chatsession.web.auth import Identity
from chatsession.web.protocol import ChatRequest, PingRequest, error_frame, parse_ws_frame
from chatsession.web.replies import reply_frames

__all__ = ["router"]

router = APIRouter()

# Close codes of a connection that ended on purpose; anything else ends the session as error.
_CLEAN_CLOSES = frozenset((1000, 1001, 1005))
GOING_AWAY = 1001
# Frames a client may send ahead while a reply streams; more are refused, not buffered.
_BACKLOG = 32
_BACKLOG_FULL = f"too many messages waiting for a reply (at most {_BACKLOG}); this one was dropped"


@router.websocket("/ws")
async def websocket_chat(websocket: WebSocket) -> None:
    web = web_state(websocket)
    try:
        identity = identify(websocket)
        if web.drain.closing:
            await _deny(websocket, 503, "the server is shutting down")
            return
        with web.slots.hold(identity.user_id), web.drain.track():
            session_id = requested_session_id(websocket)
            async with web.chat.connect(identity.user_id, session_id) as connection:
                await websocket.accept(headers=[(b"x-session-id", connection.session_id.encode())])
                await websocket.send_json({"type": "session", "sessionId": connection.session_id})
                await _Conversation(web, websocket, identity, connection).run()
    except RequestError as exc:
        await _deny(websocket, exc.status, str(exc))
    except ChatSessionError as exc:  # the server closed between the check and the connect
        await _deny(websocket, 503, str(exc))
    except (WebSocketDisconnect, OSError):
        pass  # gone during the handshake: the session machinery has already seen it fail


class _PeerGone(Exception):
    """Sending failed: the client is gone."""


async def _deny(websocket: WebSocket, status: int, message: str) -> None:
    """Refuse the handshake with an HTTP status, where the server supports that."""
    with suppress(WebSocketDisconnect, OSError, RuntimeError):  # the client may be gone
        if websocket.client_state is WebSocketState.CONNECTING and (
            "websocket.http.response" in websocket.scope.get("extensions", {})
        ):
            await websocket.send_denial_response(JSONResponse({"error": message}, status))
        else:
            await websocket.close(1008, message[:120])


class _Conversation:
    """One accepted WebSocket: a reader task fills the inbox; replies race its closing."""

    def __init__(
        self, web: WebState, websocket: WebSocket, identity: Identity, connection: Connection
    ) -> None:
        self.web = web
        self.websocket = websocket
        self.identity = identity
        self.connection = connection
        # Frames waiting while a reply streams; None means stop (peer gone, or shutdown).
        self.inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        # Resolved when the peer is gone: a future, so each reply races it without a task.
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        reader = asyncio.ensure_future(self._read())
        try:
            with self.web.drain.on_stop(self._stop):
                while (frame := await self.inbox.get()) is not None:
                    await self._handle(frame)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if self.web.drain.closing and not self.closed.done():
            await self._close(GOING_AWAY, "server shutting down")

    def _stop(self) -> None:
        self.inbox.put_nowait(None)

    def _gone(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    async def _read(self) -> None:
        # Sets `closed` when the peer is gone; being cancelled (we are closing) does not.
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    if message.get("code", 1000) not in _CLEAN_CLOSES:
                        self.connection.fail()
                    break
                data = message.get("text")
                if self.inbox.qsize() >= _BACKLOG:
                    with suppress(_PeerGone):
                        await self._send(error_frame(_BACKLOG_FULL, 429))
                    continue
                self.inbox.put_nowait(data if data is not None else message.get("bytes") or b"")
        except (WebSocketDisconnect, OSError, RuntimeError):
            self.connection.fail()
        self._gone()
        self._stop()

    async def _handle(self, data: str | bytes) -> None:
        with suppress(_PeerGone):
            await self._answer(data)

    async def _answer(self, data: str | bytes) -> None:
        try:
            request = parse_ws_frame(data, self.web.settings.max_message_bytes)
            if isinstance(request, PingRequest):
                await self._send({"type": "pong"})
                return
            # The reply races the client's going away: whichever ends first stops the other,
            # and a cancelled reply is stored as far as it got, marked interrupted.
            await race(self._reply(request), self.closed)
        except ChatSessionError as exc:
            await self._send(error_frame(exc))

    async def _reply(self, request: ChatRequest) -> None:
        frames = reply_frames(self.web, self.identity, request, "websocket")
        async with aclosing(frames):
            async for frame in frames:
                await self._send(frame)

    async def _send(self, frame: dict[str, Any]) -> None:
        try:
            await self.websocket.send_json(frame)
        except (WebSocketDisconnect, OSError, RuntimeError):
            # The peer is gone; the reader sees it too and ends the conversation.
            self._gone()
            raise _PeerGone from None

    async def _close(self, code: int, reason: str) -> None:
        with suppress(WebSocketDisconnect, OSError, RuntimeError):
            await self.websocket.close(code, reason)

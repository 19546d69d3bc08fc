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

from fastapi import APIRouter
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from chatsession._exceptions import ChatSessionError, RequestError
from chatsession._state import Connection
from chatsession.web._state import WebState, identify, requested_session_id, web_state
from chatsession.web.auth import Identity
from chatsession.web.protocol import (
    Frame,
    PingRequest,
    encode_frame,
    error_frame,
    parse_ws_frame,
)
from chatsession.web.replies import reply_frames

__all__ = ["router"]

router = APIRouter()

# Close codes of a connection that ended on purpose; anything else ends the session as error.
_CLEAN_CLOSES = frozenset((1000, 1001, 1005))
GOING_AWAY = 1001
# Frames a client may send ahead while a reply streams; more are refused, not buffered.
_BACKLOG = 32
_BACKLOG_FULL = f"too many messages waiting for a reply (at most {_BACKLOG}); this one was dropped"
_PONG: Frame = {"type": "pong"}


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
                await websocket.send_text(
                    encode_frame({"type": "session", "sessionId": connection.session_id})
                )
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
    """One accepted WebSocket: a reader task fills the inbox; the handler answers in order.

    The handler answers each frame in the connection's own task. When the reader finds the
    peer gone while a reply streams, it cancels that reply (and only that: the cancellation
    is taken back once the reply has stopped), so the model stops and the partial reply is
    stored marked interrupted.
    """

    def __init__(
        self, web: WebState, websocket: WebSocket, identity: Identity, connection: Connection
    ) -> None:
        self.web = web
        self.websocket = websocket
        self.identity = identity
        self.connection = connection
        # Frames waiting while a reply streams; None means stop (peer gone, or shutdown).
        self.inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.closed = False  # the peer is gone
        self._handler = asyncio.current_task()
        self._replying = False
        self._stopped_reply = False  # the reader cancelled the handler to stop a reply

    async def run(self) -> None:
        reader = asyncio.ensure_future(self._read())
        try:
            with self.web.drain.on_stop(self._stop):
                while (frame := await self.inbox.get()) is not None:
                    await self._handle(frame)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if self.web.drain.closing and not self.closed:
            await self._close(GOING_AWAY, "server shutting down")

    def _stop(self) -> None:
        self.inbox.put_nowait(None)

    async def _read(self) -> None:
        # Marks the peer gone when it is; being cancelled (we are closing) does not.
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
        self.closed = True
        if self._replying and self._handler is not None and not self._stopped_reply:
            self._stopped_reply = True
            self._handler.cancel()
        self._stop()

    async def _handle(self, data: str | bytes) -> None:
        try:
            await self._answer(data)
        except _PeerGone:
            pass
        except asyncio.CancelledError:
            # Stopped by the reader because the peer left; any other cancellation goes on.
            if self._stopped_reply and self._handler is not None and not self._handler.uncancel():
                self._stopped_reply = False
                return
            raise

    async def _answer(self, data: str | bytes) -> None:
        try:
            request = parse_ws_frame(data, self.web.settings.max_message_bytes)
            if isinstance(request, PingRequest):
                await self._send(_PONG)
                return
            if self.closed:
                return  # nobody to answer
            self._replying = True
            try:
                frames = reply_frames(self.web, self.identity, request, "websocket")
                async with aclosing(frames):
                    async for frame in frames:
                        await self._send(frame)
            finally:
                self._replying = False
        except ChatSessionError as exc:
            await self._send(error_frame(exc))

    async def _send(self, frame: Frame) -> None:
        try:
            await self.websocket.send({"type": "websocket.send", "text": encode_frame(frame)})
        except (WebSocketDisconnect, OSError, RuntimeError):
            # The peer is gone; the reader sees it too and ends the conversation.
            self.closed = True
            raise _PeerGone from None

    async def _close(self, code: int, reason: str) -> None:
        with suppress(WebSocketDisconnect, OSError, RuntimeError):
            await self.websocket.close(code, reason)

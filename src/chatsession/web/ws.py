"""``/ws``: chat over a WebSocket, one connection of the user's session.

After the handshake the server sends ``{"type": "session", "sessionId": ...}``; each chat
frame is answered with ``response`` frames and ``done``. Bad frames get an ``error`` frame
and the connection stays usable. ``{"type": "stop"}`` stops the reply that is streaming
(stored as far as it got, marked interrupted; no ``done`` follows). A frame over the hard
protocol limit (four times ``MAX_MESSAGE_BYTES``) closes it with 1009. While a reply
streams, the client going away cancels it (its partial reply is stored marked
interrupted). At shutdown the server closes with 1001. The user's session events reach
the socket as ``session_event`` frames (`forward_session_events`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import APIRouter
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from chatsession._exceptions import ChatSessionError, RequestError, StorageError
from chatsession._state import Connection
from chatsession.web._guards import deny_websocket
from chatsession.web._state import WebState, identify, web_state
from chatsession.web.auth import Identity
from chatsession.web.protocol import (
    Frame,
    PingRequest,
    StopRequest,
    client_message,
    encode_frame,
    error_frame,
    parse_ws_frame,
)
from chatsession.web.replies import reply_frames

__all__ = ["router"]

logger = logging.getLogger("chatsession.web")

router = APIRouter()

# Close codes of a connection that ended on purpose; anything else ends the session as error.
_CLEAN_CLOSES = frozenset((1000, 1001, 1005))
GOING_AWAY = 1001
# What uvicorn's own shutdown reports for the connections it closes ("service restart"):
# under a stock uvicorn (the app factory) this is the server stopping, not the user leaving.
SERVICE_RESTART = 1012
# Frames a client may send ahead while a reply streams; more are refused, not buffered.
_BACKLOG = 32
_BACKLOG_FULL = f"too many messages waiting for a reply (at most {_BACKLOG}); this one was dropped"
_PONG: Frame = {"type": "pong"}
# A reply still running after this long gets a reader task watching the peer meanwhile
# (long enough that a busy server's own queueing does not trip it for quick replies).
_WATCH_AFTER = 1.0


@router.websocket("/ws")
async def websocket_chat(websocket: WebSocket) -> None:
    web = web_state(websocket)
    try:
        identity = identify(websocket)
        if web.drain.closing:
            await deny_websocket(websocket, 503, "the server is shutting down")
            return
        with web.drain.track():
            async with web.chat.connect(identity.user_id) as connection:
                await websocket.accept(headers=[(b"x-session-id", connection.session_id.encode())])
                await websocket.send_text(
                    encode_frame({"type": "session", "sessionId": connection.session_id})
                )
                async with forward_session_events(web, websocket, identity.user_id):
                    await _Conversation(web, websocket, identity, connection).run()
    except RequestError as exc:
        await deny_websocket(websocket, exc.status, str(exc))
    except ChatSessionError as exc:  # the server closed between the check and the connect
        await deny_websocket(websocket, 503, client_message(exc))
    except (WebSocketDisconnect, OSError):
        pass  # gone during the handshake: the session machinery has already seen it fail


def session_events_channel(user_id: str) -> str:
    """The channel of only a user's session events, which the app publishes apart.

    Apart, so that a page's socket does not make every reply be published as well (replies
    go on the user's own channel only while an SSE stream listens there). A user id never
    holds a control character, so no user's own channel can have this name.
    """
    return f"session-events\x1f{user_id}"


@asynccontextmanager
async def forward_session_events(
    web: WebState, websocket: WebSocket, user_id: str
) -> AsyncIterator[None]:
    """Send the user's ``session_event`` frames (from `web.channels`) down this socket too.

    They are the events SSE streams get, so a page sees another tab of the user open, or
    the session end. Replies keep their own path; only session events pass here.
    """
    with web.channels.subscribe(session_events_channel(user_id)) as queue:

        async def forward() -> None:
            while True:
                frame = await queue.get()
                if frame.get("type") != "session_event":
                    continue
                try:
                    await websocket.send({"type": "websocket.send", "text": encode_frame(frame)})
                except (WebSocketDisconnect, OSError, RuntimeError):
                    return  # the peer is gone: the conversation notices it on its own

        task = asyncio.ensure_future(forward())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _is_stop(data: str | bytes, max_bytes: int) -> bool:
    """Whether a frame read while a reply streams asks to stop it (checked cheaply first)."""
    if not isinstance(data, str) or '"stop"' not in data:
        return False
    try:
        return isinstance(parse_ws_frame(data, max_bytes), StopRequest)
    except ChatSessionError:
        return False


class _PeerGone(Exception):
    """Sending failed: the client is gone."""


class _Conversation:
    """One accepted WebSocket, answered in order in the connection's own task.

    While idle, the handler reads the socket itself. A reply that takes longer than
    `_WATCH_AFTER` starts a reader task, which from then on reads for the handler (frames
    sent ahead wait in `inbox`) so that a peer that leaves, or stops answering pings, is
    noticed while a reply streams; a quick reply never needs one. When the peer is found
    gone while the handler answers a frame, or the server stops, the handler is
    interrupted: it is cancelled, and the cancellation is taken back once what it was
    doing has stopped (a cancelled reply is stored as far as it got, marked interrupted).
    """

    def __init__(
        self, web: WebState, websocket: WebSocket, identity: Identity, connection: Connection
    ) -> None:
        self.web = web
        self.websocket = websocket
        self.identity = identity
        self.connection = connection
        self.closed = False  # the peer is gone
        self.inbox: deque[str | bytes | None] = deque()  # None: stop
        self._inbox_waiter: asyncio.Future[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._handler = asyncio.current_task()
        self._reading = False  # the handler waits on the socket itself
        self._handling = False  # answering a frame: a reply, a pong or an error
        self._interrupted = False
        self._stopping = False
        self.restarting = False  # the ASGI server closed the connection as it stops

    async def run(self) -> None:
        try:
            with self.web.drain.on_stop(self._stop):
                while (data := await self._next()) is not None:
                    await self._handle(data)
        finally:
            if self._reader is not None:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)
        if self.web.drain.closing and not self.closed:
            async with self.web.drain.last_sends():
                await self._close(GOING_AWAY, "server shutting down")
        if self.restarting:  # before the connection closes, so it ends as shutdown
            await self.web.chat.end_user_session(self.identity.user_id, "shutdown")

    # -- receiving ----------------------------------------------------------------------

    async def _next(self) -> str | bytes | None:
        """The client's next frame; None once the client is gone or the server stops."""
        if self._stopping:
            return None
        if self._reader is not None:
            while not self.inbox:
                self._inbox_waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._inbox_waiter
                finally:
                    self._inbox_waiter = None
            return self.inbox.popleft()
        self._reading = True
        try:
            return self._accept(await self.websocket.receive())
        except asyncio.CancelledError:
            if self._taken_back():
                return None
            raise
        except (WebSocketDisconnect, OSError, RuntimeError):
            self._broken()
            return None
        finally:
            self._reading = False

    def _accept(self, message: Message) -> str | bytes | None:
        if message["type"] == "websocket.disconnect":
            code = message.get("code", 1000)
            if code == SERVICE_RESTART:
                self.restarting = True
            elif code not in _CLEAN_CLOSES:
                self.connection.fail()
            self.closed = True
            return None
        text: str | None = message.get("text")
        return text if text is not None else message.get("bytes") or b""

    def _broken(self) -> None:
        self.connection.fail()
        self.closed = True

    def _watch(self) -> None:
        """A reply is taking a while: read the socket in a task of its own from now on."""
        if self._reader is None and not self.closed:
            self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                data = self._accept(await self.websocket.receive())
                if data is None:
                    break
                if self._handling and _is_stop(data, self.web.settings.max_message_bytes):
                    self._interrupt()  # the reply is stored as far as it got, interrupted
                    continue
                if len(self.inbox) >= _BACKLOG:
                    with suppress(_PeerGone):
                        await self._send(error_frame(_BACKLOG_FULL, 429))
                    continue
                self._deliver(data)
        except (WebSocketDisconnect, OSError, RuntimeError):
            self._broken()
        except Exception:
            logger.exception("reading a WebSocket of %r failed", self.identity.user_id)
            self._broken()
        finally:
            # Gone, broken, or cancelled because the conversation ends: wake the handler.
            if self._handling:
                self._interrupt()
            self._deliver(None)

    def _deliver(self, data: str | bytes | None) -> None:
        self.inbox.append(data)
        waiter = self._inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _stop(self) -> None:
        """The server is shutting down: end the conversation."""
        self._stopping = True
        if self._reading or self._handling:
            self._interrupt()
        self._deliver(None)

    # -- interrupting -------------------------------------------------------------------

    def _interrupt(self) -> None:
        if not self._interrupted and self._handler is not None:
            self._interrupted = True
            self._handler.cancel()

    def _taken_back(self) -> bool:
        """On a cancellation: True if it was our interruption (now undone), else False."""
        if self._interrupted and self._handler is not None and not self._handler.uncancel():
            self._interrupted = False
            return True
        return False

    # -- answering ----------------------------------------------------------------------

    async def _handle(self, data: str | bytes) -> None:
        self._handling = True
        try:
            await self._answer(data)
        except _PeerGone:
            pass
        except asyncio.CancelledError:
            if not self._taken_back():
                raise
        finally:
            self._handling = False

    async def _answer(self, data: str | bytes) -> None:
        try:
            request = parse_ws_frame(data, self.web.settings.max_message_bytes)
            if isinstance(request, PingRequest):
                await self._send(_PONG)
                return
            if isinstance(request, StopRequest):
                return  # no reply is streaming: nothing to stop
            if self.closed:
                return  # nobody to answer
            watch = asyncio.get_running_loop().call_later(_WATCH_AFTER, self._watch)
            try:
                frames = reply_frames(self.web, self.identity, request, "websocket")
                try:
                    async for frame in frames:
                        await self._send(frame)
                except BaseException:
                    await frames.aclose()  # stops the model; the partial reply is stored
                    raise
            finally:
                watch.cancel()
        except ChatSessionError as exc:
            if isinstance(exc, StorageError):  # the client's frame does not say which file
                logger.error("a WebSocket chat of %r failed: %s", self.identity.user_id, exc)
            await self._send(error_frame(exc))

    async def _send(self, frame: Frame) -> None:
        try:
            await self.websocket.send({"type": "websocket.send", "text": encode_frame(frame)})
        except (WebSocketDisconnect, OSError, RuntimeError):
            self.closed = True  # the peer is gone
            raise _PeerGone from None

    async def _close(self, code: int, reason: str) -> None:
        with suppress(WebSocketDisconnect, OSError, RuntimeError):
            await self.websocket.close(code, reason)

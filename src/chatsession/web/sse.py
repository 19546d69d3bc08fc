"""Server-Sent Events: the response type, and the user's channel ``GET /chat-stream``.

`EventStream` is a small streaming response of our own rather than sse-starlette's
`EventSourceResponse`, whose body runs inside an anyio cancel scope: there cancellation is
level-triggered, so the awaits that store a cut-short reply and end a session would be
cancelled too. Events are encoded with sse-starlette's `ServerSentEvent`. The producer and
the disconnect watcher race explicitly (`race`); a shutdown ends the stream with a last
``shutdown`` frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager

from fastapi import APIRouter, Request
from sse_starlette import ServerSentEvent
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from chatsession._exceptions import ChatSessionError, PermissionDenied, RequestError
from chatsession.web._race import race
from chatsession.web._state import WebState, identify, web_state
from chatsession.web.auth import Identity
from chatsession.web.protocol import Frame, client_message

__all__ = ["EventStream", "router"]

router = APIRouter()

# Opens the stream's resources and yields (session id, frames); entered when the response runs.
Opener = Callable[[], AbstractAsyncContextManager[tuple[str, AsyncIterator[Frame]]]]


class EventStream(Response):
    """An SSE response whose frames come from ``open_stream``, with heartbeats."""

    media_type = "text/event-stream"

    def __init__(self, web: WebState, open_stream: Opener) -> None:
        super().__init__(media_type=self.media_type)
        self.web = web
        self.open_stream = open_stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with self.open_stream() as (session_id, frames):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"text/event-stream; charset=utf-8"),
                            (b"cache-control", b"no-store"),
                            (b"x-accel-buffering", b"no"),
                            (b"x-session-id", session_id.encode()),
                        ],
                    }
                )
                finished, _ = await race(
                    self._pump(frames, send), _disconnected(receive), self.web.drain.wait()
                )
                if not finished and self.web.drain.closing:
                    async with self.web.drain.last_sends():
                        await self._send(send, {"type": "shutdown"})
                        await _end_body(send)
                    return
        except RequestError as exc:
            await JSONResponse({"error": str(exc)}, exc.status)(scope, receive, send)
            return
        except ChatSessionError as exc:
            await JSONResponse({"error": client_message(exc)}, 503)(scope, receive, send)
            return
        await _end_body(send)

    async def _pump(self, frames: AsyncIterator[Frame], send: Send) -> None:
        # The next frame is awaited in a task of its own, so that a heartbeat falling due
        # only waits beside it: cancelling it would end the stream (and cut a reply short).
        interval = self.web.settings.heartbeat_interval
        upcoming: asyncio.Task[Frame] | None = None
        async with aclosing(frames):  # type: ignore[type-var]  # our generators have aclose
            try:
                while True:
                    if upcoming is None:
                        upcoming = asyncio.ensure_future(_next(frames))
                    done, _ = await asyncio.wait([upcoming], timeout=interval)
                    if not done:
                        await self._send(send, {"type": "heartbeat"})
                        continue
                    next_frame, upcoming = upcoming, None
                    try:
                        frame = next_frame.result()
                    except StopAsyncIteration:
                        return
                    await self._send(send, frame)
            finally:
                if upcoming is not None:
                    upcoming.cancel()
                    await asyncio.gather(upcoming, return_exceptions=True)

    @staticmethod
    async def _send(send: Send, frame: Frame) -> None:
        event = ServerSentEvent(data=json.dumps(frame), sep="\n")
        await send({"type": "http.response.body", "body": event.encode(), "more_body": True})


async def _next(frames: AsyncIterator[Frame]) -> Frame:
    return await anext(frames)


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _end_body(send: Send) -> None:
    with contextlib.suppress(OSError):  # the client may be gone already
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@router.get("/chat-stream")
async def chat_stream(request: Request) -> Response:
    """The caller's channel: their replies and session events, while the session lives."""
    return _channel(request, identify(request))


@router.get("/chat-stream/{user_id}")
async def chat_stream_of(request: Request, user_id: str) -> Response:
    """The guide's ``/chat-stream/:userId``; the id must be the caller's own."""
    identity = identify(request)
    if user_id != identity.user_id:
        raise PermissionDenied("this stream belongs to another user")
    return _channel(request, identity)


def _channel(request: Request, identity: Identity) -> Response:
    web = web_state(request)
    if web.drain.closing:
        return JSONResponse({"error": "the server is shutting down"}, 503)

    @asynccontextmanager
    async def open_channel() -> AsyncIterator[tuple[str, AsyncIterator[Frame]]]:
        with web.drain.track():
            async with web.chat.connect(identity.user_id, channel=True) as connection:
                with web.channels.subscribe(identity.user_id) as queue:

                    async def frames() -> AsyncGenerator[Frame, None]:
                        yield {"type": "session", "sessionId": connection.session_id}
                        while True:
                            yield await queue.get()

                    yield connection.session_id, frames()

    return EventStream(web, open_channel)

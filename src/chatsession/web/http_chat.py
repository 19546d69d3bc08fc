"""``POST /chat``: one message, the reply as JSON, or as SSE with ``Accept: text/event-stream``.

Plain HTTP holds no connection: the session it starts ends on inactivity or shutdown. A
client that goes away while its reply is produced cancels the model stream; the partial
reply is stored marked interrupted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from chatsession._exceptions import (
    ChatSessionError,
    ModelOutputError,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from chatsession.web._race import race
from chatsession.web._state import WebState, identify, web_state
from chatsession.web.auth import Identity
from chatsession.web.protocol import ChatRequest, Frame, error_frame, parse_chat_body
from chatsession.web.replies import reply_frames
from chatsession.web.sse import EventStream, Opener

__all__ = ["router"]

router = APIRouter()


@router.post("/chat")
async def chat(request: Request) -> Response:
    web = web_state(request)
    identity = identify(request)
    _require_json(request)
    body = await _read_body(request, web.settings.max_message_bytes, web.settings.header_timeout)
    chat_request = parse_chat_body(body, web.settings.max_message_bytes)
    info = await web.chat.start_user_session(identity.user_id)
    request.state.session_id = info.session_id
    if "text/event-stream" in request.headers.get("accept", ""):
        return EventStream(web, _reply_stream(web, identity, chat_request, info.session_id))
    finished, reply = await race(_collect(web, identity, chat_request), _disconnected(request))
    if not finished:
        return Response(status_code=499)  # nobody is listening; the reply is stored cut short
    assert reply is not None
    text, error = reply
    body_out: dict[str, Any] = {"response": text}
    if error is not None:
        body_out["error"] = error
    return JSONResponse(body_out, headers={"x-session-id": info.session_id})


async def _collect(
    web: WebState, identity: Identity, chat_request: ChatRequest
) -> tuple[str, str | None]:
    parts: list[str] = []
    frames = reply_frames(web, identity, chat_request, "http")
    try:
        async with aclosing(frames):
            async for frame in frames:
                if frame["type"] == "response":
                    parts.append(frame["content"])
    except ModelOutputError as exc:
        return "".join(parts), str(exc)
    return "".join(parts), None


def _reply_stream(
    web: WebState, identity: Identity, chat_request: ChatRequest, session_id: str
) -> Opener:
    @asynccontextmanager
    async def open_reply() -> AsyncIterator[tuple[str, AsyncIterator[Frame]]]:
        async def frames() -> AsyncGenerator[Frame, None]:
            replies = reply_frames(web, identity, chat_request, "http")
            try:
                async with aclosing(replies):
                    async for frame in replies:
                        yield frame
            except ChatSessionError as exc:
                yield error_frame(exc)

        yield session_id, frames()

    return open_reply


def _require_json(request: Request) -> None:
    # A form or text/plain body is what a page on another site can send without asking
    # the browser first (no CORS preflight); a JSON body it cannot.
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(
            f"send the message as JSON with content-type application/json, not {media_type!r}"
            if media_type
            else "send the message as JSON with content-type application/json"
        )


async def _read_body(request: Request, limit: int, within: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit}")
    body = bytearray()
    try:
        # A body trickled in a byte at a time would hold the connection as long as it liked.
        async with asyncio.timeout(within):
            async for part in request.stream():
                body += part
                if len(body) > limit:
                    raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {within:g} s") from None
    return bytes(body)


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return

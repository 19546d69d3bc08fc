"""One chat turn as frames, shared by every transport: rate limit, stream, publish, measure."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

from chatsession.web._state import WebState
from chatsession.web.auth import Identity
from chatsession.web.protocol import ChatRequest, Frame, chunk_frame

__all__ = ["reply_frames"]

_DONE: Frame = {"type": "done"}


async def reply_frames(
    web: WebState, identity: Identity, request: ChatRequest, transport: str
) -> AsyncGenerator[Frame, None]:
    """The reply to ``request`` as ``response``/``reasoning`` frames, then ``done``.

    Each frame is also published on the user's SSE channels, on every instance. Closing
    this iterator early closes the model stream, and the partial reply is stored marked
    interrupted. Errors of the core (`ChatSessionError`) propagate for the transport to
    report.
    """
    user_id = identity.user_id
    channels = web.channels
    chat = web.chat
    elsewhere = chat.registry.shared  # other instances may hold the user's channels
    web.metrics.messages.inc(transport)
    started = time.perf_counter()
    first = True
    stream = web.chat.chat_with_history(
        user_id,
        request.text,
        json_output=request.json_output,
        reasoning_enabled=request.reasoning_enabled,
    )
    try:
        async for chunk in stream:
            if first:
                web.metrics.first_chunk_seconds.observe(time.perf_counter() - started)
                first = False
            frame = chunk_frame(chunk)
            if channels.has_subscribers(user_id):
                channels.publish(user_id, frame)
            if elsewhere:
                chat.publish_elsewhere(user_id, frame)
            yield frame
    except BaseException:
        await stream.aclose()
        raise
    web.metrics.model_seconds.observe(time.perf_counter() - started)
    if channels.has_subscribers(user_id):
        channels.publish(user_id, _DONE)
    if elsewhere:
        chat.publish_elsewhere(user_id, _DONE)
    yield _DONE

"""The wire format: client messages parsed and checked, server frames built. No I/O here.

WebSocket client frames are JSON objects ``{"text": ..., "jsonOutput": bool,
"reasoningEnabled": bool}`` (``"type": "chat"`` may be given; ``{"type": "ping"}`` is
answered with ``{"type": "pong"}``). ``POST /chat`` bodies are ``{"message": ...,
"jsonOutput": bool, "reasoningEnabled": bool}``. Server frames are ``session``,
``response``, ``reasoning``, ``done``, ``error`` and, on the SSE channel, ``heartbeat``,
``session_event`` and ``shutdown``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeAlias

from chatsession._exceptions import (
    BadRequest,
    ChatSessionError,
    DialogNotFound,
    InvalidMessage,
    InvalidRequest,
    InvalidSessionId,
    InvalidUserId,
    ModelError,
    OwnershipLost,
    PayloadTooLarge,
    RegistryUnavailable,
    RequestError,
    ServerClosedError,
    StorageError,
    StorageFullError,
)
from chatsession.domain import Chunk, Reasoning, SessionEvent

__all__ = [
    "ChatRequest",
    "Frame",
    "PingRequest",
    "StopRequest",
    "chunk_frame",
    "client_message",
    "encode_frame",
    "error_frame",
    "event_frame",
    "parse_chat_body",
    "parse_ws_frame",
    "status_of",
]

# The HTTP status of each error of the core, most specific first; anything else is 500.
_STATUS: tuple[tuple[type[ChatSessionError], int], ...] = (
    (DialogNotFound, 404),
    (OwnershipLost, 409),
    (InvalidUserId, 400),
    (InvalidSessionId, 400),
    (InvalidMessage, 422),
    (StorageFullError, 507),
    (ServerClosedError, 503),
    (RegistryUnavailable, 503),
    (ModelError, 502),
)

# A frame as the server sends it: a JSON object with a "type".
Frame: TypeAlias = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat message from a client."""

    text: str
    json_output: bool = False
    reasoning_enabled: bool = False


@dataclass(frozen=True, slots=True)
class PingRequest:
    """An application-level ping (the WebSocket protocol has its own, too)."""


@dataclass(frozen=True, slots=True)
class StopRequest:
    """Stop the reply that is streaming, if any; it is stored as far as it got."""


def parse_ws_frame(data: str | bytes, max_bytes: int) -> ChatRequest | PingRequest | StopRequest:
    """A WebSocket frame as a request; raises a `RequestError` saying what is wrong."""
    document = _load(data, max_bytes)
    kind = document.get("type", "chat")
    if kind == "ping":
        return PingRequest()
    if kind == "stop":
        return StopRequest()
    if kind != "chat":
        raise BadRequest(
            f"unknown message type {kind!r}; send 'chat' (the default), 'ping' or 'stop'"
        )
    return _chat_request(document, "text")


def parse_chat_body(body: bytes, max_bytes: int) -> ChatRequest:
    """A ``POST /chat`` body as a request; raises a `RequestError` saying what is wrong."""
    return _chat_request(_load(body, max_bytes), "message")


def _load(data: str | bytes, max_bytes: int) -> dict[str, Any]:
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"message of {len(raw)} bytes is over the limit of {max_bytes}")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        # Thousands of nested brackets fit in a small frame and exhaust the parser's stack.
        raise BadRequest("malformed JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise InvalidRequest(f"expected a JSON object, got {type(document).__name__}")
    return document


def _chat_request(document: dict[str, Any], text_field: str) -> ChatRequest:
    text = document.get(text_field)
    if not isinstance(text, str):
        got = "nothing" if text is None else type(text).__name__
        raise InvalidRequest(f"'{text_field}' must be a string, got {got}")
    if not text.strip():
        raise InvalidRequest(f"'{text_field}' must not be empty")
    flags = []
    for name in ("jsonOutput", "reasoningEnabled"):
        value = document.get(name, False)
        if not isinstance(value, bool):
            raise InvalidRequest(f"'{name}' must be true or false, got {type(value).__name__}")
        flags.append(value)
    return ChatRequest(text, json_output=flags[0], reasoning_enabled=flags[1])


# Compact, and UTF-8 as it is: a frame is sent as text, so escaping is not needed.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_encode_string = json.encoder.encode_basestring  # a str as a JSON string, non-ASCII kept


def encode_frame(frame: Frame) -> str:
    """A frame as the text of a WebSocket message or an SSE event's data.

    Most frames hold only strings (``response`` chunks, ``done``), and those are written
    directly, which costs a fraction of a general JSON encoding; the rest go through one.
    """
    parts = []
    for key, value in frame.items():
        if type(value) is not str:
            return _encode(frame)
        parts.append(f"{_encode_string(key)}:{_encode_string(value)}")
    return "{" + ",".join(parts) + "}"


def chunk_frame(chunk: Chunk) -> Frame:
    if isinstance(chunk, Reasoning):
        return {"type": "reasoning", "content": chunk.text}
    return {"type": "response", "content": chunk}


def status_of(exc: ChatSessionError) -> int:
    """The HTTP status that reports ``exc`` to a client."""
    if isinstance(exc, RequestError):
        return exc.status
    return next((status for kind, status in _STATUS if isinstance(exc, kind)), 500)


def client_message(exc: BaseException) -> str:
    """What a client is told about ``exc``: storage errors name server paths, so not those.

    The log keeps the full message; the client learns what happened, not where.
    """
    if isinstance(exc, StorageFullError):
        return "the server's storage is full; nothing was stored"
    if isinstance(exc, StorageError) and not isinstance(exc, DialogNotFound):
        return "the server could not read or write this dialog"
    return str(exc)


def error_frame(exc: BaseException | str, status: int | None = None) -> Frame:
    message = exc if isinstance(exc, str) else client_message(exc)
    if status is None and isinstance(exc, ChatSessionError):
        status = status_of(exc)
    frame: Frame = {"type": "error", "message": message}
    if status is not None:
        frame["status"] = status
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        frame["retryAfter"] = retry_after
    return frame


def event_frame(event: SessionEvent) -> Frame:
    """A session event as the frame connections receive, here or on another instance."""
    return event.as_frame()

"""The vocabulary shared by chatsession's modules: aliases and small protocols."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeAlias

Role: TypeAlias = Literal["system", "user", "assistant"]

EndReason: TypeAlias = Literal["timeout", "disconnect", "error", "shutdown", "manual", "recovered"]
END_REASONS: frozenset[str] = frozenset(
    ("timeout", "disconnect", "error", "shutdown", "manual", "recovered")
)

EventName: TypeAlias = Literal["session_started", "session_ended", "session_event", "user_frame"]
EVENT_NAMES: frozenset[str] = frozenset(
    ("session_started", "session_ended", "session_event", "user_frame")
)

# A handler may be a plain function or a coroutine function; its result is ignored.
EventHandler: TypeAlias = Callable[..., Awaitable[Any] | Any]

Durability: TypeAlias = Literal["always", "batch", "never"]
DURABILITY_MODES: tuple[str, ...] = ("always", "batch", "never")

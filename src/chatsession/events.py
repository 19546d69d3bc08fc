"""Session events: ``session_started``, ``session_ended`` and ``session_event``.

Handlers may be plain functions or coroutine functions. A plain handler runs at once; a
coroutine handler runs as a task owned by the server, so a slow handler never holds up the
session machinery. Either way a handler that raises is logged and forgotten.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from chatsession._types import EVENT_NAMES, EventHandler

__all__ = ["EventEmitter"]

logger = logging.getLogger("chatsession.events")

Spawn = Callable[[Coroutine[Any, Any, Any]], object]


class EventEmitter:
    """Holds handlers by event name and calls them, isolating their failures."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[EventHandler]] = {name: [] for name in EVENT_NAMES}
        self._spawn: Spawn | None = None

    def on(self, event: str, handler: EventHandler) -> EventHandler:
        """Call ``handler`` on ``event``; returns the handler, so it can be a decorator."""
        self._handlers_for(event).append(handler)
        return handler

    def off(self, event: str, handler: EventHandler) -> None:
        """Stop calling ``handler`` on ``event``."""
        handlers = self._handlers_for(event)
        if handler in handlers:
            handlers.remove(handler)

    def bind(self, spawn: Spawn | None) -> None:
        """Run coroutine handlers with ``spawn`` (None: close them, unrun, with a warning)."""
        self._spawn = spawn

    def has_handlers(self, event: str) -> bool:
        return bool(self._handlers[event])

    def emit(self, event: str, *args: Any) -> None:
        # A copy: a handler may remove itself (or others) while this runs.
        for handler in tuple(self._handlers[event]):
            try:
                result = handler(*args)
            except Exception:
                logger.exception("%s handler %r failed", event, handler)
                continue
            if inspect.isawaitable(result):
                self._run(event, handler, result)

    def _run(self, event: str, handler: EventHandler, awaitable: Any) -> None:
        coroutine = _guarded(event, handler, awaitable)
        try:
            if self._spawn is None:
                raise RuntimeError("the server is closed")
            self._spawn(coroutine)
        except Exception as exc:
            coroutine.close()
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            logger.warning("%s handler %r not run: %s", event, handler, exc)

    def _handlers_for(self, event: str) -> list[EventHandler]:
        try:
            return self._handlers[event]
        except KeyError:
            known = ", ".join(sorted(EVENT_NAMES))
            raise ValueError(f"unknown event {event!r}; the events are {known}") from None


async def _guarded(event: str, handler: EventHandler, awaitable: Any) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("%s handler %r failed", event, handler)

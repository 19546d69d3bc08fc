"""Per-user limits: chat messages per minute, and open connections."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from chatsession._exceptions import TooManyRequests

__all__ = ["ConnectionSlots", "RateLimiter"]

_WINDOW = 60.0


class RateLimiter:
    """At most ``per_minute`` messages per user in any sliding minute (0: unlimited)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._sent: dict[str, deque[float]] = {}

    def check(self, user_id: str) -> None:
        """Count one message of ``user_id``; `TooManyRequests` if it is over the limit."""
        if not self.per_minute:
            return
        now = time.monotonic()
        sent = self._sent.setdefault(user_id, deque())
        while sent and sent[0] <= now - _WINDOW:
            sent.popleft()
        if len(sent) >= self.per_minute:
            retry = max(1, round(sent[0] + _WINDOW - now))
            raise TooManyRequests(
                f"too many messages: the limit is {self.per_minute} a minute; "
                f"try again in {retry} s"
            )
        sent.append(now)
        if len(self._sent) > 10_000:
            self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        for user_id in [u for u, s in self._sent.items() if not s or s[-1] <= now - _WINDOW]:
            del self._sent[user_id]


class ConnectionSlots:
    """At most ``per_user`` open WebSocket and SSE connections per user."""

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._open: dict[str, int] = {}

    @contextmanager
    def hold(self, user_id: str) -> Iterator[None]:
        """Hold one slot of ``user_id`` for the block; `TooManyRequests` if none is free."""
        count = self._open.get(user_id, 0)
        if count >= self.per_user:
            raise TooManyRequests(
                f"too many connections: the limit is {self.per_user} open at once per user"
            )
        self._open[user_id] = count + 1
        try:
            yield
        finally:
            remaining = self._open[user_id] - 1
            if remaining:
                self._open[user_id] = remaining
            else:
                del self._open[user_id]

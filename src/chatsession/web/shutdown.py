"""Graceful shutdown, read top-down: what happens on SIGTERM or SIGINT, in order.

1. **Stop accepting** (`ChatUvicornServer.shutdown`): the listening sockets close, and
   ``/health`` answers 503 ``shutting_down``, so a load balancer sends nobody new.
2. **End what ends with this instance** (`Drain.run` → `ChatServer.aclose`): replies in
   flight get ``SHUTDOWN_GRACE`` seconds; every session this instance owns is archived as
   ``shutdown``, except one with connections on another instance, which is handed over and
   goes on there; then the instance leaves the cluster and flushes its store.
3. **Close the connections**: every WebSocket gets close code 1001 ("going away"), every
   SSE stream a last ``shutdown`` frame. Sessions were archived before, so their end reason
   is ``shutdown`` and not ``disconnect``. They get a deadline: a client that stops reading
   would hold a last send forever, and the process with it, so the server cuts whatever is
   still open then (which ends the sends waiting on it), and the app's own last sends stop
   there too.
4. **uvicorn's own shutdown**: the lifespan exits; the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatsession.chatserver import ChatServer

__all__ = ["Drain"]

logger = logging.getLogger("chatsession.web")

# How long connections cut at the deadline get to unwind before shutdown moves on.
_AFTER_CUT = 0.5


class Drain:
    """The app's shutdown switch: connections watch it, the server throws it."""

    def __init__(self) -> None:
        self._closing = False
        self._chat: ChatServer | None = None
        self._stop: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._open = 0
        self._watchers: set[Callable[[], None]] = set()
        self._deadline: float | None = None  # loop time by which connections must be gone

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def open_connections(self) -> int:
        """WebSocket and SSE connections open now."""
        return self._open

    def attach(self, chat: ChatServer | None) -> None:
        """The running ChatServer to close first (the app's lifespan hands it over)."""
        self._chat = chat

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count one long-lived connection (WebSocket or SSE) for the block."""
        self._open += 1
        self._events()[1].clear()
        try:
            yield
        finally:
            self._open -= 1
            if not self._open:
                self._events()[1].set()

    @contextmanager
    def on_stop(self, callback: Callable[[], None]) -> Iterator[None]:
        """Call ``callback`` when connections are to end, if that happens within the block."""
        if self._stop is not None and self._stop.is_set():
            callback()
        self._watchers.add(callback)
        try:
            yield
        finally:
            self._watchers.discard(callback)

    async def wait(self) -> None:
        """Return when connections are to end."""
        await self._events()[0].wait()

    @asynccontextmanager
    async def last_sends(self) -> AsyncIterator[None]:
        """Bound the block by the shutdown deadline; past it, the block just ends.

        For the last frames sent to a client at shutdown, which may have stopped reading.
        """
        if self._deadline is None:
            yield
            return
        try:
            # Just after the server's cut, which ends these sends more gently.
            async with asyncio.timeout_at(self._deadline + _AFTER_CUT / 2):
                yield
        except TimeoutError:
            logger.debug("a client did not take its last frames before the deadline")

    async def run(self, close_grace: float, cut: Callable[[], None] | None = None) -> None:
        """Archive every session, then end every connection, waiting ``close_grace`` at most.

        ``cut`` is called when ``close_grace`` has passed, to drop the connections still open.
        """
        self._closing = True
        stop, idle = self._events()
        if self._chat is not None:
            # Not cut short: the core bounds replies in flight by SHUTDOWN_GRACE itself, and
            # an archival interrupted halfway would be worse than a late exit.
            try:
                await self._chat.aclose()
            except Exception:  # still close the connections and let the process exit
                logger.exception("archiving sessions at shutdown failed")
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + close_grace
        if cut is not None:
            loop.call_at(self._deadline, cut)
        stop.set()
        for callback in list(self._watchers):
            callback()
        if self._open:
            try:
                # A little past the deadline: the cut there ends the sends still waiting.
                await asyncio.wait_for(idle.wait(), timeout=close_grace + _AFTER_CUT)
            except TimeoutError:
                logger.warning("%d connections did not close in time", self._open)

    def _events(self) -> tuple[asyncio.Event, asyncio.Event]:
        # Made on first use, inside the server's event loop.
        if self._stop is None or self._idle is None:
            self._stop = asyncio.Event()
            self._idle = asyncio.Event()
            self._idle.set()
        return self._stop, self._idle

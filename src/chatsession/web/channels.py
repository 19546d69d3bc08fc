"""Each user's SSE channels: what is published for a user reaches every open stream of theirs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from chatsession.web.protocol import Frame

__all__ = ["Channels"]

logger = logging.getLogger("chatsession.web")


class Channels:
    """Per-user queues of frames. A slow reader loses its oldest frames, never blocks others."""

    def __init__(self, backlog: int = 1024) -> None:
        self._backlog = backlog
        self._queues: dict[str, set[asyncio.Queue[Frame]]] = {}

    @contextmanager
    def subscribe(self, user_id: str) -> Iterator[asyncio.Queue[Frame]]:
        queue: asyncio.Queue[Frame] = asyncio.Queue(self._backlog)
        self._queues.setdefault(user_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._queues.get(user_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._queues[user_id]

    def has_subscribers(self, user_id: str) -> bool:
        return user_id in self._queues

    def publish(self, user_id: str, frame: Frame) -> None:
        for queue in self._queues.get(user_id, ()):
            if queue.full():
                queue.get_nowait()
                logger.warning("an SSE stream of %r is not keeping up; dropped a frame", user_id)
            queue.put_nowait(frame)

"""One chat turn: the task that runs it, and the outbox its chunks travel by.

A turn runs as a task the session manager owns. Its chunks wait in the turn's outbox until
the caller takes them; the caller takes whatever has arrived at once, and consecutive
chunks of one kind are joined, so a caller that falls behind gets fewer, larger chunks (a
WebSocket sends fewer frames) while one that keeps up still sees each chunk as soon as it
exists.

Stopping a turn is deferred while it stores a message: a write and the bookkeeping that
records it are never split by a cancellation.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

from chatsession.domain import Chunk, Reasoning

__all__ = ["Turn", "TurnEnd"]


@dataclass(slots=True)
class TurnEnd:
    """The last item of a turn: how it ended."""

    error: BaseException | None = None


class Turn:
    """A chat turn's task, its outbox, and its deferred cancellation."""

    __slots__ = ("_cancel_wanted", "_guards", "_items", "_waiter", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self._items: deque[Chunk | TurnEnd] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._guards = 0
        self._cancel_wanted = False

    # -- the turn's side ---------------------------------------------------------------

    def put(self, item: Chunk | TurnEnd) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def guard(self) -> None:
        """Until the matching `unguard`, `cancel` waits: the turn is storing a message."""
        self._guards += 1

    def unguard(self) -> None:
        self._guards -= 1
        if not self._guards and self._cancel_wanted:
            self._cancel_wanted = False
            self.cancel()

    def cancel(self) -> None:
        """Stop the turn now, or as soon as the message it is storing is stored."""
        if self._guards:
            self._cancel_wanted = True
        elif self.task is not None:
            self.task.cancel()

    # -- the caller's side -------------------------------------------------------------

    async def arrival(self) -> None:
        """Wait until the outbox holds something."""
        if self._items:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def take(self) -> tuple[list[Chunk], TurnEnd | None]:
        """Everything that has arrived, runs of one kind joined; and the end, if reached."""
        items = self._items
        if len(items) == 1:  # keeping up: one item at a time, as it comes
            item = items.popleft()
            if isinstance(item, TurnEnd):
                return [], item
            return [item], None
        chunks: list[Chunk] = []
        answer: list[str] = []
        thinking: list[str] = []
        while items:
            item = items.popleft()
            if isinstance(item, str):
                if thinking:
                    chunks.append(Reasoning("".join(thinking)))
                    thinking.clear()
                answer.append(item)
            elif isinstance(item, Reasoning):
                if answer:
                    chunks.append("".join(answer))
                    answer.clear()
                thinking.append(item.text)
            else:
                _join(chunks, answer, thinking)
                return chunks, item
        _join(chunks, answer, thinking)
        return chunks, None


def _join(chunks: list[Chunk], answer: list[str], thinking: list[str]) -> None:
    if thinking:
        chunks.append(Reasoning("".join(thinking)))
    if answer:
        chunks.append("".join(answer))

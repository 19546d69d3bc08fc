"""One chat turn: the task that runs it, and the channel its chunks travel by.

A turn runs as a task the session manager owns. Its chunks go to the caller through a
`Replies` channel; the caller takes whatever has arrived at once, and consecutive chunks of
one kind are joined, so a caller that falls behind gets fewer, larger chunks (a WebSocket
sends fewer frames) while one that keeps up still sees each chunk as soon as it exists.

Stopping a turn is deferred while it stores a message: a write and the bookkeeping that
records it are never split by a cancellation.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
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

    @contextmanager
    def guarded(self) -> Iterator[None]:
        """While inside, `cancel` waits: the turn is storing a message."""
        self._guards += 1
        try:
            yield
        finally:
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

    async def chunks(self) -> AsyncGenerator[Chunk, None]:
        """The reply as it arrives, joining what has piled up; raises the turn's error."""
        while True:
            while not self._items:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            batch = list(self._items)
            self._items.clear()
            answer: list[str] = []
            thinking: list[str] = []
            for item in batch:
                if isinstance(item, TurnEnd):
                    for joined in _joined(answer, thinking):
                        yield joined
                    if item.error is not None:
                        raise item.error
                    return
                if isinstance(item, Reasoning):
                    if answer:
                        yield "".join(answer)
                        answer.clear()
                    thinking.append(item.text)
                else:
                    if thinking:
                        yield Reasoning("".join(thinking))
                        thinking.clear()
                    answer.append(item)
            for joined in _joined(answer, thinking):
                yield joined


def _joined(answer: list[str], thinking: list[str]) -> Iterator[Chunk]:
    if thinking:
        yield Reasoning("".join(thinking))
    if answer:
        yield "".join(answer)

"""Chat turns: store the user's message, stream the model's reply, store the reply.

A turn runs as a task the session manager owns, not in the caller's task: it holds the
user's lock, owns the session (claiming it from another instance if need be), counts the
message against the rate limit, stores both messages and hands chunks to the caller
through an outbox (`chatsession._turns.Turn`). A caller that stops reading, or calls into
the manager between chunks, therefore never holds the lock, and shutdown can cancel every
turn still running once its grace period is over.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from chatsession._exceptions import (
    ChatSessionError,
    FencedOff,
    InvalidMessage,
    ModelError,
    ModelOutputError,
    OwnershipLost,
    ServerClosedError,
)
from chatsession._state import Session
from chatsession._turns import Turn, TurnEnd
from chatsession.domain import Chunk, Message, Reasoning
from chatsession.storage._paths import check_user_id

if TYPE_CHECKING:
    from chatsession.sessions import SessionManager

__all__ = ["Turns"]

logger = logging.getLogger("chatsession.sessions")


class Turns:
    """The chat turns of one session manager, and the tasks that run them."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager
        self._tasks: dict[asyncio.Task[None], Turn] = {}

    @property
    def running(self) -> int:
        return len(self._tasks)

    def cancel_all(self) -> None:
        for turn in list(self._tasks.values()):
            turn.cancel()

    async def wait_all(self, *, limit: float | None) -> None:
        """Wait for every turn to end; past ``limit`` seconds, log and wait for the rest."""
        if not self._tasks:
            return
        _, stuck = await asyncio.wait(list(self._tasks), timeout=limit)
        if stuck:
            logger.error("waiting for %d replies that are slow to stop", len(stuck))
            await asyncio.wait(stuck)

    async def chat(
        self, user_id: str, text: str, *, json_output: bool = False, reasoning_enabled: bool = False
    ) -> AsyncGenerator[Chunk, None]:
        """Store ``text``, stream the model's reply, store the reply; see ChatServer."""
        check_user_id(user_id)
        _check_text(text)
        if self.manager._spawn is None:
            raise ServerClosedError("The ChatServer is not running.")
        turn = Turn()
        # The turns are owned here (`_tasks`; shutdown waits for them, then cancels them):
        # one task per message, with no other bookkeeping.
        task = turn.task = asyncio.ensure_future(
            self._turn(turn, user_id, text, json_output, reasoning_enabled)
        )
        self._tasks[task] = turn
        task.add_done_callback(self._turn_done)
        try:
            while True:
                await turn.arrival()
                chunks, end = turn.take()
                for chunk in chunks:
                    yield chunk
                if end is not None:
                    if end.error is not None:
                        raise end.error
                    return
        finally:
            if not task.done():
                # The caller left mid-reply: stop the model, and let the partial reply be
                # stored before the caller goes on.
                turn.cancel()
                await asyncio.wait([task])

    def _turn_done(self, task: asyncio.Task[None]) -> None:
        turn = self._tasks.pop(task)
        if task.cancelled():  # by shutdown, perhaps before it ever ran
            turn.put(TurnEnd(ServerClosedError("The server shut down before the reply finished.")))

    async def _turn(
        self, turn: Turn, user_id: str, text: str, json_output: bool, reasoning: bool
    ) -> None:
        manager = self.manager
        error: BaseException | None = None
        try:
            async with manager._locked(user_id):
                if manager._closing:
                    raise ServerClosedError("Cannot chat: the server is shutting down.")
                session = await self._begin(user_id)
                try:
                    await self._store(turn, session, Message("user", text))
                    await self._reply(turn, session, json_output, reasoning)
                except FencedOff:
                    await manager.drop_fenced(session)
                    raise
        except Exception as exc:
            error = exc
        turn.put(TurnEnd(error))

    async def _begin(self, user_id: str) -> Session:
        """The user's session, owned here, with this message counted and its activity noted."""
        manager = self.manager
        for attempt in (1, 2):
            session = manager._sessions.get(user_id)  # owned here: the common case
            if session is None:
                session = await manager._own(user_id, None, create=True)
                assert session is not None
            try:
                route = await manager.registry.begin_turn(user_id, manager.rate_limit)
            except OwnershipLost:
                # Taken by another instance meanwhile (this one was taken for dead): forget
                # what is cached here and claim it again.
                manager.store.forget(user_id)
                manager._forget(session)
                if attempt == 2:
                    raise
                continue
            if manager._routes.get(user_id) is not route:  # the same object while unchanged
                manager.note_route(user_id, route)
            return session
        raise AssertionError("unreachable")

    async def _reply(
        self, turn: Turn, session: Session, json_output: bool, reasoning: bool
    ) -> None:
        """Stream the model's reply into ``turn``, then store it (partial, if cut short)."""
        manager = self.manager
        answer: list[str] = []
        thinking: list[str] = []
        finished = False
        error: str | None = None
        # The model reads the dialog itself, not a copy: copying would make each turn cost
        # more as the dialog grows. Nothing changes it until the reply is stored.
        history = session.messages or []
        stream = manager.model.stream(history, json_output=json_output, reasoning_enabled=reasoning)
        check_writable, user_id, epoch = (
            manager.registry.check_writable,
            session.user_id,
            session.epoch,
        )
        try:
            try:
                async for chunk in stream:
                    # A reply this instance could no longer store is not sent on either (it
                    # was paused past its lease, or the session was taken over meanwhile).
                    check_writable(user_id, epoch)
                    if isinstance(chunk, Reasoning):
                        thinking.append(chunk.text)
                    else:
                        answer.append(chunk)
                    turn.put(chunk)
                    manager._touch(session)
            except BaseException:
                # Stopped midway: let the model release what it holds. (A stream that ran
                # to its end has closed itself.)
                close = getattr(stream, "aclose", None)
                if close is not None:
                    await close()
                raise
            finished = True
            if json_output:
                error = _json_error("".join(answer))
        except ChatSessionError:
            raise
        except Exception as exc:
            raise ModelError(f"the chat model failed: {exc}") from exc
        finally:
            if answer or thinking or finished:
                reply = Message(
                    "assistant",
                    _storable("".join(answer)),
                    interrupted=not finished,
                    reasoning=_storable("".join(thinking)) if thinking else None,
                    error=error,
                )
                await self._store(turn, session, reply)
        if error is not None:
            raise ModelOutputError(f"the model was asked for JSON but its reply is {error}")

    async def _store(self, turn: Turn, session: Session, message: Message) -> None:
        """Store ``message`` and remember it, as one step; only a stored one is remembered."""
        manager = self.manager
        registry, user_id, epoch = manager.registry, session.user_id, session.epoch
        # Right before the write: this instance still owns the user at the epoch the turn
        # began with, and its lease is fresh. The store checks the epoch again itself.
        registry.check_writable(user_id, epoch)
        turn.guard()
        try:
            messages = session.messages
            await manager.store.append(
                user_id,
                session.session_id,
                session.started_at,
                message,
                first=messages is None,
                epoch=epoch,
            )
            if messages is None:
                messages = session.messages = []
            messages.append(message)
            manager._touch(session)
            # And after it: a write that outlasted the lease (the process was paused while
            # writing) is not acknowledged.
            registry.check_writable(user_id, epoch)
        finally:
            turn.unguard()


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise InvalidMessage(f"a message must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessage(
            "a message must be valid Unicode text (it has a lone surrogate)"
        ) from None


def _storable(text: str) -> str:
    """Model output as UTF-8 can store it: a stray surrogate becomes U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def _json_error(text: str) -> str | None:
    """None if ``text`` is a JSON document, else why it is not."""
    try:
        json.loads(text)
    except ValueError as exc:
        return f"not valid JSON ({exc})"
    return None

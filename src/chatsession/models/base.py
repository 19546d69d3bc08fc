"""The `ChatModel` contract: what the session core needs from a language model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from chatsession.domain import Chunk, Message

__all__ = ["ChatModel"]


class ChatModel(Protocol):
    """Streams a reply to a conversation.

    ``stream`` receives the history to answer, oldest first, ending with the user's new
    message (the live dialog: read it, do not keep or change it), and yields the reply as
    `Chunk` values: ``str`` for the answer, `Reasoning`
    for the model's thinking (only when ``reasoning_enabled``). Messages' ``reasoning`` is
    never to be sent back to the model. Errors are raised as `ModelError`. Closing the
    iterator early (``aclose``) must stop the generation.
    """

    name: str

    def stream(
        self, messages: Sequence[Message], *, json_output: bool, reasoning_enabled: bool
    ) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...

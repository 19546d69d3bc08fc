"""A deterministic model that answers with the user's own words: for tests and benchmarks."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence

from chatsession._exceptions import ModelError
from chatsession.domain import Chunk, Message, Reasoning

__all__ = ["EchoModel"]

_WORDS = re.compile(r"\S+\s*|\s+")


class EchoModel:
    """Replies ``echo: <last user message>``, one word a chunk.

    With ``json_output`` the reply is ``{"echo": "<message>"}``; with ``reasoning_enabled``
    one `Reasoning` chunk comes first.

    Args:
        delay: Seconds to wait before each chunk, to stand in for a slow model.
        fail_after: Raise `ModelError` after this many chunks, to stand in for a model that
            breaks midway.
    """

    name = "echo"

    def __init__(self, *, delay: float = 0.0, fail_after: int | None = None) -> None:
        self.delay = delay
        self.fail_after = fail_after

    async def stream(
        self, messages: Sequence[Message], *, json_output: bool, reasoning_enabled: bool
    ) -> AsyncIterator[Chunk]:
        text = next((m.content for m in reversed(messages) if m.role == "user"), "")
        reply = json.dumps({"echo": text}) if json_output else f"echo: {text}"
        if reasoning_enabled:
            yield Reasoning(f"The user wrote {len(text)} characters; echo them.")
        for count, chunk in enumerate(_WORDS.findall(reply)):
            if self.fail_after is not None and count >= self.fail_after:
                raise ModelError(f"echo model failed after {count} chunks, as configured")
            if self.delay:
                await asyncio.sleep(self.delay)
            yield chunk

    async def aclose(self) -> None:
        pass

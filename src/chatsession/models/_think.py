"""Splits ``<think>…</think>`` blocks out of a streamed reply, as `Reasoning` chunks.

Models such as DeepSeek-R1 and Qwen3 write their reasoning inline between these tags when
the server does not separate it. A tag may arrive cut across two chunks, so the end of a
chunk that could begin a tag is held back until the next one shows what it is.
"""

from __future__ import annotations

from chatsession.domain import Chunk, Reasoning

__all__ = ["ThinkSplitter"]

_OPEN = "<think>"
_CLOSE = "</think>"


class ThinkSplitter:
    """Feed it the answer's text as it streams; it returns answer and reasoning chunks."""

    def __init__(self) -> None:
        self._pending = ""
        self._thinking = False
        self._after_thought = False  # strip the blank line a model puts after </think>

    def feed(self, text: str) -> list[Chunk]:
        """The chunks ``text`` completes; a possible partial tag is held back."""
        self._pending += text
        chunks: list[Chunk] = []
        while True:
            tag = _CLOSE if self._thinking else _OPEN
            found = self._pending.find(tag)
            if found >= 0:
                self._emit(self._pending[:found], chunks)
                self._pending = self._pending[found + len(tag) :]
                self._thinking = not self._thinking
                self._after_thought = not self._thinking
                continue
            held = _partial_tag_length(self._pending, tag)
            self._emit(self._pending[: len(self._pending) - held], chunks)
            self._pending = self._pending[len(self._pending) - held :]
            return chunks

    def flush(self) -> list[Chunk]:
        """What is held back, at the end of the stream."""
        chunks: list[Chunk] = []
        self._emit(self._pending, chunks)
        self._pending = ""
        return chunks

    def _emit(self, text: str, chunks: list[Chunk]) -> None:
        if self._thinking:
            if text:
                chunks.append(Reasoning(text))
            return
        if self._after_thought:
            text = text.lstrip()
            if not text:
                return
            self._after_thought = False
        if text:
            chunks.append(text)


def _partial_tag_length(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that is a beginning of ``tag``."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0

"""<think> blocks are split out of a streamed reply as Reasoning, however chunks fall."""

from __future__ import annotations

import pytest

from chatsession import Reasoning
from chatsession.domain import Chunk
from chatsession.models._think import ThinkSplitter


def split(chunks: list[str]) -> list[Chunk]:
    splitter = ThinkSplitter()
    out: list[Chunk] = []
    for chunk in chunks:
        out.extend(splitter.feed(chunk))
    out.extend(splitter.flush())
    return out


def joined(chunks: list[Chunk]) -> tuple[str, str]:
    answer = "".join(c for c in chunks if isinstance(c, str))
    thought = "".join(c.text for c in chunks if isinstance(c, Reasoning))
    return answer, thought


def test_text_without_tags_passes_through() -> None:
    """A reply with no tags comes out as it went in."""
    assert split(["Hello", " there <b>"]) == ["Hello", " there <b>"]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100])
def test_tags_cut_across_chunks_are_found(size: int) -> None:
    """However the stream is cut, the reasoning and the answer come apart."""
    text = "<think>Let me see: 2+2.</think>\n\nIt is 4."
    chunks = [text[i : i + size] for i in range(0, len(text), size)]
    assert joined(split(chunks)) == ("It is 4.", "Let me see: 2+2.")


def test_reasoning_streams_before_the_block_closes() -> None:
    """Reasoning is handed on as it arrives, not held until </think>."""
    splitter = ThinkSplitter()
    assert splitter.feed("<think>step one") == [Reasoning("step one")]


def test_an_unclosed_tag_prefix_at_the_end_is_text() -> None:
    """A '<thi' that never becomes a tag is part of the answer."""
    assert joined(split(["a <thi"])) == ("a <thi", "")

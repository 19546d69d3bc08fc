"""The openai adapter against a real OpenAI-compatible server: llama_cpp.server on SmolLM2."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chatsession import Message, ModelContextLengthError, ModelNotFoundError
from chatsession.domain import Chunk
from chatsession.models.openai import OpenAIModel
from tests.models.conftest import SERVER_CONTEXT

HELLO = [Message("user", "What is the capital of France?")]
STORY = [Message("user", "Write a long story about a dragon who learns to bake bread.")]
CAPITAL_AS_JSON = 'Give the capital of France as JSON: {"capital": ...}'


def served(url: str, **options: Any) -> OpenAIModel:
    options.setdefault("max_tokens", 24)
    # As in production: a pooled connection the server has just closed is tried again.
    options.setdefault("retries", 2)
    return OpenAIModel("smollm2", base_url=url, **options)


async def collect(model: OpenAIModel, messages: list[Message] = HELLO, **options: Any) -> str:
    options.setdefault("json_output", False)
    options.setdefault("reasoning_enabled", False)
    chunks: list[Chunk] = [c async for c in model.stream(messages, **options)]
    assert all(isinstance(c, str) for c in chunks)
    return "".join(str(c) for c in chunks)


def long_dialog(turns: int) -> list[Message]:
    history: list[Message] = []
    for turn in range(turns):
        history.append(Message("user", f"Tell me fact number {turn} about the sea, please."))
        history.append(Message("assistant", f"Fact {turn}: the sea is salty and deep. " * 3))
    history.append(Message("user", "Thanks. What is 2+2?"))
    return history


async def test_a_reply_streams_in_pieces(llama_server: str) -> None:
    """The server's reply reaches the caller in several chunks."""
    model = served(llama_server)
    try:
        chunks = [c async for c in model.stream(HELLO, json_output=False, reasoning_enabled=False)]
    finally:
        await model.aclose()
    assert len(chunks) > 3
    assert "".join(str(c) for c in chunks).strip()


async def test_json_output_gets_a_json_object(llama_server: str) -> None:
    """response_format json_object makes the server's reply parse as a JSON object."""
    model = served(llama_server, max_tokens=64)
    try:
        text = await collect(model, [Message("user", CAPITAL_AS_JSON)], json_output=True)
    finally:
        await model.aclose()
    assert isinstance(json.loads(text), dict)


async def test_closing_the_stream_frees_the_server(llama_server: str) -> None:
    """A caller that leaves closes the stream; the server stops and serves the next at once."""
    model = served(llama_server, max_tokens=450)
    try:
        stream = model.stream(STORY, json_output=False, reasoning_enabled=False)
        assert isinstance(stream, AsyncIterator)
        await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]  # an async generator
        started = time.monotonic()
        short = served(llama_server, max_tokens=4)
        try:
            assert await collect(short)
        finally:
            await short.aclose()
        # The server serves one request at a time: had it gone on with the 450-token story
        # (several seconds on two cores), this short request would have waited for it.
        assert time.monotonic() - started < 3
    finally:
        await model.aclose()


async def test_cancelling_a_chat_mid_reply_raises_cancelled(llama_server: str) -> None:
    """Cancelling the task that reads the stream ends it with CancelledError, not a hang."""
    model = served(llama_server, max_tokens=400)
    first = asyncio.Event()

    async def chat() -> None:
        async for _ in model.stream(STORY, json_output=False, reasoning_enabled=False):
            first.set()

    try:
        task = asyncio.create_task(chat())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await model.aclose()


async def test_context_window_is_learned_from_the_servers_error(llama_server: str) -> None:
    """A dialog past the server's window: the adapter learns the window and trims to it."""
    model = served(llama_server, max_tokens=16)
    try:
        assert await collect(model, long_dialog(40))
    finally:
        await model.aclose()
    assert model.context_window == SERVER_CONTEXT


async def test_configured_context_trims_before_sending(llama_server: str) -> None:
    """With MODEL_CONTEXT set to the server's window, a long dialog is trimmed up front."""
    model = served(llama_server, max_tokens=16, context_window=SERVER_CONTEXT)
    try:
        assert await collect(model, long_dialog(40))
    finally:
        await model.aclose()


async def test_context_too_small_for_the_reply_is_a_clear_error(llama_server: str) -> None:
    """A reply size that leaves no room in the server's window: ModelContextLengthError."""
    model = served(llama_server, max_tokens=SERVER_CONTEXT + 100)
    try:
        with pytest.raises(ModelContextLengthError, match="MODEL_MAX_TOKENS"):
            await collect(model, long_dialog(40))
    finally:
        await model.aclose()


async def test_a_base_url_without_its_path_is_named(llama_server: str) -> None:
    """OPENAI_BASE_URL missing /v1: the server's 404 says to check the model and the URL."""
    model = OpenAIModel("smollm2", base_url=llama_server.removesuffix("/v1"), retries=0)
    try:
        with pytest.raises(ModelNotFoundError, match="OPENAI_BASE_URL ends with /v1"):
            await collect(model)
    finally:
        await model.aclose()

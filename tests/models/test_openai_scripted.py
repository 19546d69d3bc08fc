"""The openai adapter against a scripted endpoint: what a real server rarely produces.

Retries on 429 and 5xx, reasoning deltas, <think> blocks, and the messages for a missing
key, an unreachable server, an unknown model and a context overflow.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatsession import (
    ChatServer,
    Message,
    ModelAuthenticationError,
    ModelContextLengthError,
    ModelError,
    ModelNotFoundError,
    ModelRateLimitError,
    ModelTimeoutError,
    ModelUnavailableError,
    Reasoning,
    Settings,
)
from chatsession.domain import Chunk
from chatsession.models.openai import OpenAIModel
from chatsession.storage import MemoryDialogStore
from tests.models.conftest import FakeEndpoint, error_reply, free_port, sse_reply

HELLO = [Message("user", "Hello?")]


async def run(model: OpenAIModel, **options: Any) -> list[Chunk]:
    options.setdefault("json_output", False)
    options.setdefault("reasoning_enabled", False)
    try:
        return [chunk async for chunk in model.stream(HELLO, **options)]
    finally:
        await model.aclose()


def model_at(url: str, **options: Any) -> OpenAIModel:
    options.setdefault("api_key", "test-key")
    options.setdefault("retries", 0)
    return OpenAIModel("fake", base_url=url, **options)


async def test_stream_arrives_chunk_by_chunk(endpoint: FakeEndpoint) -> None:
    """Each content delta reaches the caller as it comes, with the key and model sent."""
    endpoint.script = [sse_reply({"role": "assistant"}, {"content": "Hel"}, {"content": "lo"})]
    assert await run(model_at(endpoint.url)) == ["Hel", "lo"]
    (request,) = endpoint.requests
    assert request["model"] == "fake"
    assert request["stream"] is True
    assert request["authorization"] == "Bearer test-key"
    assert request["messages"] == [{"role": "user", "content": "Hello?"}]


async def test_rate_limits_are_retried_before_the_first_token(endpoint: FakeEndpoint) -> None:
    """Two 429s, then a stream: the caller sees only the reply."""
    endpoint.script = [
        error_reply(429, "slow down", "rate_limit_exceeded", retry_after_ms="10"),
        error_reply(429, "slow down", "rate_limit_exceeded", retry_after_ms="10"),
        sse_reply({"content": "ok"}),
    ]
    assert await run(model_at(endpoint.url, retries=2)) == ["ok"]
    assert len(endpoint.requests) == 3


async def test_server_errors_are_retried_with_backoff(endpoint: FakeEndpoint) -> None:
    """A 503 and a 500, then a stream; the retries wait a little between tries."""
    endpoint.script = [
        error_reply(503, "overloaded"),
        error_reply(500, "oops"),
        sse_reply({"content": "ok"}),
    ]
    started = time.monotonic()
    assert await run(model_at(endpoint.url, retries=2)) == ["ok"]
    assert len(endpoint.requests) == 3
    assert time.monotonic() - started >= 0.2  # backoff, not a hot loop


async def test_rate_limit_past_the_retries_is_a_clear_error(endpoint: FakeEndpoint) -> None:
    """429 on every try: ModelRateLimitError, saying retries were made."""
    endpoint.script = [error_reply(429, "quota", "rate_limit_exceeded", retry_after_ms="5")]
    with pytest.raises(ModelRateLimitError, match="rate limiting requests after 1 retries"):
        await run(model_at(endpoint.url, retries=1))
    assert len(endpoint.requests) == 2


async def test_a_failure_after_the_first_token_is_not_retried(endpoint: FakeEndpoint) -> None:
    """An error mid-reply raises ModelError and is never asked again: no repeated reply."""
    endpoint.script = [sse_reply({"content": "a"}, {"content": "b"}, error_after=1)]
    model = model_at(endpoint.url, retries=3)
    seen: list[Chunk] = []

    async def consume() -> None:
        async for chunk in model.stream(HELLO, json_output=False, reasoning_enabled=False):
            seen.append(chunk)

    with pytest.raises(ModelError, match="the model crashed"):
        await consume()
    await model.aclose()
    assert seen == ["a"]
    assert len(endpoint.requests) == 1


async def test_reasoning_content_deltas_stream_as_reasoning(endpoint: FakeEndpoint) -> None:
    """reasoning_content deltas (vLLM, DeepSeek, llama.cpp) come out as Reasoning chunks."""
    endpoint.script = [
        sse_reply(
            {"reasoning_content": "The user greets; "},
            {"reasoning_content": "greet back."},
            {"content": "Hi!"},
        )
    ]
    chunks = await run(model_at(endpoint.url), reasoning_enabled=True)
    assert chunks == [Reasoning("The user greets; "), Reasoning("greet back."), "Hi!"]
    assert endpoint.requests[0]["reasoning_effort"] == "medium"


async def test_reasoning_off_asks_for_none_and_shows_none(endpoint: FakeEndpoint) -> None:
    """With reasoning off, no reasoning_effort is sent and reasoning deltas are dropped."""
    endpoint.script = [sse_reply({"reasoning_content": "hmm"}, {"content": "Hi!"})]
    assert await run(model_at(endpoint.url)) == ["Hi!"]
    assert "reasoning_effort" not in endpoint.requests[0]


async def test_think_blocks_are_split_out(endpoint: FakeEndpoint) -> None:
    """<think> blocks in the content, cut across deltas, become Reasoning chunks."""
    endpoint.script = [
        sse_reply({"content": "<thi"}, {"content": "nk>2+2=4</th"}, {"content": "ink>\n\nFour."})
    ]
    chunks = await run(model_at(endpoint.url), reasoning_enabled=True)
    assert chunks == [Reasoning("2+2=4"), "Four."]
    endpoint.script = [sse_reply({"content": "<think>2+2=4</think>Four."})]
    assert await run(model_at(endpoint.url)) == ["Four."]


async def test_reasoning_effort_is_dropped_where_not_offered(endpoint: FakeEndpoint) -> None:
    """A model that refuses reasoning_effort is asked again without it, and remembered."""
    endpoint.script = [
        error_reply(400, "Unrecognized request argument supplied: reasoning_effort"),
        sse_reply({"content": "Hi"}),
    ]
    model = model_at(endpoint.url)
    chunks = [c async for c in model.stream(HELLO, json_output=False, reasoning_enabled=True)]
    again = [c async for c in model.stream(HELLO, json_output=False, reasoning_enabled=True)]
    await model.aclose()
    assert chunks == again == ["Hi"]
    assert ["reasoning_effort" in r for r in endpoint.requests] == [True, False, False]


async def test_json_output_asks_for_a_json_object(endpoint: FakeEndpoint) -> None:
    """json_output sends response_format json_object and says JSON in the prompt."""
    endpoint.script = [sse_reply({"content": '{"a": 1}'})]
    assert await run(model_at(endpoint.url), json_output=True) == ['{"a": 1}']
    request = endpoint.requests[0]
    assert request["response_format"] == {"type": "json_object"}
    assert "JSON" in request["messages"][0]["content"]


async def test_system_prompt_and_history_are_sent(endpoint: FakeEndpoint) -> None:
    """The system prompt goes first; reasoning of earlier replies is not sent back."""
    endpoint.script = [sse_reply({"content": "ok"})]
    model = model_at(endpoint.url, system_prompt="Be brief.")
    history = [
        Message("user", "1+1?"),
        Message("assistant", "2", reasoning="adding"),
        Message("user", "and 2+2?"),
    ]
    _ = [c async for c in model.stream(history, json_output=False, reasoning_enabled=False)]
    await model.aclose()
    assert endpoint.requests[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "and 2+2?"},
    ]


async def test_missing_key_says_to_set_it(endpoint: FakeEndpoint) -> None:
    """A 401 with no key configured names OPENAI_API_KEY."""
    endpoint.script = [error_reply(401, "You didn't provide an API key.")]
    with pytest.raises(ModelAuthenticationError, match="none is set: set OPENAI_API_KEY"):
        await run(model_at(endpoint.url, api_key=None))


async def test_wrong_key_says_to_check_it(endpoint: FakeEndpoint) -> None:
    """A 401 with a key configured says the key was refused."""
    endpoint.script = [error_reply(401, "Incorrect API key provided")]
    with pytest.raises(ModelAuthenticationError, match="refused the API key"):
        await run(model_at(endpoint.url))


async def test_unknown_model_is_named(endpoint: FakeEndpoint) -> None:
    """A 404 names the model and where to check it."""
    endpoint.script = [error_reply(404, "The model `fake` does not exist", "model_not_found")]
    with pytest.raises(ModelNotFoundError, match="does not serve the model 'fake'"):
        await run(model_at(endpoint.url))


async def test_unreachable_endpoint_says_so() -> None:
    """Nothing listening: ModelUnavailableError naming the URL and OPENAI_BASE_URL."""
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ModelUnavailableError, match=f"cannot reach .*{url}.*OPENAI_BASE_URL"):
        await run(model_at(url))


async def test_silent_endpoint_times_out(endpoint: FakeEndpoint) -> None:
    """An endpoint that stops sending raises ModelTimeoutError after the timeout."""
    endpoint.script = [sse_reply({"content": "a"}, {"content": "b"}, delay=2)]
    with pytest.raises(ModelTimeoutError, match=r"did not answer within 0\.3 s"):
        await run(model_at(endpoint.url, timeout=0.3))


async def test_context_overflow_without_a_size_is_a_clear_error(endpoint: FakeEndpoint) -> None:
    """A context-length error that names no window says to set MODEL_CONTEXT."""
    endpoint.script = [error_reply(400, "prompt is too long", "context_length_exceeded")]
    with pytest.raises(ModelContextLengthError, match="set MODEL_CONTEXT"):
        await run(model_at(endpoint.url))


async def test_closing_the_stream_closes_the_connection(endpoint: FakeEndpoint) -> None:
    """A caller that goes away closes the HTTP stream; the server sees it at once."""
    endpoint.script = [sse_reply(*({"content": f"{i} "} for i in range(100)), delay=0.05)]
    model = model_at(endpoint.url)
    stream = model.stream(HELLO, json_output=False, reasoning_enabled=False)
    assert isinstance(stream, AsyncIterator)
    assert await anext(stream) == "0 "
    await stream.aclose()  # type: ignore[attr-defined]  # an async generator
    await model.aclose()
    assert endpoint.disconnected.wait(timeout=2)


async def test_through_chat_server_reasoning_is_stored_apart(
    endpoint: FakeEndpoint, tmp_path: Path
) -> None:
    """Reasoning streams to the caller, is stored in its own field, and is not sent back."""
    endpoint.script = [sse_reply({"reasoning_content": "greet"}, {"content": "Hi"})]
    store = MemoryDialogStore()
    model = model_at(endpoint.url)
    async with ChatServer(Settings(data_dir=tmp_path), store=store, model=model) as chat:
        first = [c async for c in chat.chat_with_history("bob", "Hello?", reasoning_enabled=True)]
        second = [c async for c in chat.chat_with_history("bob", "Again?")]
        dialog = await store.load_current("bob")
    assert first == [Reasoning("greet"), "Hi"]
    assert second == ["Hi"]
    assert dialog is not None
    assert (dialog.messages[1].content, dialog.messages[1].reasoning) == ("Hi", "greet")
    assert endpoint.requests[1]["messages"] == [
        {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": "Hi"},
        {"role": "user", "content": "Again?"},
    ]


async def test_max_completion_tokens_is_used_where_max_tokens_is_refused(
    endpoint: FakeEndpoint,
) -> None:
    """A model that wants max_completion_tokens (OpenAI's reasoning models) gets it."""
    endpoint.script = [
        error_reply(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            "unsupported_parameter",
        ),
        sse_reply({"content": "ok"}),
    ]
    assert await run(model_at(endpoint.url, max_tokens=77)) == ["ok"]
    assert endpoint.requests[0]["max_tokens"] == 77
    assert "max_tokens" not in endpoint.requests[1]
    assert endpoint.requests[1]["max_completion_tokens"] == 77

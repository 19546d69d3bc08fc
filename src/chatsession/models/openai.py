"""Any OpenAI-compatible Chat Completions endpoint, through the official ``openai`` SDK.

OpenAI itself, vLLM, Ollama, llama.cpp's server and LM Studio all speak this protocol.
The reply streams chunk by chunk. Requests that fail with 429 or 5xx (or do not connect)
are retried with backoff by the SDK, which only ever retries opening the stream: once the
first token has arrived a reply is never asked for again. Errors of the SDK become the
project's own `ModelError` subclasses here, with messages that say what to change.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from chatsession._exceptions import (
    ConfigError,
    ModelAuthenticationError,
    ModelContextLengthError,
    ModelError,
    ModelNotFoundError,
    ModelRateLimitError,
    ModelTimeoutError,
    ModelUnavailableError,
)
from chatsession.domain import Chunk, Message, Reasoning
from chatsession.models._history import (
    EstimatedTokens,
    PromptMessage,
    fit_history,
    history_budget,
)
from chatsession.models._think import ThinkSplitter

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

__all__ = ["OpenAIModel"]

logger = logging.getLogger("chatsession.models")

OPENAI_URL = "https://api.openai.com/v1"

# "This model's maximum context length is 8192 tokens" (OpenAI, vLLM, llama.cpp's server)
_CONTEXT_WINDOW = re.compile(r"context (?:length|window) (?:is|of) (\d+)")
_CONTEXT_ERROR = re.compile(
    r"context[_ ]length|context window|maximum context|too many tokens|prompt is too long", re.I
)


class OpenAIModel:
    """A model served behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        model: The model's name at the endpoint, such as ``gpt-4o-mini`` or ``llama3.2``.
        base_url: The endpoint (``OPENAI_BASE_URL``); OpenAI's own when None.
        api_key: The key (``OPENAI_API_KEY``). Needed for OpenAI; a local server such as
            Ollama or vLLM usually needs none.
        system_prompt: Sent before the dialog when not empty.
        context_window: The model's context window in tokens (``MODEL_CONTEXT``); the
            history is trimmed to fit it. When None, nothing is trimmed until the endpoint
            reports its window in a context-length error; the request is then trimmed to it
            and sent again.
        max_tokens: The longest reply, in tokens.
        timeout: Seconds the endpoint may take to connect or stay silent mid-reply.
        retries: Retries, with backoff, of a request refused with 429 or 5xx.
        reasoning_effort: Asked for when reasoning is enabled, where the model offers it.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        system_prompt: str = "",
        context_window: int | None = None,
        max_tokens: int = 512,
        timeout: float = 60.0,
        retries: int = 2,
        reasoning_effort: str = "medium",
    ) -> None:
        try:
            import openai
        except ImportError:
            raise ConfigError(
                f"CHAT_MODEL=openai:{model} needs the openai package: "
                "pip install 'chatsession[openai]'"
            ) from None
        if not model:
            raise ConfigError("CHAT_MODEL=openai:<model> needs a model name, such as gpt-4o-mini")
        self.name = f"openai:{model}"
        self.model = model
        self.base_url = (base_url or OPENAI_URL).rstrip("/")
        if api_key is None and self.base_url == OPENAI_URL:
            raise ModelAuthenticationError(
                f"CHAT_MODEL=openai:{model} uses OpenAI's API, which needs a key: set "
                "OPENAI_API_KEY, or set OPENAI_BASE_URL to a server that needs none "
                "(Ollama, vLLM, llama.cpp)"
            )
        self._has_key = api_key is not None
        self.system_prompt = system_prompt
        self.context_window = context_window
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.retries = retries
        self.reasoning_effort = reasoning_effort
        # Learned from the endpoint: parameters a model refuses are not sent again.
        self._offers_reasoning_effort = True
        self._max_tokens_parameter = "max_tokens"
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            # The SDK refuses to start without a key; servers that need none ignore it.
            api_key=api_key or "no-key",
            timeout=openai.Timeout(timeout, connect=min(timeout, 10.0)),
            max_retries=retries,
        )

    async def stream(
        self, messages: Sequence[Message], *, json_output: bool, reasoning_enabled: bool
    ) -> AsyncIterator[Chunk]:
        import openai

        response = await self._open(messages, json_output, reasoning_enabled, stream=True)
        if not isinstance(response, openai.AsyncStream):
            raise ModelError(f"{self.base_url} answered a streamed request without streaming")
        splitter = ThinkSplitter()
        received = False
        try:
            async for completion in response:
                received = True
                if not completion.choices:
                    continue  # a usage-only chunk
                delta = completion.choices[0].delta
                for chunk in _chunks(delta, splitter, reasoning_enabled):
                    yield chunk
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc
        finally:
            # Closing the HTTP stream is what stops a provider generating for a client
            # that went away.
            await response.close()
        if not received:
            # Not even a first chunk: llama-cpp-python's server answers a streamed request
            # it cannot serve with an empty body. Asked without streaming, it says why
            # (or, if it can serve it after all, sends the reply whole).
            whole = await self._open(messages, json_output, reasoning_enabled, stream=False)
            if isinstance(whole, openai.AsyncStream) or not whole.choices:
                raise ModelError(f"{self.base_url} ended the reply without sending anything")
            for chunk in _chunks(whole.choices[0].message, splitter, reasoning_enabled):
                yield chunk
        for chunk in splitter.flush():
            if reasoning_enabled or isinstance(chunk, str):
                yield chunk

    async def aclose(self) -> None:
        await self._client.close()

    async def _open(
        self,
        messages: Sequence[Message],
        json_output: bool,
        reasoning_enabled: bool,
        *,
        stream: bool,
    ) -> openai.AsyncStream[ChatCompletionChunk] | ChatCompletion:
        """Send the request; the SDK retries 429, 5xx and connection failures."""
        import openai

        for _ in range(4):  # each pass drops what the endpoint refused, or trims further
            prompt = self._prompt(messages, json_output)
            options: dict[str, Any] = {self._max_tokens_parameter: self.max_tokens}
            if json_output:
                options["response_format"] = {"type": "json_object"}
            if reasoning_enabled and self._offers_reasoning_effort:
                options["reasoning_effort"] = self.reasoning_effort
            try:
                return await self._client.chat.completions.create(
                    model=self.model,
                    messages=prompt,  # type: ignore[arg-type]  # plain role/content dicts
                    stream=stream,
                    **options,
                )
            except openai.BadRequestError as exc:
                if self._adapt(exc, options):
                    continue
                raise self._translate(exc) from exc
            except openai.OpenAIError as exc:
                raise self._translate(exc) from exc
        raise ModelError(f"{self.base_url} kept refusing the request for {self.model!r}")

    def _prompt(self, messages: Sequence[Message], json_output: bool) -> list[PromptMessage]:
        budget = (
            None
            if self.context_window is None
            else history_budget(self.context_window, self.max_tokens)
        )
        return fit_history(
            messages,
            system_prompt=self.system_prompt,
            budget=budget,
            tokens=EstimatedTokens(),
            json_output=json_output,
        )

    def _adapt(self, exc: openai.BadRequestError, options: dict[str, Any]) -> bool:
        """Whether a changed request may succeed where ``exc`` refused this one."""
        detail = _detail(exc)
        if "reasoning_effort" in options and "reasoning_effort" in detail:
            logger.info("%s does not offer reasoning_effort; no longer asking", self.name)
            self._offers_reasoning_effort = False
            return True
        if self._max_tokens_parameter == "max_tokens" and "max_completion_tokens" in detail:
            self._max_tokens_parameter = "max_completion_tokens"
            return True
        if _is_context_error(exc):
            found = _CONTEXT_WINDOW.search(detail)
            window = int(found.group(1)) if found else None
            if window is not None and (self.context_window is None or window < self.context_window):
                logger.info("%s has a %d-token context window; trimming to it", self.name, window)
                self.context_window = window
                return True
        return False

    def _translate(self, exc: openai.OpenAIError) -> ModelError:
        """The project's own exception for an error of the SDK, saying what to change."""
        import openai

        where = f"the model endpoint at {self.base_url}"
        detail = _detail(exc)
        retried = f" after {self.retries} retries" if self.retries else ""
        if isinstance(exc, openai.APITimeoutError):
            return ModelTimeoutError(
                f"{where} did not answer within {self.timeout:g} s; it may be overloaded, "
                "or raise MODEL_TIMEOUT"
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            reason = (str(cause) or type(cause).__name__) if cause is not None else detail
            return ModelUnavailableError(
                f"cannot reach {where} ({reason}){retried}: is the server running, and is "
                "OPENAI_BASE_URL right?"
            )
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            if not self._has_key:
                return ModelAuthenticationError(
                    f"{where} needs an API key and none is set: set OPENAI_API_KEY ({detail})"
                )
            return ModelAuthenticationError(
                f"{where} refused the API key: check OPENAI_API_KEY ({detail})"
            )
        if isinstance(exc, openai.RateLimitError):
            return ModelRateLimitError(
                f"{where} is rate limiting requests{retried} ({detail}): wait a moment and "
                "try again, or check the account's quota"
            )
        if isinstance(exc, openai.NotFoundError) or _code(exc) == "model_not_found":
            return ModelNotFoundError(
                f"{where} does not serve the model {self.model!r} ({detail}): check the name "
                "in CHAT_MODEL=openai:<model> against the endpoint's model list, and that "
                "OPENAI_BASE_URL ends with /v1 where the server expects it"
            )
        if _is_context_error(exc):
            window = f"{self.context_window}-token " if self.context_window else ""
            return ModelContextLengthError(
                f"the conversation does not fit the model's {window}context window ({detail}): "
                "set MODEL_CONTEXT to the model's context window so older messages are left "
                "out, or lower MODEL_MAX_TOKENS"
            )
        if isinstance(exc, openai.APIStatusError):
            if exc.status_code >= 500:
                return ModelUnavailableError(
                    f"{where} failed with {exc.status_code}{retried} ({detail}); try again later"
                )
            return ModelError(f"{where} refused the request with {exc.status_code}: {detail}")
        return ModelError(f"{where} failed: {detail}")


def _chunks(delta: Any, splitter: ThinkSplitter, reasoning_enabled: bool) -> list[Chunk]:
    """The chunks a streamed delta (or a whole message) carries; reasoning only if asked."""
    chunks: list[Chunk] = []
    thought = _reasoning_of(delta)
    if thought and reasoning_enabled:
        chunks.append(Reasoning(thought))
    if delta.content:
        chunks.extend(
            chunk
            for chunk in splitter.feed(delta.content)
            if reasoning_enabled or isinstance(chunk, str)
        )
    return chunks


def _reasoning_of(delta: Any) -> str | None:
    """The reasoning a delta carries, as vLLM, DeepSeek and llama.cpp (or others) send it."""
    for field in ("reasoning_content", "reasoning"):
        value = getattr(delta, field, None)
        if isinstance(value, str) and value:
            return value
    return None


def _detail(exc: openai.OpenAIError) -> str:
    """The endpoint's own words for an error, without the SDK's wrapping."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) else str(exc)


def _code(exc: openai.OpenAIError) -> str | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) else None


def _is_context_error(exc: openai.OpenAIError) -> bool:
    return _code(exc) == "context_length_exceeded" or bool(_CONTEXT_ERROR.search(_detail(exc)))

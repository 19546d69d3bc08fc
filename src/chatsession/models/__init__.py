"""Chat models behind the `ChatModel` contract, chosen by name (``CHAT_MODEL``)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from chatsession._exceptions import ConfigError
from chatsession.models.base import ChatModel
from chatsession.models.echo import EchoModel

__all__ = ["ChatModel", "EchoModel", "load_model"]


def load_model(spec: str) -> ChatModel:
    """The model ``spec`` names: ``echo``, or ``echo?delay=0.05&fail_after=3``."""
    name, _, query = spec.partition("?")
    options = dict(parse_qsl(query, strict_parsing=bool(query)))
    if name == "echo":
        try:
            delay = float(options.pop("delay", 0))
            fail_after = int(options["fail_after"]) if "fail_after" in options else None
        except ValueError as exc:
            raise ConfigError(f"CHAT_MODEL={spec!r}: {exc}") from None
        options.pop("fail_after", None)
        if options:
            raise ConfigError(f"CHAT_MODEL={spec!r}: unknown option {next(iter(options))!r}")
        return EchoModel(delay=delay, fail_after=fail_after)
    raise ConfigError(f"CHAT_MODEL={spec!r} is not a model chatsession knows; try 'echo'")

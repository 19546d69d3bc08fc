"""Dialog storage: the `DialogStore` contract and its backends, chosen by URL."""

from __future__ import annotations

from pathlib import Path

from chatsession._exceptions import ConfigError
from chatsession._types import Durability
from chatsession.storage.base import DialogStore
from chatsession.storage.files import YamlDialogStore
from chatsession.storage.memory import MemoryDialogStore

__all__ = ["DialogStore", "MemoryDialogStore", "YamlDialogStore", "open_store"]


def open_store(location: str | Path, durability: Durability = "batch") -> DialogStore:
    """A store for ``location``: a directory, ``file://DIR``, or ``memory://``."""
    text = str(location)
    if text.startswith("memory://"):
        return MemoryDialogStore()
    if text.startswith("file://"):
        text = text.removeprefix("file://")
    elif "://" in text:
        raise ConfigError(f"unknown dialog store {text!r}: use a directory or memory://")
    return YamlDialogStore(Path(text), durability)

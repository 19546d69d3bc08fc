"""Shared fixtures: a ChatServer over each dialog store, and helpers to drive it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from chatsession import ChatServer, Settings
from chatsession.models import EchoModel
from chatsession.models.base import ChatModel
from chatsession.storage import DialogStore, MemoryDialogStore, YamlDialogStore

ServerFactory = Callable[..., AbstractAsyncContextManager[ChatServer]]


@pytest.fixture(params=["yaml", "memory"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


# The Redis the machine runs; each test keeps to keys of its own prefix.
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["local", "redis"])
def registry_kind(request: pytest.FixtureRequest, store_kind: str) -> str:
    """Every lifecycle test runs over both registries (Redis with the YAML store only:
    several instances share their dialogs on disk)."""
    kind: str = request.param
    if kind == "redis" and store_kind != "yaml":
        pytest.skip("several instances share a YAML data dir, not a memory store")
    return kind


@pytest.fixture
def registry_settings(registry_kind: str) -> dict[str, Any]:
    """Settings that choose the registry: nothing for in-process, a fresh prefix for Redis."""
    if registry_kind == "local":
        return {}
    return {"redis_url": REDIS_URL, "instance_ttl": 2}


@pytest.fixture
def make_store(store_kind: str, tmp_path: Path) -> Callable[..., DialogStore]:
    def make(settings: Settings) -> DialogStore:
        if store_kind == "memory":
            return MemoryDialogStore()
        return YamlDialogStore(settings.data_dir, settings.durability)

    return make


@pytest.fixture
def server(
    make_store: Callable[..., DialogStore], tmp_path: Path, registry_settings: dict[str, Any]
) -> ServerFactory:
    """``async with server(**settings) as chat``: a running ChatServer over the store."""

    @asynccontextmanager
    async def run(
        *, model: ChatModel | None = None, store: DialogStore | None = None, **settings: Any
    ) -> AsyncIterator[ChatServer]:
        settings.setdefault("data_dir", tmp_path / "data")
        if registry_settings:  # each server a cluster of its own, unless told otherwise
            settings.setdefault("redis_prefix", f"test-{uuid.uuid4().hex}:")
        config = Settings(**{**registry_settings, **settings})
        chosen_store = store if store is not None else make_store(config)
        async with ChatServer(config, store=chosen_store, model=model or EchoModel()) as chat:
            yield chat

    return run


async def collect(chat: ChatServer, user_id: str, text: str, **options: Any) -> str:
    """The whole reply to one chat, as text."""
    return "".join(
        [c async for c in chat.chat_with_history(user_id, text, **options) if isinstance(c, str)]
    )

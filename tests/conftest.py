"""Shared fixtures: a ChatServer over each dialog store, and helpers to drive it."""

from __future__ import annotations

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


@pytest.fixture
def make_store(store_kind: str, tmp_path: Path) -> Callable[..., DialogStore]:
    def make(settings: Settings) -> DialogStore:
        if store_kind == "memory":
            return MemoryDialogStore()
        return YamlDialogStore(settings.data_dir, settings.durability)

    return make


@pytest.fixture
def server(make_store: Callable[..., DialogStore], tmp_path: Path) -> ServerFactory:
    """``async with server(**settings) as chat``: a running ChatServer over the store."""

    @asynccontextmanager
    async def run(
        *, model: ChatModel | None = None, store: DialogStore | None = None, **settings: Any
    ) -> AsyncIterator[ChatServer]:
        settings.setdefault("data_dir", tmp_path / "data")
        config = Settings(**settings)
        chosen_store = store if store is not None else make_store(config)
        async with ChatServer(config, store=chosen_store, model=model or EchoModel()) as chat:
            yield chat

    return run


async def collect(chat: ChatServer, user_id: str, text: str, **options: Any) -> str:
    """The whole reply to one chat, as text."""
    return "".join(
        [c async for c in chat.chat_with_history(user_id, text, **options) if isinstance(c, str)]
    )

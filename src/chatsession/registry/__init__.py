"""Session registries: what the instances of a cluster share, chosen by the settings."""

from __future__ import annotations

from chatsession.registry.base import SessionRegistry
from chatsession.registry.local import LocalRegistry
from chatsession.settings import Settings

__all__ = ["LocalRegistry", "SessionRegistry", "open_registry"]


def open_registry(settings: Settings) -> SessionRegistry:
    """`RedisRegistry` when ``REDIS_URL`` is set, else the single process's `LocalRegistry`."""
    if settings.redis_url:
        from chatsession.registry.redis import RedisRegistry

        return RedisRegistry(settings)
    return LocalRegistry(settings.instance_id)

"""The chat server: an ASGI app over the session core, and ``chatsession serve``."""

from __future__ import annotations

from chatsession.web.app import create_app, create_app_from_env
from chatsession.web.server import serve

__all__ = ["create_app", "create_app_from_env", "serve"]

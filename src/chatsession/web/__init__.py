"""The chat server: an ASGI app over the session core, and ``chatsession serve``."""

from __future__ import annotations

from chatsession.web.app import create_app
from chatsession.web.server import serve

__all__ = ["create_app", "serve"]

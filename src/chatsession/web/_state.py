"""The app's shared resources, made by the lifespan and handed to handlers as typed state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from chatsession.chatserver import ChatServer
from chatsession.settings import Settings
from chatsession.web.auth import Authenticator, Identity
from chatsession.web.channels import Channels
from chatsession.web.metrics import Metrics
from chatsession.web.shutdown import Drain

__all__ = ["WebState", "identify", "web_state"]


@dataclass(slots=True)
class WebState:
    settings: Settings
    chat: ChatServer
    auth: Authenticator
    channels: Channels
    metrics: Metrics
    drain: Drain
    started: float = field(default_factory=time.monotonic)


def web_state(connection: HTTPConnection) -> WebState:
    state = connection.state.web
    if not isinstance(state, WebState):
        raise RuntimeError("The chatsession app is not running: its lifespan was not entered.")
    return state


def identify(connection: HTTPConnection) -> Identity:
    """The caller's identity (raises `AuthenticationError`); remembered for the response."""
    identity = web_state(connection).auth.identify(connection)
    connection.state.user_id = identity.user_id
    return identity

"""The ASGI app: routes, the lifespan that runs the ChatServer, errors, headers, CORS."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatsession._exceptions import (
    ChatSessionError,
)
from chatsession.chatserver import ChatServer
from chatsession.models.base import ChatModel
from chatsession.settings import Settings
from chatsession.storage import open_store
from chatsession.storage.base import DialogStore
from chatsession.web import dialogs, health, http_chat, page, sse, ws
from chatsession.web._state import WebState
from chatsession.web.auth import Authenticator
from chatsession.web.channels import Channels
from chatsession.web.metrics import Metrics, TimedStore
from chatsession.web.protocol import event_frame, status_of
from chatsession.web.shutdown import Drain

__all__ = ["create_app"]

logger = logging.getLogger("chatsession.web")


def create_app(
    settings: Settings | None = None,
    *,
    store: DialogStore | None = None,
    model: ChatModel | None = None,
    drain: Drain | None = None,
) -> FastAPI:
    """The chat server's ASGI app; its lifespan runs a `ChatServer` over ``settings``.

    ``drain`` is the switch a server throws at shutdown (see `chatsession.web.shutdown`).
    """
    settings = settings if settings is not None else Settings()
    auth = Authenticator(settings)  # a bad JWT configuration fails here, before serving
    drain = drain if drain is not None else Drain()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        metrics = Metrics()
        chosen = store if store is not None else open_store(settings.data_dir, settings.durability)
        channels = Channels()
        server = ChatServer(
            settings, store=TimedStore(chosen, metrics), model=model, enforce_limits=True
        )
        async with server as chat:
            metrics.watch(chat)
            chat.on(
                "session_event", lambda event: channels.publish(event.user_id, event_frame(event))
            )
            # Frames other instances send to this user's connections here.
            chat.on("user_frame", channels.publish)
            drain.attach(chat)
            web = WebState(
                settings=settings,
                chat=chat,
                auth=auth,
                channels=channels,
                metrics=metrics,
                drain=drain,
            )
            try:
                yield {"web": web}
            finally:
                drain.attach(None)

    app = FastAPI(
        title="chatsession",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    for module in (ws, http_chat, sse, dialogs, health, page):
        app.include_router(module.router)
    app.add_exception_handler(ChatSessionError, _error_response)  # type: ignore[arg-type]
    app.add_middleware(SessionHeaderMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_credentials=True,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["authorization", "content-type", "x-user-id", "x-session-id"],
            expose_headers=["x-session-id"],
        )
    return app


async def _error_response(request: Request, exc: ChatSessionError) -> Response:
    status = status_of(exc)
    if status == 500:
        logger.error("request %s %s failed: %s", request.method, request.url.path, exc)
    retry_after = getattr(exc, "retry_after", None)
    headers = {"retry-after": str(retry_after)} if retry_after else None
    return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)


class SessionHeaderMiddleware:
    """Puts ``x-session-id`` on every HTTP response.

    The id is the one an endpoint set, else the caller's active session's, else the one
    the client sent, else a fresh one the client may send back to name its next session.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"x-session-id" for name, _ in headers):
                    headers.append((b"x-session-id", (await _session_id(scope)).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


async def _session_id(scope: Scope) -> str:
    state = scope.get("state") or {}
    if state.get("session_id"):
        return str(state["session_id"])
    web = state.get("web")
    user_id = state.get("user_id")
    if isinstance(web, WebState) and user_id:
        info = web.chat.sessions.get(user_id)  # owned here: no need to ask the others
        if info is None and web.chat.registry.shared:
            try:
                info = await web.chat.get_user_session_info(user_id)
            except ChatSessionError:
                info = None  # the registry is unreachable; the request itself says so
        if info is not None:
            return info.session_id
    for name, value in scope.get("headers", []):
        if name == b"x-session-id" and value:
            return str(value.decode("latin-1"))
    return uuid.uuid4().hex

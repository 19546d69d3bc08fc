"""The ASGI app: routes, the lifespan that runs the ChatServer, errors, headers, CORS."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatsession._exceptions import AuthenticationError, ChatSessionError, StorageError
from chatsession.chatserver import ChatServer
from chatsession.domain import SessionEvent
from chatsession.models.base import ChatModel
from chatsession.retention import run_retention
from chatsession.settings import Settings
from chatsession.storage import open_store
from chatsession.storage.base import DialogStore
from chatsession.web import (
    admin,
    archives,
    console_api,
    dialogs,
    health,
    http_chat,
    page,
    sse,
    ws,
)
from chatsession.web._guards import RequestGuard
from chatsession.web._state import WebState
from chatsession.web.auth import Authenticator
from chatsession.web.channels import Channels
from chatsession.web.metrics import Metrics, TimedStore
from chatsession.web.protocol import client_message, event_frame, status_of
from chatsession.web.shutdown import Drain

__all__ = ["create_app", "create_app_from_env"]

logger = logging.getLogger("chatsession.web")


def create_app(
    settings: Settings | None = None,
    *,
    store: DialogStore | None = None,
    model: ChatModel | None = None,
    drain: Drain | None = None,
    address: str | None = None,
) -> FastAPI:
    """The chat server's ASGI app; its lifespan runs a `ChatServer` over ``settings``.

    ``drain`` is the switch a server throws at shutdown (see `chatsession.web.shutdown`).
    ``address`` is where the app is served, recorded as the data dir's owner. A
    `ChatSessionError` that stops the lifespan's start is kept in ``app.state.startup_error``
    for the server to report.
    """
    settings = settings if settings is not None else Settings()
    auth = Authenticator(settings)  # a bad JWT configuration fails here, before serving
    drain = drain if drain is not None else Drain()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        metrics = Metrics()
        channels = Channels()
        try:
            chosen = store or open_store(settings.data_dir, settings.durability)
            chat = ChatServer(
                settings, store=TimedStore(chosen, metrics), model=model, enforce_limits=True
            )
            chat.address = address
            await chat.__aenter__()  # takes the data dir's lock, then recovers
        except ChatSessionError as exc:
            app.state.startup_error = exc
            raise
        try:
            metrics.watch(chat)
            chat.on("session_event", lambda event: _publish_event(channels, event))
            # Frames other instances send to this user's connections here.
            chat.on("user_frame", lambda user_id, frame: _publish_frame(channels, user_id, frame))
            drain.attach(chat)
            web = WebState(
                settings=settings,
                chat=chat,
                auth=auth,
                channels=channels,
                metrics=metrics,
                drain=drain,
            )
            retention = _start_retention(settings, chat.store, metrics)
            try:
                yield {"web": web}
            finally:
                drain.attach(None)
                if retention is not None:
                    retention.cancel()
                    await asyncio.gather(retention, return_exceptions=True)
        finally:
            await chat.aclose()

    app = FastAPI(
        title="chatsession",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's docs page loads from a CDN; `page` serves an offline one
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    # /archives/export before /dialogs/{id}; the console's routes before the page's.
    for module in (ws, http_chat, sse, archives, dialogs, console_api, admin, health, page):
        app.include_router(module.router)
    app.state.startup_error = None
    app.add_exception_handler(ChatSessionError, _error_response)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error_response)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
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
    app.add_middleware(RequestGuard, settings=settings)  # outermost: before CORS and routes
    return app


def create_app_from_env() -> FastAPI:
    """The app configured from the environment, for ASGI servers' ``--factory`` option.

    ``uvicorn 'chatsession.web:create_app_from_env' --factory``; gunicorn with uvicorn
    workers and hypercorn take the same import string. Signals belong to that server:
    under stock uvicorn a WebSocket closed by its shutdown (1012) still archives its
    session as ``shutdown``.
    """
    return create_app(Settings.from_env())


# What development mode trusts, said to a caller who sent neither.
_DEV_HINT = "development mode: send an x-user-id header, or ?userId= for browsers"


def _publish_event(channels: Channels, event: SessionEvent) -> None:
    _publish_frame(channels, event.user_id, event_frame(event))


def _publish_frame(channels: Channels, user_id: str, frame: dict[str, Any]) -> None:
    """A frame for the user's connections here: SSE streams get every one, WebSocket pages
    the session events."""
    channels.publish(user_id, frame)
    if frame.get("type") == "session_event":
        channels.publish(ws.session_events_channel(user_id), frame)


async def _error_response(request: Request, exc: ChatSessionError) -> Response:
    status = status_of(exc)
    if status == 500 or isinstance(exc, StorageError):  # the log names the file; not the client
        logger.error("request %s %s failed: %s", request.method, request.url.path, exc)
    body = {"error": client_message(exc)}
    web = getattr(request.state, "web", None)
    dev = isinstance(web, WebState) and web.settings.auth_mode == "dev"
    if isinstance(exc, AuthenticationError) and dev:
        body["hint"] = _DEV_HINT
    retry_after = getattr(exc, "retry_after", None)
    headers = {"retry-after": str(retry_after)} if retry_after else None
    return JSONResponse(body, status_code=status, headers=headers)


async def _http_error_response(request: Request, exc: HTTPException) -> Response:
    # Unknown routes and methods answer in the API's own shape, not FastAPI's {"detail"}.
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    # A query parameter out of range: the API's own error shape, not FastAPI's "detail".
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc'][1:])}: {error['msg']}"
        for error in exc.errors()
    )
    return JSONResponse({"error": problems or "invalid request"}, status_code=422)


def _start_retention(
    settings: Settings, store: DialogStore, metrics: Metrics
) -> asyncio.Task[None] | None:
    """The retention sweep, when ``ARCHIVE_RETENTION_DAYS`` is set; the lifespan owns it."""
    if settings.archive_retention_days is None:
        return None
    return asyncio.ensure_future(
        run_retention(
            store,
            settings.archive_retention_days,
            settings.session_check_interval,
            metrics.archives_expired.inc,
        )
    )


class SessionHeaderMiddleware:
    """Puts ``x-session-id`` on every HTTP response.

    The id is the one an endpoint set, else the caller's active session's, else a fresh
    one. Session ids are issued by the server: one a client sends names at most its own
    live session (a user has one), and an unknown one is ignored.
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
    # Session ids are issued here: a client's own is never echoed, so it names nothing.
    return uuid.uuid4().hex

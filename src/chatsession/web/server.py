"""``chatsession serve``: the app on uvicorn, with a graceful, bounded shutdown.

uvicorn's own shutdown closes WebSockets with 1012 and, after a signal, re-raises it so
the process dies by it. `ChatUvicornServer` runs `Drain` first (archive every session as
``shutdown``, close WebSockets with 1001, end SSE streams) and handles SIGTERM and SIGINT
itself, so a signalled server exits 0. A second signal exits at once (code 1); the next
start recovers the dialogs that were not archived yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import resource
import signal
import socket
from collections.abc import Generator

import uvicorn

from chatsession._exceptions import ChatSessionError
from chatsession.models import load_model
from chatsession.models.base import ChatModel
from chatsession.settings import Settings
from chatsession.web._protocols import RefusingWebSocketProtocol, bounded_http_protocol
from chatsession.web._startup import (
    bind_socket,
    check_data_dir,
    configure_logging,
    display_host,
    report_startup_error,
)
from chatsession.web.app import create_app
from chatsession.web.auth import check_bind
from chatsession.web.shutdown import Drain

__all__ = ["ChatUvicornServer", "build_server", "serve"]

logger = logging.getLogger("chatsession.web")

# How long connections get to close once asked, after sessions are archived: half the
# grace, within these bounds, so that shutdown takes less than twice SHUTDOWN_GRACE.
_CLOSE_GRACE = 5.0
_MIN_CLOSE_GRACE = 0.5


class ChatUvicornServer(uvicorn.Server):
    """A uvicorn server that drains the chat app before uvicorn's own shutdown."""

    def __init__(
        self, config: uvicorn.Config, drain: Drain, close_grace: float = _CLOSE_GRACE
    ) -> None:
        super().__init__(config)
        self.drain = drain
        self.close_grace = close_grace
        self.listening_message = ""  # logged once the app has started and the port is ours

    @property
    def startup_error(self) -> ChatSessionError | None:
        """What stopped the app's start (a data dir in use, a bad setting), if anything."""
        state = getattr(self.config.app, "state", None)
        error = getattr(state, "startup_error", None)
        return error if isinstance(error, ChatSessionError) else None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        except SystemExit:  # uvicorn's answer to a failed lifespan: ours is reported by serve
            if self.startup_error is None:
                raise
            self.should_exit = True
            return
        if self.started and not self.should_exit and self.listening_message:
            logger.info("%s", self.listening_message)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting before anything else
        await self.drain.run(self.close_grace, cut=self._cut_connections)
        await super().shutdown(sockets)

    def _cut_connections(self) -> None:
        """Drop every connection still open at the deadline, so no send waits past it.

        A client that stopped reading leaves a send waiting for room that never comes;
        dropping its connection ends that send quietly, where cancelling would not.
        """
        open_connections = list(self.server_state.connections)
        if open_connections:
            logger.warning("cut %d connections still open at shutdown", len(open_connections))
        for connection in open_connections:
            # uvloop's transports are not asyncio.Transport subclasses, but have abort().
            abort = getattr(getattr(connection, "transport", None), "abort", None)
            if callable(abort):
                abort()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Unlike uvicorn's, the captured signal is not raised again afterwards: a server
        # that shut down gracefully exits 0.
        try:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._signalled)
        except (RuntimeError, NotImplementedError, ValueError):
            yield  # not the main thread (tests): whoever runs the server stops it
            return
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _signalled(self) -> None:
        if not self.should_exit:
            logger.info("shutting down: archiving every session")
            self.should_exit = True
            return
        # A second signal: the operator will not wait. Dialogs not archived yet stay in
        # current.yaml, whole, and the next start archives them as ``recovered``.
        logger.warning("forced exit: the next start recovers dialogs not yet archived")
        os._exit(1)


def build_server(
    settings: Settings, *, model: ChatModel | None = None, address: str | None = None
) -> ChatUvicornServer:
    """A server for ``settings``, not yet started (tests run it on a free port)."""
    drain = Drain()
    app = create_app(settings, drain=drain, model=model, address=address)
    close_grace = min(_CLOSE_GRACE, max(settings.shutdown_grace / 2, _MIN_CLOSE_GRACE))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        # Frames between the soft and this hard limit get an error frame; past it, 1009.
        ws_max_size=4 * settings.max_message_bytes,
        # Chat frames are a few words each: compressing them costs more CPU than it saves.
        ws_per_message_deflate=False,
        # A backstop only: connections still open at the close deadline are cut before it.
        timeout_graceful_shutdown=math.ceil(close_grace) + 1,
        log_level="warning",
        access_log=False,
        lifespan="on",
        server_header=False,
        http=bounded_http_protocol(
            settings.max_header_bytes, settings.header_timeout, settings.max_connections
        ),
        ws=RefusingWebSocketProtocol,
        # uvicorn counts the connection asking, too: this serves MAX_CONNECTIONS at once.
        limit_concurrency=settings.max_connections + 1 if settings.max_connections else None,
    )
    return ChatUvicornServer(config, drain, close_grace)


def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; the exit code (0 after a graceful shutdown).

    The order is what makes the log true: check the configuration, bind the port, take
    the data dir and recover its dialogs (the app's lifespan), and only then say
    "listening". A mistake found on the way is one line on stderr and exit code 2.
    """
    configure_logging()
    try:
        check_bind(settings)
        check_data_dir(settings.data_dir)
        model = load_model(settings.chat_model, settings)
        sock = bind_socket(settings.host, settings.port)
    except ChatSessionError as exc:
        return report_startup_error(exc, settings)
    address = f"http://{display_host(settings.host)}:{sock.getsockname()[1]}"
    try:
        server = build_server(settings, model=model, address=address)  # checks JWT settings
    except ChatSessionError as exc:
        sock.close()
        return report_startup_error(exc, settings)
    server.listening_message = (
        f"chatsession listening on {address}  data dir {settings.data_dir}  "
        f"model {getattr(model, 'name', type(model).__name__)}  "
        f"auth {_auth_description(settings)}"
    )
    _raise_open_file_limit()
    _hide_startup_traceback(server, settings)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if server.startup_error is not None:
        return report_startup_error(server.startup_error, settings)
    return 0 if server.started else 1


def _hide_startup_traceback(server: ChatUvicornServer, settings: Settings) -> None:
    """uvicorn logs a lifespan that failed to start with its traceback; ours says one line."""

    def keep(record: logging.LogRecord) -> bool:
        return settings.debug != "" or server.startup_error is None

    logging.getLogger("uvicorn.error").addFilter(keep)


def _raise_open_file_limit() -> None:
    """Every connection and open dialog is a file descriptor: allow as many as permitted."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY:
        return
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _auth_description(settings: Settings) -> str:
    if settings.auth_mode == "jwt":
        kind = "HS256 secret" if settings.jwt_secret else "public key"
        return f"jwt ({kind})"
    proxy = ", trusted proxy" if settings.trusted_proxy else ""
    return f"dev (x-user-id header trusted{proxy})"

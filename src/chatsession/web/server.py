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
import sys
from collections.abc import Generator

import uvicorn

from chatsession._exceptions import ConfigError
from chatsession.models import resolve_model_spec
from chatsession.settings import Settings
from chatsession.web._protocols import RefusingWebSocketProtocol, bounded_http_protocol
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


def build_server(settings: Settings) -> ChatUvicornServer:
    """A server for ``settings``, not yet started (tests run it on a free port)."""
    drain = Drain()
    app = create_app(settings, drain=drain)
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
    """Run until SIGTERM or SIGINT; the exit code (0 after a graceful shutdown)."""
    _configure_logging()
    try:
        check_bind(settings)
        server = build_server(settings)
    except ConfigError as exc:
        print(f"chatsession: {exc}", file=sys.stderr)
        return 2
    _raise_open_file_limit()
    logger.info(
        "chatsession listening on http://%s:%d  data dir %s  model %s  auth %s",
        settings.host,
        settings.port,
        settings.data_dir,
        resolve_model_spec(settings.chat_model, settings),
        _auth_description(settings),
    )
    server.run()
    return 0 if server.started else 1


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


def _configure_logging() -> None:
    package = logging.getLogger("chatsession")
    if not package.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)

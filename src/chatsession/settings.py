"""Configuration: one typed object, read from the environment with the guide's names.

=============================  =========================================  ==============
variable                       meaning                                    default
=============================  =========================================  ==============
``DATA_DIR``                   where dialogs live                         ``data``
``SESSION_TIMEOUT``            inactivity before a session ends, in ms    ``300000``
``SESSION_CHECK_INTERVAL``     how often idle sessions are swept, in ms   ``30000``
``AUTO_ARCHIVE_ON_DISCONNECT`` end a session when its last connection     ``true``
                               closes
``DISCONNECT_GRACE``           seconds a reconnect may take to keep the   ``0``
                               session after the last connection closed
``SHUTDOWN_GRACE``             seconds shutdown waits for replies in      ``10``
                               flight before cancelling them
``DURABILITY``                 ``always``, ``batch`` or ``never``         ``batch``
``FSYNC_INTERVAL``             ms between flushes under ``batch``         ``200``
``CHAT_MODEL``                 ``auto``, ``local``, ``openai:<model>``    ``auto``
                               or ``echo`` (see `chatsession.models`)
``SYSTEM_PROMPT``              the system message sent before the dialog  empty
``OPENAI_BASE_URL``            an OpenAI-compatible endpoint              OpenAI's
``OPENAI_API_KEY``             its API key                                none
``MODEL_PATH``                 a GGUF file for the local model            SmolLM2-135M
``MODEL_THREADS``              CPU threads of the local model             every core
``MODEL_CONTEXT``              the model's context window, in tokens      4096 (local)
``MODEL_MAX_TOKENS``           the longest reply, in tokens               256 (local),
                                                                          512
``MODEL_TIMEOUT``              seconds an endpoint may stay silent        ``60``
``MODEL_RETRIES``              retries on 429 and 5xx before a reply      ``2``
``MODEL_QUEUE_TIMEOUT``        seconds a chat waits for the busy local    ``60``
                               model before it gives up
``MODEL_TEMPERATURE``          local model: sampling temperature          ``0.3``
``MODEL_TOP_P``                local model: nucleus sampling (top-p)      ``0.9``
``MODEL_REPEAT_PENALTY``       local model: penalty on repeated tokens    ``1.2``
                               (1.0: none)
``DEBUG``                      ``session:*`` turns on session debug logs  empty
``HOST``                       the address ``chatsession serve`` binds    ``127.0.0.1``
``PORT``                       the port it listens on                     ``8000``
``JWT_SECRET``                 HS256 secret (32 bytes or more): turns on  empty
                               JWT authentication
``JWT_PUBLIC_KEY``             RS256/ES256 public key (PEM, or a path to  empty
                               a PEM file): turns on JWT authentication
``JWT_ALGORITHMS``             accepted algorithms, comma-separated       by key kind
``JWT_AUDIENCE``               required ``aud`` claim                     empty
``JWT_ISSUER``                 required ``iss`` claim                     empty
``JWT_ADMIN_CLAIM``            claim that grants admin rights when true   ``admin``
``TRUSTED_PROXY``              trust ``x-user-id`` on any address (an     ``false``
                               authenticating proxy sits in front)
``TRUSTED_PROXY_ADMIN_HEADER`` behind a trusted proxy, the header whose  empty (none)
                               value ``admin`` grants admin rights
``CORS_ORIGINS``               origins allowed by CORS, comma-separated   empty
``ALLOWED_ORIGINS``            more origins whose pages may open ``/ws``  empty
                               and send ``POST``/``DELETE``
``ALLOWED_HOSTS``              ``Host`` values served, comma-separated    loopback in
                               (``*.example.com`` allowed)                development
``MAX_HEADER_BYTES``           largest request line and headers (431)     ``32768``
``HEADER_TIMEOUT``             seconds a client may take to send a        ``10``
                               request's headers, and a ``POST /chat``
                               body
``MAX_CONNECTIONS``            open connections in all; more get 503      ``4096``
                               (0: no cap)
``MAX_MESSAGE_BYTES``          largest WebSocket frame or HTTP body       ``65536``
``RATE_LIMIT``                 chat messages per minute per user (0: off) ``60``
``MAX_CONNECTIONS_PER_USER``   open WebSocket/SSE connections per user    ``8``
``HEARTBEAT_INTERVAL``         seconds between SSE heartbeats             ``30``
``WS_PING_INTERVAL``           seconds between WebSocket pings            ``20``
``WS_PING_TIMEOUT``            seconds to wait for a pong                 ``20``
``REDIS_URL``                  ``redis://host:port/db``: instances share  empty
                               their sessions through this Redis
``REDIS_PREFIX``               the prefix of every Redis key              ``chatsession:``
``REDIS_CLUSTER``              ``REDIS_URL`` is a Redis Cluster node      ``false``
``INSTANCE_TTL``               seconds before a silent instance counts    ``10``
                               as dead
``INSTANCE_ID``                this instance's name in the cluster        random
``ARCHIVE_RETENTION_DAYS``     days an archive is kept; older ones are    forever
                               deleted by the server's sweep
=============================  =========================================  ==============

Without ``JWT_SECRET`` or ``JWT_PUBLIC_KEY`` the server runs in development mode: it trusts
the ``x-user-id`` header, and refuses to start on an address other than loopback unless
``TRUSTED_PROXY`` says an authenticating proxy sits in front of it.

Durability decides when a stored message reaches the disk, not whether it is written:

- ``always``: every message is fsynced before the call that stores it returns, so a
  user's message is on disk before ``chat_with_history`` yields its first chunk.
- ``batch``: messages are written at once and fsynced every ``FSYNC_INTERVAL`` ms; a power
  loss may lose that last interval, a process crash loses nothing.
- ``never``: the operating system decides when to write back.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from chatsession._exceptions import ConfigError
from chatsession._types import DURABILITY_MODES, Durability

__all__ = ["Settings"]

logger = logging.getLogger("chatsession.settings")

_MIN_SECRET_BYTES = 32
_MAKE_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
_INSTANCE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TRUE = frozenset(("1", "true", "yes", "on"))
_FALSE = frozenset(("0", "false", "no", "off", ""))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything chatsession can be told; durations in seconds.

    Construct it directly (``Settings(data_dir="data")``) or from the environment with
    `Settings.from_env`. An unacceptable value raises `ConfigError` naming the setting.
    """

    data_dir: Path = Path("data")
    session_timeout: float = 300.0
    session_check_interval: float = 30.0
    auto_archive_on_disconnect: bool = True
    disconnect_grace: float = 0.0
    shutdown_grace: float = 10.0
    durability: Durability = "batch"
    fsync_interval: float = 0.2
    chat_model: str = "auto"
    system_prompt: str = ""
    openai_base_url: str | None = None
    openai_api_key: str | None = field(default=None, repr=False)
    model_path: Path | None = None
    model_threads: int | None = None
    model_context: int | None = None
    model_max_tokens: int | None = None  # 256 for the local model, 512 for endpoints
    model_timeout: float = 60.0
    model_retries: int = 2
    model_queue_timeout: float = 60.0
    model_temperature: float = 0.3
    model_top_p: float = 0.9
    model_repeat_penalty: float = 1.2
    debug: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    jwt_secret: str = field(default="", repr=False)
    jwt_public_key: str = ""
    jwt_algorithms: tuple[str, ...] = ()
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_admin_claim: str = "admin"
    trusted_proxy: bool = False
    trusted_proxy_admin_header: str = ""
    cors_origins: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    max_header_bytes: int = 32768
    header_timeout: float = 10.0
    max_connections: int = 4096
    max_message_bytes: int = 65536
    rate_limit: int = 60
    max_connections_per_user: int = 8
    heartbeat_interval: float = 30.0
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    archive_retention_days: float | None = None
    redis_url: str = field(default="", repr=False)
    redis_prefix: str = "chatsession:"
    redis_cluster: bool = False
    instance_ttl: float = 10.0
    instance_id: str = ""

    def __post_init__(self) -> None:
        if "://" in str(self.data_dir):
            raise ConfigError(
                f"data_dir must be a directory, got {str(self.data_dir)!r}; to keep dialogs "
                "elsewhere, pass a store to ChatServer (chatsession.storage.open_store)"
            )
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.model_path is not None:
            object.__setattr__(self, "model_path", Path(self.model_path))
        for name in ("session_timeout", "session_check_interval", "fsync_interval"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be greater than 0, got {getattr(self, name)!r}")
        for name in ("disconnect_grace", "shutdown_grace"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be 0 or more, got {getattr(self, name)!r}")
        if self.durability not in DURABILITY_MODES:
            raise ConfigError(
                f"durability must be one of {', '.join(DURABILITY_MODES)}, got {self.durability!r}"
            )
        if not self.chat_model:
            raise ConfigError("chat_model must name a model, such as 'auto' or 'echo'")
        for name in ("model_threads", "model_context"):
            if getattr(self, name) is not None and not getattr(self, name) >= 1:
                raise ConfigError(f"{name} must be 1 or more, got {getattr(self, name)!r}")
        if self.model_max_tokens is not None and not self.model_max_tokens >= 1:
            raise ConfigError(f"model_max_tokens must be 1 or more, got {self.model_max_tokens!r}")
        if not self.model_retries >= 0:
            raise ConfigError(f"model_retries must be 0 or more, got {self.model_retries!r}")
        for name in ("model_timeout", "model_queue_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be greater than 0, got {getattr(self, name)!r}")
        if not 0 <= self.model_temperature <= 5:
            raise ConfigError(
                f"model_temperature must be between 0 and 5, got {self.model_temperature!r}"
            )
        if not 0 < self.model_top_p <= 1:
            raise ConfigError(f"model_top_p must be over 0 and at most 1, got {self.model_top_p!r}")
        if not 0 < self.model_repeat_penalty <= 5:
            raise ConfigError(
                f"model_repeat_penalty must be over 0 and at most 5, "
                f"got {self.model_repeat_penalty!r}"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, got {self.port!r}")
        if self.jwt_secret and self.jwt_public_key:
            raise ConfigError("give jwt_secret (HS256) or jwt_public_key (RS256/ES256), not both")
        if self.jwt_secret and len(self.jwt_secret.encode()) < _MIN_SECRET_BYTES:
            # RFC 7518 asks for a key as long as the hash at least: shorter ones can be guessed.
            raise ConfigError(
                f"jwt_secret (JWT_SECRET) is {len(self.jwt_secret.encode())} bytes; an HMAC "
                f"secret must be at least {_MIN_SECRET_BYTES} random bytes, or tokens can be "
                f"forged by guessing it. Make one with: {_MAKE_SECRET}"
            )
        for name in ("max_message_bytes", "max_connections_per_user", "max_header_bytes"):
            if not getattr(self, name) >= 1:
                raise ConfigError(f"{name} must be 1 or more, got {getattr(self, name)!r}")
        for name in ("rate_limit", "max_connections"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be 0 or more, got {getattr(self, name)!r}")
        for name in ("heartbeat_interval", "ws_ping_interval", "ws_ping_timeout", "header_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be greater than 0, got {getattr(self, name)!r}")
        if self.archive_retention_days is not None and not self.archive_retention_days > 0:
            days = self.archive_retention_days
            raise ConfigError(f"archive_retention_days must be greater than 0, got {days!r}")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"redis_url must be a redis://, rediss:// or unix:// URL, got {self.redis_url!r}"
            )
        if any(c in self.redis_prefix for c in "{} "):
            raise ConfigError("redis_prefix must not hold braces or spaces")
        if not self.instance_ttl >= 1:
            raise ConfigError(f"instance_ttl must be 1 second or more, got {self.instance_ttl!r}")
        if self.instance_id and not _INSTANCE_ID.fullmatch(self.instance_id):
            raise ConfigError("instance_id must be 1 to 64 letters, digits or '_.-' characters")
        object.__setattr__(self, "jwt_algorithms", tuple(self.jwt_algorithms))
        for name in ("cors_origins", "allowed_origins", "allowed_hosts"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def auth_mode(self) -> str:
        """``jwt`` when a secret or public key is configured, else ``dev``."""
        return "jwt" if self.jwt_secret or self.jwt_public_key else "dev"

    @property
    def session_debug(self) -> bool:
        """Whether ``DEBUG`` asks for session debug logs (``session:*``, ``*``)."""
        patterns = (p.strip() for p in self.debug.replace(",", " ").split())
        return any(p in ("*", "session:*", "session") for p in patterns)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from environment variables (``os.environ`` by default).

        Raises:
            ConfigError: a variable has a value it cannot accept; the message names the
                variable and what it accepts.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for variable, (field_name, parse) in _ENVIRONMENT.items():
            raw = env.get(variable)
            if raw is None or not raw.strip():
                continue  # unset and set-but-empty both mean the default
            try:
                values[field_name] = parse(raw.strip())
            except ValueError as exc:
                raise ConfigError(f"{variable}={raw!r} is not accepted: {exc}") from None
        values.update(overrides)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"invalid configuration: {exc}") from None


def _milliseconds(raw: str) -> float:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("expected a whole number of milliseconds, such as 300000") from None
    if value <= 0:
        raise ValueError("expected a number of milliseconds greater than 0")
    return value / 1000


def _session_milliseconds(variable: str) -> Callable[[str], float]:
    """Milliseconds, as in the guide; a value under a second is taken, with a warning."""

    def parse(raw: str) -> float:
        value = _milliseconds(raw)
        if value < 1:
            logger.warning(
                "%s=%s means %s milliseconds (%.3g s): %s is in milliseconds, as in the "
                "guide; for %s seconds write %s000",
                variable,
                raw,
                raw,
                value,
                variable,
                raw,
                raw,
            )
        return value

    return parse


def _fraction(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("expected a number, such as 0.9") from None


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number of seconds, such as 5 or 0.5") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError("expected a finite number of seconds, 0 or more")
    return value


def _boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected true or false (also 1/0, yes/no, on/off)")


def _durability(raw: str) -> Durability:
    lowered = raw.lower()
    if lowered not in DURABILITY_MODES:
        raise ValueError(f"expected one of {', '.join(DURABILITY_MODES)}")
    return cast(Durability, lowered)


def _positive_count(raw: str) -> int:
    value = _count(raw)
    if value == 0:
        raise ValueError("expected a whole number greater than 0")
    return value


def _directory(raw: str) -> Path:
    if "://" in raw:
        raise ValueError("expected a directory, not a URL")
    return Path(raw)


def _nonempty(raw: str) -> str:
    if not raw:
        raise ValueError("expected a non-empty value")
    return raw


def _port(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("expected a port number, such as 8000") from None
    if not 0 <= value <= 65535:
        raise ValueError("expected a port number between 0 and 65535")
    return value


def _count(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("expected a whole number, such as 10") from None
    if value < 0:
        raise ValueError("expected a whole number, 0 or more")
    return value


def _positive_seconds(raw: str) -> float:
    value = _seconds(raw)
    if value <= 0:
        raise ValueError("expected a number of seconds greater than 0")
    return value


def _days(raw: str) -> float | None:
    if raw.lower() in ("forever", "none", "0"):
        return None
    value = float(raw)
    if not value > 0:
        raise ValueError("expected a number of days greater than 0, or 'forever'")
    return value


def _names(raw: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in raw.split(",") if name.strip())


_ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "DATA_DIR": ("data_dir", lambda raw: _directory(raw)),
    "SESSION_TIMEOUT": ("session_timeout", _session_milliseconds("SESSION_TIMEOUT")),
    "SESSION_CHECK_INTERVAL": (
        "session_check_interval",
        _session_milliseconds("SESSION_CHECK_INTERVAL"),
    ),
    "AUTO_ARCHIVE_ON_DISCONNECT": ("auto_archive_on_disconnect", _boolean),
    "DISCONNECT_GRACE": ("disconnect_grace", _seconds),
    "SHUTDOWN_GRACE": ("shutdown_grace", _seconds),
    "DURABILITY": ("durability", _durability),
    "FSYNC_INTERVAL": ("fsync_interval", _milliseconds),
    "CHAT_MODEL": ("chat_model", _nonempty),
    "SYSTEM_PROMPT": ("system_prompt", str),
    "OPENAI_BASE_URL": ("openai_base_url", lambda raw: raw or None),
    "OPENAI_API_KEY": ("openai_api_key", lambda raw: raw or None),
    "MODEL_PATH": ("model_path", lambda raw: Path(raw) if raw else None),
    "MODEL_THREADS": ("model_threads", _positive_count),
    "MODEL_CONTEXT": ("model_context", _positive_count),
    "MODEL_MAX_TOKENS": ("model_max_tokens", _positive_count),
    "MODEL_TIMEOUT": ("model_timeout", _positive_seconds),
    "MODEL_RETRIES": ("model_retries", _count),
    "MODEL_QUEUE_TIMEOUT": ("model_queue_timeout", _positive_seconds),
    "MODEL_TEMPERATURE": ("model_temperature", _fraction),
    "MODEL_TOP_P": ("model_top_p", _fraction),
    "MODEL_REPEAT_PENALTY": ("model_repeat_penalty", _fraction),
    "DEBUG": ("debug", str),
    "HOST": ("host", _nonempty),
    "PORT": ("port", _port),
    "JWT_SECRET": ("jwt_secret", str),
    "JWT_PUBLIC_KEY": ("jwt_public_key", str),
    "JWT_ALGORITHMS": ("jwt_algorithms", _names),
    "JWT_AUDIENCE": ("jwt_audience", str),
    "JWT_ISSUER": ("jwt_issuer", str),
    "JWT_ADMIN_CLAIM": ("jwt_admin_claim", _nonempty),
    "TRUSTED_PROXY": ("trusted_proxy", _boolean),
    "TRUSTED_PROXY_ADMIN_HEADER": ("trusted_proxy_admin_header", str),
    "CORS_ORIGINS": ("cors_origins", _names),
    "ALLOWED_ORIGINS": ("allowed_origins", _names),
    "ALLOWED_HOSTS": ("allowed_hosts", _names),
    "MAX_HEADER_BYTES": ("max_header_bytes", _positive_count),
    "HEADER_TIMEOUT": ("header_timeout", _positive_seconds),
    "MAX_CONNECTIONS": ("max_connections", _count),
    "MAX_MESSAGE_BYTES": ("max_message_bytes", _count),
    "RATE_LIMIT": ("rate_limit", _count),
    "MAX_CONNECTIONS_PER_USER": ("max_connections_per_user", _count),
    "HEARTBEAT_INTERVAL": ("heartbeat_interval", _positive_seconds),
    "WS_PING_INTERVAL": ("ws_ping_interval", _positive_seconds),
    "WS_PING_TIMEOUT": ("ws_ping_timeout", _positive_seconds),
    "ARCHIVE_RETENTION_DAYS": ("archive_retention_days", _days),
    "REDIS_URL": ("redis_url", str),
    "REDIS_PREFIX": ("redis_prefix", _nonempty),
    "REDIS_CLUSTER": ("redis_cluster", _boolean),
    "INSTANCE_TTL": ("instance_ttl", _positive_seconds),
    "INSTANCE_ID": ("instance_id", str),
}


# Each variable's meaning with its unit, and its default as written in the environment
# (``chatsession serve --help`` shows them).
_HELP: dict[str, tuple[str, str]] = {
    "DATA_DIR": ("where dialogs live, a directory", "data"),
    "SESSION_TIMEOUT": ("inactivity before a session ends, in milliseconds", "300000"),
    "SESSION_CHECK_INTERVAL": ("how often idle sessions are swept, in milliseconds", "30000"),
    "AUTO_ARCHIVE_ON_DISCONNECT": ("end a session when its last connection closes", "true"),
    "DISCONNECT_GRACE": ("seconds a reconnect may take and keep the session", "0"),
    "SHUTDOWN_GRACE": ("seconds shutdown waits for replies still streaming", "10"),
    "DURABILITY": ("when messages reach the disk: always, batch or never", "batch"),
    "FSYNC_INTERVAL": ("milliseconds between flushes under batch", "200"),
    "CHAT_MODEL": ("the model: auto, local, openai:<model> or echo", "auto"),
    "SYSTEM_PROMPT": ("the system message sent before the dialog", "none"),
    "OPENAI_BASE_URL": ("an OpenAI-compatible endpoint, ending in /v1", "OpenAI's"),
    "OPENAI_API_KEY": ("the endpoint's API key (environment only)", "none"),
    "MODEL_PATH": ("a GGUF file for the local model", "SmolLM2-135M"),
    "MODEL_THREADS": ("CPU threads of the local model", "every core"),
    "MODEL_CONTEXT": ("the model's context window, in tokens", "4096 (local)"),
    "MODEL_MAX_TOKENS": ("the longest reply, in tokens", "256 (local), 512 (endpoints)"),
    "MODEL_TIMEOUT": ("seconds an endpoint may take to connect or stay silent", "60"),
    "MODEL_RETRIES": ("retries of requests refused with 429 or 5xx", "2"),
    "MODEL_QUEUE_TIMEOUT": ("seconds a chat waits for the busy local model", "60"),
    "MODEL_TEMPERATURE": ("local model: sampling temperature, 0 to 5", "0.3"),
    "MODEL_TOP_P": ("local model: nucleus sampling, over 0 and at most 1", "0.9"),
    "MODEL_REPEAT_PENALTY": ("local model: penalty on repeated tokens, 1.0 for none", "1.2"),
    "DEBUG": ("session:* logs every session start and end", "none"),
    "HOST": ("the address to listen on", "127.0.0.1"),
    "PORT": ("the port to listen on", "8000"),
    "JWT_SECRET": ("HS256 secret, 32+ bytes: turns on JWT (environment only)", "none"),
    "JWT_PUBLIC_KEY": ("RS256/ES256 public key, a PEM or its path: turns on JWT", "none"),
    "JWT_ALGORITHMS": ("accepted JWT algorithms, comma-separated", "by key kind"),
    "JWT_AUDIENCE": ("required aud claim", "none"),
    "JWT_ISSUER": ("required iss claim", "none"),
    "JWT_ADMIN_CLAIM": ("the claim that makes a user an admin when true", "admin"),
    "TRUSTED_PROXY": ("trust x-user-id on any address (a proxy authenticates)", "false"),
    "CORS_ORIGINS": ("origins allowed by CORS, comma-separated", "none"),
    "MAX_MESSAGE_BYTES": ("largest WebSocket frame or HTTP body, in bytes", "65536"),
    "RATE_LIMIT": ("chat messages per minute per user, 0 for no limit", "60"),
    "MAX_CONNECTIONS_PER_USER": ("open WebSocket and SSE connections per user", "8"),
    "HEARTBEAT_INTERVAL": ("seconds between SSE heartbeats", "30"),
    "WS_PING_INTERVAL": ("seconds between WebSocket pings", "20"),
    "WS_PING_TIMEOUT": ("seconds to wait for a WebSocket pong", "20"),
    "TRUSTED_PROXY_ADMIN_HEADER": (
        "behind a trusted proxy, the header whose value admin grants admin rights",
        "none",
    ),
    "ALLOWED_ORIGINS": ("more origins whose pages may open /ws and POST, comma-separated", "none"),
    "ALLOWED_HOSTS": ("Host names served, comma-separated", "loopback in dev mode, else any"),
    "MAX_HEADER_BYTES": ("largest request line and headers, in bytes", "32768"),
    "HEADER_TIMEOUT": ("seconds a client may take to send a request's headers", "10"),
    "MAX_CONNECTIONS": ("open connections in all, 0 for no cap", "4096"),
    "ARCHIVE_RETENTION_DAYS": ("days archives are kept before the sweep deletes them", "forever"),
    "REDIS_URL": ("redis://host:port/db: share sessions with other instances (env only)", "none"),
    "REDIS_PREFIX": ("the prefix of every Redis key", "chatsession:"),
    "REDIS_CLUSTER": ("REDIS_URL names a node of a Redis Cluster", "false"),
    "INSTANCE_TTL": ("seconds after which a silent instance counts as dead", "10"),
    "INSTANCE_ID": ("this instance's name among the instances", "random"),
}


def environment_variables() -> dict[str, tuple[str, Callable[[str], Any]]]:
    """Each environment variable's setting name and parser (the CLI mirrors them)."""
    return dict(_ENVIRONMENT)


def setting_help(variable: str) -> tuple[str, str] | None:
    """A variable's meaning (with its unit) and its default as written; None if unknown."""
    return _HELP.get(variable)

"""The exceptions chatsession raises.

Every error the library raises derives from `ChatSessionError`, and errors from the file
system, YAML or a model SDK are translated at the boundary (``raise ... from exc``), so a
caller never has to catch another library's exceptions::

    ChatSessionError
    ├── ConfigError              a setting has a value it cannot accept
    ├── InvalidUserId            a user id that cannot name a directory safely
    ├── InvalidMessage           a message that is not storable text
    ├── SessionError
    │   ├── InvalidSessionId     a client-chosen session id that is not acceptable
    │   ├── ServerClosedError    the ChatServer is not running (not entered, or closed)
    │   ├── RegistryUnavailable  the shared registry (Redis) cannot be reached; retry later
    │   └── OwnershipLost        another instance owns the session now (retried inside)
    │       └── FencedOff        a write refused: a newer owner's epoch holds the dialog
    ├── StorageError             reading or writing a dialog failed
    │   ├── CorruptDialogError   a dialog file does not parse; names the file
    │   ├── DataDirLocked        another process owns the data dir; names it
    │   ├── DialogNotFound       no archive with that id
    │   └── StorageFullError     the disk is full (or a file size limit was hit)
    ├── ModelError               the chat model failed
    │   ├── ModelOutputError     the reply is not what was asked for (JSON that does not parse)
    │   ├── ModelTimeoutError    the chat model did not answer in time
    │   │   └── ModelBusyError   the local model stayed busy with others past the bounded wait
    │   ├── ModelUnavailableError    the model's endpoint cannot be reached, or keeps failing
    │   ├── ModelAuthenticationError no API key, or the endpoint refused it
    │   ├── ModelNotFoundError       the endpoint does not serve that model; no weights file
    │   ├── ModelRateLimitError      the endpoint still rate-limits after the retries
    │   └── ModelContextLengthError  the conversation does not fit the model's context window
    └── RequestError             the server refuses a client's request; carries an HTTP status
        ├── AuthenticationError  401: no identity, or a token that does not verify
        ├── PermissionDenied     403: another user's stream or dialogs, or not an admin
        ├── BadRequest           400: malformed JSON, or an unknown message type
        ├── RequestTimeout       408: a body that did not arrive in time
        ├── PayloadTooLarge      413: a frame or body over the size limit
        ├── UnsupportedMediaType 415: a body that is not declared as JSON
        ├── InvalidRequest       422: a field is missing or has the wrong type
        └── TooManyRequests      429: over the per-user message rate or connection limit
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "AuthenticationError",
    "BadRequest",
    "ChatSessionError",
    "ConfigError",
    "CorruptDialogError",
    "DataDirLocked",
    "DialogNotFound",
    "FencedOff",
    "InvalidMessage",
    "InvalidRequest",
    "InvalidSessionId",
    "InvalidUserId",
    "ModelAuthenticationError",
    "ModelBusyError",
    "ModelContextLengthError",
    "ModelError",
    "ModelNotFoundError",
    "ModelOutputError",
    "ModelRateLimitError",
    "ModelTimeoutError",
    "ModelUnavailableError",
    "OwnershipLost",
    "PayloadTooLarge",
    "PermissionDenied",
    "RegistryUnavailable",
    "RequestError",
    "RequestTimeout",
    "ServerClosedError",
    "SessionError",
    "StorageError",
    "StorageFullError",
    "TooManyRequests",
    "UnsupportedMediaType",
]


class ChatSessionError(Exception):
    """The root of every error chatsession raises."""


class ConfigError(ChatSessionError):
    """A setting has a value it cannot accept; the message names the setting."""


class InvalidUserId(ChatSessionError, ValueError):
    """A user id that is empty, too long, or holds control characters."""


class InvalidMessage(ChatSessionError, ValueError):
    """A message that is not text, or not valid Unicode."""


class SessionError(ChatSessionError):
    """A session operation that cannot be carried out."""


class InvalidSessionId(SessionError, ValueError):
    """A client-chosen session id that is empty, too long, or has unusual characters."""


class ServerClosedError(SessionError, RuntimeError):
    """The ChatServer is not running: it was never entered, or it has been closed."""


class RegistryUnavailable(SessionError):
    """The registry several instances share (Redis) cannot be reached, or is settling.

    ``retry_after`` is the number of seconds after which a retry may succeed.
    """

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OwnershipLost(SessionError):
    """Another instance owns the session now; this one must not write its dialog."""


class FencedOff(OwnershipLost):
    """A write was refused because it carries an epoch older than the dialog's owner.

    Raised by the registry (this instance no longer owns the user at that epoch) or by the
    store itself (it has seen a higher epoch for the user). Nothing was stored; the client
    should reconnect, and reaches the session's current owner.
    """


class StorageError(ChatSessionError):
    """Reading or writing a dialog failed."""


class CorruptDialogError(StorageError):
    """A dialog file exists but is not a dialog chatsession can read."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class DataDirLocked(StorageError):
    """Another process holds the data dir's lock; the message names it (pid, address)."""


class DialogNotFound(StorageError, LookupError):
    """No archived dialog has the requested id."""


class StorageFullError(StorageError):
    """The disk is full, or a file size limit was reached; nothing partial was kept."""


class ModelError(ChatSessionError):
    """The chat model failed to produce a reply."""


class ModelOutputError(ModelError):
    """The model's whole reply is not what was asked for, such as JSON that does not parse.

    The reply is stored all the same, with the reason in its ``error`` field.
    """


class ModelTimeoutError(ModelError):
    """The chat model did not answer in time."""


class ModelBusyError(ModelTimeoutError):
    """A generation waited for the local model longer than allowed; others were ahead."""


class ModelUnavailableError(ModelError):
    """The model's endpoint cannot be reached, or answered with server errors past retries."""


class ModelAuthenticationError(ModelError):
    """No API key was given where one is needed, or the endpoint refused the key."""


class ModelNotFoundError(ModelError):
    """The endpoint does not serve the model named, or a model file does not exist."""


class ModelRateLimitError(ModelError):
    """The endpoint still answered "too many requests" after the retries."""


class ModelContextLengthError(ModelError):
    """The conversation sent does not fit the model's context window."""


class RequestError(ChatSessionError):
    """The server refuses a client's request; ``status`` is the HTTP status to answer with."""

    status = 400


class AuthenticationError(RequestError):
    """No identity was given, or a token that does not verify."""

    status = 401


class PermissionDenied(RequestError):
    """The caller may not see this: another user's stream or dialogs, or an admin page."""

    status = 403


class BadRequest(RequestError):
    """Malformed JSON, or a message type the server does not know."""

    status = 400


class RequestTimeout(RequestError):
    """A request body that did not arrive within the time allowed (``HEADER_TIMEOUT``)."""

    status = 408


class PayloadTooLarge(RequestError):
    """A WebSocket frame or HTTP body larger than ``max_message_bytes``."""

    status = 413


class UnsupportedMediaType(RequestError):
    """A body whose ``Content-Type`` is not ``application/json``.

    Browsers send ``text/plain`` and form bodies to other sites without asking first, so a
    body of any other type is refused rather than parsed as JSON all the same.
    """

    status = 415


class InvalidRequest(RequestError):
    """A required field is missing or has the wrong type."""

    status = 422


class TooManyRequests(RequestError):
    """Over the per-user message rate, or the per-user connection limit."""

    status = 429

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

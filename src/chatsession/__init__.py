"""chatsession: chat sessions for LLM applications, archived as YAML when they end."""

from chatsession._exceptions import (
    ChatSessionError,
    ConfigError,
    CorruptDialogError,
    DataDirLocked,
    DialogNotFound,
    InvalidMessage,
    InvalidSessionId,
    InvalidUserId,
    ModelAuthenticationError,
    ModelBusyError,
    ModelContextLengthError,
    ModelError,
    ModelNotFoundError,
    ModelOutputError,
    ModelRateLimitError,
    ModelTimeoutError,
    ModelUnavailableError,
    ServerClosedError,
    SessionError,
    StorageError,
    StorageFullError,
)
from chatsession._state import Connection
from chatsession.chatserver import ChatServer
from chatsession.domain import (
    ArchiveSummary,
    Chunk,
    Dialog,
    Message,
    Reasoning,
    SessionEvent,
    SessionInfo,
)
from chatsession.models.base import ChatModel
from chatsession.settings import Settings
from chatsession.storage.base import DialogStore

__version__ = "0.1.0"

__all__ = [
    "ArchiveSummary",
    "ChatModel",
    "ChatServer",
    "ChatSessionError",
    "Chunk",
    "ConfigError",
    "Connection",
    "CorruptDialogError",
    "DataDirLocked",
    "Dialog",
    "DialogNotFound",
    "DialogStore",
    "InvalidMessage",
    "InvalidSessionId",
    "InvalidUserId",
    "Message",
    "ModelAuthenticationError",
    "ModelBusyError",
    "ModelContextLengthError",
    "ModelError",
    "ModelNotFoundError",
    "ModelOutputError",
    "ModelRateLimitError",
    "ModelTimeoutError",
    "ModelUnavailableError",
    "Reasoning",
    "ServerClosedError",
    "SessionError",
    "SessionEvent",
    "SessionInfo",
    "Settings",
    "StorageError",
    "StorageFullError",
    "__version__",
]

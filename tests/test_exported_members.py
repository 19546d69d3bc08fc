"""The public surface is deliberate: a test fails when it drifts."""

from __future__ import annotations

from types import ModuleType

import chatsession


def test_all_names_are_exported_and_nothing_else_public() -> None:
    """Every name in __all__ exists, and no public name is missing from __all__."""
    public = {
        name
        for name in dir(chatsession)
        if not name.startswith("_") and not isinstance(getattr(chatsession, name), ModuleType)
    }
    assert set(chatsession.__all__) - {"__version__"} == public
    for name in chatsession.__all__:
        assert getattr(chatsession, name) is not None


def test_every_exception_derives_from_the_root() -> None:
    """Every exported exception is a ChatSessionError."""
    for name in chatsession.__all__:
        value = getattr(chatsession, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, chatsession.ChatSessionError), name

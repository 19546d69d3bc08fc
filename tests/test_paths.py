"""User ids never name a path outside DATA_DIR: plain ids as they are, others encoded."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatsession import ChatServer, InvalidUserId, Settings
from chatsession.storage._paths import check_user_id, directory_name, user_id_from_directory
from chatsession.storage.files import YamlDialogStore

HOSTILE = [
    "..",
    ".",
    "../../etc/passwd",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "C:\\Windows",
    "~root",
    "-rf",
    " spaced ",
    "auth0|1234",
    "ünïcødé",
    "%2e%2e",
    "x" * 128,
]


@pytest.mark.parametrize("user_id", HOSTILE)
def test_hostile_ids_stay_inside_the_users_directory(user_id: str, tmp_path: Path) -> None:
    """Every accepted id maps to one plain directory name directly under users/."""
    name = directory_name(user_id)
    assert "/" not in name
    assert "\\" not in name
    assert name not in (".", "..")
    assert len(name.encode()) <= 255
    directory = YamlDialogStore(tmp_path).dialogs_dir(user_id)
    assert directory.parent.parent == tmp_path / "users"
    assert user_id_from_directory(name) == user_id


@pytest.mark.parametrize("user_id", ["", "a\x00b", "line\nbreak", "x" * 129, "é" * 65])
def test_unstorable_ids_are_refused_with_a_clear_error(user_id: str) -> None:
    """Empty, NUL and other control characters, and over-long ids are refused."""
    with pytest.raises(InvalidUserId, match="user id"):
        check_user_id(user_id)


def test_plain_ids_are_kept_readable() -> None:
    """Ordinary ids and e-mail addresses name their directory as they are."""
    for user_id in ("alice", "bob@example.com", "user_42", "a.b-c+d"):
        assert directory_name(user_id) == user_id


def test_encoded_and_plain_names_never_collide() -> None:
    """An id that looks like an encoding is itself encoded, not taken literally."""
    encoded = directory_name("../x")
    assert directory_name(encoded) != encoded
    assert user_id_from_directory(directory_name(encoded)) == encoded


async def test_hostile_id_chats_and_archives_inside_data_dir(tmp_path: Path) -> None:
    """A chat under '../../escape' writes only below DATA_DIR."""
    data = tmp_path / "data"
    async with ChatServer(Settings(chat_model="echo", data_dir=data)) as chat:
        async for _ in chat.chat_with_history("../../escape", "hi"):
            pass
        archive_id = await chat.end_user_session("../../escape")
        assert archive_id is not None
        dialog = await chat.get_archive("../../escape", archive_id)
    assert dialog.user_id == "../../escape"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert not (tmp_path / "escape").exists()


async def test_invalid_id_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """The library raises InvalidUserId and writes nothing for an unstorable id."""
    async with ChatServer(Settings(chat_model="echo", data_dir=tmp_path / "data")) as chat:
        with pytest.raises(InvalidUserId):
            await chat.start_user_session("")
        with pytest.raises(InvalidUserId):
            async for _ in chat.chat_with_history("nul\x00", "hi"):
                pass
        assert await chat.get_active_session_count() == 0
    assert not (tmp_path / "data" / "users").exists()

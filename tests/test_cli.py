"""The chatsession command reads archives: a table of them, and one as YAML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chatsession import ChatServer, Settings
from chatsession.cli import main
from tests.conftest import collect


@pytest.fixture
async def archived(tmp_path: Path) -> str:
    async with ChatServer(Settings(chat_model="echo", data_dir=tmp_path)) as chat:
        await collect(chat, "alice", "hello there")
        archive_id = await chat.end_user_session("alice", reason="timeout")
    assert archive_id is not None
    return archive_id


def test_dialogs_lists_archives(
    archived: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """dialogs USER prints id, start, end, message count and reason."""
    assert main(["dialogs", "alice", "--data-dir", str(tmp_path)]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["ARCHIVE", "STARTED", "ENDED", "MESSAGES", "REASON"]
    assert row.split()[0] == archived
    assert row.split()[-2:] == ["2", "timeout"]


def test_show_prints_the_archive_as_yaml(
    archived: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """show USER ID prints the dialog as YAML a person (or a program) can read."""
    assert main(["show", "alice", archived, "--data-dir", str(tmp_path)]) == 0
    document = yaml.safe_load(capsys.readouterr().out)
    assert [m["content"] for m in document["messages"]] == ["hello there", "echo: hello there"]
    assert document["end_reason"] == "timeout"


def test_unknown_archive_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing archive exits 1 with a one-line message, no traceback."""
    assert main(["show", "alice", "2024-01-01-00-00-00", "--data-dir", str(tmp_path)]) == 1
    assert "has no archive '2024-01-01-00-00-00'" in capsys.readouterr().err


def test_user_without_archives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A user with nothing archived gets a sentence, not an empty table."""
    assert main(["dialogs", "nobody", "--data-dir", str(tmp_path)]) == 0
    assert "no archived dialogs for 'nobody'" in capsys.readouterr().out


def test_console_script_runs(archived: str, tmp_path: Path) -> None:
    """The installed entry point works as a real process, reading DATA_DIR."""
    result = subprocess.run(
        [sys.executable, "-m", "chatsession.cli", "dialogs", "alice"],
        capture_output=True,
        text=True,
        env={"DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert archived in result.stdout


def test_serve_help_gives_each_flag_its_meaning_unit_default_and_variable() -> None:
    """serve --help: "--session-timeout ... in milliseconds; default 300000 ($SESSION_TIMEOUT)"."""
    serve_help = " ".join(
        subprocess.run(
            [sys.executable, "-m", "chatsession", "serve", "--help"],
            capture_output=True,
            text=True,
            check=True,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        ).stdout.split()
    )
    assert "inactivity before a session ends, in milliseconds; default 300000" in serve_help
    assert "($SESSION_TIMEOUT)" in serve_help
    assert "seconds shutdown waits for replies still streaming; default 10" in serve_help
    assert "the model: auto, local, openai:<model> or echo; default auto ($CHAT_MODEL)" in (
        serve_help
    )


def test_purge_erases_one_user_offline(
    archived: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """purge USER removes that user's dialogs and archives and leaves other users' alone."""
    bob = tmp_path / "users" / "bob" / "dialogs"
    bob.mkdir(parents=True)
    (bob / "current.yaml").write_text("kept")
    assert main(["purge", "alice", "--data-dir", str(tmp_path)]) == 0
    assert "1 archives" in capsys.readouterr().out
    assert not (tmp_path / "users" / "alice").exists()
    assert (bob / "current.yaml").read_text() == "kept"


def test_purge_refuses_while_a_server_holds_the_data_dir(
    archived: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With DATA_DIR/.lock taken by a server, purge refuses (unless --force) and removes nothing."""
    import fcntl

    with open(tmp_path / ".lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        holder = subprocess.run(
            [sys.executable, "-m", "chatsession", "purge", "alice", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            check=False,
        )
    assert holder.returncode == 1
    assert "stop it first" in holder.stderr
    assert (tmp_path / "users" / "alice" / "dialogs" / "archived" / f"{archived}.yaml").exists()
    assert main(["purge", "alice", "--data-dir", str(tmp_path)]) == 0  # the lock is free now

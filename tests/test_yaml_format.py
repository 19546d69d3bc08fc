"""The dialog file format: readable YAML, appendable, and tolerant of a torn last record."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from chatsession import CorruptDialogError, Dialog, Message
from chatsession.storage import _yaml_format as fmt

T0 = datetime(2024, 1, 15, 10, 25, tzinfo=UTC)
PATH = Path("current.yaml")


def _file(*messages: Message, ended: bool = False) -> str:
    text = fmt.dump_header("alice", "s1", T0) + "".join(fmt.dump_message(m) for m in messages)
    if ended:
        text += fmt.dump_trailer(T0, "timeout")
    return text


MESSAGES = [
    Message("user", "hi", T0),
    Message("assistant", "line one\nline two\n", T0, reasoning="think", interrupted=True),
    Message("user", "quotes ' \" : - # and trailing space ", T0, error="x"),
    Message("assistant", "", T0),
    Message("user", "ünïcødé ✓ 中文", T0),
]


def test_appended_records_form_one_readable_mapping() -> None:
    """Header plus appended records plus trailer is a plain YAML mapping."""
    text = _file(*MESSAGES, ended=True)
    document = yaml.safe_load(text)
    assert list(document) == [
        "user_id",
        "session_id",
        "started_at",
        "messages",
        "ended_at",
        "end_reason",
    ]
    assert document["messages"][0] == {
        "role": "user",
        "content": "hi",
        "timestamp": T0.isoformat(),
    }


def test_round_trip_keeps_every_field() -> None:
    """What is written is what is read back."""
    dialog = fmt.parse_dialog(_file(*MESSAGES, ended=True), PATH)
    assert dialog.messages == MESSAGES
    assert (dialog.user_id, dialog.session_id, dialog.started_at) == ("alice", "s1", T0)
    assert (dialog.ended_at, dialog.end_reason) == (T0, "timeout")
    again = fmt.parse_dialog(fmt.dump_dialog(dialog), PATH)
    assert again == dialog


def test_header_without_messages_is_an_empty_dialog() -> None:
    """A header alone parses as a dialog with no messages."""
    assert fmt.parse_dialog(_file(), PATH).messages == []


def test_every_truncation_point_loads_all_whole_records() -> None:
    """Cut anywhere: the file loads, keeping exactly the records written whole."""
    whole = _file(*MESSAGES)
    header_length = len(_file())
    ends = []
    text = _file()
    for message in MESSAGES:
        text += fmt.dump_message(message)
        ends.append(len(text))
    for cut in range(header_length, len(whole) + 1):
        dialog = fmt.parse_dialog(whole[:cut], PATH)
        expected = sum(1 for end in ends if end <= cut)
        assert dialog.messages == MESSAGES[:expected], f"cut at {cut}"


def test_zero_filled_tail_is_ignored() -> None:
    """A crash can leave zeros past the last write; they are not a record."""
    text = _file(*MESSAGES[:2]) + "\x00" * 100
    assert fmt.parse_dialog(text, PATH).messages == MESSAGES[:2]


def test_torn_last_record_is_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """The warning names the file."""
    text = _file(*MESSAGES[:2]) + "- role: user\n  content: hal"
    dialog = fmt.parse_dialog(text, Path("/data/users/alice/dialogs/current.yaml"))
    assert dialog.messages == MESSAGES[:2]
    assert "alice/dialogs/current.yaml: dropped a torn last message" in caplog.text


def test_torn_trailer_keeps_the_messages() -> None:
    """A crash while archiving loses no message."""
    text = _file(*MESSAGES[:2]) + "ended_at: '2024-01-15T10:2"
    dialog = fmt.parse_dialog(text, PATH)
    assert dialog.messages == MESSAGES[:2]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("user_id: [unclosed\n", "not valid YAML"),
        ("- just a list\n", "expected a YAML mapping"),
        ("user_id: a\nsession_id: s\n", "missing field 'started_at'"),
        ("user_id: a\nsession_id: s\nstarted_at: yesterday\nmessages:\n", "ISO"),
        (
            "user_id: a\nsession_id: s\nstarted_at: '2024-01-15T10:25:00'\nmessages:\n"
            "- role: robot\n  content: x\n  timestamp: '2024-01-15T10:25:00'\n",
            "unknown message role 'robot'",
        ),
        (
            "user_id: a\nsession_id: s\nstarted_at: '2024-01-15T10:25:00'\nmessages:\n"
            "- {role: user\n- role: user\n  content: x\n  timestamp: '2024-01-15T10:25:00'\n",
            "message 1 is not a readable message",
        ),
    ],
)
def test_corrupt_file_raises_an_error_naming_the_file(text: str, reason: str) -> None:
    """A hand-edited file that is not a dialog raises CorruptDialogError with its path."""
    path = Path("/data/users/bob/dialogs/current.yaml")
    with pytest.raises(CorruptDialogError, match=reason) as caught:
        fmt.parse_dialog(text, path)
    assert caught.value.path == path
    assert str(path) in str(caught.value)


def test_hand_written_unquoted_timestamps_are_accepted() -> None:
    """A person may write timestamps without quotes; YAML reads them as times."""
    text = (
        "user_id: a\nsession_id: s\nstarted_at: 2024-01-15 10:25:00+00:00\nmessages:\n"
        "- role: user\n  content: 42\n  timestamp: 2024-01-15 10:25:00+00:00\n"
    )
    dialog = fmt.parse_dialog(text, PATH)
    assert isinstance(dialog, Dialog)
    assert dialog.messages[0].content == "42"
    assert dialog.started_at == T0.replace(minute=25)


def test_fast_record_writer_round_trips_any_text() -> None:
    """Records written without PyYAML read back exactly, for thousands of tricky texts."""
    rng = random.Random(1)
    alphabet = "aZ09 :#-'\"!?,.{}[]&*|>%@`~\\/=+;$^()_\t\nüé中\x85\u2028"
    samples = ["yes", "No", "null", "~", "y", "on", "- x", "a: b", "a #b", "x ", " x", "", "1"]
    samples += [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(5000)
    ]
    for text in samples:
        message = Message("user", text, T0, reasoning=text, error=text or None)
        record = fmt.dump_message(message)
        parsed = fmt.parse_dialog(fmt.dump_header("a", "s", T0) + record, PATH)
        assert parsed.messages == [message], repr(text)
        assert yaml.safe_load(record) == yaml.safe_load(fmt._dump([fmt._message_mapping(message)]))


def _random_message(rng: random.Random, when: datetime) -> Message:
    plain = "abcXYZ019 ,.!?()/_+=;$%^*'\"-"
    tricky = plain + ":#{}[]&|>@`~\\\t\nü中\x7f"
    alphabet = rng.choice((plain, plain, tricky))
    content = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
    content = rng.choice((content, content, content, rng.choice(("yes", "Off", "NULL", "n"))))
    zone = rng.choice((UTC, UTC, UTC, timezone(timedelta(hours=5, minutes=30)), None))
    timestamp = when.replace(tzinfo=zone, microsecond=rng.choice((0, when.microsecond)))
    odd = rng.random() < 0.1
    return Message(
        rng.choice(("user", "assistant", "system")),
        content,
        timestamp,
        interrupted=odd and rng.random() < 0.5,
        reasoning="why" if odd and rng.random() < 0.5 else None,
        error="bad" if odd and rng.random() < 0.5 else None,
    )


def test_direct_records_are_byte_for_byte_what_the_general_writer_makes() -> None:
    """dump_message's shortcut writes exactly the general writer's bytes, which read back."""
    rng = random.Random(2)
    when = datetime(2024, 1, 15, 10, 58, 59, 999_000, tzinfo=UTC)
    for _ in range(10_000):
        when += timedelta(microseconds=rng.randint(1, 3_000_000))  # crosses many minutes
        message = _random_message(rng, when)
        record = fmt.dump_message(message)
        assert record == fmt._dump_record(message), repr(message)
        parsed = fmt.parse_dialog(fmt.dump_header("a", "s", T0) + record, PATH)
        assert parsed.messages == [message], repr(message)


def test_timestamps_are_written_as_isoformat_writes_them() -> None:
    """The cached-minute timestamp writer matches isoformat, in time order or not."""
    rng = random.Random(3)
    base = datetime(1999, 12, 31, 23, 59, tzinfo=UTC)
    stamps = [base + timedelta(microseconds=rng.randint(0, 10**9)) for _ in range(5_000)]
    stamps += [base.replace(microsecond=0), base.replace(year=7, microsecond=5)]
    for timestamp in [*sorted(stamps), *stamps]:
        assert fmt._isoformat(timestamp) == timestamp.isoformat()

"""The ``chatsession`` command: run the server, read users' archived dialogs.

::

    chatsession serve [--host H] [--port P] [--data-dir D] [--model M] ...
    chatsession dialogs USER              list USER's archives
    chatsession show USER ARCHIVE_ID      print one archive as YAML
    chatsession purge USER                erase USER's current dialog and every archive

``serve`` has one flag per setting, mirroring the environment variables of `Settings`
(``--session-timeout`` takes milliseconds like ``SESSION_TIMEOUT``); a flag wins over its
variable. ``dialogs`` and ``show`` read ``--data-dir`` (default: ``DATA_DIR``, else ``data``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chatsession._exceptions import ChatSessionError, ConfigError, DataDirLocked
from chatsession.domain import ArchiveSummary
from chatsession.settings import Settings, environment_variables, setting_help
from chatsession.storage._lock import DataDirLock
from chatsession.storage._yaml_format import dump_dialog
from chatsession.storage.files import YamlDialogStore

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatsession", description="Chat sessions archived as YAML when they end."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the chat server (WebSocket, HTTP, SSE)",
        description="Run the chat server. Each flag mirrors an environment variable; a "
        "flag wins over its variable. Secrets (JWT_SECRET, OPENAI_API_KEY) are read from "
        "the environment only. Exit codes: 0 after a graceful stop, 2 for a configuration "
        "mistake (one line saying which).",
    )
    _add_setting_flags(serve)
    serve.set_defaults(run=_serve)

    dialogs = commands.add_parser("dialogs", help="list a user's archived dialogs")
    dialogs.add_argument("user", help="the user id")
    _add_data_dir(dialogs)
    dialogs.set_defaults(run=_list_dialogs)

    show = commands.add_parser("show", help="print one archived dialog")
    show.add_argument("user", help="the user id")
    show.add_argument("archive_id", help="the archive id, such as 2024-01-15-10-30-00")
    _add_data_dir(show)
    show.set_defaults(run=_show_dialog)

    purge = commands.add_parser(
        "purge", help="erase a user's current dialog and every archive (server stopped)"
    )
    purge.add_argument("user", help="the user id")
    purge.add_argument(
        "--force", action="store_true", help="even if a server seems to hold the data dir"
    )
    _add_data_dir(purge)
    purge.set_defaults(run=_purge_user)
    return parser


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("DATA_DIR") or "data"),
        help="where dialogs live (default: $DATA_DIR, else ./data)",
    )


# Flags whose name is not the setting's; every other setting's flag is --its-name.
_FLAG_NAMES = {"chat_model": "--model"}


# Secrets come from the environment only: a flag would show them in the process list.
_SECRETS = frozenset(("jwt_secret", "openai_api_key", "redis_url"))


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for variable, (field_name, _parse) in environment_variables().items():
        if field_name in _SECRETS:
            continue
        flag = _FLAG_NAMES.get(field_name, "--" + field_name.replace("_", "-"))
        if field_name in ("auto_archive_on_disconnect", "trusted_proxy", "redis_cluster"):
            parser.add_argument(
                flag,
                dest=field_name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=_flag_help(variable),
            )
        else:
            parser.add_argument(
                flag, dest=field_name, metavar=variable, default=None, help=_flag_help(variable)
            )


def _flag_help(variable: str) -> str:
    described = setting_help(variable)
    if described is None:
        return f"(${variable})"
    meaning, default = described
    # argparse expands %-sequences in help: a literal percent must be doubled.
    return f"{meaning}; default {default} (${variable})".replace("%", "%%")


def _serve(args: argparse.Namespace) -> int:
    # The server's dependencies load only to serve.
    from chatsession.web._startup import configure_logging, report_startup_error

    configure_logging()  # before settings are read: they may warn
    try:
        settings = _settings_from(args)
    except ConfigError as exc:
        return report_startup_error(exc, Settings(debug=os.environ.get("DEBUG", "")))
    from chatsession.web import serve

    return serve(settings)


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for field_name, parse in environment_variables().values():
        value = getattr(args, field_name, None)
        if value is None:
            continue
        if isinstance(value, str):
            try:
                value = parse(value.strip())
            except ValueError as exc:
                flag = _FLAG_NAMES.get(field_name, "--" + field_name.replace("_", "-"))
                raise ConfigError(f"{flag} {value!r} is not accepted: {exc}") from None
        overrides[field_name] = value
    return Settings.from_env(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ChatSessionError as exc:
        print(f"chatsession: {exc}", file=sys.stderr)
        return 1
    return code


def _list_dialogs(args: argparse.Namespace) -> int:
    store = YamlDialogStore(args.data_dir)
    archives = asyncio.run(store.list_archives(args.user))
    if not archives:
        print(f"no archived dialogs for {args.user!r} in {args.data_dir}")
        return 0
    print(_format_table(archives))
    return 0


def _format_table(archives: Sequence[ArchiveSummary]) -> str:
    rows = [("ARCHIVE", "STARTED", "ENDED", "MESSAGES", "REASON")]
    for archive in archives:
        rows.append(
            (
                archive.archive_id,
                archive.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                archive.ended_at.strftime("%Y-%m-%d %H:%M:%S") if archive.ended_at else "-",
                str(archive.message_count),
                archive.end_reason or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _show_dialog(args: argparse.Namespace) -> int:
    store = YamlDialogStore(args.data_dir)
    dialog = asyncio.run(store.load_archive(args.user, args.archive_id))
    sys.stdout.write(dump_dialog(dialog))
    return 0


def _purge_user(args: argparse.Namespace) -> int:
    # Held while purging, so that no server starts on the data dir meanwhile.
    lock = DataDirLock(args.data_dir)
    try:
        lock.acquire()
    except DataDirLocked as exc:
        if not args.force:
            print(
                f"chatsession: {exc}\nErase the user through that server "
                "(DELETE /users/USER), or stop it first, or pass --force.",
                file=sys.stderr,
            )
            return 1
    try:
        removed = asyncio.run(YamlDialogStore(args.data_dir).purge_user(args.user))
    finally:
        lock.release()
    print(f"erased {args.user!r}: {removed} archives and any current dialog removed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The README runs as written: its library snippet, its command lines, its shown outputs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.web.conftest import serve_process

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
VENV_BIN = Path(sys.executable).parent


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def _block_after(heading: str, language: str = "bash") -> str:
    after = README[README.index(heading) :]
    found = re.search(rf"```{language}\n(.*?)```", after, flags=re.DOTALL)
    assert found is not None, heading
    return found.group(1)


def _commands(block: str) -> list[str]:
    """The block's command lines, continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_every_command_runs_from_a_second_terminal_as_written() -> None:
    """No bash line calls the venv's programs by bare name: they are not on PATH there."""
    for block in _blocks("bash") + _blocks("console"):
        for command in _commands(block):
            command = command.removeprefix("$ ")
            for program in ("chatsession", "python", "uvicorn", "gunicorn", "hypercorn"):
                words = shlex.split(command, comments=False)
                bare = [w for w in words if w == program or w == f"{program}.exe"]
                assert not bare, f"{command!r}: write .venv/bin/{program}"


@pytest.mark.timeout(300)
def test_the_library_snippet_runs_as_a_file_and_the_cli_reads_what_it_archived(
    tmp_path: Path,
) -> None:
    """hello.py as shown, then `chatsession dialogs` and `show` as shown, in its directory."""
    (tmp_path / "hello.py").write_text(_block_after("## As a library", "python"))
    run = subprocess.run(
        [sys.executable, "hello.py"], cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stderr
    archive_id = run.stdout.strip().splitlines()[-1].removeprefix("archived as ")
    assert re.fullmatch(r"\d{4}(-\d\d){5}", archive_id), run.stdout
    assert (tmp_path / "data/users/alice/dialogs/archived" / f"{archive_id}.yaml").exists()

    outputs = []
    for command in _commands(_block_after("## Command line")):
        if " serve" in command:
            continue  # the server is run by the tests below
        command = command.replace("2024-01-15-10-30-00", archive_id)
        command = command.replace(".venv/bin/", f"{VENV_BIN}/")
        result = subprocess.run(
            shlex.split(command), cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, (command, result.stderr)
        outputs.append(result.stdout)
    listing, shown, purged = outputs
    assert archive_id in listing
    assert "manual" in listing
    assert "content: hi" in shown
    assert "1 archives" in purged
    assert not (tmp_path / "data/users/alice").exists()


def _run_shell(command: str, port: int, cwd: Path) -> str:
    command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    result = subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, (command, result.stderr)
    assert result.stderr == "", (command, result.stderr)  # no progress meter
    return result.stdout


def test_the_http_and_sse_examples_print_what_the_readme_shows(tmp_path: Path) -> None:
    """The Server section's curl lines, against `serve --model echo`, print what is shown."""
    with serve_process(tmp_path / "data", "--model", "echo") as server:
        http = [_run_shell(c, server.port, tmp_path) for c in _commands(_block_after("**HTTP**"))]
        assert '{"response":"echo: hello"}' in http[0]
        assert "x-session-id: " in http[0]
        assert '"content":"echo: hello"' in http[1]
        assert '"archives":[]' in http[2]
        assert '"status":"healthy"' in http[3]
        assert "chatsession_active_sessions" in http[4]

        sse_block = _block_after("**SSE.**")
        single_reply = _commands(sse_block)[1]
        shown = [line.removeprefix("# ") for line in sse_block.splitlines() if line.startswith("#")]
        printed = _run_shell(single_reply, server.port, tmp_path)
        assert printed.strip().splitlines() == [line.rstrip("#").strip() for line in shown]
    assert os.path.isdir(tmp_path / "data")


def test_the_readme_install_and_the_makefile_build_llama_cpp_with_the_same_flags() -> None:
    """The CMake flags of the README's install without make are the Makefile's."""
    makefile = (Path(__file__).parent.parent / "Makefile").read_text(encoding="utf-8")
    found = re.search(r"^LLAMA_CMAKE_ARGS \?= (.*?[^\\])$", makefile, re.MULTILINE | re.DOTALL)
    assert found is not None
    in_makefile = set(found.group(1).replace("\\\n", " ").split())
    quoted = re.search(r'CMAKE_ARGS="([^"]*)"', README)
    assert quoted is not None
    assert set(quoted.group(1).split()) == in_makefile
    assert "-DGGML_NATIVE=OFF" in in_makefile
    assert "-DLLAVA_BUILD=OFF" in in_makefile

"""Shell completion and the man page, generated from the parser, used by the real bash, zsh and man."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ..conftest import run_cli


def complete_in_bash(script: Path, *words: str) -> list[str]:
    """What bash's completion offers for the last of `words` (as if TAB was pressed after it)."""
    line = " ".join(("studio-watch", *words))
    program = (f'source {script}; COMP_WORDS=(studio-watch {" ".join(words)}); COMP_CWORD={len(words)}; '
               f'COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; '
               f'_shtab_studio_watch studio-watch "{words[-1]}" "{words[-2] if len(words) > 1 else "studio-watch"}"; '
               'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_bash_completion_offers_commands_and_their_options(tmp_path: Path) -> None:
    result = run_cli("completion", "bash")
    assert result.returncode == 0
    script = tmp_path / "studio-watch.bash"
    script.write_text(result.stdout)
    assert "status" in complete_in_bash(script, "sta")
    assert {"reload", "retry"} <= set(complete_in_bash(script, "re"))
    assert complete_in_bash(script, "init", "--non") == ["--non-interactive"]
    assert "--older-than" in complete_in_bash(script, "jobs", "--old")
    (tmp_path / "my-config.yaml").write_text("")
    assert str(tmp_path / "my-config.yaml") in complete_in_bash(script, "status", "-c", str(tmp_path / "my-"))


@pytest.mark.skipif(shutil.which("zsh") is None, reason="no zsh here (Debian: apt-get install zsh; .ci/apt-packages)")
def test_zsh_completion_is_a_valid_completion_function(tmp_path: Path) -> None:
    result = run_cli("completion", "zsh")
    assert result.returncode == 0 and result.stdout.startswith("#compdef studio-watch")
    script = tmp_path / "_studio-watch"
    script.write_text(result.stdout)
    assert subprocess.run(["zsh", "-n", str(script)], capture_output=True, timeout=30).returncode == 0
    assert "reload" in result.stdout and "--non-interactive" in result.stdout


@pytest.mark.skipif(shutil.which("man") is None, reason="no man here (Debian: man-db)")
def test_man_page_renders_with_every_command(tmp_path: Path) -> None:
    result = run_cli("manpage")
    assert result.returncode == 0, result.stderr
    page = tmp_path / "studio-watch.1"
    page.write_text(result.stdout)
    shown = subprocess.run(["man", "-l", "-P", "cat", str(page)], capture_output=True, text=True, timeout=60,
                           env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    for command in ("run", "reload", "status", "jobs", "cancel", "forget", "prune", "init", "check", "explain",
                    "health", "completion"):
        assert f"studio-watch {command}" in text, command
    assert "--non-interactive" in text and "--try-upload" in text

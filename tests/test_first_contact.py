"""What a new user meets first: the bare command, the help, the set-up, a wheel install and `kong-ship init`."""

from __future__ import annotations

import pathlib
import re

import pytest

from conftest import ship


@pytest.mark.parametrize("args, usage", [((), "Usage: kong-ship [OPTIONS] COMMAND"),
                                         (("audit",), "Usage: kong-ship audit [OPTIONS] COMMAND")])
def test_a_group_without_a_command_prints_the_ordinary_usage(args, usage):
    result = ship(*args)
    # click's own answer for a group called without a command: the whole help on stderr, exit 2 (a usage error).
    assert result.returncode == 2 and result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert lines[0].startswith(usage) and "error" not in lines[0]
    assert "Commands:" in lines and len(lines) > 8
    assert not any(len(line) > 120 for line in lines)


ROOT = pathlib.Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    """The commands of the README's "Set-up" section, in order."""
    section = (ROOT / "README.md").read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.*?)\n```", section, re.S)


def test_the_readme_set_up_uses_a_virtual_environment_and_ci_runs_its_test_command_word_for_word():
    run, test = setup_commands()
    for command in (run, test):
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install "), command
        # nothing installs into or runs from the system's Python (Debian: externally-managed-environment)
        assert not re.search(r"(^|&& )(python3 -m pip|pip|kong-ship|python3 -m pytest)\b", command), command
    assert ".venv/bin/kong-ship backfill examples/*.jsonl --sink stdout" in run
    assert test.endswith(".venv/bin/python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci and "apt-get install" in "\n".join(ci)
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".venv/" in ignored and "*.whl" in ignored

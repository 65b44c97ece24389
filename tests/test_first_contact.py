"""What a new user meets first: the bare command, the help, the set-up, a wheel install and `kong-ship init`."""

from __future__ import annotations

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

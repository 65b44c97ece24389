"""Start-up imports (issue 16): a `kong-ship backfill` imports what a backfill uses, not what other commands or
switched-off features need. The group imports a command's module only when the command is looked up
(`shipper.cli.LazyCommands`), prometheus_client only with --metrics-addr, and httpx's own command-line client
(rich, pygments) never. Checked by the modules a real run holds, in a fresh interpreter: no timings."""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import socket
import subprocess
import sys

import click
import pytest

from conftest import ship_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus" / "kong-records.jsonl"

# What a backfill to any sink never needs: the other commands' modules and what only they import, the metrics
# endpoint's library (off unless --metrics-addr), httpx's command-line client and what it brings.
NOT_FOR_A_BACKFILL = (
    "shipper.commands.audit", "shipper.commands.tap", "shipper.commands.receive", "shipper.commands.listeners",
    "shipper.commands.status", "shipper.commands.init", "shipper.commands.parse", "shipper.commands.check_config",
    "shipper.commands.tail", "shipper.service.metrics", "shipper.service.tap", "shipper.service.status",
    "shipper.sources.kong_audit", "shipper.sources.event_hooks", "shipper.formats.audit_signature",
    "prometheus_client", "httpx._main", "rich", "pygments", "tomllib",
)

# Runs kong-ship's own `main` as the console script does, then writes the names of the modules it imported (a
# name whose entry is None was marked absent, not imported).
RUN_AND_LIST = """
import json, sys
from shipper.cli import main
try:
    main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "modules": sorted(n for n, m in sys.modules.items() if m is not None)}, out)
"""


def imported_by(args: list[str], tmp_path: pathlib.Path, **extra_env: str) -> tuple[int, set[str]]:
    listing = tmp_path / "modules.json"
    env = ship_env(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **extra_env)
    subprocess.run([sys.executable, "-c", RUN_AND_LIST, str(listing), *args], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    found = json.loads(listing.read_text())
    return found["code"], set(found["modules"])


def backfill_args(tmp_path: pathlib.Path, *extra: str) -> list[str]:
    log = tmp_path / "access.log"
    log.write_bytes(CORPUS.read_bytes())
    return ["backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "state"), "--workers", "0",
            *extra]


def test_a_backfill_imports_nothing_it_does_not_use(tmp_path):
    code, modules = imported_by(backfill_args(tmp_path), tmp_path)
    assert code == 0
    assert "shipper.commands.backfill" in modules and "shipper.pipeline" in modules  # it did run
    assert not {name for name in modules for unwanted in NOT_FOR_A_BACKFILL
                if name == unwanted or name.startswith(unwanted + ".")}


def test_a_config_file_does_not_bring_the_other_commands(tmp_path):
    """With a config file (the service's case: /etc/kong-ship/kong-ship.toml is found by every command), the
    file's defaults are made for the running command only (cli._FileDefaults): a backfill imports no other
    command, nor what only they need (each command's made at start imported them all: ~0.3 s and ~13 MB)."""
    config = tmp_path / "kong-ship.toml"
    config.write_text('[input]\nformat = "auto"\n[masks]\nheaders = ["x-internal-token"]\n[log]\nlevel = "info"\n'
                      '[sinks.segment]\nendpoint = "http://127.0.0.1:9"\n')
    code, modules = imported_by(backfill_args(tmp_path), tmp_path, KONG_SHIP_CONFIG=str(config))
    assert code == 0
    assert "shipper.commands.backfill" in modules and "shipper.service.config" in modules  # the file was read
    assert not {name for name in modules for unwanted in NOT_FOR_A_BACKFILL
                if unwanted != "tomllib" and (name == unwanted or name.startswith(unwanted + "."))}
    code, modules = imported_by(["--version"], tmp_path, KONG_SHIP_CONFIG=str(config))
    assert code == 0 and not {name for name in modules if name.startswith("shipper.commands.")} - {"shipper.commands.stderr"}


def test_the_metrics_library_comes_with_the_metrics(tmp_path):
    """The other side of the check above: the import is there, only later (the test would pass if nothing ever
    imported it)."""
    with socket.socket() as probe:  # a free port (the endpoint refuses 0)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, modules = imported_by(backfill_args(tmp_path, "--metrics-addr", f"127.0.0.1:{port}"), tmp_path)
    assert code == 0
    assert {"prometheus_client", "shipper.service.metrics"} <= modules
    assert "shipper.commands.audit" not in modules


def test_backfill_help_imports_no_other_command(tmp_path):
    code, modules = imported_by(["backfill", "--help"], tmp_path)
    assert code == 0
    assert "shipper.commands.backfill" in modules
    assert not {name for name in modules if name.startswith("shipper.commands.")
                } - {"shipper.commands.backfill", "shipper.commands.options", "shipper.commands.running", "shipper.commands.stderr",
                      "shipper.commands.summary"}
    assert "prometheus_client" not in modules and "rich" not in modules


@pytest.mark.parametrize("args", [["--version"], ["--help"], []])
def test_the_groups_own_answers_import_no_command_and_no_http_client(tmp_path, args):
    """`kong-ship --version`, `--help` and a bare `kong-ship` (the help, exit 2) answer from the group alone: no
    command's module, no httpx, no sink (0.11 s for --version instead of 0.44 when they came with it)."""
    code, modules = imported_by(args, tmp_path)
    assert code in (0, 2)
    assert {name for name in modules if name.startswith("shipper.commands.")} <= {"shipper.commands.stderr"}
    assert not {name for name in modules if name.split(".")[0] == "httpx" or name.startswith("shipper.sinks.")}


def test_the_help_lists_every_command_with_its_short_help():
    from shipper.cli import COMMAND_MODULES, cli
    from shipper.commands import SUMMARIES

    env = ship_env(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-m", "shipper", "--help"], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    listed = out.split("\nCommands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed if line.strip()] == sorted(COMMAND_MODULES)
    for name in COMMAND_MODULES:
        command = cli.commands[name]
        assert command.name == name
        assert command.short_help == SUMMARIES[name]  # the summary the group lists is the command's own
        assert f"  {name}" in out and any(line.split()[1:] == SUMMARIES[name].split() for line in listed), name


def test_every_command_module_is_named_for_the_group():
    """A command module `shipper/commands/X.py` defines its command as `X`; the group must name it, or the command
    would silently disappear from `kong-ship` (it is no longer imported by shipper.cli to be registered)."""
    from shipper.cli import COMMAND_MODULES

    defined = set()
    for path in (ROOT / "shipper" / "commands").glob("*.py"):
        module = importlib.import_module(f"shipper.commands.{path.stem}")
        if isinstance(getattr(module, path.stem, None), click.Command):
            defined.add(path.stem)
    assert defined == set(COMMAND_MODULES.values())


def test_an_unknown_command_is_still_answered_with_a_suggestion(tmp_path):
    """click's "did you mean" reads the group's command names, which are all there before any is imported."""
    env = ship_env(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "shipper", "backfil"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "No such command 'backfil'. Did you mean 'backfill'?" in done.stderr

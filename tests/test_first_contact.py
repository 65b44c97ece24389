"""What a new user meets first: the bare command, the help, the set-up, a wheel install and `kong-ship init`."""

from __future__ import annotations

import pathlib
import re

import pytest

from conftest import ship, ship_env


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


DEPENDENCIES = ("click", "httpx", "jwt", "watchdog", "orjson", "tenacity", "prometheus_client", "cryptography")


@pytest.mark.wheel
def test_a_wheel_install_ships_init_the_units_and_logrotate(tmp_path):
    """The wheel built from this tree, installed into a fresh virtual environment (its dependencies borrowed
    from this interpreter's, so nothing is downloaded but the build backend), has `kong-ship init`."""
    import importlib
    import json
    import stat
    import subprocess
    import sys
    import tomllib

    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
                           capture_output=True, text=True, timeout=120)
    if build.returncode != 0 and "satisfies the requirement setuptools" in build.stderr:
        pytest.skip("no package index to fetch the build backend from")  # offline, and no setuptools here
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("kong_ship-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    borrowed = {str(pathlib.Path(importlib.import_module(m).__file__).parents[1]) for m in DEPENDENCIES}
    pathlib.Path(site, "borrowed-dependencies.pth").write_text("\n".join(sorted(borrowed)) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                              "--no-index", str(wheel)], capture_output=True, text=True, timeout=120)
    assert install.returncode == 0, install.stderr
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in ship_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"

    def kong_ship(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([venv / "bin" / "kong-ship", *args], cwd=work, capture_output=True, text=True,
                              env={**env, **extra}, timeout=60)

    where = subprocess.run([python, "-c", "import shipper, json; print(json.dumps(shipper.__file__))"], cwd=work,
                           capture_output=True, text=True, check=True).stdout
    assert json.loads(where).startswith(site)  # the installed wheel, not this checkout
    made = kong_ship("init", "etc/kong-ship.toml", "--systemd-dir", "units", "--logrotate", "logrotate/kong")
    assert made.returncode == 0, made.stderr
    config = work / "etc" / "kong-ship.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert config.read_text() == (ROOT / "examples" / "kong-ship.toml").read_text()
    assert (work / "units" / "kong-ship@.service").read_text() == (ROOT / "systemd" / "kong-ship@.service").read_text()
    assert (work / "units" / "kong-ship.service").read_text() == (ROOT / "systemd" / "kong-ship.service").read_text()
    assert (work / "logrotate" / "kong").read_text() == (ROOT / "examples" / "logrotate" / "kong").read_text()
    assert "check-config --config etc/kong-ship.toml" in made.stderr
    config.write_text(config.read_text() + "\n# edited\n")
    again = kong_ship("init", "etc/kong-ship.toml")
    assert again.returncode == 2 and "exists" in again.stderr and config.read_text().endswith("# edited\n")
    assert kong_ship("init", "--force", "etc/kong-ship.toml").returncode == 0
    assert "# edited" not in config.read_text()
    printed = kong_ship("init", "--print", "unit-template")
    assert printed.returncode == 0 and printed.stdout == (ROOT / "systemd" / "kong-ship@.service").read_text()
    log = work / "kong.json"
    log.write_text("")
    checked = kong_ship("check-config", "--config", str(config), str(log), SEGMENT_WRITE_KEY="k",
                        KONG_SHIP_STATE_DIR=str(tmp_path / "state"))
    assert checked.returncode == 0, checked.stderr
    assert tomllib.loads(checked.stdout)["sinks"]["segment"]["endpoint"] == "https://api.segment.io"


HEADINGS = ["Delivery:", "Input:", "State:", "Configuration, logs and metrics:", "Understanding the records",
            "Delivery tuning", "Segment sink", "Moesif sink", "Runscope sink", "Webhook sink"]


@pytest.mark.parametrize("command", [("tail",), ("backfill",), ("receive",), ("check-config",), ("audit", "tail")])
def test_help_groups_the_options_under_headings_what_matters_first(command):
    result = ship(*command, "--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    headings = [line.strip() for line in lines if line.startswith("  ") and not line.startswith("   ")
                and line.strip().endswith(":")]
    order = [next(i for i, h in enumerate(HEADINGS) if heading.startswith(h)) for heading in headings]
    assert order == sorted(order) and len(order) >= 8, headings  # every shipping command: the same order
    # each sink's options under its own heading, after everything else
    moesif = next(i for i, line in enumerate(lines) if line.strip().startswith("Moesif sink"))
    first_moesif_flag = next(i for i, line in enumerate(lines) if "--moesif-" in line)
    assert first_moesif_flag == moesif + 1
    assert not any("--moesif-" in line or "--runscope-" in line or "--webhook-" in line for line in lines[:moesif])
    if command[0] in ("tail", "backfill"):
        first_screen = "\n".join(lines[:60])
        for flag in ("--sink", "--endpoint", "--state-dir", "--config"):
            assert flag in first_screen, flag

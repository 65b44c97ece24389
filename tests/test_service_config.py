"""The TOML configuration file: precedence (flags > environment > file > defaults), errors that name the file,
the key and what was expected, `check-config`, and the documented example file."""

from __future__ import annotations

import os
import pathlib
import re
import tomllib

import orjson
import pytest

import gen
from conftest import ship, ship_env

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "kong-ship.toml"


def write_config(tmp_path, text: str) -> pathlib.Path:
    path = tmp_path / "kong-ship.toml"
    path.write_text(text)
    return path


def effective(*args, env=None) -> dict:
    result = ship("check-config", *args, env=env)
    assert result.returncode == 0, result.stderr
    return tomllib.loads(result.stdout.decode())


def test_precedence_flags_then_environment_then_file_then_defaults(tmp_path):
    (tmp_path / "kong.json").write_text("")
    config = write_config(tmp_path, f"""
[input]
paths = ["{tmp_path}/*.json"]
[delivery]
batch_size = 50
flush_interval = 2.5
[state]
dir = "{tmp_path}/from-file"
[sinks.stdout]
""")
    from_file = effective("--config", str(config))
    assert from_file["delivery"]["batch_size"] == 50 and from_file["delivery"]["flush_interval"] == 2.5
    assert from_file["state"]["dir"] == f"{tmp_path}/from-file" and from_file["input"]["paths"] == [f"{tmp_path}/*.json"]
    assert from_file["delivery"]["queue_size"] == 10_000  # a default
    env = ship_env(KONG_SHIP_STATE_DIR=str(tmp_path / "from-env"), KONG_SHIP_CONFIG=str(config))
    from_env = effective(env=env)  # the file found through KONG_SHIP_CONFIG
    assert from_env["state"]["dir"] == str(tmp_path / "from-env") and from_env["delivery"]["batch_size"] == 50
    from_flags = effective("--batch-size", "7", "--state-dir", str(tmp_path / "from-flag"), env=env)
    assert from_flags["delivery"]["batch_size"] == 7 and from_flags["state"]["dir"] == str(tmp_path / "from-flag")
    assert from_flags["delivery"]["flush_interval"] == 2.5


def test_several_sinks_each_with_options_and_secrets_redacted(tmp_path):
    key_file = tmp_path / "segment.key"
    key_file.write_text("super-secret-write-key\n")
    (tmp_path / "kong.json").write_text("")
    config = write_config(tmp_path, f"""
[input]
paths = ["{tmp_path}/*.json"]
[sinks.segment]
write_key_file = "{key_file}"
endpoint = "https://events.eu1.segmentapis.com"
event_name_template = "{{method}} {{path}}"
[sinks.moesif]
api_version = "2.1"
user_id_header = "X-User"
""")
    result = ship("check-config", "--config", str(config), env=ship_env(MOESIF_APPLICATION_ID="moesif-secret"))
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "super-secret-write-key" not in text and "moesif-secret" not in text
    data = tomllib.loads(text)
    assert list(data["sinks"]) == ["segment", "moesif"]
    assert data["sinks"]["segment"]["endpoint"] == "https://events.eu1.segmentapis.com"
    assert data["sinks"]["segment"]["event_name_template"] == "{method} {path}"
    assert data["sinks"]["segment"]["write_key_file"] == str(key_file)
    assert data["sinks"]["moesif"]["api_version"] == "2.1" and data["sinks"]["moesif"]["user_id_header"] == "X-User"
    assert "# the application id: from $MOESIF_APPLICATION_ID" in text


@pytest.mark.parametrize("body, message", [
    ("[input]\npathz = ['x']\n", "input.pathz: unknown key"),
    ("[delivery]\nbatch_size = 'big'\n", "delivery.batch_size: expected an integer"),
    ("[delivery]\nbatch_size = 0\n", "delivery.batch_size"),
    ("[input]\nformat = 'xml'\n", "input.format: expected one of"),
    ("[nonsense]\na = 1\n", "[nonsense]: unknown section"),
    ("[sinks.nowhere]\n", "sinks.nowhere: unknown sink"),
    ("[sinks.segment]\ncolour = 'blue'\n", "sinks.segment.colour: unknown key"),
    ("[sinks.moesif]\ndebug = 'yes'\n", "sinks.moesif.debug: expected true or false"),
    ("[input\n", "not valid TOML"),
])
def test_config_errors_name_the_file_the_key_and_the_expectation(tmp_path, body, message):
    config = write_config(tmp_path, body)
    result = ship("check-config", "x.json", "--sink", "stdout", "--config", str(config))
    assert result.returncode == 2
    (line,) = result.stderr.decode().strip().splitlines()
    assert str(config) in line and message in line, line


def test_a_broken_file_stops_the_commands_that_take_it_and_only_those(tmp_path):
    """A wrong value stops the commands that take it (`tail` runs with `workers`); `status`, which does not,
    still answers beside such a service. An unknown key stops every command with --config; `status` (no
    --config: it reads the file for its state directory) says so in one line and goes on."""
    (tmp_path / "state").mkdir(mode=0o700)
    config = write_config(tmp_path, "[delivery]\nworkers = 'many'\n")
    refused = ship("tail", "x.json", "--sink", "stdout", "--config", str(config), "--state-dir", str(tmp_path / "state"))
    assert refused.returncode == 2 and "delivery.workers" in refused.stderr.decode()
    status = ship("status", "--state-dir", str(tmp_path / "state"), env=ship_env(KONG_SHIP_CONFIG=str(config)))
    assert status.returncode == 0, status.stderr.decode()
    unknown = write_config(tmp_path, "[delivery]\nworkerz = 2\n")
    refused = ship("tail", "x.json", "--sink", "stdout", "--config", str(unknown), "--state-dir", str(tmp_path / "state"))
    assert refused.returncode == 2 and "delivery.workerz: unknown key" in refused.stderr.decode()
    status = ship("status", "--state-dir", str(tmp_path / "state"), env=ship_env(KONG_SHIP_CONFIG=str(unknown)))
    (warning,) = status.stderr.decode().splitlines()
    assert status.returncode == 0 and "delivery.workerz: unknown key" in warning and "going on without" in warning


def test_missing_config_file_is_an_error(tmp_path):
    result = ship("tail", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "does not exist" in result.stderr.decode()


def test_a_run_driven_by_the_config_file(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(5))
    config = write_config(tmp_path, f"""
[input]
paths = ["{log}"]
[state]
dir = "{tmp_path}/state"
[sinks.stdout]
event_name_template = "hit {{path}}"
""")
    result = ship("backfill", "--config", str(config))
    assert result.returncode == 0, result.stderr
    events = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(events) == 5 and all(e["event"].startswith("hit /") for e in events)


def test_the_documented_example_is_valid_and_documents_every_key(tmp_path):
    from shipper.service.config import SECTIONS, sink_option_names

    text = EXAMPLE.read_text()
    for section, keys in SECTIONS.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"\n{key} =" in text or f"\n# {key} =" in text, f"{section}.{key} undocumented"
    for sink in ("segment", "moesif", "runscope"):
        for name in sink_option_names(sink):
            key = name.removeprefix(f"{sink}_")
            assert f"\n{key} =" in text.split(f"[sinks.{sink}]", 1)[1] or f"\n# {key} =" in text.split(f"[sinks.{sink}]", 1)[1], f"sinks.{sink}.{key} undocumented"
    (tmp_path / "kong.json").write_text("")
    result = ship("check-config", "--config", str(EXAMPLE), str(tmp_path / "kong.json"),
                  env=ship_env(SEGMENT_WRITE_KEY="k", KONG_SHIP_STATE_DIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr


def _one_line_error(result) -> str:
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    return lines[0]


def test_check_config_checks_the_inputs_and_counts_the_files(tmp_path):
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text("")
    common = ["--sink", "stdout", "--state-dir", str(tmp_path / "state")]
    ok = ship("check-config", f"{tmp_path}/*.json", *common)
    assert ok.returncode == 0, ok.stderr
    assert f"inputs: {tmp_path}/*.json: 2 file(s)" in ok.stderr.decode()
    assert "no file matches" in _one_line_error(ship("check-config", f"{tmp_path}/*.log", *common))
    assert "no such file" in _one_line_error(ship("check-config", str(tmp_path / "nope.json"), *common))
    assert "is a directory" in _one_line_error(ship("check-config", str(tmp_path), *common))
    os.mkfifo(tmp_path / "pipe.json")
    assert "is a FIFO" in _one_line_error(ship("check-config", str(tmp_path / "pipe.json"), *common))
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        (tmp_path / "a.json").chmod(0)
        assert "cannot be opened" in _one_line_error(ship("check-config", str(tmp_path / "a.json"), *common))



def test_check_config_prints_a_toml_file_in_the_documented_keys_that_round_trips(tmp_path, monkeypatch):
    from shipper.service.config import SECTIONS, sink_option_names

    secrets = {"SEGMENT_WRITE_KEY": "seg-secret-1x9", "MOESIF_APPLICATION_ID": "moe-secret-2y8",
               "KONG_SHIP_WEBHOOK_SECRET": "hook-secret-3z7"}
    header_secret = "bearer-secret-4w6"
    log = tmp_path / "kong.json"
    log.write_text("")
    env = ship_env(**secrets)
    monkeypatch.chdir(tmp_path)  # relative paths are printed resolved
    first = ship("check-config", "kong.json", "--sink", "segment", "--sink", "moesif", "--sink", "webhook",
                 "--endpoint", "webhook=https://hooks.example/in", "--webhook-header", f"Authorization: Bearer {header_secret}",
                 "--state-dir", "state", "--nginx-field", "client_ip=real_ip", "--mask-header", "x-token",
                 "--log-format", "json", "--metrics-addr", "127.0.0.1:9464", "--workers", "auto", env=env)
    assert first.returncode == 0, first.stderr
    text = first.stdout.decode()
    for secret in (*secrets.values(), header_secret):
        assert secret not in text and secret not in first.stderr.decode()
    data = tomllib.loads(text)
    for internal in ("retry_initial", "jwt_places", "mask_headers", "sink_options", "checkpoint_interval", "since_ms"):
        assert not re.search(rf"\b{internal}\b", text), internal
    assert set(data) == {*SECTIONS, "sinks"}
    for section, keys in SECTIONS.items():
        assert set(data[section]) <= set(keys), section
    for sink, table in data["sinks"].items():
        known = {"endpoint", *(n.removeprefix(f"{sink}_") for n in sink_option_names(sink))}
        assert set(table) <= known, sink
    assert data["input"]["paths"] == [str(log)] and data["state"]["dir"] == str(tmp_path / "state")
    assert data["state"]["dead_letter"] == str(tmp_path / "state" / "dead-letter.jsonl")
    assert data["log"] == {"level": "info", "format": "json"} and data["metrics"] == {"addr": "127.0.0.1:9464"}
    assert data["input"]["nginx_fields"] == {"client_ip": "real_ip"} and data["masks"]["headers"] == ["x-token"]
    assert data["delivery"]["retry_initial_delay"] == 0.5 and data["delivery"]["workers"] == "auto"
    assert data["sinks"]["webhook"]["header"] == ["Authorization: (redacted)"]
    assert data["sinks"]["webhook"]["endpoint"] == "https://hooks.example/in"
    saved = tmp_path / "saved.toml"
    saved.write_text(text)
    monkeypatch.chdir("/")
    again = ship("check-config", "--config", str(saved), env=env)  # from elsewhere: the paths are absolute
    assert again.returncode == 0, again.stderr
    assert again.stdout.decode() == text


def test_a_config_file_that_is_not_utf8_is_one_line_exit_2(tmp_path):
    config = tmp_path / "latin1.toml"
    config.write_bytes('[input]\njwt_claim = "café"\n'.encode("latin-1"))
    line = _one_line_error(ship("check-config", "x.json", "--sink", "stdout", "--config", str(config)))
    assert str(config) in line and "not UTF-8" in line and "Traceback" not in line


def test_sink_is_not_required_when_the_config_file_has_sink_tables(tmp_path):
    help_text = ship("tail", "--help").stdout.decode()
    assert "[required]" not in help_text and "[sinks.NAME]" in help_text
    log = tmp_path / "kong.json"
    log.write_text("")
    config = write_config(tmp_path, f'[input]\npaths = ["{log}"]\n[state]\ndir = "{tmp_path}/s"\n[sinks.stdout]\n')
    assert ship("check-config", "--config", str(config)).returncode == 0
    line = _one_line_error(ship("check-config", str(log), "--state-dir", str(tmp_path / "s")))
    assert "no sink" in line and "[sinks.NAME]" in line

"""The TOML configuration file: precedence (flags > environment > file > defaults), errors that name the file,
the key and what was expected, `check-config`, and the documented example file."""

from __future__ import annotations

import pathlib

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
    return orjson.loads(result.stdout)


def test_precedence_flags_then_environment_then_file_then_defaults(tmp_path):
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
    assert from_file["batch_size"] == 50 and from_file["flush_interval"] == 2.5
    assert from_file["state_dir"] == f"{tmp_path}/from-file" and from_file["paths"] == [f"{tmp_path}/*.json"]
    assert from_file["queue_size"] == 10_000  # a default
    env = ship_env(KONG_SHIP_STATE_DIR=str(tmp_path / "from-env"), KONG_SHIP_CONFIG=str(config))
    from_env = effective(env=env)  # the file found through KONG_SHIP_CONFIG
    assert from_env["state_dir"] == str(tmp_path / "from-env") and from_env["batch_size"] == 50
    from_flags = effective("--batch-size", "7", "--state-dir", str(tmp_path / "from-flag"), env=env)
    assert from_flags["batch_size"] == 7 and from_flags["state_dir"] == str(tmp_path / "from-flag")
    assert from_flags["flush_interval"] == 2.5


def test_several_sinks_each_with_options_and_secrets_redacted(tmp_path):
    key_file = tmp_path / "segment.key"
    key_file.write_text("super-secret-write-key\n")
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
    data = orjson.loads(text)
    assert data["sinks"] == ["segment", "moesif"]
    assert data["endpoints"]["segment"] == "https://events.eu1.segmentapis.com/v1/batch"
    assert data["sink_options"]["event_name_template"] == "{method} {path}"
    assert data["sink_options"]["moesif_api_version"] == "2.1"
    assert data["credentials"]["segment"].endswith("(redacted)")


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
    result = ship("check-config", "--config", str(EXAMPLE),
                  env=ship_env(SEGMENT_WRITE_KEY="k", KONG_SHIP_STATE_DIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr

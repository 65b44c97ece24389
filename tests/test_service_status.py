"""`kong-ship status` reads the state directory alone: checkpoint, size and lag per sink and file."""

from __future__ import annotations

import os

import orjson

import gen
from conftest import ship


def test_status_shows_checkpoint_size_and_lag(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(10))
    state = tmp_path / "state"
    assert ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(state)).returncode == 0
    shipped = log.stat().st_size
    appended = gen.write_records(log, range(10, 15))
    rotated = tmp_path / "other.json"
    gen.write_records(rotated, range(100, 103))
    assert ship("backfill", str(rotated), "--sink", "stdout", "--state-dir", str(state)).returncode == 0
    os.rename(rotated, tmp_path / "other.json.1")
    gen.write_records(rotated, range(200, 201))  # the path now holds another file

    result = ship("status", "--state-dir", str(state), "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["file"]: row for row in orjson.loads(result.stdout)["files"]}
    row = rows[str(log)]
    assert (row["sink"], row["checkpoint"], row["size"], row["lag"], row["state"]) == (
        "stdout", shipped, shipped + appended, appended, "ok")
    # found beside its old path, shipped to its end
    assert rows[str(rotated)]["state"] == "rotated" and rows[str(rotated)]["lag"] == 0
    assert rows[str(rotated)]["done"] is True and rows[str(rotated)]["now_at"] == str(tmp_path / "other.json.1")

    text = ship("status", "--state-dir", str(state)).stdout.decode()
    lines = text.splitlines()
    assert lines[0].split() == ["SINK", "FILE", "CHECKPOINT", "SIZE", "LAG", "UPDATED"]
    assert any(str(log) in line and f"{shipped:,}" in line for line in lines)
    assert "stdout: 1 rotated file(s) fully shipped" in lines and not any("(rotated" in line for line in lines)


def test_status_of_a_missing_state_dir_is_a_clear_error(tmp_path):
    result = ship("status", "--state-dir", str(tmp_path / "nope"))
    assert result.returncode == 2 and "does not exist" in result.stderr.decode()

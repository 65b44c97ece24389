"""The end-of-run summary names the container lines skipped by kind (COUNTERS with a status word and no column
of their own), in text and in JSON, when there are any; the table's columns stay as they are."""

from __future__ import annotations

import orjson

import gen
from conftest import ship, summary_rows
from test_container_logs import TEXT_ACCESS, cri, record


def test_the_skipped_kinds_follow_the_table_when_not_zero(tmp_path):
    log = tmp_path / "0.log"
    log.write_bytes(cri(record(1)) + cri(TEXT_ACCESS) * 2 + cri(b"[error] boom", "stderr") * 3)
    result = ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode()
    assert "skipped: 2 not access-log records, 3 stderr lines" in err.splitlines(), err
    rows = summary_rows(err)
    assert rows["stdout"]["read"] == 6 and rows["stdout"]["skipped"] == 5 and rows["stdout"]["shipped"] == 1

    as_json = ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "j"), "--log-format", "json")
    summary = next(r for r in map(orjson.loads, as_json.stderr.decode().splitlines()) if r["message"] == "summary")
    assert summary["skipped_by_kind"] == {"not_access_log": 2, "stderr_lines": 3}
    assert summary["sinks"][0]["skipped"] == 5 and set(summary["sinks"][0]) == {
        "sink", "read", "shipped", "filtered", "dead_lettered", "rejected", "skipped", "blank", "anonymous", "retries",
    }


def test_a_plain_kong_log_has_no_skipped_line(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(3))
    result = ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 0 and "skipped:" not in result.stderr.decode()
    as_json = ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "j"), "--log-format", "json")
    summary = next(r for r in map(orjson.loads, as_json.stderr.decode().splitlines()) if r["message"] == "summary")
    assert summary["skipped_by_kind"] == {}

"""Hostile container logs (CRI and Docker json-file) through real `kong-ship backfill`, `parse` and `tail` runs,
with `--workers 0` and `--workers 2`: lines split into many pieces, pieces of stdout and stderr interleaved, a
split line that never gets its last piece, pieces longer than --max-line-bytes, invalid UTF-8, runtime times of
every shape. Every run is held to the product's promises: no traceback and the right exit code; every line read
is shipped, dead-lettered, filtered, skipped or blank (the summary, and the dead-letter file line for line);
every numbered record arrives once; and no marker secret leaves (stdout, stderr, dead letters, state).

A property test (derandomized, like the suite's other hypothesis tests) damages the framing of real records and
holds each run to the same invariants.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gen
from conftest import FAST, every_byte_under, ship, ship_env, summary_rows
from shipper.sources.container import runtime_ms

SECRET = "ctrhostileSECRET"  # in every Authorization, cookie and token here: must never leave
TIME = "2026-01-01T00:00:00.123456789Z"
COLUMNS = ("shipped", "filtered", "dead-lettered", "rejected", "skipped", "blank")


def secret_jwt(seq: int) -> str:
    return gen.jwt_for(f"user-{seq}").rsplit(".", 1)[0] + "." + SECRET + f"sig{seq}"


def kong(seq: int, **change: Any) -> bytes:
    """A Kong 3.x record numbered `seq` (its request id), carrying marker secrets in the places masks cover."""
    record = gen.kong_record(seq)
    record["request"]["headers"]["authorization"] = "Bearer " + secret_jwt(seq)
    record["request"]["headers"]["cookie"] = f"session={SECRET}-{seq}"
    record["request"]["querystring"]["access_token"] = f"{SECRET}-q{seq}"
    record.update(change)
    return orjson.dumps(record)


def nginx(seq: int, **change: Any) -> bytes:
    """An Nginx escape=json record numbered `seq` (its $request_id), with a Bearer token holding a marker."""
    record: dict[str, Any] = {
        "msec": f"{1763800000 + seq}.123", "remote_addr": "10.0.0.9", "request_method": "POST",
        "request_uri": f"/orders/{seq}?api_key={SECRET}", "status": "201", "body_bytes_sent": "12",
        "request_length": "300", "request_time": "0.012", "upstream_response_time": "0.010",
        "request_id": f"ngx-{seq}", "http_authorization": "Bearer " + secret_jwt(seq), "http_user_agent": "ua",
    }  # fmt: skip
    for key, value in change.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return orjson.dumps(record)


def cri(content: bytes, stream: str = "stdout", piece: int = 0, time: str = TIME) -> list[bytes]:
    """The runtime's lines (without newlines) for one line of a stream: `piece`-byte P entries, then an F."""
    parts = [content[i : i + piece] for i in range(0, len(content), piece)] if piece else [content]
    tags = ["P"] * (len(parts) - 1) + ["F"]
    return [f"{time} {stream} {tag} ".encode() + part for tag, part in zip(tags, parts)]


def docker(content: bytes, stream: str = "stdout", piece: int = 0, time: str = TIME) -> list[bytes]:
    """Docker json-file entries for one line: split entries have no trailing newline, the last one has it.
    Split by bytes, as dockerd does: a multi-byte character cut in two becomes U+FFFD on each side (Go's JSON)."""
    data = content + b"\n"
    parts = [data[i : i + piece] for i in range(0, len(data), piece)] if piece else [data]
    return [orjson.dumps({"log": part.decode("utf-8", "replace"), "stream": stream, "time": time}) for part in parts]


class Run:
    """One finished run: exit code, events (parsed stdout), stderr, the summary's row, the dead letters."""

    def __init__(self, result: Any, state: pathlib.Path, sink_row: bool = True):
        self.code = result.returncode
        self.stdout: bytes = result.stdout
        self.stderr: str = result.stderr.decode("utf-8", "replace")
        self.events = [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]
        self.row = summary_rows(self.stderr)["stdout"] if sink_row else {}
        dead = state / "dead-letter.jsonl"
        self.dead = [orjson.loads(line) for line in dead.read_bytes().splitlines()] if dead.exists() else []
        self.state = state

    def ids(self) -> list[str]:
        return [e.get("messageId") or e.get("event_id") for e in self.events]


def backfill(path: pathlib.Path, tmp_path: pathlib.Path, workers: int, *more: str, name: str = "") -> Run:
    state = tmp_path / f"state-{name}{workers}"
    result = ship("backfill", str(path), "--sink", "stdout", "--state-dir", str(state), "--workers", str(workers),
                  *FAST, *more, env=ship_env(), timeout=120)  # fmt: skip
    run = Run(result, state)
    held(run)
    return run


def held(run: Run) -> None:
    """The invariants every run must keep."""
    assert "Traceback" not in run.stderr and "internal_error" not in run.stderr, run.stderr[-3000:]
    assert run.code == 0, run.stderr[-3000:]
    row = run.row
    assert row["read"] == sum(row[k] for k in COLUMNS), row
    assert row["shipped"] == len(run.events), (row, len(run.events))
    assert len(run.dead) == row["dead-lettered"] + row["rejected"], (row, run.dead[:3])
    assert not [d for d in run.dead if d.get("reason") == "internal_error"], run.dead
    no_secret(run)


def no_secret(run: Run) -> None:
    marker = SECRET.encode()
    assert marker not in run.stdout and SECRET not in run.stderr
    for where, data in every_byte_under(run.state).items():
        assert marker not in data, where


def write(path: pathlib.Path, lines: list[bytes], end: bytes = b"\n") -> pathlib.Path:
    path.write_bytes(b"\n".join(lines) + end)
    return path


# -- the runtime's time ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("when", ["0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "1970-01-01T00:00:01Z",
                                  "9999-12-31T23:59:59.999999999-23:59", "0001-01-01T00:00:00+23:59"])  # fmt: skip
def test_a_runtime_time_no_vendor_can_date_is_no_time(when):
    """Year 1 made Segment's encoder fail (`year 0 is out of range`: an internal_error dead letter) and Runscope
    and the webhook send a negative time; 1970-01-01T00:00:01 less the request's latency went negative too."""
    assert runtime_ms(when) is None


@pytest.mark.parametrize("workers", [0, 2])
def test_a_timeless_record_on_an_absurd_runtime_time_is_shipped_dated_when_read(tmp_path, workers):
    lines: list[bytes] = []
    times = ["0001-01-01T00:00:00Z", "1970-01-01T00:00:01Z", "9999-12-31T23:59:59.999999999-23:59", TIME]
    for seq, when in enumerate(times):
        lines += cri(nginx(seq, msec=None, request_time="9000"), time=when)
    run = backfill(write(tmp_path / "0.log", lines), tmp_path, workers)
    assert sorted(run.ids()) == [f"ngx-{seq}" for seq in range(4)] and run.row["dead-lettered"] == 0
    for event in run.events:
        assert "2026" <= event["timestamp"][:4] <= "2027" or event["timestamp"].startswith("2025-12-31"), event

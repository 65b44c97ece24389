"""Fuzz: real records (examples/*.jsonl), mutated (see fuzzlines.py), through the Transformer of every sink
built the way the CLI builds them. For every case: nothing escapes, the outcome is a known one, and an event's
bytes are what the vendor takes (valid JSON, required fields, finite numbers in range, a sane ISO timestamp).
Then a whole file of such lines through a real `kong-ship backfill`: exit 0, every numbered good line shipped
once, and read = shipped + filtered + dead-lettered + rejected + skipped + blank.

CI runs 300 derandomized examples (deterministic). A longer local run:
HYPOTHESIS_PROFILE=long python -m pytest tests/test_fuzz_lines.py   (20,000 random examples)
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings

import fuzzlines
import gen
from conftest import FAST, ship, ship_env, summary_rows
from shipper.formats import Parser
from shipper.processors import build_chain
from shipper.transform import BLANK, EVENT, FAILED, FILTERED, INVALID, REJECTED, SKIPPED, Transformer

settings.register_profile(
    "ci", max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("long", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci")))

MAX_MS = 253_402_300_799_999
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


TRANSFORMERS = {name: Transformer(Parser(), build_chain(), sink) for name, sink in fuzzlines.build_sinks().items()}


# -- what a vendor takes ----------------------------------------------------------------------------------------
def numbers_sane(node: Any) -> bool:
    if isinstance(node, dict):
        return all(numbers_sane(v) for v in node.values())
    if isinstance(node, list):
        return all(numbers_sane(v) for v in node)
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return True
    if isinstance(node, int):
        return -(2**63) <= node < 2**64
    return node == node and abs(node) != float("inf")


def iso_ok(value: Any) -> bool:
    return isinstance(value, str) and bool(ISO.match(value)) and 1970 <= datetime.fromisoformat(value).year <= 9999


def in_range(value: Any, lo: float, hi: float, *, optional: bool = True) -> bool:
    if value is None:
        return optional
    return not isinstance(value, bool) and isinstance(value, (int, float)) and lo <= value <= hi


def status_ok(value: Any, optional: bool = True) -> bool:
    return (value is None and optional) or value == 0 or in_range(value, 100, 999, optional=False)


def check_segment(e: dict[str, Any]) -> None:
    assert e["type"] == "track" and isinstance(e["event"], str) and e["event"].strip()
    assert isinstance(e["messageId"], str) and 0 < len(e["messageId"]) <= 100
    assert isinstance(e.get("userId") or e.get("anonymousId"), str)
    assert isinstance(e["properties"], dict) and isinstance(e["context"], dict)
    assert iso_ok(e["timestamp"]), e["timestamp"]
    p = e["properties"]
    assert status_ok(p.get("statusCode")) and in_range(p.get("port"), 0, 65535)
    assert all(in_range(p.get(k), 0, 1e10) for k in ("timeOfKong", "timeOfRequest"))
    assert p.get("timeOfProxy") == -1 or in_range(p.get("timeOfProxy"), 0, 1e10)  # -1: no upstream call, as Kong


def check_moesif(e: dict[str, Any]) -> None:
    request, response = e["request"], e["response"]
    assert iso_ok(request["time"]) and iso_ok(response["time"])
    assert isinstance(request["uri"], str) and isinstance(request["verb"], str) and isinstance(request["headers"], dict)
    assert status_ok(response["status"], optional=False) and isinstance(response["headers"], dict)
    assert isinstance(e["transaction_id"], str) and len(e["transaction_id"]) == 36 and e["direction"] == "Incoming"


def check_runscope(e: dict[str, Any]) -> None:
    request, response = e["request"], e["response"]
    assert isinstance(request["method"], str) and isinstance(request["url"], str)
    assert in_range(request["timestamp"], 0, MAX_MS / 1000, optional=False)
    assert status_ok(response["status"], optional=False) and in_range(response["response_time"], 0, 1e7, optional=False)


def check_webhook(e: dict[str, Any]) -> None:
    assert isinstance(e["event_id"], str) and e["event_id"] and isinstance(e["kind"], str)
    assert in_range(e["started_at"], 1, MAX_MS) and status_ok(e["status"]) and status_ok(e["upstream_status"])
    assert in_range(e["port"], 0, 65535)
    assert all(in_range(e[k], 0, 2**53) for k in ("request_size", "response_size"))
    assert all(in_range(e[k], 0, 1e10) for k in ("latency_request", "latency_kong", "latency_proxy"))


CHECKS = {"segment": check_segment, "stdout": check_segment, "moesif": check_moesif, "runscope": check_runscope,
          "webhook": check_webhook}  # fmt: skip
KNOWN = {EVENT, BLANK, INVALID, REJECTED, SKIPPED, FILTERED, FAILED}


def check_line(line: bytes) -> None:
    for name, transform in TRANSFORMERS.items():
        outcome, payload, anonymous = transform("f", line, 0, len(line) + 1)  # raises: the test fails
        assert outcome in KNOWN and isinstance(anonymous, bool)
        if outcome in (INVALID, FAILED):
            reason, detail = payload
            assert isinstance(reason, str) and reason and isinstance(detail, str), payload
            # Every kind found so far has a precise reason; internal_error means a new one (the boundary held).
            assert reason != "internal_error", (name, detail, line[:300])
        elif outcome == EVENT:
            assert type(payload) is bytes
            event = orjson.loads(payload)
            assert numbers_sane(event), (name, event)
            try:
                CHECKS[name](event)
            except (AssertionError, KeyError) as exc:
                raise AssertionError(f"{name}: {exc!r}: {payload[:2000]!r}") from None


def fuzz_test(test):
    """Hypothesis over mutated lines, plus each example record as it is (every one an event for every sink)."""
    for record in fuzzlines.RECORDS:
        test = example(json.dumps(record).encode())(test)
    return FUZZ(given(fuzzlines.mutated_lines())(test))


@fuzz_test
def test_no_mutated_line_escapes_the_transformer_and_every_event_is_valid(line):
    check_line(line)


def test_a_file_of_mutated_lines_is_shipped_and_accounted_for(tmp_path):
    """2,000 mutated lines (seeded) between 500 numbered good ones, through a real backfill to stdout."""
    chooser = fuzzlines.RandomChooser(seed=11)
    log = tmp_path / "kong.json"
    good_ids = set()
    with log.open("wb") as out:
        for seq in range(500):
            record = gen.kong_record(seq)
            good_ids.add(record["request"]["id"])
            out.write(gen.kong_line(record))
            for _ in range(4):
                out.write(fuzzlines.mutated_line(chooser) + b"\n")
    lines_total = log.read_bytes().count(b"\n")
    result = ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "state"), *FAST,
                  env=ship_env(), timeout=120)  # fmt: skip
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    events = [orjson.loads(line) for line in result.stdout.splitlines()]
    for event in events:
        check_segment(event)
    shipped_good = [e["messageId"] for e in events if e["messageId"] in good_ids]
    assert len(shipped_good) == len(good_ids) == len(set(shipped_good))  # every good line, once
    row = summary_rows(stderr)["stdout"]
    assert row["read"] == lines_total and row["shipped"] == len(events)
    assert row["read"] == sum(row[k] for k in ("shipped", "filtered", "dead-lettered", "rejected", "skipped", "blank")), row
    dead = (tmp_path / "state" / "dead-letter.jsonl").read_text().splitlines()
    assert len(dead) == row["dead-lettered"] + row["rejected"]

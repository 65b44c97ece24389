"""The Runscope sink against a strict fake of the (legacy) Messages API: one message per request, the plugin's
options, and its answers."""

from __future__ import annotations

import collections
import time

import pytest

import gen
from conftest import FAST, ship, ship_env
from fakes.runscope import FakeRunscope

ENV = ship_env(RUNSCOPE_ACCESS_TOKEN="runscope-token", RUNSCOPE_BUCKET_KEY="bucket1")


def args(fake, tmp_path, *more):
    return ["--sink", "runscope", "--endpoint", fake.url, "--state-dir", str(tmp_path / "state"), *FAST, *more]


def seq_of(message) -> int:
    return gen.seq_of_url(message["request"]["url"])


def body_record(seq):
    rec = gen.kong_record(seq)
    rec["request"]["body"] = '{"q": 1}'
    rec["response"]["body"] = {"answer": 42}
    return rec


def test_one_message_per_request_exactly_once(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(60))
    with FakeRunscope() as fake:
        result = ship("backfill", str(log), *args(fake, tmp_path, "--concurrency", "4"), env=ENV)
        assert result.returncode == 0, result.stderr
        got = collections.Counter(seq_of(m) for m in fake.messages)
        assert set(got) == set(range(60)) and max(got.values()) == 1
        assert fake.request_count == 60
        message = fake.messages[0]
        request, response = message["request"], message["response"]
        assert request["url"].startswith("https://") and request["method"]
        assert request["headers"]["authorization"] == "*****"
        assert isinstance(request["timestamp"], float) and isinstance(response["response_time"], float)
        assert response["timestamp"] >= request["timestamp"]
        assert "body" not in request  # log_body is off by default, as in the plugin


def test_log_body(tmp_path):
    log = tmp_path / "kong.json"
    with open(log, "wb") as handle:
        handle.write(gen.kong_line(body_record(1)))
    with FakeRunscope() as fake:
        result = ship("backfill", str(log), *args(fake, tmp_path, "--runscope-log-body"), env=ENV)
        assert result.returncode == 0, result.stderr
        (message,) = fake.messages
        assert message["request"]["body"] == '{"q": 1}' and message["response"]["body"] == '{"answer":42}'


@pytest.mark.parametrize("env, reason", [
    ({"RUNSCOPE_ACCESS_TOKEN": "wrong", "RUNSCOPE_BUCKET_KEY": "bucket1"}, "403"),
    ({"RUNSCOPE_ACCESS_TOKEN": "runscope-token", "RUNSCOPE_BUCKET_KEY": "nope"}, "unknown bucket"),
])
def test_refusals_are_fatal(tmp_path, env, reason):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(3))
    with FakeRunscope() as fake:
        started = time.monotonic()
        result = ship("backfill", str(log), *args(fake, tmp_path), env=ship_env(**env))
        assert time.monotonic() - started < 10
        assert result.returncode == 1 and reason in result.stderr.decode()


def test_missing_credentials_exit_2(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(1))
    no_token = ship("backfill", str(log), "--sink", "runscope", "--state-dir", str(tmp_path),
                    env=ship_env(RUNSCOPE_BUCKET_KEY="b"))
    assert no_token.returncode == 2 and "RUNSCOPE_ACCESS_TOKEN" in no_token.stderr.decode()
    no_bucket = ship("backfill", str(log), "--sink", "runscope", "--state-dir", str(tmp_path),
                     env=ship_env(RUNSCOPE_ACCESS_TOKEN="t"))
    assert no_bucket.returncode == 2 and "RUNSCOPE_BUCKET_KEY" in no_bucket.stderr.decode()


def test_outage_is_retried(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(20))
    with FakeRunscope() as fake:
        fake.script([503, 502, (429, {"Retry-After": "0.5"}), "reset"])
        result = ship("backfill", str(log), *args(fake, tmp_path), env=ENV)
        assert result.returncode == 0, result.stderr
        assert sorted(seq_of(m) for m in fake.messages) == list(range(20))

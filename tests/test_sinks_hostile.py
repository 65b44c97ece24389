"""The Moesif, Runscope and webhook sinks against a hostile or broken vendor, as real `kong-ship backfill`
processes against loopback fakes (tests/fakes/hostile.py for answers no honest vendor gives), every record with
a seq of its own and the set that arrived checked: answers whose body never ends, trickles or is cut, a vendor
quoting our credential in its refusal, Moesif's /v1/config answered with garbage, a body of gigabytes, hostile
regular expressions and non-finite rates. (Segment with --workers: tests/test_worker_faults.py; several sinks
and routes at once: tests/test_routing_hostile.py.)"""

from __future__ import annotations

import collections
import gzip
import json

import orjson
import pytest

import gen
from conftest import FAST, ship, ship_env
from fakes.hostile import Cut, Endless, Trickle, hostile
from fakes.moesif import FakeMoesif
from fakes.runscope import FakeRunscope
from fakes.webhook import FakeWebhook

CREDENTIALS = {"moesif": "ZQ9100001MOESIFAPPQZ", "runscope": "ZQ9100002RUNSCOPETKQZ", "webhook": "ZQ9100003HOOKSECRQZ"}
PATHS = {"moesif": "/v1/events/batch", "runscope": "/buckets/", "webhook": "/hook"}
SINKS = list(CREDENTIALS)


def env() -> dict[str, str]:
    return ship_env(MOESIF_APPLICATION_ID=CREDENTIALS["moesif"], RUNSCOPE_ACCESS_TOKEN=CREDENTIALS["runscope"],
                    RUNSCOPE_BUCKET_KEY="bucket1", KONG_SHIP_WEBHOOK_SECRET=CREDENTIALS["webhook"])  # fmt: skip


def fake_of(sink: str, **kw):
    if sink == "moesif":
        return hostile(FakeMoesif)(CREDENTIALS["moesif"], **kw)
    if sink == "runscope":
        return hostile(FakeRunscope)(CREDENTIALS["runscope"], **kw)
    return hostile(FakeWebhook)(secret=CREDENTIALS["webhook"].encode(), **kw)


def url_of(sink: str, fake) -> str:
    return fake.url + "/hook" if sink == "webhook" else fake.url


def arrived(sink: str, fake) -> collections.Counter:
    """Each seq's arrivals at the fake (the x-seq header every generated record carries)."""
    if sink == "moesif":
        return collections.Counter(int(e["request"]["headers"]["x-seq"]) for e in list(fake.events))
    if sink == "runscope":
        return collections.Counter(int(m["request"]["headers"]["x-seq"]) for m in list(fake.messages))
    return collections.Counter(int(e["request_headers"]["x-seq"]) for e in fake.snapshot())


def backfill(sink: str, fake, tmp_path, log, *more: str, timeout: float = 60):
    return ship("backfill", str(log), "--sink", sink, "--endpoint", url_of(sink, fake),
                "--state-dir", str(tmp_path / "state"), *FAST, *more, env=env(), timeout=timeout)  # fmt: skip


def exactly_once(got: collections.Counter, seqs) -> None:
    missing = sorted(set(seqs) - set(got))
    doubled = sorted(s for s, n in got.items() if n > 1)
    extra = sorted(set(got) - set(seqs))
    assert not missing and not doubled and not extra, (missing[:10], doubled[:10], extra[:10])


def no_traceback(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text, text[-3000:]
    return text


def checkpoint_offsets(state, sink: str) -> list[int]:
    try:
        files = json.loads((state / f"checkpoints-{sink}.json").read_text())["files"]
    except FileNotFoundError:
        return []
    return [entry["offset"] for entry in files.values()]


# -- answers whose body is hostile ------------------------------------------------------------------------------
@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("answer", ["endless-503", "endless-200", "trickle-503", "cut-200", "reset-503"])
def test_an_answer_whose_body_never_ends_trickles_or_is_cut_is_judged_by_its_status(tmp_path, sink, answer):
    """The first answer's status line and headers come, then a body that never ends (64 KiB chunks as fast as
    loopback takes them), one byte every 0.4 s forever, or a cut: the sender reads a bounded part of it for
    as long as its timeout, then judges the status (503: retried; 200: delivered, not sent again). Before, the
    body was read whole: an endless one held the batch for ever (memory growing), a trickle too (each byte
    reset the read timeout), and a 200 cut mid-body was sent again."""
    kind, _, status = answer.partition("-")
    misbehaviour = {"endless": Endless(int(status)), "trickle": Trickle(int(status), 0.4),
                    "cut": Cut(int(status)), "reset": Cut(int(status), reset=True)}[kind]  # fmt: skip
    log = tmp_path / "kong.json"
    gen.write_records(log, range(40))
    with fake_of(sink) as fake:
        fake.misbehave(PATHS[sink], misbehaviour)
        # --timeout: the trickle is given 3 s (Moesif's and Runscope's own timeouts are 2 s and 10 s: set lower).
        timeouts = {"moesif": ["--moesif-send-timeout", "3000"], "runscope": ["--runscope-timeout", "3000"],
                    "webhook": ["--timeout", "3"]}[sink]  # fmt: skip
        out = backfill(sink, fake, tmp_path, log, "--batch-size", "8", "--concurrency", "1", *timeouts, timeout=45)
        got = arrived(sink, fake)
        fake.wait_for(lambda: fake.ended, timeout=10, what="the misbehaving answer ended")
        sent, ended = fake.sent[0], fake.ended[0]
        first = fake.hostile_requests[0]
    text = no_traceback(out.stderr)
    assert out.returncode == 0, text[-2000:]
    if status == "200" and kind in ("endless", "cut"):
        # Delivered with its 200 (the fake kept nothing of it): not sent again, its body is not what decides.
        exactly_once(got, set(range(40)) - set(arrived_in(sink, first)))
    else:
        exactly_once(got, range(40))
    if kind == "endless":
        assert ended == "hung up" and sent < 64 << 20, (ended, sent)  # read a bounded part, then hung up
    if kind == "trickle":
        assert ended == "hung up" and sent < 30, (ended, sent)


def arrived_in(sink: str, request) -> list[int]:
    """The seqs a request the hostile fake answered carried (it kept nothing of them)."""
    body = gzip.decompress(request.body) if request.headers.get("content-encoding") == "gzip" else request.body
    data = orjson.loads(body)
    if sink == "moesif":
        return [int(e["request"]["headers"]["x-seq"]) for e in data]
    if sink == "runscope":
        return [int(data["request"]["headers"]["x-seq"])]
    return [int(e["request_headers"]["x-seq"]) for e in data]

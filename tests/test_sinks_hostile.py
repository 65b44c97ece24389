"""The Moesif, Runscope and webhook sinks against a hostile or broken vendor, as real `kong-ship backfill`
processes against loopback fakes (tests/fakes/hostile.py for answers no honest vendor gives), every record with
a seq of its own and the set that arrived checked: answers whose body never ends, trickles or is cut, a vendor
quoting our credential in its refusal, Moesif's /v1/config answered with garbage, a body of gigabytes, hostile
regular expressions and non-finite rates. (Segment with --workers: tests/test_worker_faults.py; several sinks
and routes at once: tests/test_routing_hostile.py.)"""

from __future__ import annotations

import collections
import gzip
import hashlib
import json
import signal
import socket
import time

import orjson
import pytest

import gen
from conftest import FAST, every_byte_under, ship, ship_env, summary_rows, wait_until
from fakes.hostile import Cut, Endless, Trickle, hostile
from fakes.httpfake import Response
from fakes.moesif import FakeMoesif
from fakes.runscope import FakeRunscope
from fakes.webhook import FakeWebhook
from test_worker_faults import exactly_once, no_traceback

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


def seq_of_event(sink: str, event: dict) -> int:
    return int((event["request"]["headers"] if sink != "webhook" else event["request_headers"])["x-seq"])


def arrived_in(sink: str, request) -> list[int]:
    """The seqs a request the hostile fake answered carried (it kept nothing of them)."""
    body = gzip.decompress(request.body) if request.headers.get("content-encoding") == "gzip" else request.body
    data = orjson.loads(body)
    return [seq_of_event(sink, e) for e in (data if isinstance(data, list) else [data])]


# -- Moesif's /v1/config: stalled, endless, garbage -------------------------------------------------------------
@pytest.mark.parametrize("answer", ["trickle", "endless", "endless-gzip"])
def test_a_config_answer_that_never_ends_neither_stalls_the_events_nor_fills_memory(tmp_path, answer):
    """/v1/config answered 200 with a body trickling one byte every 0.4 s, or never ending (64 KiB chunks as fast
    as loopback takes them; or gzip members of 64 MiB each, Content-Encoding the client decodes). The fetch gives
    up at its size or time bound and keeps the last settings (100 %): every record arrives once, without each
    waiting for the fetch, and the fake saw the client hang up after a bounded part. Before, the whole body was
    read: an endless one filled memory at loopback speed, and while a trickle went on each event waited one
    fetch's timeouts (3 s), 150 records for minutes."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(150))
    if answer == "trickle":
        misbehaviour: Endless | Trickle = Trickle(200, 0.4)
    else:
        zipped = answer.endswith("gzip")
        chunk = gzip.compress(b"{" * (64 << 20), compresslevel=1) if zipped else b"{" * 65536  # a 290 KB bomb
        misbehaviour = Endless(200, {"Content-Encoding": "gzip"} if zipped else {}, chunk=chunk)
    with fake_of("moesif") as fake:
        fake.misbehave("/v1/config", misbehaviour)
        out = backfill("moesif", fake, tmp_path, log, "--batch-size", "50", "--workers", "0", timeout=40)
        got = arrived("moesif", fake)
        fake.wait_for(lambda: fake.ended, timeout=10, what="the config answer ended")
        sent, ended = fake.sent[0], fake.ended[0]
    text = no_traceback(out.stderr)
    assert out.returncode == 0, text[-2000:]
    exactly_once(got, range(150))
    assert ended == "hung up" and sent < 64 << 20, (ended, sent)
    if answer != "trickle":  # (a trickle is given up on when the run may have ended)
        assert "/v1/config is over" in text, text[-2000:]


GARBAGE_CONFIGS = {
    "list": b"[1, 2]", "null": b"null", "string": b'"sample_rate"', "not-json": b"{{{", "deep": b"[" * 100_000,
    "nan": b'{"sample_rate": NaN}', "inf": b'{"sample_rate": 1e400}', "negative": b'{"sample_rate": -5}',
    "string-nan": b'{"sample_rate": "nan"}', "bool": b'{"sample_rate": true}',
    "users-list": b'{"sample_rate": 100, "user_sample_rate": [["u", 1]]}',
    "user-inf": b'{"sample_rate": 100, "user_sample_rate": {"user-1": "Infinity"}}',
    "rules-dict": b'{"regex_config": {"a": 1}}',
    "rule-rate-nan": b'{"regex_config": [{"sample_rate": "NaN", "conditions": [{"path": "request.verb", '
                     b'"value": "GET"}]}]}',
    "rule-bad-regex": b'{"regex_config": [{"sample_rate": 0, "conditions": [{"path": "request.verb", '
                      b'"value": "(("}]}]}',
    "rules-20000": json.dumps({"regex_config": [{"sample_rate": 0, "conditions": [
        {"path": "request.route", "value": f"^/x{i}$"}, {"path": "request.verb", "value": "GET"}]}
        for i in range(20_000)]}).encode(),
}  # fmt: skip


@pytest.mark.parametrize("name", list(GARBAGE_CONFIGS))
def test_a_garbage_config_keeps_every_event_at_100_percent(tmp_path, name):
    """Whatever /v1/config says that is no configuration (not an object, non-finite or negative rates, a rate
    that is a boolean, JSON nested 100,000 deep, 20,000 regex rules that every event would be matched against in
    turn: refused since the limit of 1,000): one line says so, sampling keeps 100 %, every record arrives once
    with weight 1. A rule whose regex does not compile never matches (its rate 0 would drop everything)."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(60))
    with fake_of("moesif") as fake:
        fake.respond = config_answer(fake, GARBAGE_CONFIGS[name])
        out = backfill("moesif", fake, tmp_path, log, "--batch-size", "20")
        got = arrived("moesif", fake)
        weights = {e["weight"] for e in fake.events}
    text = no_traceback(out.stderr)
    assert out.returncode == 0, text[-2000:]
    exactly_once(got, range(60))
    assert weights == {1}
    if name != "rule-bad-regex":
        assert "/v1/config is not understood" in text, text[-2000:]


def config_answer(fake, body: bytes):
    """The fake's answers, with /v1/config answered `body` (200, with an ETag)."""
    usual = fake.respond

    def respond(req):
        if req.path.startswith("/v1/config"):
            return Response(200, {"Content-Type": "application/json", "X-Moesif-Config-ETag": "g1"}, body)
        return usual(req)

    return respond


# -- a vendor quoting our credentials ---------------------------------------------------------------------------
def echoing(sink: str, fake, refuse: set[int], status: int = 400):
    """The fake's answers, with a request carrying a seq of `refuse` answered `status` and a body quoting the
    request's credentials back in the shapes vendors use (its headers as JSON, a sentence, `Name: value`)."""
    usual = fake.respond

    def respond(req):
        if req.method == "POST" and (status != 400 or set(arrived_in(sink, req)) & refuse):
            credential = {"moesif": req.headers.get("x-moesif-application-id"),
                          "runscope": (req.headers.get("authorization") or "").removeprefix("Bearer "),
                          "webhook": req.headers.get("x-api-key")}[sink]  # fmt: skip
            quoted = {"error": f"invalid token {credential} for this event", "headers": dict(req.headers),
                      "detail": f"header X-Api-Key: {credential}; key {credential} revoked"}  # fmt: skip
            return Response(status, {"Content-Type": "application/json"}, json.dumps(quoted).encode())
        return usual(req)

    return respond


HEADER_KEY = "ZQ9100004HOOKHEADERQZ"  # a --webhook-header credential (X-Api-Key)


@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("status", [400, 501])
def test_a_vendor_quoting_our_credential_in_its_refusal_never_gets_it_written(tmp_path, sink, status):
    """A refusal whose body quotes the request's credential back (the Moesif application id, the Runscope token,
    the webhook's X-Api-Key header) under names no mask knows: 400 (the event alone dead-lettered with the
    vendor's answer as its detail) and 501 (fatal, the answer on stderr). The credential appears nowhere: not in
    the dead letters, stderr or stdout (before, the detail and the fatal line quoted it). The other records of
    the 400 run arrive once."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(30))
    refuse = {7, 22}
    with fake_of(sink, **({"require_headers": {"X-Api-Key": HEADER_KEY}} if sink == "webhook" else {})) as fake:
        fake.respond = echoing(sink, fake, refuse, status)
        more = ["--webhook-header", f"X-Api-Key: {HEADER_KEY}"] if sink == "webhook" else []
        out = backfill(sink, fake, tmp_path, log, "--batch-size", "8", "--log-level", "debug", *more)
        got = arrived(sink, fake)
    text = no_traceback(out.stderr)
    assert out.returncode == 1, text[-2000:]
    state = tmp_path / "state"
    if status == 400:
        exactly_once(got, set(range(30)) - refuse)
        letters = [json.loads(line) for line in (state / "dead-letter.jsonl").read_text().splitlines()]
        assert sorted(seq_of_event(sink, json.loads(d["event"])) for d in letters) == sorted(refuse)
        assert all(d["reason"] == "rejected" and "400" in d["detail"] for d in letters), letters
    else:
        assert "fatal" in text and "501" in text, text[-2000:]
    credentials = [CREDENTIALS[sink] if sink != "webhook" else HEADER_KEY]
    leaked = [f"{where}" for where, data in {"stderr": out.stderr, "stdout": out.stdout,
                                             **every_byte_under(state)}.items()
              if any(c[:9].encode() in data for c in credentials)]  # fmt: skip
    assert not leaked, (leaked, text[-1500:])


# -- Moesif's regex_config: patterns that backtrack for ever ----------------------------------------------------
HOSTILE_RULES = [r"(a+)+$", r"^(\w+\s?)*$", r"\d*\d*\d*x", r".*.*=x", r"(a|a)*$"]


@pytest.mark.parametrize("workers", ["0", "2"])  # with workers, the parent's configuration is handed to them
def test_regex_config_patterns_that_backtrack_for_ever_are_refused_and_the_others_still_apply(tmp_path, workers):
    """/v1/config's regex_config holds rules whose patterns take exponential or polynomial time on the paths
    clients send (`(a+)+$` on /aaa…a!, `\\d*\\d*\\d*x` on /111…1), each at sample rate 0, beside `^/health$` at 0.
    Each hostile pattern is refused with one line and never matches; /health is still sampled away; every
    other record arrives once, weight 1. Before, the first pumped path held the process (and its GIL) for
    ever: Python's re cannot be interrupted."""
    log = tmp_path / "kong.json"
    paths = {}
    for seq in range(60):
        path = "/" + ("a" * 3000 + "!" if seq % 3 == 0 else "1" * 3000 if seq % 3 == 1 else "ok")
        paths[seq] = "/health" if seq % 5 == 0 else path
        with open(log, "ab") as handle:
            handle.write(gen.kong_line(gen.kong_record(seq, path=paths[seq], status=200)))
    rules = [{"sample_rate": 0, "conditions": [{"path": "request.route", "value": value}]}
             for value in [*HOSTILE_RULES, "^/health$"]]  # fmt: skip
    config = {"sample_rate": 100, "user_sample_rate": {}, "company_sample_rate": {}, "regex_config": rules}
    with fake_of("moesif", config=config) as fake:
        out = backfill("moesif", fake, tmp_path, log, "--batch-size", "20", "--workers", workers, timeout=40)
        got = arrived("moesif", fake)
        weights = {e["weight"] for e in fake.events}
    text = no_traceback(out.stderr)
    assert out.returncode == 0, text[-2000:]
    health = {seq for seq, path in paths.items() if path == "/health"}
    exactly_once(got, set(range(60)) - health)
    assert weights == {1}
    assert summary_rows(out.stderr)["moesif"]["skipped"] == len(health)
    assert text.count("it never matches") == len(HOSTILE_RULES), text[-3000:]


REFUSED = [*HOSTILE_RULES, r"(.*)*x", r"(a|ab)*c", r"(\w+)\1", r"(?:a{1,20})*b", r"/users/.*/orders/.*x",
           r"^.*a.*b.*c", r"(?=.*a.*b)", r"x(?:.*|b).*y", r"[a-z]+[a-z0-9]+!"]  # fmt: skip
KEPT = [r"^/health$", r"GET|POST", r"^/users/[^/]+/orders/[^/]+$", r"^/api/.*/orders/.*$", r"^2\d\d$", r"/v1/.*",
        r"/users/[^/]+/orders/[^/]+$", r"^(GET|POST)$", r"mutation\s+createUser", r"^10\.0\.\d+\.\d+$",
        r"(?i)^/HEALTH", r"query\s*\{", r"^/a{1,3}$"]  # fmt: skip


def test_which_patterns_are_refused():
    """Refused: a repeat over a variable repeat or an alternation, a backreference, two wide repeats that can take
    the same characters unanchored (one such pair anchored at the start is quadratic at worst, and kept). Kept:
    the rules Moesif's dashboards write (routes, verbs, statuses, addresses, GraphQL operations)."""
    from shipper.sinks.moesif_regex import backtracks_safely

    assert [p for p in REFUSED if backtracks_safely(p)] == []
    assert [p for p in KEPT if not backtracks_safely(p)] == []


# -- fatal answers: one line, exit 1, checkpoint unmoved, a redirect never followed ------------------------------
FATAL_ANSWERS = [401, 403, 301, 302, 303, 307, 308]


@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("status", FATAL_ANSWERS)
def test_a_fatal_answer_is_one_line_exit_1_the_checkpoint_unmoved_and_a_redirect_never_followed(tmp_path, sink,
                                                                                                 status):
    """Every request answered `status` (a redirect to another host, a fake of its own that would take them):
    exit 1 within the run's first requests, one line naming the answer (a redirect's Location, masked), nothing
    dead-lettered, no checkpoint past the start, nothing at the other host, no credential in the line."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(50))
    with fake_of(sink) as fake, fake_of(sink) as elsewhere:
        where = f"{url_of(sink, elsewhere)}/v1/events/batch?access_token={CREDENTIALS[sink]}"
        fake.script([(status, {"Location": where} if status < 400 else {})] * 1000)
        out = backfill(sink, fake, tmp_path, log, "--batch-size", "10")
        requests = fake.request_count
    text = no_traceback(out.stderr)
    # (Moesif's /v1/config, answered the same by the script, says so in a warning of its own)
    lines = [line for line in text.strip().splitlines() if "/v1/config answered" not in line]
    assert out.returncode == 1 and len(lines) == 1 and "fatal" in lines[0] and str(status) in lines[0], lines
    if status < 400:
        assert f"127.0.0.1:{elsewhere.port}" in lines[0]  # the Location named
    assert CREDENTIALS[sink][:9] not in text
    assert elsewhere.request_count == 0 and requests <= 10, requests
    assert not (tmp_path / "state" / "dead-letter.jsonl").exists()
    assert set(checkpoint_offsets(tmp_path / "state", sink)) <= {0}


# -- Retry-After: odd values ------------------------------------------------------------------------------------
def test_retry_after_values_that_mean_no_wait_fall_back_to_the_backoff_and_a_wait_is_a_second_at_least():
    """None (the ordinary exponential backoff with jitter) for every value that is no usable wait: absent,
    garbage, not finite, zero or negative, a date past. A usable wait is kept as said (the sender caps it at an
    hour), but never under a second (RFC 9110's delay is whole seconds): `0.001` and `1e-300` were honoured as
    they were, and a vendor refusing every request with them was retried in a tight loop, a request a
    millisecond."""
    import email.utils

    import httpx

    from shipper.sinks.base import retry_after_seconds

    now = 1_700_000_000.0

    def wait(value: str | None, reset: str | None = None) -> float | None:
        headers = {k: v for k, v in (("Retry-After", value), ("X-RateLimit-Reset", reset)) if v is not None}
        return retry_after_seconds(httpx.Response(429, headers=headers), now=now)

    past, future = (email.utils.formatdate(now + d, usegmt=True) for d in (-60, 30))
    nothing = [None, "", "  ", "garbage", "1e400", "-1e400", "nan", "inf", "-5", "0", past,
               "Wed, 32 Foo 99999 99:99:99 GMT", "9" * 400]  # fmt: skip
    assert [v for v in nothing if wait(v) is not None] == []
    assert [wait(v) for v in ("0.001", "1e-300", "0.5")] == [1.0, 1.0, 1.0]
    assert wait(None, "0.001") == 1.0 and wait(None, str(now + 0.2)) == 1.0
    assert (wait("1"), wait("2.5"), wait(future), wait(None, "7"), wait("99999999")) == (1, 2.5, 30, 7, 99999999)


@pytest.mark.parametrize("sink", SINKS)
def test_429_and_503_with_odd_retry_after_values_deliver_every_record_once(tmp_path, sink):
    """A storm of 429s and 503s whose Retry-After is each of the odd values, resets and 502s among them: every
    record once, exit 0, the checkpoint at the file's end."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(60))
    odd = ["", "-1", "garbage", "1e400", "nan", "1e-300", "Thu, 01 Jan 1970 00:00:00 GMT", "0.001"]
    with fake_of(sink) as fake:
        fake.script([(status, {"Retry-After": value}) for value in odd for status in (429, 503)] + ["reset", 502] * 3)
        out = backfill(sink, fake, tmp_path, log, "--batch-size", "10", "--concurrency", "1")
        got = arrived(sink, fake)
    text = no_traceback(out.stderr)
    assert out.returncode == 0, text[-2000:]
    exactly_once(got, range(60))
    assert checkpoint_offsets(tmp_path / "state", sink) == [log.stat().st_size]


# -- secrets: every byte that leaves, through the webhook, with worker processes --------------------------------
class RefusingWebhook(FakeWebhook):
    """Answers 400 to a batch holding an event whose x-seq is in `refuse`, and every answer sets a cookie holding
    a marker of its own (a vendor's Set-Cookie must not be written anywhere either)."""

    def __init__(self, refuse: set[str], cookie: str, **kw):
        super().__init__(**kw)
        self.refuse_seqs, self.cookie = refuse, cookie

    def respond(self, req):
        if req.method == "POST":
            try:
                events = orjson.loads(req.body)
            except orjson.JSONDecodeError:
                events = []
            if any(str(e.get("request_headers", {}).get("x-seq")) in self.refuse_seqs for e in events):
                status, headers, body = self.refuse(400, "refused by the test")
                return Response(status, {**headers, "Set-Cookie": f"sid={self.cookie}"}, body)
        status, headers, body = super().respond(req)
        return Response(status, {**headers, "Set-Cookie": f"sid={self.cookie}; HttpOnly"}, body)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_no_secret_leaves_through_the_webhook_with_or_without_workers_refusals_included(tmp_path, workers):
    """tests/test_worker_secrets.py's log (marker secrets in every shape: header-name case, Cookie, Set-Cookie
    lists, X-Api-Key, access_token in query and fragment, percent-encoded names, form and nested JSON bodies,
    URL userinfo, over-long lines cut in a secret) through `--sink webhook`, which ships the whole normalized
    transaction, with --webhook-header credentials, the vendor refusing one event in 7 (halved down to it,
    dead-lettered) and setting a marker cookie on every answer. Every byte scanned: the bodies the fake
    received, stdout, stderr at --log-level debug, every file of the state directory. Every shipped record
    arrived or was dead-lettered, once."""
    from test_worker_secrets import BLOCK, MAX_LINE, everything_that_left, scan, write_log

    path = tmp_path / "kong.json"
    log = write_log(path)
    refused = set(log.seqs[3::7])
    cookie, header_key = "ZQ9100005VENDORCOOKIEQZ", "ZQ9100006HEADERKEYQZ"
    state = tmp_path / "state"
    with RefusingWebhook(refused, cookie, secret=CREDENTIALS["webhook"].encode(),
                         require_headers={"X-Api-Key": header_key}) as fake:  # fmt: skip
        out = ship("backfill", str(path), "--sink", "webhook", "--endpoint", fake.url + "/hook",
                   "--webhook-header", f"X-Api-Key: {header_key}", "--state-dir", str(state), "--workers", workers,
                   "--max-line-bytes", str(MAX_LINE), "--log-level", "debug", "--batch-size", "4", *FAST,
                   env={**env(), "KONG_SHIP_BLOCK_BYTES": str(BLOCK)}, timeout=60)  # fmt: skip
        letters = [orjson.loads(line) for line in (state / "dead-letter.jsonl").read_bytes().splitlines()]
        events = fake.snapshot()
        got = collections.Counter(str(e["request_headers"].get("x-seq")) for e in events)
        left = everything_that_left(fake, out, state)
    assert out.returncode == 1, out.stderr.decode()[-3000:]  # a backfill with rejected events exits 1
    rejected = collections.Counter(str(orjson.loads(d["event"])["request_headers"].get("x-seq"))
                                   for d in letters if d["reason"] == "rejected")  # fmt: skip
    assert rejected == collections.Counter(refused)
    # Each shipped record once, at the fake or dead-lettered (the Nginx lines carry no x-seq: counted).
    assert got + rejected == collections.Counter(log.seqs) + collections.Counter({"None": log.shipped - len(log.seqs)})
    assert len(letters) - len(rejected) == log.dead
    found = []
    for where, data in left.items():
        found += scan(log.markers + [cookie, header_key, CREDENTIALS["webhook"]], where, data)
    assert not found, found


# -- accounting: every line read is shipped, dead-lettered, filtered or skipped, once ---------------------------
@pytest.mark.parametrize("workers", ["0", "2"])
def test_moesif_accounts_for_every_line_under_refusals_sampling_age_and_poison(tmp_path, workers):
    """One Moesif backfill whose lines are each something else: records shipped; /health records sampled away by a
    regex rule at 0 % (skipped); records 40 days old (filtered: Moesif's window); records the vendor refuses
    alone (400, halved down to them: rejected, dead-lettered); lines that are no JSON (dead-lettered) and blank
    lines; an undecodable gzip answer to a batch first (retried). The summary's columns add up to the lines read,
    and the fake has exactly the shipped set, once each."""
    log = tmp_path / "kong.json"
    old_ms = int(time.time() * 1000) - 40 * 86_400_000
    expected = {"shipped": set(), "skipped": set(), "filtered": set(), "rejected": set()}
    refuse = {33, 79, 151}
    poison = blank = 0
    with open(log, "wb") as handle:
        for seq in range(200):
            if seq % 7 == 0:
                record, kind = gen.kong_record(seq, path="/health"), "skipped"
            elif seq % 10 == 4:
                record, kind = gen.kong_record(seq, path=f"/orders/{seq}", started_at=old_ms + seq), "filtered"
            else:  # (not a random path: /health is one of them)
                record, kind = gen.kong_record(seq, path=f"/orders/{seq}"), "rejected" if seq in refuse else "shipped"
            expected[kind].add(seq)
            handle.write(gen.kong_line(record))
            if seq % 23 == 5:
                handle.write(b"no json {\n")
                poison += 1
            if seq % 31 == 6:
                handle.write(b"\n")
                blank += 1
    rules = [{"sample_rate": 0, "conditions": [{"path": "request.route", "value": "^/health$"}]}]
    config = {"sample_rate": 100, "regex_config": rules}
    with fake_of("moesif", config=config) as fake:
        refusing = echoing("moesif", fake, refuse)
        posts = []

        def respond(req):  # the first batch answered 500 with a body no gzip reader takes: retried
            if req.method == "POST" and not posts:
                posts.append(req)
                return Response(500, {"Content-Encoding": "gzip"}, b"\x1f\x8b garbage")
            return refusing(req)

        fake.respond = respond
        out = backfill("moesif", fake, tmp_path, log, "--batch-size", "16", "--workers", workers)
        got = arrived("moesif", fake)
    text = no_traceback(out.stderr)
    assert out.returncode == 1, text[-2000:]  # rejected events: a backfill exits 1
    exactly_once(got, expected["shipped"])
    row = summary_rows(out.stderr)["moesif"]
    assert (row["shipped"], row["skipped"], row["filtered"], row["rejected"]) == tuple(
        len(expected[k]) for k in ("shipped", "skipped", "filtered", "rejected")), row
    assert (row["dead-lettered"], row["blank"]) == (poison, blank), row
    assert row["read"] == 200 + poison + blank == sum(
        row[c] for c in ("shipped", "filtered", "dead-lettered", "rejected", "skipped", "blank")), row
    letters = [json.loads(line) for line in (tmp_path / "state" / "dead-letter.jsonl").read_text().splitlines()]
    assert sorted(seq_of_event("moesif", json.loads(d["event"])) for d in letters if d["reason"] == "rejected") \
        == sorted(refuse)
    assert checkpoint_offsets(tmp_path / "state", "moesif") == [log.stat().st_size]


# -- a vendor's answer written to a terminal ---------------------------------------------------------------------
@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("status", [400, 501])
def test_control_characters_of_a_vendors_answer_never_reach_stderr_or_the_dead_letters_raw(tmp_path, sink, status):
    """A refusal whose body holds terminal escapes (a title set, the screen cleared), a carriage return that would
    overwrite the line with a made-up one, a NUL and a BEL: the fatal line (501) and the dead letter's detail
    (400; JSON escapes them anyway) show them escaped, never raw. Before, the fatal line wrote them to the
    terminal as they came."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(12))
    body = "\x1b]0;owned\x07\x1b[2J\rkong-ship: info: all delivered\x00\x9b31m".encode()
    with fake_of(sink) as fake:
        usual = fake.respond
        fake.respond = lambda req: (Response(status, {"Content-Type": "text/plain"}, body)
                                    if req.method == "POST" and (status == 501 or 5 in arrived_in(sink, req))
                                    else usual(req))  # fmt: skip
        out = backfill(sink, fake, tmp_path, log, "--batch-size", "4")
    assert out.returncode == 1, out.stderr.decode()[-2000:]
    raw = [c for c in ("\x1b", "\x07", "\r", "\x00", "\x9b") if c in out.stderr.decode()]
    assert not raw, (raw, out.stderr.decode()[-1000:])
    if status == 501 and sink != "webhook":  # (the webhook's 501 line names the endpoint, not the answer)
        assert "owned" in out.stderr.decode()  # the answer is still shown


# -- a TLS handshake that never completes; /v1/config redirected --------------------------------------------------
@pytest.mark.parametrize("sink", SINKS)
def test_a_tls_handshake_that_never_completes_is_retried_and_sigterm_still_stops_the_run(tmp_path, shippers, sink):
    """The endpoint accepts the connection and never answers the TLS handshake: each attempt ends at the connect
    timeout and is retried (said on stderr); SIGTERM then ends the backfill once --shutdown-timeout is over
    (143), no checkpoint moved."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(20))
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # never accepted: the kernel completes the TCP handshake, nobody the TLS one
    url = f"https://127.0.0.1:{silent.getsockname()[1]}"
    timeouts = {"moesif": ["--moesif-connect-timeout", "300"], "runscope": ["--runscope-timeout", "300"],
                "webhook": ["--timeout", "0.3"]}[sink]  # fmt: skip
    state = tmp_path / "state"
    try:
        endpoint = url + ("/hook" if sink == "webhook" else "")
        proc = shippers("backfill", str(log), "--sink", sink, "--endpoint", endpoint, "--state-dir", str(state),
                        *FAST, *timeouts, "--shutdown-timeout", "1", env=env())  # fmt: skip
        assert wait_until(lambda: state.exists(), timeout=20)
        time.sleep(1.5)  # a few attempts (not an assertion on time: stderr below says they were made)
        proc.signal(signal.SIGTERM)
        code, _, err = proc.wait(timeout=20)
    finally:
        silent.close()
    assert code == 143, err[-2000:]
    assert "Traceback" not in err and "timed out" in err.lower(), err[-2000:]
    assert set(checkpoint_offsets(state, sink)) <= {0}


def test_a_config_redirect_is_not_followed(tmp_path):
    """/v1/config answered 307 to another host (which would get the application id): not followed, one warning,
    sampling at 100 %, every record delivered once to the configured endpoint."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(30))
    with fake_of("moesif") as fake, fake_of("moesif") as elsewhere:
        usual = fake.respond
        fake.respond = lambda req: (Response(307, {"Location": elsewhere.url + "/v1/config"}, b"")
                                    if req.path.startswith("/v1/config") else usual(req))  # fmt: skip
        out = backfill("moesif", fake, tmp_path, log)
        got = arrived("moesif", fake)
    text = no_traceback(out.stderr)
    assert out.returncode == 0, text[-2000:]
    exactly_once(got, range(30))
    assert elsewhere.request_count == 0 and "/v1/config answered HTTP 307" in text


# -- 413: a body limit halves every batch; an event over it alone is dead-lettered --------------------------------
@pytest.mark.parametrize("sink", ["moesif", "webhook"])
@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_body_limit_halves_batches_and_dead_letters_only_the_event_over_it_alone(tmp_path, sink, workers):
    """The vendor answers 413 to any body over 6,000 bytes (as sent: Moesif's gzipped): batches of 16 are halved
    until they fit; the one record padded past the limit alone is dead-lettered with the answer; every other
    record arrives once; the checkpoint reaches the file's end."""
    log = tmp_path / "kong.json"
    big = 17
    with open(log, "wb") as handle:
        for seq in range(80):
            record = gen.kong_record(seq, path=f"/orders/{seq}")
            if seq == big:  # incompressible padding in a header every sink ships
                pad = "".join(hashlib.sha256(b"%d" % i).hexdigest() for i in range(300))
                record["request"]["headers"]["x-pad"] = pad
            handle.write(gen.kong_line(record))
    limit = 6_000 if sink == "webhook" else 4_000
    with fake_of(sink) as fake:
        usual = fake.respond
        fake.respond = lambda req: (Response(413, {}, b"too large") if req.method == "POST" and len(req.body) > limit
                                    else usual(req))  # fmt: skip
        out = backfill(sink, fake, tmp_path, log, "--batch-size", "16", "--workers", workers, "--concurrency", "1")
        got = arrived(sink, fake)
    text = no_traceback(out.stderr)
    assert out.returncode == 1, text[-2000:]  # a rejected event: a backfill exits 1
    exactly_once(got, set(range(80)) - {big})
    letters = [json.loads(line) for line in (tmp_path / "state" / "dead-letter.jsonl").read_text().splitlines()]
    assert [(d["reason"], seq_of_event(sink, json.loads(d["event"]))) for d in letters] == [("rejected", big)]
    assert "413" in letters[0]["detail"]
    assert checkpoint_offsets(tmp_path / "state", sink) == [log.stat().st_size]


def refusing_with_a_cookie(sink: str, fake, refuse: set[str], cookie: str):
    """The fake's answers with a marker cookie set on each, and a request holding a record whose x-seq is in
    `refuse` answered 400 with a body quoting the request's headers back (its credential among them)."""
    usual = fake.respond

    def respond(req):
        body = gzip.decompress(req.body) if req.headers.get("content-encoding") == "gzip" else req.body
        data = orjson.loads(body) if req.method == "POST" else []
        events = data if isinstance(data, list) else [data]
        if any(str(e["request"]["headers"].get("x-seq")) in refuse for e in events):
            answer = Response(400, {}, json.dumps({"error": "refused", "headers": req.headers}).encode())
        else:
            answer = usual(req)
        return answer._replace(headers={**answer.headers, "Set-Cookie": f"sid={cookie}; HttpOnly"})

    return respond


@pytest.mark.parametrize("sink", ["moesif", "runscope"])
@pytest.mark.parametrize("workers", ["0", "2"])
def test_no_secret_leaves_through_moesif_or_runscope_refusals_included(tmp_path, sink, workers):
    """As the webhook's test above, through Moesif (headers and bodies shipped) and Runscope (--runscope-log-body),
    the line path and the workers': one record in 7 refused with an answer that quotes the request's headers
    (the credential among them), a marker cookie on every answer. Every byte scanned."""
    from test_worker_secrets import BLOCK, MAX_LINE, everything_that_left, scan, write_log

    path = tmp_path / "kong.json"
    log = write_log(path)
    refused = set(log.seqs[3::7])
    cookie = "ZQ9100007VENDORCOOKIEQZ"
    state = tmp_path / "state"
    with fake_of(sink) as fake:
        fake.respond = refusing_with_a_cookie(sink, fake, refused, cookie)
        out = ship("backfill", str(path), "--sink", sink, "--endpoint", fake.url, "--state-dir", str(state),
                   "--workers", workers, "--max-line-bytes", str(MAX_LINE), "--log-level", "debug", "--batch-size",
                   "4", "--runscope-log-body", *FAST, env={**env(), "KONG_SHIP_BLOCK_BYTES": str(BLOCK)},
                   timeout=60)  # fmt: skip
        letters = [orjson.loads(line) for line in (state / "dead-letter.jsonl").read_bytes().splitlines()]
        received = len(fake.events if sink == "moesif" else fake.messages)
        left = everything_that_left(fake, out, state)
    assert out.returncode == 1, out.stderr.decode()[-3000:]
    rejected = collections.Counter(str(orjson.loads(d["event"])["request"]["headers"].get("x-seq"))
                                   for d in letters if d["reason"] == "rejected")  # fmt: skip
    assert rejected == collections.Counter(refused)
    assert received + len(refused) == log.shipped and len(letters) - len(refused) == log.dead
    found = []
    for where, data in left.items():
        found += scan(log.markers + [cookie, CREDENTIALS[sink]], where, data)
    assert not found, found

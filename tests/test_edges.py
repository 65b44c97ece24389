"""The network edges of shipping, against the real process: a vendor that redirects, a Retry-After that must
pause the whole sink (and odd ones that must not cancel the backoff), TLS with a private CA, and `audit verify`
against an Admin API without RBAC."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import gen
from conftest import FAST, ship, ship_env
from fakes.httpfake import FakeHTTPServer, Request, Response, json_response
from fakes.kong_admin import FakeKongAdmin
from fakes.moesif import FakeMoesif
from fakes.segment import FakeSegment
from fakes.tls import private_ca, tls
from test_faults import assert_exactly_once

ENV = ship_env(
    SEGMENT_WRITE_KEY="test-key", MOESIF_APPLICATION_ID="moesif-app", RUNSCOPE_ACCESS_TOKEN="runscope-token",
    RUNSCOPE_BUCKET_KEY="bucket1", KONG_SHIP_WEBHOOK_SECRET="hook-secret",
)


def fatal_lines(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode().splitlines() if "fatal" in line]


# -- redirects --------------------------------------------------------------------------------------------------
class Redirecting(FakeHTTPServer):
    """A vendor that moved: every POST is redirected (GETs, e.g. Moesif's configuration, are answered)."""

    def __init__(self, status: int, location: str):
        super().__init__()
        self.status, self.location = status, location

    def respond(self, req: Request) -> Response:
        if req.method != "POST":
            return json_response(200, {})
        return json_response(self.status, {}, headers={"Location": self.location})


@pytest.mark.parametrize("sink,status", [("segment", 301), ("moesif", 302), ("runscope", 307), ("segment", 308)])
def test_a_redirect_stops_with_its_location_and_loses_nothing(tmp_path, sink, status):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(40))
    state = tmp_path / "state"
    with FakeSegment() as segment, Redirecting(status, "https://events.eu1.example/v1/batch") as moved:
        result = ship("backfill", str(log), "--sink", sink, "--endpoint", moved.url, "--state-dir", str(state),
                      "--batch-size", "10", *FAST, env=ENV)  # fmt: skip
        assert result.returncode == 1, result.stderr.decode()
        lines = fatal_lines(result.stderr)
        assert len(lines) == 1 and f"HTTP {status}" in lines[0] and "https://events.eu1.example/v1/batch" in lines[0]
        assert "--endpoint" in lines[0]
        assert not (state / "dead-letter.jsonl").exists()  # nothing was taken for a bad event
        if sink == "segment":  # the endpoint fixed: the same state ships every record
            again = ship("backfill", str(log), "--sink", sink, "--endpoint", segment.url, "--state-dir", str(state),
                         *FAST, env=ENV)  # fmt: skip
            assert again.returncode == 0, again.stderr.decode()
            assert_exactly_once(segment, range(40))


# -- Retry-After --------------------------------------------------------------------------------------------------
class Pacing(FakeHTTPServer):
    """Answers 200, except the requests the script takes; remembers when each request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self.first_429: float | None = None

    def respond(self, req: Request) -> Response:
        return json_response(200, {})

    def _next(self, req: Request):
        action = super()._next(req)
        now = time.monotonic()
        with self._lock:
            self.times.append(now)
            if action is not None and action.response is not None and action.response.status == 429:
                self.first_429 = self.first_429 or now
        return action


def test_retry_after_pauses_every_slot_of_the_sink(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(60))
    with Pacing() as fake:
        fake.script([200, 200, (429, {"Retry-After": "2"})])
        result = ship("backfill", str(log), "--sink", "webhook", "--endpoint", fake.url, "--state-dir",
                      str(tmp_path / "state"), "--batch-size", "1", "--concurrency", "2", *FAST, env=ENV)  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
        assert fake.first_429 is not None
        # Inside the pause nothing is sent, but for what the other slot sent before the 429 was read (ms).
        inside = [t for t in fake.times if fake.first_429 < t < fake.first_429 + 1.8]
        assert len(inside) <= 3, f"{len(inside)} requests during a 2 s Retry-After"
        assert len(fake.times) == 61


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_odd_retry_after_values_keep_the_exponential_backoff(tmp_path, value):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(1))
    with Pacing() as fake:
        fake.script([(429, {"Retry-After": value})] * 1000)
        proc = subprocess.Popen(
            [sys.executable, "-m", "shipper", "backfill", str(log), "--sink", "webhook", "--endpoint",
             fake.url, "--state-dir", str(tmp_path / "state"), "--flush-interval", "0.05",
             "--retry-initial-delay", "0.2", "--retry-max-delay", "0.2"],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            fake.wait_for(lambda: fake.request_count >= 1, timeout=20)
            time.sleep(1.5)
            sent = fake.request_count
        finally:
            proc.kill()
            proc.wait(10)
        # Full jitter up to 0.2 s averages 0.1 s: ~15 requests in 1.5 s. Without backoff there are hundreds.
        assert 2 <= sent <= 45, f"{sent} requests in 1.5 s with Retry-After: {value}"


# -- TLS ----------------------------------------------------------------------------------------------------------
TLSSegment = tls(FakeSegment)


def test_tls_failure_is_one_fatal_line_and_ca_file_trusts_aprivate_ca(tmp_path):
    ca_pem, cert_pem, key_pem = private_ca(tmp_path)
    log = tmp_path / "kong.json"
    gen.write_records(log, range(20))
    with TLSSegment(cert_pem, key_pem) as segment:
        base = ["backfill", str(log), "--sink", "segment", "--endpoint", segment.url, *FAST]
        refused = ship(*base, "--state-dir", str(tmp_path / "state"), env=ENV, timeout=30)
        assert refused.returncode == 1, refused.stderr.decode()
        lines = fatal_lines(refused.stderr)
        assert len(lines) == 1 and "does not verify" in lines[0] and "--ca-file" in lines[0], refused.stderr.decode()
        assert not segment.messages
        trusted = ship(*base, "--state-dir", str(tmp_path / "state"), "--ca-file", str(ca_pem), env=ENV)
        assert trusted.returncode == 0, trusted.stderr.decode()
        assert_exactly_once(segment, range(20))
        # The same from the configuration file's [delivery] ca_file.
        config = tmp_path / "kong-ship.toml"
        config.write_text(f"[delivery]\nca_file = {json.dumps(str(ca_pem))}\n")
        gen.write_records(log, range(20, 25))
        from_file = ship(*base, "--state-dir", str(tmp_path / "state"), "--config", str(config), env=ENV)
        assert from_file.returncode == 0, from_file.stderr.decode()
        assert_exactly_once(segment, range(25))
        not_pem = tmp_path / "not.pem"
        not_pem.write_text("not a certificate\n")
        bad = ship(*base, "--state-dir", str(tmp_path / "s2"), "--ca-file", str(not_pem), env=ENV)
        assert bad.returncode == 2 and "--ca-file" in bad.stderr.decode()


def test_moesif_fetches_its_configuration_with_the_same_ca_file(tmp_path):
    ca_pem, cert_pem, key_pem = private_ca(tmp_path)
    log = tmp_path / "kong.json"
    gen.write_records(log, range(5))
    with tls(FakeMoesif)(cert_pem, key_pem, config={"sample_rate": 50, "user_sample_rate": {}}) as moesif:
        result = ship("backfill", str(log), "--sink", "moesif", "--endpoint", moesif.url, "--state-dir",
                      str(tmp_path / "state"), "--ca-file", str(ca_pem), *FAST, env=ENV)  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
        assert moesif.config_requests >= 1 and "/v1/config" not in result.stderr.decode()


def test_one_tls_context_serves_both_sinks_and_the_ca_file_check(tmp_path, monkeypatch):
    """The trust store is loaded once per process and CA file (sender.tls_context): --ca-file's check at start and
    every sink's client share it, and two sinks over TLS with a private CA both deliver."""
    from shipper.delivery.trust import tls_context

    ca_pem, cert_pem, key_pem = private_ca(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert tls_context(ca_pem.name) is tls_context(str(ca_pem))  # relative or absolute: one file, one context
    assert tls_context(None) is tls_context(None) and tls_context(None) is not tls_context(str(ca_pem))
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    for _ in range(2):  # a file that does not load is refused each time, never remembered
        with pytest.raises(OSError):  # ssl.SSLError is an OSError
            tls_context(str(not_pem))

    log = tmp_path / "kong.json"
    gen.write_records(log, range(30))
    with TLSSegment(cert_pem, key_pem) as segment, tls(FakeMoesif)(cert_pem, key_pem) as moesif:
        result = ship("backfill", str(log), "--sink", "segment", "--sink", "moesif", "--endpoint",
                      f"segment={segment.url}", "--endpoint", f"moesif={moesif.url}", "--state-dir",
                      str(tmp_path / "state"), "--ca-file", str(ca_pem), *FAST, env=ENV)  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
        assert_exactly_once(segment, range(30))
        assert len(moesif.events) == 30


# -- audit verify without RBAC --------------------------------------------------------------------------------------
def test_audit_verify_needs_no_token_and_a_401_names_the_variable(tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = tmp_path / "public.pem"
    public_pem.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    env = {k: v for k, v in ENV.items() if k not in ("KONG_ADMIN_TOKEN", "KONG_ADMIN_URL")}
    with FakeKongAdmin(None, private_key=private) as admin:  # RBAC off, as Kong ships
        admin.add_request(1700000000, signed=True)
        ok = ship("audit", "verify", "--public-key", str(public_pem), "--admin-url", admin.url, env=env)
        assert ok.returncode == 0, ok.stderr.decode()
        assert ok.stdout.decode().strip() == "1 records: 1 verified, 0 unsigned, 0 invalid"
        compatible = ship("audit", "verify", "--public-key", str(public_pem), "--admin-url", admin.url,
                          "--no-admin-token", env=env)  # fmt: skip
        assert compatible.returncode == 0, compatible.stderr.decode()
    with FakeKongAdmin("rbac-token", private_key=private) as admin:
        refused = ship("audit", "verify", "--public-key", str(public_pem), "--admin-url", admin.url, env=env)
        assert refused.returncode == 1
        assert "HTTP 401" in refused.stderr.decode() and "KONG_ADMIN_TOKEN" in refused.stderr.decode()


def test_a_huge_retry_after_is_capped_at_an_hour_and_held_by_every_slot():
    import threading
    from types import SimpleNamespace

    import httpx

    from shipper.deadletter import DeadLetter
    from shipper.delivery.acks import AckTracker
    from shipper.delivery.sender import RETRY_AFTER_CAP, Sender
    from shipper.sinks.base import judge_common
    from shipper.sinks.segment import SegmentSink

    response = httpx.Response(429, headers={"Retry-After": "99999999"}, request=httpx.Request("POST", "http://x/"))
    verdict = judge_common(response, "Segment", "")
    assert verdict.retry_after == 99999999
    abort = threading.Event()
    counted: dict[str, int] = {}
    sender = Sender(SegmentSink("k", endpoint="http://127.0.0.1:9"), AckTracker(), DeadLetter(None), abort,
                    lambda key, n: counted.update({key: counted.get(key, 0) + n}))  # fmt: skip
    state = SimpleNamespace(outcome=SimpleNamespace(result=lambda: verdict))
    assert sender._wait(state) == RETRY_AFTER_CAP == 3600.0
    # Another slot's next attempt waits too (here: until the shutdown cuts it short).
    abort_later = threading.Timer(0.3, abort.set)
    abort_later.start()
    started = time.monotonic()
    assert sender._send([b"{}"]) is None  # aborted while held, never sent
    assert time.monotonic() - started >= 0.25 and "attempted" not in counted
    sender.close()


def test_a_sink_that_keeps_failing_says_so_once_a_minute_not_once(caplog, monkeypatch):
    """An unreachable vendor: the first failure is said, then one line a minute while it lasts (the back-off
    reaches a minute a try: before, the next line came at the tenth attempt, minutes of silence later)."""
    import logging
    import threading
    from types import SimpleNamespace

    from shipper.deadletter import DeadLetter
    from shipper.delivery import sender as sender_module
    from shipper.delivery.acks import AckTracker
    from shipper.sinks.base import RETRY, Verdict
    from shipper.sinks.segment import SegmentSink

    monkeypatch.setattr(sender_module, "RETRY_SAY_EVERY", 0.2)
    sender = sender_module.Sender(SegmentSink("k", endpoint="http://127.0.0.1:9"), AckTracker(), DeadLetter(None),
                                  threading.Event(), lambda key, n: None)  # fmt: skip
    verdict = Verdict(RETRY, "ConnectError: [Errno 111] Connection refused")
    with caplog.at_level(logging.WARNING, logger="kong-ship"):
        for attempt in range(1, 7):
            state = SimpleNamespace(outcome=SimpleNamespace(result=lambda: verdict), attempt_number=attempt,
                                    next_action=SimpleNamespace(sleep=0.5))  # fmt: skip
            sender._note_retry(state)
            if attempt == 4:
                time.sleep(0.25)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "segment: ConnectError: [Errno 111] Connection refused; retry 1 in 0.5 s"
    assert len(lines) == 2 and "still retrying after 0 s (attempt 5), next in 0.5 s" in lines[1], lines
    sender.close()

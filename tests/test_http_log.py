"""Kong's http-log → `kong-ship receive` at /http-log, as a real process with a real HTTP client: single records
and arrays (1,000 in one request), POST, PUT and PATCH, Bearer and Basic tokens, the refusals, overload, TLS
with a private CA, and a `kill -9` after the answers (nothing answered 200 is lost). Every record carries a
unique seq; the fake Segment is asked for the exact set of seqs that reached it."""

from __future__ import annotations

import base64
import collections
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

import gen

import httpx
import orjson
import pytest

from conftest import FAST, ship, ship_env
from fakes.segment import FakeSegment
from fakes.tls import private_ca
from receiving import free_port, start_receive

TOKEN = "http-log-token-7c1e"
ENV = ship_env(SEGMENT_WRITE_KEY="test-key", KONG_SHIP_HTTP_LOG_TOKEN=TOKEN)
KONG_HEADERS = {"User-Agent": "lua-resty-http/0.17.1 (Lua) ngx_lua/10026", "Content-Type": "application/json"}
BIG_BODIES = ("--max-body-bytes", str(8 << 20))  # 1,000 Kong records are ~2 MB


def seqs_of(fake: FakeSegment) -> collections.Counter:
    return collections.Counter(gen.seq_of_segment_message(m) for m in list(fake.messages))


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class HttpLog:
    """A running `kong-ship receive` and a client posting to its /http-log the way Kong's http-log does."""

    def __init__(self, shippers, tmp_path, endpoint, *more, env=ENV, port=None, listen="127.0.0.1", tls_ca=None):
        self.port = port or free_port()
        scheme = "https" if tls_ca else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/http-log"
        self.proc = start_receive(shippers, [
            "--listen", f"{listen}:{self.port}", "--sink", "segment", "--endpoint", endpoint,
            "--state-dir", str(tmp_path / "state"), *FAST, *BIG_BODIES, *more,
        ], env, self.port)
        verify = ssl.create_default_context(cafile=str(tls_ca)) if tls_ca else True
        self.client = httpx.Client(timeout=10, verify=verify)

    def send(self, body, *, method="POST", headers=None, auth=None, content=None):
        all_headers = {**KONG_HEADERS, **(bearer() if auth is None else auth), **(headers or {})}
        data = orjson.dumps(body) if content is None else content
        return self.client.request(method, self.url, content=data, headers=all_headers)


def test_records_and_batches_by_post_put_patch_with_bearer_and_basic_tokens(shippers, tmp_path):
    with FakeSegment() as fake:
        rx = HttpLog(shippers, tmp_path, fake.url)
        single = rx.send(gen.kong_record(1))
        assert single.status_code == 200 and single.json() == {"accepted": 1}
        put = rx.send(gen.kong_record(2), method="PUT", auth=basic("kong", TOKEN),
                      headers={"Content-Type": "application/json; charset=utf-8"})
        assert put.status_code == 200, put.text
        patch = rx.send([gen.kong_record(s) for s in (3, 4, 5)], method="PATCH")
        assert patch.status_code == 200 and patch.json() == {"accepted": 3}
        empty = rx.send([])
        assert empty.status_code == 200 and empty.json() == {"accepted": 0}
        fake.wait_for(lambda: set(seqs_of(fake)) == {1, 2, 3, 4, 5}, timeout=15)
        # Only http-log is configured: event-hook paths are refused, and the startup line says so.
        hook = rx.client.post(f"http://127.0.0.1:{rx.port}/kong/hooks", content=b'{"event":"x"}', headers=KONG_HEADERS)
        assert hook.status_code == 401
        code, _, err = rx.proc.stop()
        assert code == 0, err
        assert "event hooks at any path (REFUSED (401)" in err and "http-log at /http-log (token required)" in err
        assert "received 0 events and 5 http-log records in 4 deliveries" in err and TOKEN not in err
        assert seqs_of(fake) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
        assert {m["properties"]["queryObject"]["seq"] for m in fake.messages} == {"1", "2", "3", "4", "5"}


def test_wrong_tokens_content_types_and_bodies_are_refused_and_never_shipped(shippers, tmp_path):
    with FakeSegment() as fake:
        rx = HttpLog(shippers, tmp_path, fake.url)
        assert rx.send(gen.kong_record(1), auth=bearer("not-the-token")).status_code == 401
        assert rx.send(gen.kong_record(2), auth={}).status_code == 401
        assert rx.send(gen.kong_record(3), auth=basic("kong", "wrong")).status_code == 401
        assert rx.send(gen.kong_record(4), auth=basic(TOKEN, "")).status_code == 401  # the token as user: no
        assert rx.send(gen.kong_record(5), auth={"Authorization": TOKEN}).status_code == 401
        assert rx.send(gen.kong_record(6), headers={"Content-Type": "text/plain"}).status_code == 415
        assert rx.send(gen.kong_record(7), headers={"Content-Type": "application/json; charset=latin-1"}).status_code == 415
        not_json = rx.send(None, content=b"{not json")
        assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
        mixed = rx.send([gen.kong_record(8), "a string", gen.kong_record(9)])
        assert mixed.status_code == 400
        assert "element 1" in mixed.json()["error"] and "nothing of this request was stored" in mixed.json()["error"]
        assert rx.send(42).status_code == 400
        deep = rx.send(None, content=b"[" * 300 + b"]" * 300)
        assert deep.status_code == 400
        get = rx.client.get(rx.url, headers=bearer())
        assert get.status_code == 405 and get.headers["allow"] == "POST, PUT, PATCH"
        assert rx.send(gen.kong_record(10)).status_code == 200
        fake.wait_for(lambda: 10 in seqs_of(fake), timeout=15)
        code, _, err = rx.proc.stop()
        assert code == 0, err
        assert seqs_of(fake) == {10: 1}  # nothing refused was shipped, not even the objects of the mixed array
        assert "refused an http-log request" in err and "bad token" in err and TOKEN not in err


def test_without_a_token_http_log_is_refused_unless_allowed_and_nothing_configured_does_not_start(shippers, tmp_path):
    hooks_only = ship_env(SEGMENT_WRITE_KEY="test-key", KONG_SHIP_RECEIVE_SECRET="hook-secret")
    with FakeSegment() as fake:
        rx = HttpLog(shippers, tmp_path / "a", fake.url, env=hooks_only)
        refused = rx.send(gen.kong_record(1))
        assert refused.status_code == 401 and "not configured" in refused.json()["error"]
        assert rx.proc.stop()[0] == 0
        open_rx = HttpLog(shippers, tmp_path / "b", fake.url, "--allow-unauthenticated",
                          env=ship_env(SEGMENT_WRITE_KEY="test-key"))
        assert open_rx.send(gen.kong_record(2), auth={}).status_code == 200
        fake.wait_for(lambda: 2 in seqs_of(fake), timeout=15)
        code, _, err = open_rx.proc.stop()
        assert code == 0 and "UNAUTHENTICATED: --allow-unauthenticated" in err, err
        assert seqs_of(fake) == {2: 1}
    nothing = ship("receive", "--listen", f"127.0.0.1:{free_port()}", "--sink", "stdout",
                   "--state-dir", str(tmp_path / "c"), env=ship_env())
    assert nothing.returncode != 0 and b"nothing to receive" in nothing.stderr, nothing.stderr
    both = ship("receive", "--listen", f"127.0.0.1:{free_port()}", "--sink", "stdout", "--allow-unauthenticated",
                "--state-dir", str(tmp_path / "d"), env=ENV)
    assert both.returncode != 0 and b"contradict" in both.stderr


def test_a_batch_of_1000_kong_records_in_one_request(shippers, tmp_path):
    with FakeSegment() as fake:
        rx = HttpLog(shippers, tmp_path, fake.url)
        batch = [gen.kong_record(s) for s in range(1000, 2000)]
        started = time.monotonic()
        answer = rx.send(batch)
        elapsed = time.monotonic() - started
        assert answer.status_code == 200 and answer.json() == {"accepted": 1000}, answer.text
        print(f"1,000 records answered in {elapsed * 1000:.0f} ms")  # seen, not asserted: machines differ
        fake.wait_for(lambda: len(seqs_of(fake)) >= 1000, timeout=30)
        assert rx.proc.stop()[0] == 0
        assert seqs_of(fake) == collections.Counter(range(1000, 2000))


def test_nothing_answered_200_is_lost_across_a_kill_9(shippers, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"  # the vendor is unreachable: everything waits in the spool
    rx = HttpLog(shippers, tmp_path, down)
    answered: set[int] = set()

    def post(first: int) -> None:
        seqs = range(first, first + 25)
        if rx.send([gen.kong_record(s) for s in seqs]).status_code == 200:
            answered.update(seqs)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(post, range(0, 1000, 25)))
    assert answered == set(range(1000))
    rx.proc.kill9()
    with FakeSegment() as fake:
        again = HttpLog(shippers, tmp_path, fake.url, port=rx.port)
        fake.wait_for(lambda: set(seqs_of(fake)) >= answered, timeout=60)
        assert again.proc.stop()[0] == 0
        assert set(seqs_of(fake)) == answered


def test_overload_is_503_with_retry_after_and_the_refused_batch_is_not_shipped(shippers, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    rx = HttpLog(shippers, tmp_path, down, "--max-backlog-bytes", "100000")
    assert rx.send([gen.kong_record(s) for s in range(100)]).status_code == 200
    time.sleep(0.2)  # the backlog is measured at most every 0.1 s
    over = rx.send([gen.kong_record(s) for s in range(100, 200)])
    assert over.status_code == 503 and over.headers["retry-after"].isdigit()
    rx.proc.kill9()
    with FakeSegment() as fake:
        again = HttpLog(shippers, tmp_path, fake.url, port=rx.port)
        fake.wait_for(lambda: len(seqs_of(fake)) >= 100, timeout=30)
        assert again.proc.stop()[0] == 0
        assert set(seqs_of(fake)) == set(range(100))


def test_tls_with_a_private_ca(shippers, tmp_path):
    ca, cert, key = private_ca(tmp_path)
    with FakeSegment() as fake:
        rx = HttpLog(shippers, tmp_path, fake.url, "--tls-cert", str(cert), "--tls-key", str(key), tls_ca=ca)
        assert rx.send([gen.kong_record(s) for s in (1, 2)]).status_code == 200
        with pytest.raises(httpx.TransportError):  # plain HTTP gets no answer: the handshake fails, then the close
            rx.client.post(rx.url.replace("https:", "http:"), content=b"{}", headers={**KONG_HEADERS, **bearer()})
        assert rx.send(gen.kong_record(3)).status_code == 200  # and the listener goes on
        fake.wait_for(lambda: set(seqs_of(fake)) == {1, 2, 3}, timeout=15)
        code, _, err = rx.proc.stop()
        assert code == 0 and f"https://127.0.0.1:{rx.port}/" in err and "WITHOUT TLS" not in err, err
    bad = ship("receive", "--listen", f"127.0.0.1:{free_port()}", "--sink", "stdout", "--tls-cert", str(cert),
               "--state-dir", str(tmp_path / "b"), env=ENV)
    assert bad.returncode != 0 and b"go together" in bad.stderr


def test_a_listener_on_every_address_without_tls_says_so(shippers, tmp_path):
    with FakeSegment() as fake:
        rx = HttpLog(shippers, tmp_path, fake.url, listen="0.0.0.0")
        assert rx.send(gen.kong_record(1)).status_code == 200
        code, _, err = rx.proc.stop()
        assert code == 0 and "WITHOUT TLS" in err, err


def test_the_kong_log_spool_kind_is_read_by_the_kong_parser_http_and_stream():
    from shipper.formats import ParseError, Parser
    from shipper.model import Position

    parser = Parser()

    def envelope(record) -> bytes:
        return orjson.dumps({"spool": "kong_log", "seq": 7, "received_at": "2026-01-01T00:00:00.000Z", "record": record})

    http = parser.parse(envelope(gen.kong_record(42)))
    assert http.kind != "stream" and http.event_id == gen.kong_record(42)["request"]["id"]
    stream = {"session": {"status": 200, "received": 10, "sent": 20}, "started_at": 1700000000000,
              "route": {"id": "r", "protocols": ["tcp"]}, "latencies": {"session": 5}}
    parsed = parser.parse(envelope(stream), Position(file_id="spool-a", offset=123, end=456))
    assert parsed.kind == "stream" and parsed.protocol == "tcp" and parsed.event_id == "spool-a-123"
    with pytest.raises(ParseError, match="not a Kong record"):
        parser.parse(envelope({"hello": "world"}))


def test_a_client_stalling_its_tls_handshake_is_cut_off_at_the_read_timeout(shippers, tmp_path):
    ca, cert, key = private_ca(tmp_path)
    with FakeSegment() as fake:
        rx = HttpLog(shippers, tmp_path, fake.url, "--tls-cert", str(cert), "--tls-key", str(key),
                     "--read-timeout", "1", tls_ca=ca)
        # A ClientHello announced as 512 bytes, then trickled a byte every 0.3 s: each wait is short, the whole is not.
        trickler = socket.create_connection(("127.0.0.1", rx.port), timeout=5)
        trickler.sendall(b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc\x03\x03")  # record, ClientHello, TLS 1.2
        started, cut = time.monotonic(), False
        while time.monotonic() - started < 6:
            try:
                trickler.sendall(b"\x41")  # its random, a byte at a time
            except OSError:
                cut = True
                break
            time.sleep(0.3)
        assert cut and time.monotonic() - started < 4
        trickler.close()
        assert rx.send(gen.kong_record(1)).status_code == 200
        fake.wait_for(lambda: set(seqs_of(fake)) == {1}, timeout=15)
        assert rx.proc.stop()[0] == 0


def test_the_jwt_and_mask_options_apply_to_http_log_records_as_to_file_log_lines(shippers, tmp_path):
    with FakeSegment() as fake:
        rx = HttpLog(shippers, tmp_path, fake.url, "--mask-query", "page")
        records = [gen.kong_record(s, jwt_sub=f"user-{s}") for s in range(20)]
        assert rx.send(records).status_code == 200
        fake.wait_for(lambda: len(seqs_of(fake)) == 20, timeout=15)
        assert rx.proc.stop()[0] == 0
        paged = {r["request"]["querystring"]["seq"] for r in records if "page" in r["request"]["querystring"]}
        by_seq = {m["properties"]["queryObject"]["seq"]: m for m in fake.messages}
        assert paged and all(by_seq[s]["properties"]["queryObject"]["page"] == "*****" for s in paged)
        assert {m["userId"] for m in fake.messages} == {f"user-{s}" for s in range(20)}  # from each record's JWT


def test_requests_arriving_together_share_an_fsync_and_a_failed_write_refuses_its_whole_group(tmp_path):
    import threading

    from shipper.sources.http_commit import Committer
    from shipper.sources.spool import Spool

    class SlowSpool(Spool):
        """Counts its writes, each slow enough for the other requests to queue behind it."""

        writes = 0
        fail = False

        def append_encoded(self, kind, records):
            SlowSpool.writes += 1
            time.sleep(0.05)
            if self.fail:
                raise OSError(28, "No space left on device")
            return super().append_encoded(kind, records)

    spool = SlowSpool(str(tmp_path / "spool"))
    committer = Committer(spool)
    start = threading.Barrier(20)

    def request(n: int, outcome: dict) -> None:
        start.wait()
        try:
            committer.append("kong_log", [{"n": n, "i": i} for i in range(3)])
            outcome[n] = "ok"
        except OSError as exc:
            outcome[n] = exc.strerror

    def burst() -> dict:
        outcome: dict = {}
        threads = [threading.Thread(target=request, args=(n, outcome)) for n in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return outcome

    assert burst() == {n: "ok" for n in range(20)}
    assert SlowSpool.writes < 20  # shared: at most one write (and fsync) per request, fewer when they queue
    lines = [orjson.loads(line) for path in spool.segments() for line in open(path, "rb")]
    assert sorted((e["record"]["n"], e["record"]["i"]) for e in lines) == [(n, i) for n in range(20) for i in range(3)]
    assert [e["seq"] for e in lines] == list(range(1, 61)) and {e["spool"] for e in lines} == {"kong_log"}
    SlowSpool.fail = True
    assert burst() == {n: "No space left on device" for n in range(20)}
    assert sum(1 for path in spool.segments() for _ in open(path, "rb")) == 60  # nothing of a refused group stays
    spool.close()

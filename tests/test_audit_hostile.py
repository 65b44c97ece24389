"""`kong-ship audit` against a hostile or broken Admin API and real audit records: request timestamps that place a
record nowhere, records without an id, answers that are not UTF-8 or hold numbers beyond a double, redirects,
refusals mid-paging, records appearing while paging, Kong's own credentials in every place an audit record carries
them (scanned for in every byte that leaves), a real SIGINT to the process group and a kill -9 mid-run.
Real processes against fakes on loopback, as in test_audit.py."""

from __future__ import annotations

import base64
import collections
import json
import os
import signal
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from conftest import FAST, every_byte_under, reaped, ship, wait_until
from fakes.httpfake import FakeHTTPServer, Response
from fakes.kong_admin import FakeKongAdmin, kong_serialize
from fakes.segment import FakeSegment
from shipper.formats import audit_signature as sig
from shipper.sources.kong_audit import AdminClient, Cursor, Poller
from shipper.sources.spool import Spool
from test_audit import T0, TOKEN, env, expected_ids, keys, message_ids, one_line, tail_args, token_file  # noqa: F401

NOW = int(time.time())


class RawAdmin(FakeHTTPServer):
    """An Admin API serving records given as raw JSON text (whatever bytes a broken Kong would write), newest
    first, on one page. `honours_filter`: apply after_audit_log_filter (a record without a numeric timestamp is
    left out, as SQL leaves out a NULL), or ignore it as a broken server would."""

    def __init__(self, honours_filter: bool = True) -> None:
        super().__init__()
        self.honours_filter = honours_filter
        self.rows: dict[str, list[tuple[float | None, bytes]]] = {"requests": [], "objects": []}

    def add(self, endpoint: str, raw: bytes, when: float | None) -> None:
        with self._lock:
            self.rows[endpoint].insert(0, (when, raw))

    def respond(self, req):
        url = urlsplit(req.path)
        endpoint = url.path.rsplit("/", 1)[1]
        after = parse_qs(url.query).get("after_audit_log_filter")
        with self._lock:
            rows = list(self.rows[endpoint])
        if after and self.honours_filter:
            rows = [(when, raw) for when, raw in rows if when is not None and when >= float(after[0])]
        body = b'{"data":[' + b",".join(raw for _, raw in rows) + b'],"next":null}'
        return Response(200, {"Content-Type": "application/json"}, body)


def request_text(rid: str, ts_text: str, **extra) -> bytes:
    fields = {"request_id": rid, "method": "GET", "path": "/status", "status": 200, "client_ip": "10.0.0.1", **extra}
    return orjson.dumps(fields)[:-1] + b',"request_timestamp":' + ts_text.encode() + b"}"


def spooled(directory) -> list[dict]:
    spool_files = sorted(p for p in os.listdir(directory) if p.startswith("spool-"))
    lines = [line for p in spool_files for line in open(os.path.join(directory, p), "rb")]
    return [orjson.loads(line)["record"]["entry"] for line in lines]


def polls(admin, directory, rounds, *, verify_key=None) -> None:
    """`rounds` polls, each with a fresh Poller over the cursor on disk (as separate runs would)."""
    client = AdminClient(admin.url, None)
    spool = Spool(str(directory))
    try:
        for add in rounds:
            add()
            cursor = Cursor(str(directory / "cursor.json"), {"admin_url": admin.url}).load()
            Poller(client, cursor, spool, verify_key=verify_key).poll()
    finally:
        spool.close()
        client.close()


# -- request timestamps that place a record nowhere ------------------------------------------------------------
ODD_TIMESTAMPS = {
    "milliseconds": (str((NOW - 60) * 1000), (NOW - 60) * 1000),
    "far-future": ("4102444800", 4102444800),  # 2100
    "beyond-int64": ("100000000000000000000000000000", 1e29),
    "1e400": ("1e400", float("inf")),
    "negative": ("-5", -5),
    "null": ("null", None),
    "text": ('"yesterday"', None),
}


@pytest.mark.parametrize("honours_filter", [True, False], ids=["filtering", "ignoring-the-filter"])
@pytest.mark.parametrize("odd", list(ODD_TIMESTAMPS))
def test_a_record_whose_timestamp_places_it_nowhere_holds_nothing_back_and_ships_once(tmp_path, odd, honours_filter):
    """One record with a millisecond, future, huge, infinite, negative or missing request_timestamp: before, the
    cursor jumped to it and every later record was skipped as already shipped (ms, future), the cursor could not be
    saved (1e29: every poll failed), the page was refused as not JSON (1e400: every poll failed), or it was spooled
    again at every poll (a server that ignores the filter)."""
    text, when = ODD_TIMESTAMPS[odd]
    with RawAdmin(honours_filter) as admin:
        rounds = [
            lambda: (admin.add("requests", request_text("r1", str(NOW - 100)), NOW - 100),
                     admin.add("requests", request_text("odd", text), when)),
            lambda: admin.add("requests", request_text("r3", str(NOW - 50)), NOW - 50),
            lambda: admin.add("requests", request_text("r4", str(NOW - 10)), NOW - 10),
            lambda: None,
            lambda: admin.add("requests", request_text("r5", str(NOW - 10)), NOW - 10),  # the cursor's second
        ]  # fmt: skip
        polls(admin, tmp_path / "audit", rounds)
    ids = collections.Counter(r["request_id"] for r in spooled(tmp_path / "audit"))
    assert ids == {"r1": 1, "odd": 1, "r3": 1, "r4": 1, "r5": 1}, ids
    cursor = json.loads((tmp_path / "audit" / "cursor.json").read_text())
    assert cursor["requests"]["after"] == NOW - 10


def test_records_without_an_id_are_shipped_once(tmp_path):
    """Kong always writes an id, a broken API may not: a record without one, at the cursor's second, was spooled
    again at every poll (the cursor remembers records at its second by id)."""
    with RawAdmin() as admin:
        rounds = [
            lambda: admin.add("requests", orjson.dumps({"request_timestamp": NOW - 5, "path": "/a"}), NOW - 5),
            lambda: admin.add("objects", orjson.dumps({"request_timestamp": NOW - 5, "dao_name": "x"}), NOW - 5),
            lambda: admin.add("requests", orjson.dumps({"request_timestamp": NOW - 5, "path": "/b"}), NOW - 5),
            lambda: None,
        ]
        polls(admin, tmp_path / "audit", rounds)
    entries = spooled(tmp_path / "audit")
    assert sorted(e.get("path", e.get("dao_name")) for e in entries) == ["/a", "/b", "x"]


# -- answers that are not UTF-8 ------------------------------------------------------------------------------------
def test_a_page_that_is_not_utf8_is_read_masked_and_its_signature_still_verifies(tmp_path, keys):
    """Kong's JSON encoder writes a string's bytes as they are: a binary body sent to the Admin API makes the page
    invalid UTF-8. Before, the page was refused ('did not answer JSON') at every poll, holding back every record
    behind it; now it is read, the signature checked over the bytes Kong signed, and the record masked and spooled
    (its undecodable bytes replaced)."""
    private, public_pem, _ = keys
    entity = b'{"id":"c1","key":"ENTITY-KEY-\xff-7d1e"}'
    record = {"dao_name": "keyauth_credentials", "id": "o1", "operation": "create", "request_id": "q1",
              "request_timestamp": NOW - 5}  # fmt: skip
    canonical = "|".join(kong_serialize({**record, "entity": "@ENTITY@"})).encode()
    signed = canonical.replace(b"@ENTITY@", entity)
    signature = base64.b64encode(private.sign(signed, padding.PKCS1v15(), hashes.SHA256())).decode()
    raw = orjson.dumps({**record, "signature": signature})[:-1] + b',"entity":"' + entity.replace(b'"', b'\\"') + b'"}'
    with RawAdmin() as admin:
        admin.add("objects", raw, NOW - 5)
        admin.add("requests", request_text("after-it", str(NOW - 1)), NOW - 1)
        key = sig.load_public_key(str(public_pem))
        client = AdminClient(admin.url, None)
        spool = Spool(str(tmp_path / "audit"))
        poller = Poller(client, Cursor(str(tmp_path / "audit" / "cursor.json"), {}), spool, verify_key=key)
        assert poller.poll() == 2
        spool.close()
        client.close()
    assert poller.counts[sig.VERIFIED] == 1 and poller.counts[sig.INVALID] == 0
    on_disk = b"".join(every_byte_under(tmp_path / "audit").values())
    assert b"ENTITY-KEY" not in on_disk and b"after-it" in on_disk


# -- redirects and refusals --------------------------------------------------------------------------------------
def test_a_redirect_is_fatal_one_line_and_moves_nothing_with_or_without_once(tmp_path, token_file):
    """Never followed (the token would go with it): one line naming where it points (no userinfo, no query) and
    exit 1. Before, without --once, it was retried at every interval forever, as if Kong were down."""
    with FakeKongAdmin(TOKEN) as admin, FakeSegment() as segment:
        admin.add_request(T0, signed=False)
        for more in (["--once"], ["--interval", "0.2", "--log-level", "warning"]):
            moved = "https://user:PW-REDIRECT-1@kong.example:8444/login?token=TOK-REDIRECT-2"
            admin.script([(302, {"Location": moved})])
            result = ship(*tail_args(admin, segment.url, tmp_path, token_file, *more), env=env(), timeout=30)
            line = one_line(result.stderr)
            assert result.returncode == 1, (more, line)
            assert "redirect (HTTP 302) to https://kong.example:8444/login" in line and "--admin-url" in line
            assert "PW-REDIRECT-1" not in line and "TOK-REDIRECT-2" not in line
        assert not segment.messages and not (tmp_path / "state" / "audit" / "cursor.json").exists()


class RefusesPageTwo(FakeKongAdmin):
    def respond(self, req):
        if "offset=" in req.path and self.refuse_next_pages:
            return self.refuse(self.refuse_next_pages, "no")
        return super().respond(req)


@pytest.mark.parametrize("status", [401, 403, 503])
def test_a_refusal_on_a_later_page_spools_nothing_of_the_poll(tmp_path, token_file, status):
    """401/403 mid-paging: one line, exit 1, cursor unmoved, nothing shipped (the poll is all or nothing); a 5xx
    is retried without --once and the whole poll then ships once."""
    with RefusesPageTwo(TOKEN) as admin, FakeSegment() as segment:
        admin.refuse_next_pages = status
        records = [admin.add_request(T0 + i, signed=False) for i in range(5)]
        args = tail_args(admin, segment.url, tmp_path, token_file, "--page-size", "2")
        if status != 503:
            result = ship(*args, "--once", env=env())
            assert result.returncode == 1 and f"HTTP {status}" in one_line(result.stderr)
            assert not segment.messages and not (tmp_path / "state" / "audit" / "cursor.json").exists()
            admin.refuse_next_pages = 0
            assert ship(*args, "--once", env=env()).returncode == 0
        else:
            proc = subprocess.Popen([sys.executable, "-m", "shipper", *args, "--interval", "0.2"], env=env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
            with reaped(proc):
                assert wait_until(lambda: len(admin.rejections) >= 2, timeout=20)
                assert not segment.messages
                admin.refuse_next_pages = 0
                segment.wait_for(lambda: set(message_ids(segment)) == expected_ids(records), timeout=20)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(20) == 0
        assert message_ids(segment) == collections.Counter(expected_ids(records))


class GrowsWhilePaging(FakeKongAdmin):
    """Kong writing audit records while we page: each later page is answered after two were added, one with the id
    of the one before (newest first, so everything shifts by two places: a page repeats records of the one before)."""

    grow = True

    def respond(self, req):
        if "offset=" in req.path and self.grow:
            self.added.append(self.add_request(self.next_ts, signed=False))
            self.added.append(self.add_request(self.next_ts, signed=False, request_id=self.added[-1]["request_id"]))
        return super().respond(req)


def test_records_written_while_paging_and_repeated_ids_ship_once(tmp_path, token_file):
    with GrowsWhilePaging(TOKEN) as admin, FakeSegment() as segment:
        admin.next_ts = T0 + 10
        admin.added = [admin.add_request(T0 + i, signed=False) for i in range(9)]
        args = tail_args(admin, segment.url, tmp_path, token_file, "--page-size", "3", "--once")
        assert ship(*args, env=env()).returncode == 0
        admin.next_ts = T0 + 11
        assert ship(*args, env=env()).returncode == 0
        admin.grow = False
        assert ship(*args, env=env()).returncode == 0
        got = message_ids(segment)
        assert set(got) == expected_ids(admin.added) and max(got.values()) == 1, got


# -- Kong's own credentials, in every place an audit record carries them ------------------------------------------
MULTIPART_KEY = (
    '--b0\r\nContent-Disposition: form-data; name="cert"\r\n\r\n-----BEGIN CERTIFICATE-----\r\n--b0\r\n'
    'Content-Disposition: form-data; name="key"\r\n\r\n'
    "-----BEGIN PRIVATE KEY-----\nMK-07\n-----END PRIVATE KEY-----\r\n"
    "--b0--\r\n"
)
REQUESTS = [  # (path, payload)
    ("/consumers", json.dumps({"username": "u", "credentials": {"Password": "MK-01"},
                               "config": {"api_key": "MK-02", "redis": {"password": "MK-03"}}})),
    ("/consumers/u/basic-auth", "username=u&pass%77ord=MK-04&CLIENT_SECRET=MK-05&user%5Bpassword%5D=MK-06"),
    ("/certificates", MULTIPART_KEY),
    ("/certificates", json.dumps({"cert": "C", "key": "MK-08", "key_alt": "MK-09", "cert_alt": "C2"})),
    ("/vaults/hcv", json.dumps({"name": "hcv", "config": {"token": "MK-10", "approle_secret_id": "MK-11"}})),
    ("/consumers/bob/key-auth/MK-12", None),
    ("/default/key-auths/MK-13?size=1", None),
    ("/oauth2_tokens/MK-14", None),
    ("/consumers?apikey=MK-15&size=2", None),
    ("/consumers/h/hmac-auth", json.dumps({"username": "h", "secret": "MK-16"})),
    ("/consumers/j/jwt", json.dumps({"key": "iss-1", "secret": "MK-17", "rsa_public_key": "PUBLIC"})),
    ("/consumers/o/oauth2", json.dumps({"client_id": "c", "client_secret": "MK-18", "name": "app"})),
    ("/consumers/t/key-auth", base64.b64encode(json.dumps({"token": "MK-19"}).encode()).decode()),
    ("/plugins", json.dumps(json.dumps({"config": {"session_secret": "MK-31"}}))),
    # Kong's conventions: a plugin configured by `curl -d config.x=…`, transformers' "name:value" strings
    ("/plugins", "name=acme&config.api_key=MK-40&config.redis.password=MK-41&config.add.headers=x-api-key:MK-42"
                 "&config.add.headers%5B2%5D=apikey%3AMK-43&config.add.querystring=token:MK-44"
                 "&config.add.headers=x-keep:1"),
    ("/plugins", json.dumps({"name": "request-transformer",
                             "config": {"add": {"headers": ["Authorization:Bearer MK-45", "x-keep:2"]}}})),
]
ENTITIES = [  # (dao_name, entity as the JSON text Kong stores)
    ("keyauth_credentials", json.dumps({"id": "k1", "key": "MK-21"})),
    ("certificates", json.dumps({"id": "c1", "key": "MK-22", "key_alt": "MK-23", "cert": "C"})),
    ("keyauth_credentials", "  \n" + json.dumps({"id": "k2", "key": "MK-24"})),
    ("basicauth_credentials", json.dumps({"id": "b1", "username": "u", "password": "MK-25"})),
    ("oauth2_credentials", json.dumps({"id": "o1", "client_secret": "MK-26"})),
    ("vaults", json.dumps({"id": "v1", "config": {"approle_secret_id": "MK-27", "token": "MK-28"}})),
    ("plugins", json.dumps({"id": "p1", "config": {"api_key": "MK-29", "headers": {"Authorization": "Bearer MK-30"}}})),
    ("plugins", json.dumps({"id": "p2", "config": {"append": {"querystring": ["apikey:MK-46"]}}})),
]
TAMPERED_MARKER = "MK-20"
MARKERS = [f"MK-{i:02d}" for i in (*range(1, 32), *range(40, 47))] + [REQUESTS[12][1]]  # and the base64 body


def add_credentials(admin: FakeKongAdmin) -> None:
    for i, (path, payload) in enumerate(REQUESTS):
        admin.add_request(T0 + i, path=path, payload=payload, rbac_user_id="admin-1")
    for i, (dao, entity) in enumerate(ENTITIES):
        record = {"dao_name": dao, "entity": entity, "entity_key": f"e{i}", "id": f"obj-{i}", "operation": "create",
                  "request_id": f"q{i}", "request_timestamp": T0 + i}  # fmt: skip
        admin.add_record("objects", record)
    admin.add_request(T0 + 40, tamper=True, payload=json.dumps({"password": TAMPERED_MARKER}))
    served = orjson.dumps(admin.audit)
    assert all(m.encode() in served for m in MARKERS if m != "MK-19")  # MK-19 is in a base64 body


def test_no_credential_of_an_audit_record_leaves(tmp_path, token_file, keys):
    """A marker secret in every place: JSON, form (percent-encoded and bracketed names, other case), multipart and
    base64 request bodies, nested plugin and vault configs, certificates' `key_alt`, Admin API paths that address
    a credential by its key, entity snapshots (one behind whitespace). Before, `key_alt`, `approle_secret_id`, the
    keys in paths, the entity behind whitespace, a form's dotted names (`config.api_key=`) and transformers'
    "name:value" strings reached the vendor and the spool."""
    private, public_pem, _ = keys
    with FakeKongAdmin(TOKEN, private_key=private) as admin, FakeSegment() as segment:
        add_credentials(admin)
        result = ship(*tail_args(admin, segment.url, tmp_path, token_file, "--once", "--verify-key", str(public_pem),
                                 "--log-level", "debug"), env=env())  # fmt: skip
        printed = ship("audit", "tail", "--admin-url", admin.url, "--admin-token-file", token_file, "--sink", "stdout",
                       "--state-dir", str(tmp_path / "stdout-state"), "--once", "--log-level", "debug", *FAST,
                       env=env())  # fmt: skip
    assert result.returncode == 1, result.stderr.decode()  # the tampered record: dead-lettered
    assert printed.returncode == 0, printed.stderr.decode()
    assert collections.Counter(m["event"] for m in segment.messages) == {
        "Kong Admin Request": len(REQUESTS), "Kong Config Change": len(ENTITIES)}
    left = {
        "vendor": orjson.dumps(segment.messages) + b"".join(r.body for r in segment.requests),
        "stderr": result.stderr + printed.stderr,
        "stdout": result.stdout + printed.stdout,
        **every_byte_under(tmp_path / "state"),
        **every_byte_under(tmp_path / "stdout-state"),
    }
    assert any(p.endswith("dead-letter.jsonl") for p in left), list(left)
    leaks = {(marker, where) for marker in MARKERS for where, data in left.items() if marker.encode() in data}
    assert not leaks, sorted(leaks)
    shipped = orjson.dumps(segment.messages)
    assert b"/consumers/bob/key-auth/*****" in shipped and b"/oauth2_tokens/*****" in shipped
    assert b"/default/key-auths/*****?size=1" in shipped and b"cert_alt" in shipped and b"PUBLIC" in shipped
    assert b"config.add.headers=x-keep:1" in shipped and b"x-keep:2" in shipped


# -- Ctrl-C and kill -9 --------------------------------------------------------------------------------------------
def test_ctrl_c_while_the_admin_api_hangs_exits_promptly_with_what_was_acknowledged_kept(tmp_path, token_file):
    """A real SIGINT to the process group while a poll waits on an Admin API that does not answer: before, the
    command waited --timeout + 5 s (35 s by default) for the poll. Now it exits 0 at once, cleanly, and a restart
    ships nothing again."""
    with FakeKongAdmin(TOKEN) as admin, FakeSegment() as segment:
        records = [admin.add_request(T0 + i, signed=False) for i in range(5)]
        args = tail_args(admin, segment.url, tmp_path, token_file, "--timeout", "30")
        proc = subprocess.Popen([sys.executable, "-m", "shipper", *args, "--interval", "0.2"], env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        with reaped(proc):
            segment.wait_for(lambda: set(message_ids(segment)) == expected_ids(records), timeout=20)
            admin.script(["slow:120"] * 4)
            polled = admin.request_count
            assert wait_until(lambda: admin.request_count > polled, timeout=20)
            os.killpg(proc.pid, signal.SIGINT)
            _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode()
        assert "SIGINT" in err.decode() and "Traceback" not in err.decode()
        admin.clear_script()
        again = ship(*args, "--once", env=env())
        assert again.returncode == 0, again.stderr.decode()
        assert message_ids(segment) == collections.Counter(expected_ids(records))


def test_kill_9_mid_run_then_a_restart_ships_every_record_with_its_own_id(tmp_path, token_file):
    """kill -9 while batches are in flight: every record arrives after the restart; one sent again carries the
    same messageId (at least once, as documented: the vendor drops the copy)."""
    with FakeKongAdmin(TOKEN) as admin, FakeSegment() as segment:
        records = [admin.add_request(T0 + i // 10, signed=False) for i in range(200)]
        segment.script(["slow:0.3"] * 20)
        args = tail_args(admin, segment.url, tmp_path, token_file, "--batch-size", "20")
        proc = subprocess.Popen([sys.executable, "-m", "shipper", *args, "--interval", "0.2"], env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        with reaped(proc):
            assert wait_until(lambda: len(segment.messages) >= 20, timeout=20)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        segment.clear_script()
        again = ship(*args, "--once", env=env())
        assert again.returncode == 0, again.stderr.decode()
        assert set(message_ids(segment)) == expected_ids(records)


# -- memory and usage errors ---------------------------------------------------------------------------------------
class PagedClient:
    """Pages of generated records without HTTP (the Poller needs `pages` and `shown`): a Kong keeping 30 days of
    audit records, read by a first poll."""

    shown = "http://kong:8001"

    def __init__(self, records: int) -> None:
        self.records = records

    def pages(self, endpoint, after):
        if endpoint != "requests":
            return
        payload = json.dumps({"username": "u" * 400, "password": "p"})
        for start in range(0, self.records, 1000):
            yield [{"request_id": f"r{i:08d}", "request_timestamp": NOW - i, "method": "POST", "path": "/consumers",
                    "payload": payload, "status": 201, "signature": "s" * 344}
                   for i in range(start, min(start + 1000, self.records))]  # fmt: skip


def test_a_poll_of_many_records_holds_them_on_disk_not_in_memory(tmp_path):
    """The whole poll was held in memory until its last page (8 KiB a record: 100,000 records, 840 MiB of RSS).
    Counted by tracemalloc (allocations, not time): 20,000 records of 1.5 KB peaked at ~160 MB, now a few MB;
    and they are spooled oldest first, each once."""
    import tracemalloc

    spool = Spool(str(tmp_path / "audit"))
    poller = Poller(PagedClient(20_000), Cursor(str(tmp_path / "audit" / "cursor.json"), {}), spool)
    tracemalloc.start()
    try:
        assert poller.poll() == 20_000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        spool.close()
    assert peak < 40 << 20, f"{peak / 2**20:.0f} MiB"
    ids = [r["request_id"] for r in spooled(tmp_path / "audit")]
    assert ids == [f"r{i:08d}" for i in reversed(range(20_000))]


@pytest.mark.parametrize("url", ["http://u:PW-URL-1@127.0.0.1:notaport", "http://127.0.0.1:99999", "http://[::1",
                                 "http://u:PW-URL-1@[::1", "http://:80",
                                 # A query or fragment would come before the paths appended to it, and the URL is
                                 # shown in messages and shipped with each record: refused, its text not shown.
                                 "http://127.0.0.1:8001/?apikey=PW-URL-1", "http://127.0.0.1:8001/admin#PW-URL-1",
                                 "http://127.0.0.1:8001?PW-URL-1"])  # fmt: skip
def test_an_admin_url_that_is_no_url_is_one_line_and_exit_2(tmp_path, keys, url):
    """A port that is no number or out of range, an unclosed `[`: a traceback before (httpx.InvalidURL, ValueError),
    or an attempt to connect."""
    _, public_pem, _ = keys
    for args in (["audit", "verify", "--public-key", str(public_pem)],
                 ["audit", "tail", "--no-admin-token", "--sink", "stdout", "--state-dir", str(tmp_path),
                  "--once"]):  # fmt: skip
        result = ship(*args, "--admin-url", url, env=env())
        assert result.returncode == 2, (args, result.stderr.decode())
        assert "--admin-url" in one_line(result.stderr) and "PW-URL-1" not in result.stderr.decode()


@pytest.mark.parametrize("cursor", ['{"requests": [1]}', '{"requests": {"after": "abc"}}', '{"objects": 5}',
                                    '{"requests": {"after": 5, "ids": "abc"}}',
                                    '{"requests": {"after": 5, "ids": ["a"], "stray": [{}]}}'])  # fmt: skip
def test_a_cursor_not_as_kong_ship_writes_it_is_one_line_and_exit_2(tmp_path, token_file, cursor):
    """Before: a traceback (`"requests": [1]`), three ids read from `"ids": "abc"`, or everything Kong holds sent
    again (`"after": "abc"` read as no cursor at all)."""
    with FakeKongAdmin(TOKEN) as admin:
        (tmp_path / "state" / "audit").mkdir(parents=True)
        (tmp_path / "state" / "audit" / "cursor.json").write_text(cursor)
        result = ship(*tail_args(admin, "http://127.0.0.1:1", tmp_path, token_file, "--once"), env=env())
        assert result.returncode == 2 and "cursor" in one_line(result.stderr) and "delete it" in result.stderr.decode()
        assert admin.request_count == 0


def test_verify_prints_a_forged_id_escaped(tmp_path, keys):
    """An id is the forger's text too: its escape sequences and newlines reached the terminal as they were, and bytes
    that are no UTF-8 (an Admin API answer read leniently) stopped the report with a traceback."""
    _, public_pem, _ = keys
    forged = request_text("evil\x1b[2J\nOK: all verified", str(NOW), signature="AAAA")
    binary = b'{"request_id":"bin-\xff-id","request_timestamp":1,"signature":"AAAA","method":"GET"}'
    with RawAdmin() as admin:
        admin.add("requests", forged, NOW)
        admin.add("requests", binary, 1)
        for more in ([], ["--json"]):
            args = ["audit", "verify", "--public-key", str(public_pem), "--admin-url", admin.url, *more]
            result = ship(*args, env=env())
            assert result.returncode == 1, result.stderr.decode()
            assert b"\x1b" not in result.stdout and result.stderr == b"", result.stderr.decode()
            if not more:
                lines = result.stdout.decode().splitlines()
                assert lines[0] == "2 records: 0 verified, 0 unsigned, 2 invalid" and len(lines) == 3, lines
                assert "invalid: request bin-\\xff-id" in lines
            else:
                bad = json.loads(result.stdout)["bad"]
                assert sorted(item["id"] for item in bad) == ["bin-\\xff-id", "evil\\u001b[2J\\nOK: all verified"]


def test_tail_logs_a_forged_id_escaped(tmp_path, keys):
    """The warning for a record whose signature does not verify named its id as it was: a forged id wrote a log
    line of its own ('kong-ship: INFO: all good') and its escape sequences reached the terminal."""
    _, public_pem, _ = keys
    forged = request_text("evil\x1b[2J\nkong-ship: INFO: all good", str(NOW), signature="AAAA")
    with RawAdmin() as admin:
        admin.add("requests", forged, NOW)
        result = ship("audit", "tail", "--admin-url", admin.url, "--no-admin-token", "--sink", "stdout", "--state-dir",
                      str(tmp_path), "--once", "--verify-key", str(public_pem), env=env())  # fmt: skip
    assert result.returncode == 1, result.stderr.decode()
    err = result.stderr.decode()
    assert "\x1b" not in err and "\nkong-ship: INFO: all good" not in err
    assert "request evil\\u001b[2J\\nkong-ship: INFO: all good" in err


class BreaksPageTwo(FakeKongAdmin):
    """The Admin API restarting (connection reset) or answering broken JSON on the second page, `breaks` times."""

    breaks = 0
    how = "reset"

    def respond(self, req):
        if "offset=" in req.path and self.breaks > 0:
            self.breaks -= 1
            if self.how == "truncated":
                return Response(200, {"Content-Type": "application/json"}, b'{"data": [{"request_id": "x", "req')
            if self.how == "reset":  # the connection closed with no answer, as by a restarting Kong
                raise ConnectionResetError("restarting")
            return Response(502, {}, b"<html>Bad Gateway</html>")
        return super().respond(req)


@pytest.mark.parametrize("how", ["reset", "truncated", "bad-gateway"])
def test_a_broken_page_mid_poll_is_retried_and_every_record_ships_once(tmp_path, token_file, how):
    """Held before: the poll is all or nothing (nothing spooled, the cursor unmoved), retried at the next interval."""
    with BreaksPageTwo(TOKEN) as admin, FakeSegment() as segment:
        records = [admin.add_request(T0 + i, signed=False) for i in range(7)]
        admin.how, admin.breaks = how, 3
        args = tail_args(admin, segment.url, tmp_path, token_file, "--page-size", "3", "--interval", "0.2")
        proc = subprocess.Popen([sys.executable, "-m", "shipper", *args], env=env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        with reaped(proc):
            segment.wait_for(lambda: set(message_ids(segment)) == expected_ids(records), timeout=20)
            os.killpg(proc.pid, signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode()
        assert admin.breaks == 0 and message_ids(segment) == collections.Counter(expected_ids(records))
        assert err.decode().count("trying again every") == 1, err.decode()


def test_verify_signature_odd_cases(tmp_path, keys):
    """Held before: a signature of the wrong length, not base64, not a string, made with another key, or a record
    changed after signing is invalid (exit 1); an absent or empty one is unsigned (exit 0 unless --require-signed)."""
    private, public_pem, _ = keys
    from cryptography.hazmat.primitives.asymmetric import rsa

    with FakeKongAdmin(None, private_key=private) as admin:
        good = admin.add_request(T0)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "short": dict(good, signature=base64.b64encode(b"x" * 10).decode()),
        "long": dict(good, signature=base64.b64encode(b"x" * 1024).decode()),
        "not-base64": dict(good, signature="!!not base64!!"),
        "number": dict(good, signature=12345),
        "other-key": dict(good, signature=base64.b64encode(other.sign(
            sig.canonical_bytes(good), padding.PKCS1v15(), hashes.SHA256())).decode()),
        "changed": dict(good, path="/consumers/someone-else"),
        "absent": {k: v for k, v in good.items() if k != "signature"},
        "empty": dict(good, signature=""),
    }  # fmt: skip
    key = sig.load_public_key(str(public_pem))
    verdicts = {name: sig.check(record, key) for name, record in cases.items()}
    invalid = {name: sig.INVALID for name in list(cases)[:6]}
    assert verdicts == {**invalid, "absent": sig.UNSIGNED, "empty": sig.UNSIGNED}
    assert sig.check(good, key) == sig.VERIFIED
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in cases.values()))
    result = ship("audit", "verify", "--public-key", str(public_pem), str(path), env=env())
    assert result.returncode == 1
    assert result.stdout.decode().splitlines()[0] == "8 records: 0 verified, 2 unsigned, 6 invalid"


def test_a_page_too_large_to_hold_is_asked_for_in_smaller_pages(tmp_path, monkeypatch):
    """A page's answer was read whole, however large (an Admin API that never ends its answer took every byte of
    memory; 1000 records with large payloads, ~5 times their size once parsed). Past MAX_ANSWER_BYTES (1 MiB
    here) the same page is asked for again in pages half as large; one record too large alone is an error that
    says so, retried at the next poll."""
    from shipper.sources import kong_audit

    monkeypatch.setattr(kong_audit, "MAX_ANSWER_BYTES", 1 << 20, raising=False)
    with FakeKongAdmin(None) as admin:
        blob = json.dumps({"blob": "b" * 4000})
        records = [admin.add_request(NOW - i, signed=False, payload=blob) for i in range(600)]
        spool = Spool(str(tmp_path / "audit"))
        client = AdminClient(admin.url, None)
        try:
            assert Poller(client, Cursor(str(tmp_path / "audit" / "cursor.json"), {}), spool).poll() == 600
        finally:
            spool.close()
            client.close()
        sizes = [parse_qs(urlsplit(path).query)["size"][0] for path in admin.audit_requests() if "requests" in path]
    assert sizes[:2] == ["1000", "500"] and sizes == sorted(sizes, key=int, reverse=True), sizes
    ids = collections.Counter(r["request_id"] for r in spooled(tmp_path / "audit"))
    assert ids == collections.Counter(r["request_id"] for r in records)

    class Endless(FakeHTTPServer):
        def respond(self, req):
            return Response(200, {"Content-Type": "application/json"}, b'{"data": [' + b" " * (2 << 20) + b"]}")

    with Endless() as endless:
        client = AdminClient(endless.url, None)
        with pytest.raises(kong_audit.AdminUnavailable, match="one audit record is larger than 1 MiB"):
            list(client.pages("requests"))
        client.close()
        assert endless.request_count == 10  # sizes 1000, 500, 250, 125, 62, 31, 15, 7, 3, 1


def test_a_record_committed_late_with_an_earlier_second_is_still_shipped(tmp_path):
    """Kong takes request_timestamp when it writes the record, and writers commit in their own order: a worker (or
    another node) that took second T-1 may commit after one that took T, after a poll saw T. The cursor moved to T
    and asked from T on: the record of T-1 was never fetched again (lost). Each poll asks again from a few seconds
    before the newest it saw (LOOKBACK) and skips the records it has by id."""
    from shipper.sources.kong_audit import LOOKBACK

    with RawAdmin() as admin:
        rounds = [
            lambda: admin.add("requests", request_text("at-T", str(NOW - 20)), NOW - 20),
            lambda: admin.add("requests", request_text("late-T-1", str(NOW - 21)), NOW - 21),
            lambda: admin.add("requests", request_text(f"late-T-{LOOKBACK}", str(NOW - 20 - LOOKBACK)),
                              NOW - 20 - LOOKBACK),
            lambda: admin.add("requests", request_text("at-T+5", str(NOW - 15)), NOW - 15),
            lambda: None,
        ]  # fmt: skip
        polls(admin, tmp_path / "audit", rounds)
        asked = [parse_qs(urlsplit(r.path).query).get("after_audit_log_filter") for r in admin.requests]
    ids = collections.Counter(r["request_id"] for r in spooled(tmp_path / "audit"))
    assert ids == {"at-T": 1, "late-T-1": 1, f"late-T-{LOOKBACK}": 1, "at-T+5": 1}, ids
    assert [str(NOW - 15 - LOOKBACK)] in asked
    cursor = json.loads((tmp_path / "audit" / "cursor.json").read_text())
    assert cursor["requests"]["after"] == NOW - 15 and cursor["requests"]["ids"] == ["at-T+5"]
    assert set(cursor["requests"]["seen"]) == {"at-T", "late-T-1", "at-T+5"}  # within LOOKBACK of the newest


def test_a_cursor_written_before_the_lookback_still_skips_what_it_shipped(tmp_path):
    """A cursor of an earlier version names only the ids at its newest second: they are read as seen there."""
    (tmp_path / "audit").mkdir()
    earlier = {"version": 1, "source": {}, "requests": {"after": NOW - 20, "ids": ["old"]},
               "objects": {"after": None, "ids": []}}  # fmt: skip
    (tmp_path / "audit" / "cursor.json").write_text(json.dumps(earlier))
    with RawAdmin() as admin:
        admin.add("requests", request_text("old", str(NOW - 20)), NOW - 20)
        admin.add("requests", request_text("new", str(NOW - 20)), NOW - 20)
        polls(admin, tmp_path / "audit", [lambda: None])
    assert [r["request_id"] for r in spooled(tmp_path / "audit")] == ["new"]


@pytest.mark.parametrize("refusal", [(401, {}), (302, {"Location": "http://elsewhere.example/"})], ids=["401", "302"])
def test_a_vendor_refusal_is_one_line_exit_1_and_the_next_run_ships_everything_once(tmp_path, token_file, refusal):
    """Held: the audit cursor moved (the records are in the spool), the sink's checkpoint did not."""
    with FakeKongAdmin(TOKEN) as admin, FakeSegment() as segment:
        records = [admin.add_request(T0 + i, signed=False) for i in range(5)]
        segment.script([refusal])
        args = tail_args(admin, segment.url, tmp_path, token_file, "--once", "--log-level", "warning")
        refused = ship(*args, env=env())
        lines = [line for line in refused.stderr.decode().splitlines() if "fatal" in line]
        assert refused.returncode == 1 and len(lines) == 1 and f"HTTP {refusal[0]}" in lines[0], refused.stderr
        again = ship(*args, env=env())
        assert again.returncode == 0, again.stderr.decode()
        assert message_ids(segment) == collections.Counter(expected_ids(records))


@pytest.mark.parametrize("shape", ["answer", "lines"])
def test_verify_reads_a_saved_answer_that_is_not_utf8(tmp_path, keys, shape):
    """An Admin API answer saved to a file, with a binary payload's bytes as Kong writes them: it was 'not JSON',
    exit 2; its signature verifies over those bytes."""
    private, public_pem, _ = keys
    record = {"method": "POST", "path": "/files", "request_id": "bin-1", "request_timestamp": NOW, "status": 201}
    payload = b"\x89PNG\r\n\x1a\n\xff\xfe"
    canonical = "|".join(kong_serialize({**record, "payload": "@P@"})).encode().replace(b"@P@", payload)
    signature = base64.b64encode(private.sign(canonical, padding.PKCS1v15(), hashes.SHA256())).decode()
    text = orjson.dumps({**record, "signature": signature})[:-1] + b',"payload":"' + payload.replace(b"\r", b"\\r")
    text = text.replace(b"\n", b"\\n").replace(b"\x1a", b"\\u001a") + b'"}'
    path = tmp_path / "saved.json"
    path.write_bytes(b'{"data": [' + text + b'], "next": null}' if shape == "answer" else text + b"\n")
    result = ship("audit", "verify", "--public-key", str(public_pem), str(path), env=env())
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "1 records: 1 verified, 0 unsigned, 0 invalid"


def test_a_poll_that_fails_part_way_counts_and_warns_nothing_of_it(tmp_path, keys, caplog):
    """Records are checked and masked as their page arrives: a poll that then failed on a later page (retried at the
    next interval) had already counted their signatures and warned of a forged one, and did so again when retried
    (the summary said 2 invalid for 1)."""
    import logging

    from shipper.sources.kong_audit import AdminUnavailable

    private, public_pem, _ = keys
    with BreaksPageTwo(None, private_key=private) as admin:
        admin.add_request(T0, signed=True)
        admin.add_request(T0 + 1, signed=True)
        forged = admin.add_request(T0 + 2, tamper=True)
        admin.how, admin.breaks = "bad-gateway", 1
        client = AdminClient(admin.url, None, page_size=2)
        spool = Spool(str(tmp_path / "audit"))
        poller = Poller(client, Cursor(str(tmp_path / "audit" / "cursor.json"), {}), spool,
                        verify_key=sig.load_public_key(str(public_pem)))  # fmt: skip
        with caplog.at_level(logging.WARNING, logger="kong-ship"):
            with pytest.raises(AdminUnavailable):
                poller.poll()
            assert poller.poll() == 3
        spool.close()
        client.close()
    assert (poller.counts[sig.INVALID], poller.counts[sig.VERIFIED]) == (1, 2)
    warned = [r.getMessage() for r in caplog.records if "does not verify" in r.getMessage()]
    assert len(warned) == 1 and forged["request_id"] in warned[0], warned

"""Kong Enterprise audit logs: the canonical form and signatures, the spooled records as transactions, every sink's
event for them, paging and the cursor against a fake Admin API on loopback, and `kong-ship audit tail` /
`kong-ship audit verify` as real processes (exit codes, one-line errors, the token never printed)."""

from __future__ import annotations

import base64
import collections
import fcntl
import json
import os
import signal
import threading
import time

import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from conftest import FAST, Shipper, ship, ship_env
from fakes.kong_admin import FakeKongAdmin, kong_serialize
from fakes.moesif import FakeMoesif
from fakes.runscope import FakeRunscope
from fakes.segment import FakeSegment
from fakes.tls import private_ca, tls
from shipper.errors import ConfigError, FatalError
from shipper.formats import ParseError, Parser
from shipper.formats import audit_signature as sig
from shipper.model import Position
from shipper.processors import build_chain, run_chain
from shipper.sinks.base import EventSkipped
from shipper.sinks.moesif import MoesifSink
from shipper.sinks.runscope import RunscopeSink
from shipper.sinks.segment import SegmentSink
from shipper.sinks.stdout import StdoutSink
from shipper.sources.kong_audit import LOOKBACK, AdminClient, AdminUnavailable, Cursor, Poller
from shipper.sources.spool import Spool

TOKEN = "kong-admin-token-7Qx9"
T0 = 1_700_000_000  # a Unix second


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """An RSA key pair made for this test module (Kong's audit_log_signing_key and its public half)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    directory = tmp_path_factory.mktemp("keys")
    public_pem = directory / "public.pem"
    public_pem.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    private_pem = directory / "private.pem"
    private_pem.write_bytes(
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return private, public_pem, private_pem


def env(**extra: str) -> dict[str, str]:
    out = ship_env(SEGMENT_WRITE_KEY="test-key", MOESIF_APPLICATION_ID="moesif-app", RUNSCOPE_ACCESS_TOKEN="runscope-token", **extra)
    for name in ("KONG_ADMIN_TOKEN", "KONG_ADMIN_URL"):
        if name not in extra:
            out.pop(name, None)
    return out


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "admin-token"
    path.write_text(TOKEN + "\n")
    return str(path)


def tail_args(admin, sink_url, tmp_path, token_file, *more, sink="segment"):
    return [
        "audit", "tail", "--admin-url", admin.url, "--admin-token-file", token_file, "--sink", sink,
        "--endpoint", sink_url, "--state-dir", str(tmp_path / "state"), *FAST, *more,
    ]  # fmt: skip


def message_ids(fake: FakeSegment) -> collections.Counter:
    return collections.Counter(fake.message_ids())


def expected_ids(requests=(), objects=()) -> set[str]:
    return {f"kong-audit-request-{r['request_id']}" for r in requests} | {f"kong-audit-object-{o['id']}" for o in objects}


def one_line(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- the canonical form ------------------------------------------------------------------------------------------
DOC_RECORD = {  # the signed request record of Kong's audit-log documentation (3.1)
    "client_ip": "127.0.0.1",
    "method": "GET",
    "path": "/status",
    "payload": None,
    "request_id": "Ka2GeB13RkRIbMwBHw0xqe2EEfY0uZG0",
    "request_timestamp": 1581617463,
    "signature": "l2LWYaRIHfXglFa5ehFc2j9ijfERazxisKVtJnYa+QUz2ckcytxfOLuA4VKEWHgY7cCLdn5C7uRJzE6es5V2SoOV59NOpskkr5l",
    "status": 200,
    "ttl": 2591995,
    "workspace": "fd51ce6e-59c0-4b6b-b991-aa708a9ff4d2",
}


def test_canonical_form_of_the_documented_record():
    assert sig.canonical(DOC_RECORD) == (
        "127.0.0.1|GET|/status|Ka2GeB13RkRIbMwBHw0xqe2EEfY0uZG0|1581617463|200|fd51ce6e-59c0-4b6b-b991-aa708a9ff4d2"
    )
    # 3.2+: rbac_user_id sorts between path and request_id; the null rbac_user_name and request_source are skipped.
    newer = {**DOC_RECORD, "rbac_user_id": "2e959b45-0053-41cc-9c2c-5458d0964331", "rbac_user_name": None,
             "request_source": None}  # fmt: skip
    assert sig.canonical(newer) == (
        "127.0.0.1|GET|/status|2e959b45-0053-41cc-9c2c-5458d0964331|Ka2GeB13RkRIbMwBHw0xqe2EEfY0uZG0|1581617463|200|"
        "fd51ce6e-59c0-4b6b-b991-aa708a9ff4d2"
    )


def test_the_docs_example_string_keeps_expire_but_the_implementation_removes_it():
    # Kong's docs print `127.0.0.1|1544724298663|GET|...` for a record with an expire-like field; the Lua
    # reference implementation (and so this module) clears `expire` first.
    record = {"client_ip": "127.0.0.1", "expire": 1544724298663, "method": "GET", "path": "/status",
              "request_id": "Ka2GeB13RkRIbMwBHw0xqe2EEfY0uZG0", "request_timestamp": 1542132298664, "status": 200,
              "workspace": "fd51ce6e-59c0-4b6b-b991-aa708a9ff4d2"}  # fmt: skip
    docs = "127.0.0.1|1544724298663|GET|/status|Ka2GeB13RkRIbMwBHw0xqe2EEfY0uZG0|1542132298664|200|fd51ce6e-59c0-4b6b-b991-aa708a9ff4d2"
    assert sig.canonical(record) == docs.replace("|1544724298663", "")


def test_canonical_form_rules():
    record = {
        "b": "two", "a": 1, "signature": "x", "ttl": 5, "expire": 9, "z": None, "e": "",
        "nested": {"y": 2.5, "x": True, "ttl": 7, "signature": "s", "inner": {"k": False, "j": None}},
        "list": ["first", None, 3, {"q": "in-list"}], "float": 1.0, "big": 1544724298663,
        "Upper": "U", "é": "accent",
    }  # fmt: skip
    # Byte order: upper case before lower case, é (U+00E9) after every ASCII letter.
    assert sig.canonical(record) == "U|1|two|1544724298663||1|first|3|in-list|false|true|2.5|accent"
    assert sig.canonical({}) == ""
    assert sig.canonical({"only": None, "ttl": 1}) == ""
    # The fake's literal transcription of Kong's Lua agrees wherever the JSON has no floats.
    sample = {k: v for k, v in record.items() if k not in ("float", "nested")}
    assert "|".join(kong_serialize(sample)) == sig.canonical(sample)


def _sign(private, record) -> str:
    return base64.b64encode(private.sign(sig.canonical_bytes(record), padding.PKCS1v15(), hashes.SHA256())).decode()


def test_check_verified_unsigned_invalid(keys):
    private, public_pem, _ = keys
    key = sig.load_public_key(str(public_pem))
    record = {k: v for k, v in DOC_RECORD.items() if k != "signature"}
    record["signature"] = _sign(private, record)
    assert sig.check(record, key) == sig.VERIFIED
    assert sig.check({**record, "ttl": 12, "expire": 99}, key) == sig.VERIFIED  # ttl counts down: not signed
    assert sig.check({**record, "status": 500}, key) == sig.INVALID
    assert sig.check({**record, "extra": "added"}, key) == sig.INVALID
    assert sig.check({**record, "signature": None}, key) == sig.UNSIGNED
    assert sig.check({**record, "signature": ""}, key) == sig.UNSIGNED
    assert sig.check({**record, "signature": "not base64 !"}, key) == sig.INVALID
    assert sig.check({**record, "signature": 42}, key) == sig.INVALID
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert sig.check({**record, "signature": _sign(other, record)}, key) == sig.INVALID


def test_kong_signs_before_the_database_adds_the_timestamp_and_that_verifies_too(keys):
    # Kong's sign_adjacent runs before the insert; request_timestamp (and an object's id) come from the database.
    private, public_pem, _ = keys
    key = sig.load_public_key(str(public_pem))
    before_insert = {k: v for k, v in DOC_RECORD.items() if k not in ("signature", "request_timestamp")}
    record = {**DOC_RECORD, "signature": _sign(private, before_insert)}
    assert sig.check(record, key) == sig.VERIFIED
    assert sig.check({**record, "status": 500}, key) == sig.INVALID
    assert sig.check({**record, "request_timestamp": 1}, key) == sig.VERIFIED  # Kong's signature does not cover it
    object_record = {k: v for k, v in OBJECT.items() if k != "signature"}
    signed = {k: v for k, v in object_record.items() if k not in ("id", "request_timestamp")}
    object_record["signature"] = _sign(private, signed)
    assert sig.check(object_record, key) == sig.VERIFIED
    assert sig.check({**object_record, "operation": "delete"}, key) == sig.INVALID


def test_public_key_problems_are_one_line_config_errors(keys, tmp_path):
    _, public_pem, private_pem = keys
    with pytest.raises(ConfigError, match="private key: pass the public one"):
        sig.load_public_key(str(private_pem))
    with pytest.raises(ConfigError, match="cannot read --public-key"):
        sig.load_public_key(str(tmp_path / "missing.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError, match="not a PEM or DER public key"):
        sig.load_public_key(str(garbage))
    ec_pem = tmp_path / "ec.pem"
    ec_pem.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    with pytest.raises(ConfigError, match="not an RSA key"):
        sig.load_public_key(str(ec_pem))
    der = tmp_path / "public.der"
    der.write_bytes(serialization.load_pem_public_key(public_pem.read_bytes()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    assert isinstance(sig.load_public_key(str(der)), rsa.RSAPublicKey)


# -- spooled records → transactions ------------------------------------------------------------------------------
def spooled(kind: str, entry: dict, check: str | None = "verified", seq: int = 1) -> bytes:
    record = {"entry": entry, "signature_check": check, "admin_url": "https://kong.example:8444", "workspace": "team-a"}
    return orjson.dumps({"spool": kind, "seq": seq, "received_at": "2024-04-25T15:03:24.000Z", "record": record})


REQUEST = {
    "client_ip": "10.0.0.7", "method": "post", "path": "/consumers/bob/key-auth?apikey=s3cr3t&x=1",
    "payload": '{"key": "plain-credential", "tags": ["a"]}', "rbac_user_id": "2e959b45-0053-41cc-9c2c-5458d0964331",
    "request_id": "59fpTWlpUtHJ0qnAWBzQRHRDv7i5DwK2", "request_timestamp": T0, "signature": "c2ln", "status": 201,
    "ttl": 2591995, "workspace": "0da4afe7-44ad-4e81-a953-5d2923ce68ae",
}  # fmt: skip
OBJECT = {
    "dao_name": "keyauth_credentials", "entity": '{"id": "c1", "key": "plain-credential", "consumer": {"id": "u1"}}',
    "entity_key": "c1", "expire": 1544723418009, "id": "7ebabee7-2b09-445d-bc1f-2092c4ddc4be", "operation": "create",
    "request_id": "59fpTWlpUtHJ0qnAWBzQRHRDv7i5DwK2", "request_timestamp": T0, "signature": None,
    "workspace": "0da4afe7-44ad-4e81-a953-5d2923ce68ae",
}  # fmt: skip


def parse(line: bytes):
    txn = Parser().parse(line, Position("spoolfile", 0, len(line) + 1))
    return run_chain(build_chain(), txn)


def test_an_admin_request_record_becomes_a_transaction():
    txn = parse(spooled("audit_request", REQUEST))
    assert txn.kind == "admin_request" and txn.source_format == "kong_audit"
    assert txn.event_id == "kong-audit-request-59fpTWlpUtHJ0qnAWBzQRHRDv7i5DwK2"
    assert txn.started_at == T0 * 1000
    assert (txn.method, txn.path, txn.status, txn.client_ip) == ("POST", "/consumers/bob/key-auth", 201, "10.0.0.7")
    assert (txn.scheme, txn.host, txn.port) == ("https", "kong.example", 8444)
    assert txn.query == {"apikey": "*****", "x": "1"}  # the default query masks apply
    assert txn.user_id == "2e959b45-0053-41cc-9c2c-5458d0964331" and txn.user_source == "rbac"
    assert txn.workspace == REQUEST["workspace"] and txn.workspace_name == "team-a"
    details = txn.details
    assert "ttl" in details and details["signature"] == "verified"
    assert details["payload"] == {"key": "*****", "tags": ["a"]}  # decoded, the credential masked
    assert details["path"] == "/consumers/bob/key-auth?apikey=*****&x=1"
    assert "plain-credential" not in orjson.dumps(txn.to_dict()).decode()


def test_a_config_change_record_becomes_a_transaction():
    txn = parse(spooled("audit_object", OBJECT, check="unsigned"))
    assert txn.kind == "config_change"
    assert txn.event_id == "kong-audit-object-7ebabee7-2b09-445d-bc1f-2092c4ddc4be"
    assert txn.started_at == T0 * 1000 and txn.user_id is None and txn.anonymous_id
    assert txn.details["entity"] == {"id": "c1", "key": "*****", "consumer": {"id": "u1"}}
    assert txn.details["signature"] == "unsigned" and txn.details["operation"] == "create"
    # Without --verify-key a signed record is shipped as not checked; a bare record (no wrapper) is understood.
    bare = orjson.dumps({"spool": "audit_object", "seq": 3, "received_at": "2024-04-25T15:03:24.000Z",
                         "record": {**OBJECT, "signature": "c2ln"}})  # fmt: skip
    assert parse(bare).details["signature"] == "not_checked"
    assert parse(spooled("audit_object", OBJECT, check=None)).details["signature"] == "unsigned"


def test_a_record_that_failed_verification_is_a_bad_signature_parse_error():
    with pytest.raises(ParseError) as caught:
        Parser().parse(spooled("audit_request", REQUEST, check="invalid"))
    assert caught.value.reason == "bad_signature" and REQUEST["request_id"] in caught.value.detail


# -- every sink's event ------------------------------------------------------------------------------------------
def test_segment_and_stdout_send_named_track_calls_with_the_actor_as_user():
    request, change = parse(spooled("audit_request", REQUEST)), parse(spooled("audit_object", OBJECT))
    for sink in (SegmentSink("k"), StdoutSink()):
        message = orjson.loads(sink.encode(request))
        assert message["event"] == "Kong Admin Request" and message["type"] == "track"
        assert message["userId"] == REQUEST["rbac_user_id"]
        assert message["properties"]["method"] == "post" and message["properties"]["status"] == 201
        assert message["messageId"] == request.event_id and message["timestamp"] == "2023-11-14T22:13:20.000Z"
        assert message["context"]["ip"] == "10.0.0.7"
        other = orjson.loads(sink.encode(change))
        assert other["event"] == "Kong Config Change" and other["anonymousId"]
        assert other["properties"]["dao_name"] == "keyauth_credentials"
    hook = parse(orjson.dumps({"spool": "event_hook", "seq": 1, "received_at": "2024-04-25T15:03:24.000Z",
                               "record": {"source": "crud", "event": "consumers"}}))  # fmt: skip
    assert orjson.loads(SegmentSink("k").encode(hook))["event"] == "Kong Event Hook"


def test_segment_shrinks_a_huge_entity_rather_than_dropping_the_change():
    entity = json.dumps({"id": "c1", "config": "x" * 60_000})
    message = orjson.loads(SegmentSink("k").encode(parse(spooled("audit_object", {**OBJECT, "entity": entity}))))
    assert message["properties"]["entity"].startswith("[truncated by kong-ship:")
    assert "payload" not in message["properties"]  # nothing absent is invented


def test_moesif_sends_admin_requests_as_api_events_and_skips_config_changes():
    sink = MoesifSink("moesif-app", fetch_config=False)
    event = orjson.loads(sink.encode(parse(spooled("audit_request", REQUEST))))
    assert FakeMoesif._check(event) is None
    assert event["request"]["uri"] == "https://kong.example:8444/consumers/bob/key-auth?apikey=*****&x=1"
    assert event["request"]["verb"] == "POST" and event["response"]["status"] == 201
    assert event["request"]["ip_address"] == "10.0.0.7" and event["user_id"] == REQUEST["rbac_user_id"]
    assert event["metadata"]["kong"]["audit"]["request_id"] == REQUEST["request_id"]
    assert event["metadata"]["kong"]["workspace"] == {"id": REQUEST["workspace"], "name": "team-a"}
    with pytest.raises(EventSkipped):
        sink.encode(parse(spooled("audit_object", OBJECT)))


def test_runscope_sends_admin_requests_and_skips_config_changes():
    sink = RunscopeSink("runscope-token", "bucket1")
    message = orjson.loads(sink.encode(parse(spooled("audit_request", REQUEST))))
    assert FakeRunscope._check(message) is None
    assert message["request"]["url"].startswith("https://kong.example:8444/consumers/bob/key-auth")
    assert message["request"]["timestamp"] == T0 and message["response"]["status"] == 201
    with pytest.raises(EventSkipped):
        sink.encode(parse(spooled("audit_object", OBJECT)))


# -- the client and the cursor, in process ----------------------------------------------------------------------
def test_paging_follows_next_and_puts_the_filter_back(keys):
    private, _, _ = keys
    with FakeKongAdmin(TOKEN, private_key=private) as admin:
        added = [admin.add_request(T0 + i, signed=False) for i in range(25)]
        added.append(admin.add_request(T0 + 30, signed=False, workspace="team-a"))
        client = AdminClient(admin.url + "/", TOKEN, page_size=10)
        pages = list(client.pages("requests"))
        assert [len(p) for p in pages] == [10, 10, 6]
        flat = [r for p in pages for r in p]
        assert [r["request_timestamp"] for r in flat] == sorted((r["request_timestamp"] for r in flat), reverse=True)
        pages = list(client.pages("requests", after=T0 + 5))
        assert [len(p) for p in pages] == [10, 10, 1]
        sent = admin.audit_requests()[-3:]
        assert all(f"after_audit_log_filter={T0 + 5}" in path and "size=10" in path for path in sent)
        assert all(p.startswith("/audit/requests?") for p in sent)
        team = AdminClient(admin.url, TOKEN, workspace="team-a", page_size=10)
        assert [len(p) for p in team.pages("requests")] == [1]
        assert admin.audit_requests()[-1].startswith("/team-a/audit/requests?")
        assert sorted(r["request_id"] for r in flat) == sorted(r["request_id"] for r in added)
        with pytest.raises(FatalError, match="404 .* --workspace"):
            list(AdminClient(admin.url, TOKEN, workspace="nope").pages("requests"))
        with pytest.raises(FatalError, match=r"refused GET .* \(HTTP 401\): check the token"):
            list(AdminClient(admin.url, "wrong").pages("requests"))
        client.close()
        team.close()
    with pytest.raises(AdminUnavailable, match="cannot reach the Kong Admin API"):
        list(AdminClient(admin.url, TOKEN, timeout=2).pages("requests"))


def test_records_at_the_cursors_second_are_recognized_by_id(tmp_path):
    with FakeKongAdmin(TOKEN) as admin:
        client = AdminClient(admin.url, TOKEN, page_size=2)
        spool = Spool(str(tmp_path / "audit"))
        cursor_path = str(tmp_path / "audit" / "cursor.json")

        def poller() -> Poller:
            return Poller(client, Cursor(cursor_path, {"admin_url": admin.url}).load(), spool)

        first = [admin.add_request(T0 + 1, signed=False) for _ in range(3)] + [admin.add_request(T0, signed=False)]
        assert poller().poll() == 4
        edge = Cursor(cursor_path, {}).load().edges["requests"]
        assert edge.after == T0 + 1 and edge.ids == {r["request_id"] for r in first[:3]}
        # More records in that same second, and one later: only they are new (the filter is inclusive).
        later = [admin.add_request(T0 + 1, signed=False) for _ in range(2)] + [admin.add_request(T0 + 2, signed=False)]
        admin.add_object(T0 + 1, signed=False)
        p = poller()
        assert p.poll() == 4 and p.counts == {"requests": 3, "objects": 1, "unsigned": 4}
        assert f"after_audit_log_filter={T0 + 1 - LOOKBACK}" in admin.audit_requests()[-4]
        assert poller().poll() == 0
        lines = [orjson.loads(line) for path in spool.segments() for line in open(path, "rb")]
        requests = [line["record"]["entry"] for line in lines if line["spool"] == "audit_request"]
        assert [r["request_id"] for r in requests] == [first[3]["request_id"]] + [r["request_id"] for r in first[:3] + later]
        assert [r["request_timestamp"] for r in requests] == sorted(r["request_timestamp"] for r in requests)
        spool.close()
        client.close()


# -- `kong-ship audit tail` as a process -------------------------------------------------------------------------
def test_tail_once_twice_ships_each_record_exactly_once(tmp_path, token_file, keys):
    private, _, _ = keys
    with FakeKongAdmin(TOKEN, private_key=private) as admin, FakeSegment() as segment:
        requests = [admin.add_request(T0 + i // 2, rbac_user_id="admin-1") for i in range(7)]
        objects = [admin.add_object(T0 + i) for i in range(3)]
        args = tail_args(admin, segment.url, tmp_path, token_file, "--once", "--page-size", "3")
        first = ship(*args, env=env())
        assert first.returncode == 0, first.stderr.decode()
        assert set(message_ids(segment)) == expected_ids(requests, objects)
        assert len(admin.audit_requests()) == 3 + 1  # 7 requests in pages of 3, 3 objects in one full page
        # New records, two of them in the same second as the newest already shipped.
        newest = T0 + 3
        more_requests = [admin.add_request(newest, rbac_user_id="admin-2") for _ in range(2)]
        more_requests.append(admin.add_request(newest + 1))
        more_objects = [admin.add_object(newest + 1)]
        second = ship(*args, env=env())
        assert second.returncode == 0, second.stderr.decode()
        got = message_ids(segment)
        assert set(got) == expected_ids(requests + more_requests, objects + more_objects)
        assert max(got.values()) == 1, got
        third = ship(*args, env=env())
        assert third.returncode == 0 and sum(message_ids(segment).values()) == len(got)
        by_event = collections.Counter(m["event"] for m in segment.messages)
        assert by_event == {"Kong Admin Request": 10, "Kong Config Change": 4}
        assert {m.get("userId") for m in segment.messages if m["event"] == "Kong Admin Request"} == {"admin-1", "admin-2", None}
        assert "10 admin requests" not in third.stderr.decode() and "0 admin requests" in third.stderr.decode()
        cursor = json.loads((tmp_path / "state" / "audit" / "cursor.json").read_text())
        assert cursor["requests"]["after"] == newest + 1 and TOKEN not in json.dumps(cursor)


def test_tail_verify_key_marks_and_dead_letters(tmp_path, token_file, keys):
    private, public_pem, _ = keys
    with FakeKongAdmin(TOKEN, private_key=private) as admin, FakeSegment() as segment:
        good = admin.add_request(T0)
        unsigned = admin.add_request(T0 + 1, signed=False)
        tampered = admin.add_request(T0 + 2, tamper=True)
        bad_object = admin.add_object(T0 + 2, tamper=True)
        good_object = admin.add_object(T0 + 3)
        result = ship(*tail_args(admin, segment.url, tmp_path, token_file, "--once", "--verify-key", str(public_pem)), env=env())
        stderr = result.stderr.decode()
        assert result.returncode == 1, stderr  # a record failed verification
        assert set(message_ids(segment)) == expected_ids([good, unsigned], [good_object])
        marks = {m["messageId"]: m["properties"]["signature"] for m in segment.messages}
        assert marks == {
            f"kong-audit-request-{good['request_id']}": "verified",
            f"kong-audit-request-{unsigned['request_id']}": "unsigned",
            f"kong-audit-object-{good_object['id']}": "verified",
        }
        dead = [json.loads(line) for line in (tmp_path / "state" / "audit" / "dead-letter.jsonl").read_text().splitlines()]
        assert sorted(d["reason"] for d in dead) == ["bad_signature", "bad_signature"]
        assert tampered["request_id"] in dead[0]["detail"] + dead[1]["detail"]
        assert bad_object["id"] in dead[0]["detail"] + dead[1]["detail"]
        assert "2 verified, 1 unsigned, 2 invalid" in stderr and "bad_signature" in stderr
        # The next run does not report them again: they are behind the cursor, kept in the dead-letter file.
        again = ship(*tail_args(admin, segment.url, tmp_path, token_file, "--once", "--verify-key", str(public_pem)), env=env())
        assert again.returncode == 0, again.stderr.decode()


def test_tail_to_moesif_sends_admin_requests(tmp_path, token_file):
    recent = int(time.time()) - 3600  # Moesif drops events older than 30 days, and so does the sink
    with FakeKongAdmin(TOKEN) as admin, FakeMoesif() as moesif:
        requests = [admin.add_request(recent + i, signed=False, rbac_user_id="ops") for i in range(3)]
        admin.add_object(recent, signed=False)
        result = ship(*tail_args(admin, moesif.url, tmp_path, token_file, "--once", sink="moesif"), env=env())
        assert result.returncode == 0, result.stderr.decode()
        assert not moesif.rejections
        assert sorted(e["metadata"]["kong"]["audit"]["request_id"] for e in moesif.events) == sorted(r["request_id"] for r in requests)
        assert all(e["request"]["uri"] == admin.url + "/consumers" and e["user_id"] == "ops" for e in moesif.events)


def test_tail_without_once_polls_every_interval_and_stops_on_sigterm(tmp_path, token_file):
    with FakeKongAdmin(TOKEN) as admin, FakeSegment() as segment:
        first = admin.add_request(T0, signed=False)
        proc = Shipper(*tail_args(admin, segment.url, tmp_path, token_file, "--interval", "0.2"),
                       env=env(KONG_ADMIN_TOKEN="ignored-when-a-file-is-given"))
        try:
            segment.wait_for(lambda: set(message_ids(segment)) == expected_ids([first]), timeout=15)
            later = [admin.add_request(T0 + 5, signed=False), admin.add_object(T0 + 5, signed=False)]
            segment.wait_for(lambda: set(message_ids(segment)) == expected_ids([first, later[0]], [later[1]]), timeout=15)
        finally:
            code, _, err = proc.stop()
        assert code == 0, err
        assert max(message_ids(segment).values()) == 1
        assert TOKEN not in err


# -- errors: one line, the right exit code, never the token ------------------------------------------------------
def test_missing_or_unreadable_token_and_missing_url_exit_2(tmp_path):
    with FakeKongAdmin(TOKEN) as admin:
        base = ["audit", "tail", "--sink", "stdout", "--state-dir", str(tmp_path / "state"), "--once"]
        no_token = ship(*base, "--admin-url", admin.url, env=env())
        assert no_token.returncode == 2 and "KONG_ADMIN_TOKEN" in one_line(no_token.stderr)
        unreadable = ship(*base, "--admin-url", admin.url, "--admin-token-file", str(tmp_path / "nope"), env=env())
        assert unreadable.returncode == 2 and "--admin-token-file" in one_line(unreadable.stderr)
        no_url = ship(*base, env=env(KONG_ADMIN_TOKEN=TOKEN))
        assert no_url.returncode == 2 and "--admin-url" in one_line(no_url.stderr)
        assert admin.request_count == 0


def test_refused_token_exits_1_in_one_line_without_the_token(tmp_path):
    with FakeKongAdmin("the-right-one") as admin, FakeSegment() as segment:
        result = ship("audit", "tail", "--admin-url", admin.url, "--sink", "segment", "--endpoint", segment.url,
                      "--state-dir", str(tmp_path / "state"), "--once", "--log-level", "debug",
                      env=env(KONG_ADMIN_TOKEN=TOKEN))  # fmt: skip
        assert result.returncode == 1
        line = [l for l in result.stderr.decode().splitlines() if "fatal" in l]
        assert len(line) == 1 and "HTTP 401" in line[0] and "KONG_ADMIN_TOKEN" in line[0], result.stderr
        assert TOKEN not in result.stderr.decode() + result.stdout.decode()
        assert admin.rejections == [(401, "Invalid credentials. Token or User credentials required")]
        # Without --once, a refusal stops the service the same way (the first poll comes before anything starts).
        forever = ship("audit", "tail", "--admin-url", admin.url, "--sink", "segment", "--endpoint", segment.url,
                       "--state-dir", str(tmp_path / "state2"), "--interval", "0.2", "--log-level", "warning",
                       env=env(KONG_ADMIN_TOKEN=TOKEN))  # fmt: skip
        assert forever.returncode == 1 and "HTTP 401" in one_line(forever.stderr)
        assert TOKEN not in forever.stderr.decode()


def test_an_admin_api_that_is_down_is_retried_every_interval(tmp_path, token_file):
    with FakeKongAdmin(TOKEN) as admin, FakeSegment() as segment:
        record = admin.add_request(T0, signed=False)
        admin.stop()  # down when kong-ship starts
        proc = Shipper(*tail_args(admin, segment.url, tmp_path, token_file, "--interval", "0.2"), env=env())
        # Its stderr, read as it comes: the Admin API comes back only once kong-ship has found it down (a fixed
        # sleep was too short for a slow start on a loaded machine, and the test then saw no warning at all).
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(l.decode() for l in proc.proc.stderr), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 20
            while not any("cannot reach the Kong Admin API" in line for line in lines):
                assert proc.proc.poll() is None and time.monotonic() < deadline, "".join(lines)
                time.sleep(0.05)
            time.sleep(0.5)  # a few more polls of the API that is down: still one warning
            assert not segment.messages
            admin.start()  # back, on the same port
            segment.wait_for(lambda: set(message_ids(segment)) == expected_ids([record]), timeout=15)
        finally:
            proc.signal(signal.SIGTERM)
            code = proc.proc.wait(20)
            reader.join(5)
        err = "".join(lines)
        assert code == 0, err
        assert err.count("cannot reach the Kong Admin API") == 1, err  # one warning, not one per poll
        assert "answers again" in err


def test_the_config_file_serves_audit_tail_too(tmp_path, token_file):
    with FakeKongAdmin(TOKEN) as admin, FakeSegment() as segment:
        record = admin.add_request(T0, signed=False)
        key_file = tmp_path / "write-key"
        key_file.write_text("test-key")
        config = tmp_path / "kong-ship.toml"
        config.write_text(
            f'[state]\ndir = "{tmp_path / "from-config"}"\n'
            f'[sinks.segment]\nendpoint = "{segment.url}"\nwrite_key_file = "{key_file}"\n'
        )
        result = ship("audit", "tail", "--config", str(config), "--admin-url", admin.url, "--admin-token-file",
                      token_file, "--once", *FAST, env=env())  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
        assert set(message_ids(segment)) == expected_ids([record])
        assert (tmp_path / "from-config" / "audit" / "cursor.json").exists()


def test_a_corrupt_cursor_stops_rather_than_resending_everything(tmp_path, token_file):
    with FakeKongAdmin(TOKEN) as admin:
        (tmp_path / "state" / "audit").mkdir(parents=True)
        (tmp_path / "state" / "audit" / "cursor.json").write_text('{"requests": {"after": 17')
        result = ship("audit", "tail", "--admin-url", admin.url, "--admin-token-file", token_file, "--sink", "stdout",
                      "--state-dir", str(tmp_path / "state"), "--once", env=env())  # fmt: skip
        assert result.returncode == 2 and "cursor" in one_line(result.stderr) and "delete it" in result.stderr.decode()
        assert admin.request_count == 0


def test_unreachable_admin_api_with_once_exits_1(tmp_path, token_file):
    with FakeKongAdmin(TOKEN) as admin:
        url = admin.url
    result = ship("audit", "tail", "--admin-url", url, "--admin-token-file", token_file, "--sink", "stdout",
                  "--state-dir", str(tmp_path / "state"), "--once", "--timeout", "2", env=env())  # fmt: skip
    assert result.returncode == 1 and "cannot reach the Kong Admin API" in one_line(result.stderr)


# -- `kong-ship audit verify` ------------------------------------------------------------------------------------
def test_verify_files_counts_and_exit_codes(tmp_path, keys):
    private, public_pem, _ = keys
    with FakeKongAdmin(None, private_key=private) as admin:
        good = [admin.add_request(T0), admin.add_object(T0)]
        unsigned = admin.add_request(T0 + 1, signed=False)
        tampered = admin.add_object(T0 + 2, tamper=True)
    answer = tmp_path / "requests.json"
    answer.write_text(json.dumps({"data": good[:1], "total": 1, "next": None}))
    ndjson = tmp_path / "records.jsonl"
    ndjson.write_text("\n".join(json.dumps(r) for r in [good[1], unsigned]) + "\n")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([good[0], tampered]))

    ok = ship("audit", "verify", "--public-key", str(public_pem), str(answer), str(ndjson), env=env())
    assert ok.returncode == 0, ok.stderr.decode()
    assert ok.stdout.decode().splitlines() == ["3 records: 2 verified, 1 unsigned, 0 invalid"]
    strict = ship("audit", "verify", "--public-key", str(public_pem), "--require-signed", str(ndjson), env=env())
    assert strict.returncode == 1
    assert strict.stdout.decode().splitlines()[1] == f"unsigned: request {unsigned['request_id']} ({ndjson}:2)"
    failed = ship("audit", "verify", "--public-key", str(public_pem), "--json", str(bad), env=env())
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    assert (report["verified"], report["unsigned"], report["invalid"], report["ok"]) == (1, 0, 1, False)
    assert report["bad"] == [{"result": "invalid", "kind": "object", "id": tampered["id"], "where": f"{bad}#2"}]
    # Usage errors: exit 2, one line.
    not_json = tmp_path / "not.json"
    not_json.write_text('{"data": []}\nnot json\n')
    for args in (["--public-key", str(public_pem)], ["--public-key", str(public_pem), str(not_json)],
                 ["--public-key", str(tmp_path / "missing.pem"), str(answer)], [str(answer)],
                 ["--public-key", str(public_pem), "--admin-url", "http://127.0.0.1:1", str(answer)]):  # fmt: skip
        result = ship("audit", "verify", *args, env=env())
        assert result.returncode == 2, (args, result.stderr)
        one_line(result.stderr)


def test_verify_from_the_admin_api(tmp_path, keys, token_file):
    private, public_pem, _ = keys
    with FakeKongAdmin(TOKEN, private_key=private) as admin:
        [admin.add_request(T0 + i, signed="before-insert" if i % 2 else True) for i in range(5)]
        admin.add_object(T0, signed="before-insert")
        admin.add_request(T0 + 1, signed=False)
        ok = ship("audit", "verify", "--public-key", str(public_pem), "--admin-url", admin.url,
                  "--admin-token-file", token_file, env=env())  # fmt: skip
        assert ok.returncode == 0, ok.stderr.decode()
        assert ok.stdout.decode().strip() == "7 records: 6 verified, 1 unsigned, 0 invalid"
        tampered = admin.add_request(T0 + 2, tamper=True)
        failed = ship("audit", "verify", "--public-key", str(public_pem), "--admin-url", admin.url, "--require-signed",
                      env=env(KONG_ADMIN_TOKEN=TOKEN))  # fmt: skip
        assert failed.returncode == 1
        lines = failed.stdout.decode().splitlines()
        assert lines[0] == "8 records: 6 verified, 1 unsigned, 1 invalid"
        assert f"invalid: request {tampered['request_id']}" in lines
        refused = ship("audit", "verify", "--public-key", str(public_pem), "--admin-url", admin.url,
                       env=env(KONG_ADMIN_TOKEN="wrong-token-123"))  # fmt: skip
        assert refused.returncode == 1 and "HTTP 401" in one_line(refused.stderr)
        assert "wrong-token-123" not in refused.stderr.decode()


# -- TLS ---------------------------------------------------------------------------------------------------------
TLSKongAdmin = tls(FakeKongAdmin)


def test_tls_is_verified_by_default_and_ca_file_trusts_a_private_ca(tmp_path, keys, token_file):
    _, public_pem, _ = keys
    ca_pem, cert_pem, key_pem = private_ca(tmp_path)
    with TLSKongAdmin(cert_pem, key_pem, TOKEN) as admin:
        admin.add_request(T0, signed=False)
        base = ["audit", "verify", "--public-key", str(public_pem), "--admin-url", admin.url, "--admin-token-file", token_file]
        refused = ship(*base, env=env())
        assert refused.returncode == 1 and "--ca-file" in one_line(refused.stderr)
        trusted = ship(*base, "--ca-file", str(ca_pem), env=env())
        assert trusted.returncode == 0, trusted.stderr.decode()
        assert trusted.stdout.decode().strip() == "1 records: 0 verified, 1 unsigned, 0 invalid"
        bad_ca = ship(*base, "--ca-file", str(tmp_path / "missing-ca.pem"), env=env())
        assert bad_ca.returncode == 2 and "--ca-file" in one_line(bad_ca.stderr)


def test_ca_file_adds_to_the_default_cas_for_the_admin_api_as_for_the_sinks(tmp_path, keys, token_file):
    """--ca-file is trusted on top of the default CAs, never instead of them (its help says so; the sinks do the
    same): an Admin API whose certificate a default CA signed still verifies with --ca-file given. The default
    store is made private to the test by $SSL_CERT_FILE, which httpx's default context reads."""
    _, public_pem, _ = keys
    (tmp_path / "default").mkdir()
    (tmp_path / "extra").mkdir()
    default_ca, cert_pem, key_pem = private_ca(tmp_path / "default")
    extra_ca, _, _ = private_ca(tmp_path / "extra")
    with TLSKongAdmin(cert_pem, key_pem, TOKEN) as admin:
        admin.add_request(T0, signed=False)
        base = ["audit", "verify", "--public-key", str(public_pem), "--admin-url", admin.url, "--admin-token-file", token_file]
        for ca_file in ([], ["--ca-file", str(extra_ca)]):
            result = ship(*base, *ca_file, env=env(SSL_CERT_FILE=str(default_ca)))
            assert result.returncode == 0, (ca_file, result.stderr.decode())
        refused = ship(*base, "--ca-file", str(extra_ca), env=env())  # the default store without the signing CA
        assert refused.returncode == 1 and "--ca-file" in one_line(refused.stderr)


def test_one_poller_per_state_dir(tmp_path, token_file):
    with FakeKongAdmin(TOKEN) as admin:
        (tmp_path / "state" / "audit").mkdir(parents=True)
        fd = os.open(str(tmp_path / "state" / "audit" / ".lock"), os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            result = ship("audit", "tail", "--admin-url", admin.url, "--admin-token-file", token_file, "--sink",
                          "stdout", "--state-dir", str(tmp_path / "state"), "--once", env=env())  # fmt: skip
        finally:
            os.close(fd)
        assert result.returncode == 2 and "its own --state-dir" in one_line(result.stderr)



def test_the_audit_spool_keeps_records_masked(tmp_path, token_file, keys):
    """Signatures are checked over the record as Kong signed it; what is written to the spool (state on disk) is
    already masked: a credential's key in `entity`, a password in a request's `payload`."""
    private, public_pem, _ = keys
    marker_key, marker_password = "kA-AUDIT-KEY-5f0a", "AUDIT-PASSWORD-e21c"
    with FakeKongAdmin(TOKEN, private_key=private) as admin, FakeSegment() as segment:
        admin.add_request(T0, payload=json.dumps({"username": "ops", "password": marker_password}))
        admin.add_object(T0 + 1, dao_name="keyauth_credentials", entity={"id": "c1", "key": marker_key})
        result = ship(*tail_args(admin, segment.url, tmp_path, token_file, "--once", "--verify-key", str(public_pem)), env=env())
        assert result.returncode == 0, result.stderr.decode()
        assert collections.Counter(m["properties"]["signature"] for m in segment.messages) == {"verified": 2}
        state = [p for p in (tmp_path / "state").rglob("*") if p.is_file()]
        assert any("spool" in str(p) for p in state)
        written = b"".join(p.read_bytes() for p in state)
        for marker in (marker_key, marker_password):
            assert marker.encode() not in written and marker.encode() not in orjson.dumps(segment.messages)

"""Kong's network logs (http-log, tcp-log, udp-log) reach the spool masked: a real `kong-ship receive` fed records
full of unique marker secrets leaves none of them in any byte under its state directory (spool, checkpoints,
dead letters), on its stderr or in what it ships, and the user of each record's JWT still reaches Segment as
userId. And the parts: a record that cannot be masked is dead-lettered, never stored."""

from __future__ import annotations

import os
import socket
import stat
import uuid

import gen
import httpx
import orjson

from conftest import FAST, every_byte_under, ship_env
from fakes.segment import FakeSegment
from receiving import free_port, start_receive

TOKEN = "http-log-token-5d2a"
ENV = ship_env(SEGMENT_WRITE_KEY="test-key", KONG_SHIP_HTTP_LOG_TOKEN=TOKEN)
TRANSPORTS = ("http", "tcp", "udp")
PER_TRANSPORT = 3


def marked_record(transport: str, n: int, markers: list[str]) -> tuple[dict, str]:
    """A Kong record whose every secret is a fresh marker (appended to `markers`), and the JWT's subject."""

    def marker(what: str) -> str:
        value = f"mk{what}{uuid.uuid4().hex}"
        markers.append(value)
        return value

    seq = TRANSPORTS.index(transport) * 100 + n
    sub = f"user-{transport}-{n}"
    record = gen.kong_record(seq, consumer="alice")  # a consumer too: the JWT's user must win over it
    token = gen.make_jwt({"sub": sub, "iss": "https://auth.example.com/", "private": marker("claim")})
    markers.append(token)
    markers.append(token.split(".")[1])  # the payload alone
    request = record["request"]
    headers = request["headers"]
    headers["authorization"] = f"Bearer {token}"
    headers["cookie"] = [f"session={marker('cookie')}", f"csrf={marker('cookie')}"]  # a repeated header
    headers["X-aPi-KeY"] = marker("xapikey")
    headers["x-tenant-token"] = marker("tenant")  # --mask-header
    headers["referer"] = f"https://bob:{marker('userinfo')}@app.example.com/cb#access_token={marker('fragment')}"
    apikey = marker("apikey")
    query = f"seq={seq}&ApI%4Bey={apikey}"  # `apikey`, once percent-decoded and case-folded
    request["uri"] = f"/orders/{seq}?{query}"
    request["url"] = f"https://api.example.com:443/orders/{seq}?{query}"
    request["querystring"] = {"seq": str(seq), "ApIKey": apikey}
    record["upstream_uri"] = f"/orders/{seq}?{query}"
    request["body"] = orjson.dumps({"Client-Secret": marker("body"), "pin": marker("pin"), "n": n}).decode()
    record["response"]["body"] = f"refresh_token={marker('form')}&ok=1"
    return record, sub




def test_no_secret_of_kongs_network_logs_reaches_the_disk_and_the_jwt_user_still_ships(shippers, tmp_path):
    markers: list[str] = []
    records = {t: [marked_record(t, n, markers) for n in range(PER_TRANSPORT)] for t in TRANSPORTS}
    subs = {sub for made in records.values() for _, sub in made}
    http_port, tcp_port, udp_port = free_port(), free_port(), free_port(socket.SOCK_DGRAM)
    state = tmp_path / "state"
    with FakeSegment() as fake:
        proc = start_receive(shippers, [
            "--listen", f"127.0.0.1:{http_port}", "--listen-tcp", f"127.0.0.1:{tcp_port}",
            "--listen-udp", f"127.0.0.1:{udp_port}", "--sink", "segment", "--endpoint", fake.url,
            "--state-dir", str(state), "--mask-header", "X-Tenant-Token", "--mask-body-key", "PIN", *FAST,
        ], ENV, tcp_port)
        answer = httpx.post(
            f"http://127.0.0.1:{http_port}/http-log", content=orjson.dumps([r for r, _ in records["http"]]),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}, timeout=10,
        )
        assert answer.status_code == 200, answer.text
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as tcp:
            marker_line = f"not json: Authorization: Bearer {uuid.uuid4().hex}deadtcp"
            markers.append(marker_line.rpartition(" ")[2])
            tcp.sendall(b"".join(orjson.dumps(r) + b"\n" for r, _ in records["tcp"]) + marker_line.encode() + b"\n")
            tcp.shutdown(socket.SHUT_WR)
            assert tcp.recv(1) == b""  # closed once what it sent is fsynced
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for record, _ in records["udp"]:
                udp.sendto(orjson.dumps(record), ("127.0.0.1", udp_port))
            dead_udp = f"{uuid.uuid4().hex}deadudp"
            markers.append(dead_udp)
            udp.sendto(f"apikey={dead_udp}".encode(), ("127.0.0.1", udp_port))
        fake.wait_for(lambda: len(fake.messages) >= len(subs), timeout=20)
        spooled = every_byte_under(str(state))  # before the stop: nothing pruned yet is missed
        code, _, err = proc.stop()
        assert code == 0, err
        shipped = orjson.dumps(list(fake.messages))

    assert {m.get("userId") for m in fake.messages} == subs  # the JWT's subject, not the consumer
    assert len(fake.messages) == len(subs)
    everything = {**spooled, **every_byte_under(str(state)), "stderr": err.encode(), "shipped": shipped}
    leaks = [(where, m) for where, data in everything.items() for m in markers if m.encode() in data]
    assert not leaks, leaks
    # Not vacuous: every record was spooled (masked, with its identity), and both bad lines dead-lettered.
    lines = [orjson.loads(line) for path, data in everything.items() if "spool-" in path for line in data.splitlines()]
    assert len(lines) == len(subs) and {e["identity"]["user_id"] for e in lines} == subs
    assert all(e["identity"]["user_source"] == "jwt" and "private" not in e["identity"]["jwt_claims"] for e in lines)
    assert all(e["record"]["request"]["headers"]["cookie"] == ["*****", "*****"] for e in lines)
    dead_letters = everything[str(state / "receive" / "dead-letter.jsonl")].splitlines()
    assert sorted(orjson.loads(d)["reason"] for d in dead_letters) == ["not_json", "not_json"]
    # Files 0600, directories 0700.
    for directory, dirs, files in os.walk(state):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) == 0o600, name


def _parts(tmp_path, masker):
    from shipper.deadletter import DeadLetter
    from shipper.processors.identity import Identify
    from shipper.processors.masking import Masker
    from shipper.sources.intake import KongRecords

    path = tmp_path / "dead.jsonl"
    return KongRecords(masker, Identify(), DeadLetter(str(path), Masker())), path


def broken_masker():
    """A masker whose masking of values fails (as a masking bug would), for the one path that must survive it."""
    from shipper.processors.masking import Masker

    class BrokenMasker(Masker):
        def mask_value(self, value, depth=0):
            raise RuntimeError("mask_value failed")

    return BrokenMasker()


def test_a_record_that_cannot_be_masked_is_dead_lettered_masked_and_not_stored(tmp_path):
    from shipper.deadletter import DeadLetter
    from shipper.sources.http_commit import Committer
    from shipper.sources.intake import Intake
    from shipper.sources.spool import GroupCommit, Spool

    secret = f"Bearer {uuid.uuid4().hex}unmaskable"
    record = gen.kong_record(1)
    record["request"]["headers"]["authorization"] = secret
    records, path = _parts(tmp_path, broken_masker())
    assert records.encode(record, "tcp-log record from 1.2.3.4:5") is None
    (entry,) = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert entry["reason"] == "unmaskable" and "RuntimeError" in entry["detail"] and secret not in entry["line"]
    assert entry["line"].startswith("{")  # the record, masked as dead letters are

    # When the dead-letter file's own masking fails too, only the record's size is kept.
    broken_too, path_too = _parts(tmp_path / "b", broken_masker())
    os.makedirs(tmp_path / "b")
    broken_too.dead_letter = DeadLetter(str(path_too), broken_masker())
    assert broken_too.encode(record, "udp-log record") is None
    (entry,) = [orjson.loads(line) for line in path_too.read_bytes().splitlines()]
    assert "line" not in entry and "withheld" in entry["detail"] and secret not in path_too.read_text()

    # The listeners count it dead-lettered; an http-log request stores the records that could be masked.
    spool = Spool(str(tmp_path / "spool"))
    commit = GroupCommit(spool, "kong_log", on_write=lambda records, nbytes: None)
    intake = Intake("tcp-log", commit, records.dead_letter, max_record_bytes=1 << 20, records=records)
    assert intake.take(orjson.dumps(record), "1.2.3.4:5", wait=True) and intake.snapshot()["dead_lettered"] == 1
    committer = Committer(spool, {"kong_log": lambda r: None if "authorization" in r["request"]["headers"] else b"{}"})
    committer.append("kong_log", [record, {"request": {"headers": {}}}])
    (line,) = [orjson.loads(raw) for p in spool.segments() for raw in open(p, "rb")]
    assert line["record"] == {}
    spool.close()


def test_a_spooled_identity_is_kept_by_the_identity_processor_and_an_odd_one_ignored():
    from shipper.formats import Parser
    from shipper.processors import build_chain, run_chain

    def shipped(identity) -> object:
        envelope = {"spool": "kong_log", "seq": 1, "received_at": "2026-01-01T00:00:00.000Z",
                    "record": gen.kong_record(5, consumer="alice")}
        if identity is not None:
            envelope["identity"] = identity
        return run_chain(build_chain(), Parser().parse(orjson.dumps(envelope)))

    kept = shipped({"user_id": "u-1", "user_source": "jwt", "jwt_claims": {"sub": "u-1"}, "basic_user": "bob"})
    assert (kept.user_id, kept.user_source, kept.jwt_claims, kept.basic_user) == ("u-1", "jwt", {"sub": "u-1"}, "bob")
    for odd in (None, {"user_id": 5, "user_source": "jwt"}, {"user_id": "u-1"}, "u-1"):
        txn = shipped(odd)
        assert txn.user_source == "consumer" and txn.user_id != "u-1", odd


def test_the_identity_kept_at_spooling_is_what_the_identity_processor_finds_in_the_parsed_record():
    """KongRecords.identity reads the record's parts itself (no parse): the same evidence, the same verdict."""
    import base64

    from shipper.deadletter import DeadLetter
    from shipper.formats.spooled import parse_kong_log
    from shipper.processors.identity import Identify
    from shipper.processors.masking import JWT_KEPT_CLAIMS, Masker
    from shipper.sources.intake import KongRecords

    basic = "Basic " + base64.b64encode(b"bob:hunter2").decode()
    stream = {"session": {"status": 200}, "started_at": 1700000000000, "consumer": {"id": {"uuid": "c-1"}},
              "authenticated_entity": {"id": "cred-1"}}
    records = [stream, {"session": {"status": 200}, "authenticated_entity": {"consumer_id": "c-2"}}]
    by_header = gen.kong_record(99)
    by_header["request"]["headers"]["x-consumer-username"] = "carol"
    records.append(by_header)
    for seq in range(40):
        record = gen.kong_record(seq, version="032"[seq % 3], jwt_sub=f"u-{seq}" if seq % 4 else None,
                                 consumer="alice" if seq % 5 == 0 else None)
        if seq % 7 == 0:
            record["request"]["headers"]["authorization"] = basic
        records.append(record)
    for jwt_from in (("request.headers.authorization", "jwt"), ("jwt",)):
        identify = Identify(jwt_from)
        spooling = KongRecords(Masker(), identify, DeadLetter(None))
        sources = set()
        for record in records:
            txn = identify(parse_kong_log(record, {}, None, ""))
            expected = {}
            if txn.user_id:
                expected.update(user_id=txn.user_id, user_source=txn.user_source)
            if txn.jwt_claims:
                expected["jwt_claims"] = {k: v for k, v in txn.jwt_claims.items() if k in JWT_KEPT_CLAIMS}
            if txn.basic_user:
                expected["basic_user"] = txn.basic_user
            assert (spooling.identity(record) or {}) == expected, record
            sources.add(txn.user_source)
        assert sources == {"jwt", "consumer", "credential", "basic", "header", None}, sources


"""Hostile Nginx JSON lines and hostile tokens on the Transaction path (`kong-ship parse`, `backfill` with
`--workers 0` and `--workers 2`), where tests/test_flat_hostile.py (Kong records, flat paths) and
tests/test_fuzz_lines.py (mutated Kong records) do not go: Nginx's two escapings, odd request targets and
methods, `-` and `000`, times in every unit and as odd ISO text, duplicate keys, huge and non-finite numbers,
and `$http_authorization` holding JWTs of every shape. Every run is held to the product's promises: no traceback
and exit 0; every line read is shipped, dead-lettered, filtered, skipped or blank (the summary, and the
dead-letter file line for line); every numbered record that is well-formed arrives once; and no marker secret
leaves (stdout, stderr, the state directory with its dead letters).

A property test (derandomized, like the suite's other hypothesis tests) mutates real Nginx records and holds
the Transformer of every sink, and then a real backfill, to the same invariants.
"""

from __future__ import annotations

import base64
import json
import pathlib
import random
import tracemalloc
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzzlines
import gen
from conftest import FAST, every_byte_under, ship, ship_env, summary_rows
from shipper.formats import Parser
from shipper.model import Transaction
from shipper.processors import build_chain
from shipper.processors.identity import Identify, decode_jwt
from shipper.transform import BLANK, EVENT, FAILED, FILTERED, INVALID, REJECTED, SKIPPED, Transformer

SECRET = "fmthostileSECRET"


def b64(data: Any) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token(claims: Any, header: Any = None, signature: str = "c2ln") -> str:
    return f"{b64(header if header is not None else {'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims)}.{signature}"


# -- identity's memory -----------------------------------------------------------------------------------------
def test_distinct_large_tokens_do_not_grow_identitys_memory_without_bound():
    """Each distinct JWT-place value was remembered (8,192 of them) with its claims, and each distinct token
    again in decode_jwt's cache: 3,000 distinct 3 KB tokens — one a request, any client can send them — held
    52 MiB (8,192 of 8 KB, 178-282 MiB) in every process that identifies (each worker, each sink's chain)."""
    decode_jwt.cache_clear()
    identify = Identify()
    tracemalloc.start()
    try:
        for seq in range(3000):
            claims = {"sub": f"user-{seq}", "groups": [f"group-{seq}-{n}" for n in range(150)]}  # ~3 KB
            txn = Transaction(event_id=str(seq), source_format="nginx", position=None, raw={},
                              request_headers={"authorization": "Bearer " + token(claims)})  # fmt: skip
            assert identify(txn).user_id == f"user-{seq}"
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        decode_jwt.cache_clear()
    assert held < 12 << 20, f"{held / 2**20:.0f} MiB held"


# -- Nginx lines of every kind, through real runs -----------------------------------------------------------------
COLUMNS = ("shipped", "filtered", "dead-lettered", "rejected", "skipped", "blank")
MS = gen.BASE_STARTED_AT


def nginx(seq: int, **change: Any) -> dict[str, Any]:
    """A real `kongship` record (tests/gen.py) numbered by its $request_id, with marker secrets where masks
    reach: an api_key parameter, a cookie, the token's signature and a private claim."""
    record: dict[str, Any] = gen.nginx_record(seq)
    record["request_id"] = f"ngx-{seq}"
    record["request_uri"] += f"&api_key={SECRET}"
    record["http_cookie"] = f"sid={SECRET}"
    record["http_authorization"] = "Bearer " + token({"sub": f"user-{seq}", "private": SECRET}, signature=SECRET)
    for key, value in change.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def line(record: Any) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode()


def bearer(claims: Any, header: Any = None, signature: str = SECRET) -> str:
    return "Bearer " + token(claims, header, signature)


# (line, the request id it must ship as, or the dead letter's reason)
SHIPPED_AS_IS = [
    {"status": "-"}, {"status": "000"}, {"request_time": "-"}, {"upstream_response_time": "-, -"},
    {"upstream_response_time": "0.004, 0.052 : 0.010"}, {"upstream_status": "502, 504 : 200"},
    {"upstream_status": "000"}, {"upstream_status": "-"}, {"msec": str(MS)}, {"msec": MS * 1000},
    {"msec": str(MS * 1_000_000)}, {"msec": None}, {"msec": None, "time": "2026-01-01T00:00:00+05:30"},
    {"msec": None, "time": "2026-01-01T00:00:00+24:00"}, {"msec": None, "time": "0000-01-01T00:00:00Z"},
    {"msec": None, "time": "10000-01-01T00:00:00Z"}, {"msec": None, "time": "01/Jan/2026:00:00:00 +0000"},
    {"msec": "-"}, {"request_method": "OPTIONS", "request_uri": "*"},
    {"request_method": "CONNECT", "request_uri": "h:443"},
    {"request_uri": f"http://h.example/p?token={SECRET}"}, {"request_uri": "garbage \x00 /../.."},
    {"request_method": "get"}, {"request_method": ""}, {"request_method": ["GET"]}, {"request_uri": {"a": 1}},
    {"request_method": "X" * 5000}, {"server_port": "80, 81"}, {"server_port": "-"}, {"host": ["a"]},
    {"request_body": f"password={SECRET}&a=1"}, {"request_body": {"client_secret": SECRET}}, {"request_body": 5},
    {"http_x_api_key": SECRET}, {"http_X_Api_Key": SECRET}, {"sent_http_set_cookie": SECRET}, {"http_": "x"},
    {"http_authorization": bearer({"sub": 5})}, {"http_authorization": bearer({"sub": [1]})},
    {"http_authorization": bearer({"sub": {"id": "x"}})}, {"http_authorization": bearer({"sub": 10**40})},
    {"http_authorization": bearer({"sub": "n"}, {"alg": "none"}, "")},
    {"http_authorization": "Bearer e30.!!" + SECRET + ".x"}, {"http_authorization": "Bearer " + SECRET},
    {"http_authorization": bearer({"sub": "big", "pad": SECRET * 40000})},
    {"http_authorization": "Bearer " + b64({"alg": "x"}) + "."
     + b64(b'{"sub":"d","d":' + b"[" * 2000 + b"]" * 2000 + b"}") + ".c2ln"},
    {"http_authorization": "Basic " + base64.b64encode(f"bob:{SECRET}".encode()).decode()},
    {"http_authorization": "Basic " + SECRET}, {"http_authorization": ["Bearer " + SECRET]},
    {"http_authorization": {"token": SECRET}}, {"jwt": SECRET + ".a.b"}, {"request_id": 5},
]  # fmt: skip
DEAD = [
    ({"status": "99"}, "bad_value"), ({"status": 1e300}, "bad_value"), ({"body_bytes_sent": 10**30}, "bad_value"),
    ({"request_time": "1e400"}, "bad_value"), ({"upstream_response_time": "1e308, 1e308"}, "bad_value"),
    ({"request_time": float("nan")}, "not_json"), ({"msec": float("inf")}, "not_json"),
    ({"msec": "1e30"}, "bad_value"), ({"msec": -5}, "bad_value"), ({"server_port": 70000}, "bad_value"),
]  # fmt: skip


def nginx_file(tmp_path: Any) -> tuple[Any, set[str], list[str]]:
    lines, want, reasons = [], set(), []
    for seq, change in enumerate(SHIPPED_AS_IS):
        record = nginx(seq, **change)
        if not isinstance(record.get("request_id"), str):
            record["request_uri"] += f"&n={seq}"
        else:
            want.add(record["request_id"])
        lines.append(line(record))
    for seq, (change, reason) in enumerate(DEAD, start=1000):
        lines.append(line(nginx(seq, **change)))
        reasons.append(reason)
    # Nginx's default escaping (\xHH: not JSON until repaired), and a line of both escapings.
    lines.append(line(nginx(2000)).replace(b'"request_uri":"', b'"request_uri":"/\\x22q\\x5C\\xC3\\xA9\\x00', 1))
    want.add("ngx-2000")
    lines.append(b'{"request_method":"GET","request_uri":"/d","request_uri":"/e","status":"200","status":"x",'
                 b'"request_id":"ngx-2001","http_authorization":"Basic ' + SECRET.encode() + b'"}')  # duplicate keys
    want.add("ngx-2001")
    path = tmp_path / "access.json"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, want, sorted(reasons)


def finished(result: Any, state: Any, sink: str = "stdout") -> tuple[list[dict], dict, list[dict], str]:
    stderr = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr and result.returncode == 0, stderr[-3000:]
    events = [orjson.loads(x) for x in result.stdout.splitlines() if x.strip()]
    dead_path = state / "dead-letter.jsonl"
    dead = [orjson.loads(x) for x in dead_path.read_bytes().splitlines()] if dead_path.exists() else []
    assert SECRET.encode() not in result.stdout and SECRET not in stderr
    for where, data in every_byte_under(state).items():
        assert SECRET.encode() not in data, where
    assert not [d for d in dead if d["reason"] == "internal_error"], dead
    row = summary_rows(stderr)[sink] if sink else {}
    return events, row, dead, stderr


@pytest.mark.parametrize("workers", [0, 2])
def test_hostile_nginx_lines_are_shipped_or_dead_lettered_and_no_secret_leaves(tmp_path, workers):
    path, want, reasons = nginx_file(tmp_path)
    state = tmp_path / f"state{workers}"
    result = ship("backfill", str(path), "--sink", "stdout", "--state-dir", str(state), "--workers", str(workers),
                  *FAST, env=ship_env(), timeout=120)  # fmt: skip
    events, row, dead, _ = finished(result, state)
    ids = [e["messageId"] for e in events]
    assert want <= set(ids) and len(ids) == len(set(ids)), sorted(want - set(ids))
    assert sorted(d["reason"] for d in dead) == reasons
    assert row["read"] == sum(row[k] for k in COLUMNS) == len(path.read_bytes().splitlines()), row
    assert row["shipped"] == len(events) and row["dead-lettered"] == len(dead), row
    users = {e["messageId"]: e.get("userId") for e in events}
    numeric_sub = SHIPPED_AS_IS.index({"http_authorization": bearer({"sub": 5})})
    assert users["ngx-0"] == "user-0" and users[f"ngx-{numeric_sub}"] == "5"


def test_parse_prints_each_hostile_nginx_line_or_says_why_not(tmp_path):
    path, want, reasons = nginx_file(tmp_path)
    result = ship("parse", str(path), env=ship_env(), timeout=120)
    events, _, _, stderr = finished(result, tmp_path / "none", sink="")
    assert want <= {e["event_id"] for e in events}
    assert sorted(x.split(": ")[3] for x in stderr.splitlines() if ": offset " in x) == reasons, stderr
    for event in events:
        assert set(event["jwt_claims"] or {}) <= {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid"}


# -- property: mutated real Nginx records ---------------------------------------------------------------------------
EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples" / "nginx-json.jsonl"
REAL = [json.loads(x) for x in EXAMPLES.read_bytes().splitlines() if x.strip()] + [gen.nginx_record(n) for n in (1, 2)]
VALUES = [
    "-", "", "000", "0", "99", "1000", "200.0", " 200", "1e2", "1e400", "-1", "-0.001", "nan", "NaN", "Infinity",
    "0x10", "1_000", "12abc", str(MS), str(MS * 1000), str(MS * 1_000_000), f"{MS / 1000:.3f}", "99999999999",
    "100000000000", "2026-01-01T00:00:00+05:30", "2026-13-01T00:00:00Z", "0000-01-01T00:00:00Z", "10000-01-01",
    "GET http://h/p HTTP/1.1", "http://h/p?a=1", "*", "h:443", "/p?%zz=%E2%82&&=&a", "/p#frag=x", "\u0000",
    "\ud800", "\U0001f600", "x" * 3000, "0.004, 0.052 : 0.010", "502, 200 : -", "[::1]:80", "10.0.0.1:80, -",
    1, 0, -1, 1.5, 1e300, 10**30, MS, True, False, None, [], {}, ["a", 1], {"a": {"b": 1}},
]  # fmt: skip
TOKENS = [
    bearer({"sub": "alice"}), bearer({"sub": 5}), bearer({"sub": [1]}), bearer({"sub": None}), bearer({"sub": 10**40}),
    bearer({"sub": "n"}, {"alg": "none"}, ""), bearer({"sub": "k"}, {"alg": "x", "kid": 5}), "Bearer a.b.c",
    bearer({"sub": "crit"}, {"alg": "x", "crit": ["zip"]}), bearer([1, 2]), bearer({"sub": "big", "p": "x" * 20000}),
    "Bearer " + SECRET, "Basic " + base64.b64encode(b"eve:" + SECRET.encode()).decode(), "Basic %%%" + SECRET,
    "REDACTED",
]  # fmt: skip


def to_default_escaping(data: bytes) -> bytes:
    """The line as nginx's default escaping writes it: a quote or backslash inside a string, and every byte over
    0x7F, as an x-escape of its hex value (not JSON until repaired)."""
    out = data.replace(b'\\"', b"\\x22").replace(b"\\\\", b"\\x5C")
    return b"".join(b"\\x%02X" % byte if byte > 0x7F else bytes((byte,)) for byte in out)


def mutated(choose: fuzzlines.Chooser) -> bytes:
    record = dict(choose.pick(REAL))
    seq = choose.number(0, 10**6)
    record.update(request_id=f"prop-{seq}", http_cookie=f"sid={SECRET}", http_x_api_key=SECRET)
    record["http_authorization"] = bearer({"sub": f"u{seq}", "private": SECRET})
    for _ in range(choose.number(0, 4)):
        how = choose.pick(["value", "value", "drop", "token", "header"])
        key = choose.pick(sorted(record))
        if how == "drop" and key != "request_id":
            record.pop(key)
        elif how == "token":
            record[choose.pick(["http_authorization", "jwt"])] = choose.pick(TOKENS)
        elif how == "header":
            record[choose.pick(["http_x_forwarded_for", "sent_http_location", "http_referer"])] = choose.pick(VALUES)
        elif how == "value" and key not in ("http_cookie", "http_x_api_key", "http_authorization"):
            record[key] = choose.pick(VALUES)
    data = json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    raw = data.encode("utf-8", "surrogatepass")
    damage = choose.pick(["none"] * 5 + ["default_escaping", "truncate", "invalid_utf8", "nul", "duplicate"])
    commas = [n for n, byte in enumerate(raw) if byte == 0x2C] or [len(raw)]  # between members: no name is cut
    at = choose.pick(commas)
    if damage == "default_escaping":
        raw = to_default_escaping(raw)
    elif damage == "truncate":
        raw = raw[:at]
    elif damage == "invalid_utf8":
        raw = raw[:at] + b',"x":"' + choose.pick([b"\xff", b"\xc3", b"\xed\xa0\x80"]) + b'"' + raw[at:]
    elif damage == "nul":
        raw = raw[:at] + b',"x":"\\u0000\x01"' + raw[at:]
    elif damage == "duplicate":
        raw = raw[:-1] + b',"status":' + json.dumps(choose.pick(VALUES)).encode() + b"}"
    return raw.replace(b"\n", b" ")


@st.composite
def mutated_lines(draw: Any) -> bytes:
    return mutated(fuzzlines.DrawChooser(draw))


TRANSFORMERS = {
    name: Transformer(Parser(), build_chain(), sink, sink.flat_path(Parser(), build_chain()))
    for name, sink in fuzzlines.build_sinks().items()
}  # fmt: skip
KNOWN = {EVENT, BLANK, INVALID, REJECTED, SKIPPED, FILTERED, FAILED}


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_lines())
def test_mutated_nginx_lines_never_escape_and_never_carry_a_secret(data):
    for name, transform in TRANSFORMERS.items():
        fate, payload, anonymous = transform("f", data, 0, len(data) + 1)
        assert fate in KNOWN and isinstance(anonymous, bool), (name, fate)
        if fate in (INVALID, FAILED):
            reason, detail = payload
            assert reason != "internal_error" and isinstance(detail, str), (name, payload, data[:300])
        elif fate == EVENT:
            assert SECRET.encode() not in payload, (name, payload[:3000])
            assert fuzzlines_numbers_sane(orjson.loads(payload)), (name, payload[:3000])


def fuzzlines_numbers_sane(node: Any) -> bool:
    if isinstance(node, dict):
        return all(fuzzlines_numbers_sane(v) for v in node.values())
    if isinstance(node, list):
        return all(fuzzlines_numbers_sane(v) for v in node)
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return True
    if isinstance(node, int):
        return -(2**63) <= node < 2**64  # what orjson and the vendors' parsers take
    return node == node and abs(node) != float("inf")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_of_mutated_nginx_lines_is_accounted_for_and_leaks_nothing(tmp_path, workers):
    """1,500 mutated lines (seeded) between 300 numbered good ones, through a real backfill to stdout."""
    chooser = fuzzlines.RandomChooser(seed=23)
    rng = random.Random(5)
    lines, good = [], set()
    for seq in range(300):
        lines.append(line(nginx(seq, request_id=f"good-{seq}")))
        good.add(f"good-{seq}")
        lines += [mutated(chooser) for _ in range(rng.randrange(3, 8))]
    path = tmp_path / "access.json"
    path.write_bytes(b"\n".join(lines) + b"\n")
    state = tmp_path / "state"
    result = ship("backfill", str(path), "--sink", "stdout", "--state-dir", str(state), "--workers", str(workers),
                  *FAST, env=ship_env(), timeout=180)  # fmt: skip
    events, row, dead, _ = finished(result, state)
    ids = [e["messageId"] for e in events]
    assert good <= set(ids) and len([i for i in ids if i in good]) == len(good)
    assert row["read"] == sum(row[k] for k in COLUMNS) == len(lines), row
    assert row["shipped"] == len(events) and row["dead-lettered"] + row["rejected"] == len(dead), row


# -- the \xHH repair -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["/a\\x6Eb", "/a\\x2F", "/\\x22\\x5C", "/a\\\\x41", "/\\u00e9\\x"])
def test_the_default_escaping_repair_never_rewrites_an_escape_json_lines_text(text):
    """An escape=json line writes the text `\\x6E` as `\\\\x6E`; when that line is no JSON for another reason
    (invalid UTF-8 elsewhere: escape=json writes bytes over 0x7F as they are), the \\xHH repair read the second
    backslash as the start of `\\x6E` and the text became a newline (`\\x2F` a slash, `\\x22` a quote)."""
    from shipper.formats.decode import decode_line

    data = json.dumps({"request_method": "GET", "request_uri": text}).encode()[:-1] + b',"http_user_agent":"\xe9"}'
    assert decode_line(data)["request_uri"] == text
    # ... and the default escaping itself is still read: every byte escaped, the text as it was.
    escaped = "".join(f"\\x{byte:02X}" if byte in (0x22, 0x5C) or byte > 0x7F else chr(byte) for byte in text.encode())
    assert decode_line(b'{"request_uri":"' + escaped.encode() + b'"}')["request_uri"] == text


def test_nginx_header_keys_in_any_case_are_headers_identity_and_the_user_agent_find():
    """`"http_Authorization":"$http_authorization"` (nginx's $http_ variables take any case, and so may the
    log_format's keys): its token named nobody and `http_User_Agent` was no user agent."""
    from shipper.transform import NormalizedLines

    transform = Transformer(Parser(), build_chain(), NormalizedLines())
    record = {"request_method": "GET", "request_uri": "/x", "status": "200", "http_User_Agent": "curl/8",
              "http_Authorization": "Bearer " + token({"sub": "mixed"}), "sent_http_Content_Type": "text/plain"}
    fate, payload, _ = transform("f", orjson.dumps(record), 0, 1)
    event = orjson.loads(payload)
    assert fate == EVENT and event["user_id"] == "mixed" and event["user_agent"] == "curl/8", event
    assert event["request_headers"]["authorization"] == "*****"
    assert event["response_headers"] == {"content-type": "text/plain"}


# -- Kong records of odd shapes, through real runs ------------------------------------------------------------------
def kong_changes() -> list[Any]:
    """Changes to a real Kong record (tests/gen.py) where the brief's hostile Kong shapes go, each with marker
    secrets under names the masks know."""
    def header(**values: Any) -> Any:
        return lambda r: r["request"]["headers"].update(values)

    def request(**values: Any) -> Any:
        return lambda r: r["request"].update(values)

    def top(**values: Any) -> Any:
        return lambda r: r.update(values)

    return [
        header(Authorization="Bearer " + SECRET, authorization="REDACTED", AUTHORIZATION=[SECRET]),
        header(cookie=["a=" + SECRET, "b=" + SECRET]), header(**{"X-Api-Key": SECRET, "x-api-key": [SECRET]}),
        header(authorization=["REDACTED", bearer({"sub": "second"})]), header(authorization=bearer({"sub": 7})),
        request(querystring={"flag": True, "token": SECRET, "l": ["x", True], "access_token": [SECRET, SECRET]}),
        request(querystring=[["token", SECRET]]), request(querystring="token=" + SECRET),
        request(url=f"http://u:{SECRET}@h/p?x=1"), request(url="http://[::1]:8000/p?token=" + SECRET),
        request(url=f"h.example/p?token={SECRET}"), request(url=f"http://h\u00e9/\u00fc?token={SECRET}"),
        request(url=f"//h/p?api_key={SECRET}"), request(uri=f"/p#access_token={SECRET}"),
        request(body={"a": [{"client_secret": SECRET}]}), request(body=f"password={SECRET}&a=1"),
        top(consumer=[{"id": "x"}]), top(consumer=None), top(consumer={"id": {"uuid": "u-1"}, "username": ""}),
        top(authenticated_entity=["x"]), top(authenticated_entity={"consumer_id": {"uuid": "c-9"}}),
        top(tries={"a": 1}), top(tries=[[1], None, "x", {"ip": 5, "port": "99999", "code": "5xx"}]),
        top(started_at="1763800000.5"), top(started_at=1763800000123456), top(started_at=1763800000123456789),
        top(started_at=str(1763800000123)), top(started_at=None), top(started_at="2026-01-01T00:00:00Z"),
        top(latencies={"request": "12", "kong": "-3", "proxy": -1, "receive": "1e3"}),
        top(upstream_uri=f"/p?api_key={SECRET}"), top(jwt=SECRET + ".a.b"), top(jwt=bearer({"sub": "field"})),
        top(service={"id": "s", "host": "h", "path": f"/p?token={SECRET}", "url": f"https://a:{SECRET}@x"}),
        lambda r: r["response"]["headers"].update({"Set-Cookie": [SECRET, SECRET]}),
    ]  # fmt: skip


@pytest.mark.parametrize("workers", [0, 2])
def test_odd_kong_shapes_ship_and_leak_nothing_through_backfill(tmp_path, workers):
    lines, want = [], set()
    for seq, change in enumerate(kong_changes()):
        record = gen.kong_record(seq)
        record["request"]["id"] = f"kong-{seq}"
        change(record)
        lines.append(orjson.dumps(record))
        want.add(f"kong-{seq}")
    path = tmp_path / "kong.json"
    path.write_bytes(b"\n".join(lines) + b"\n")
    state = tmp_path / "state"
    result = ship("backfill", str(path), "--sink", "stdout", "--state-dir", str(state), "--workers", str(workers),
                  *FAST, env=ship_env(), timeout=120)  # fmt: skip
    events, row, dead, _ = finished(result, state)
    assert sorted(e["messageId"] for e in events) == sorted(want) and not dead, dead
    assert row["read"] == row["shipped"] == len(lines), row
    users = {e["messageId"]: e.get("userId") for e in events}
    # A repeated Authorization header: the first of its values holding a token (its first value was taken).
    assert users["kong-3"] == "second" and users["kong-4"] == "7" and users["kong-32"] == "field", users
    assert users["kong-18"] == "u-1" and users["kong-20"] == "c-9", users  # ids logged as objects


@pytest.mark.parametrize("first", ["REDACTED", "Bearer a.b.c", 5, "Basic !!"])
def test_a_repeated_authorization_header_gives_the_basic_user_of_its_first_basic_value(first):
    """Its first value was taken, whatever it was: `bob` went unnamed behind a REDACTED or a Bearer value."""
    repeated = [first, "Basic Ym9iOnB3"]
    txn = Transaction(event_id="e", source_format="kong", position=None, raw={},
                      request_headers={"authorization": repeated})  # fmt: skip
    txn = Identify()(txn)
    assert txn.basic_user == "bob" and txn.user_id == "bob" and txn.user_source == "basic"


# -- property: tokens of any shape ------------------------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
CLAIMS = st.dictionaries(st.sampled_from(["sub", "iss", "aud", "user", "jti", "x", ""]), JSON_VALUES, max_size=5)
SEGMENT_TEXT = st.text(alphabet="ABCDEFabcdef0123456789-_=+/.!", max_size=12)


@st.composite
def token_texts(draw: Any) -> str:
    """Well-formed tokens of any claims and headers, and texts that only look like tokens."""
    how = draw(st.sampled_from(["claims", "claims", "raw_payload", "segments", "prefix"]))
    header = draw(st.one_of(st.just({"alg": "HS256"}), st.dictionaries(st.sampled_from(["alg", "kid", "crit", "b64",
                                                                                          "typ"]), JSON_VALUES)))
    if how == "claims":
        text = token(draw(CLAIMS), header, signature=SECRET)
    elif how == "raw_payload":
        payload = draw(st.binary(max_size=40) | st.sampled_from([b"NaN", b"[1]", b'"s"', b"{" * 50, b'{"sub":1e999}']))
        text = f"{b64(header)}.{b64(payload)}.{SECRET}"
    elif how == "segments":
        text = ".".join(draw(st.lists(SEGMENT_TEXT, min_size=1, max_size=4))) + SECRET
    else:
        text = draw(st.sampled_from(["Bearer ", "bearer  ", "BEARER\t", "Basic ", " ", ""])) + token(
            draw(CLAIMS), signature=SECRET)
    return text


IDENTITY_SINKS = {name: sink for name, sink in fuzzlines.build_sinks().items()}


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(token_texts(), st.sampled_from(["http_authorization", "jwt"]), st.booleans())
def test_no_token_crashes_identity_or_leaves_in_an_event(text, place, as_list):
    record = nginx(1, **{place: [text] if as_list else text})
    data = line(record)
    for name, sink in IDENTITY_SINKS.items():
        transform = Transformer(Parser(), build_chain(), sink, sink.flat_path(Parser(), build_chain()))
        fate, payload, _ = transform("f", data, 0, len(data) + 1)
        assert fate in (EVENT, FILTERED), (name, fate, payload)
        if fate == EVENT:
            assert SECRET.encode() not in payload, (name, payload[:2000])
            assert fuzzlines_numbers_sane(orjson.loads(payload)), (name, payload[:2000])

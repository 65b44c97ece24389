"""No secret leaves: a property test over marker secrets in every shape (leaks.SHAPES) against the bytes every sink
encodes, plus the masks' units (one normalisation of names; bodies; dead-letter lines; redaction helpers)."""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import re
import zlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gen
import leaks
from shipper.formats import Parser
from shipper.model import Position
from shipper.processors import build_chain, run_chain
from shipper.processors.masking import MASK, Masker, normalize
from shipper.processors.redact import mask_line, mask_text, redact_url
from shipper.sinks.base import EventRejected, EventSkipped
from shipper.sinks.moesif import MoesifSink
from shipper.sinks.runscope import RunscopeSink
from shipper.sinks.segment import SegmentSink
from shipper.sinks.stdout import StdoutSink
from shipper.sinks.webhook import WebhookSink

_B64 = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")


def sinks() -> list[Any]:
    return [
        SegmentSink("wk"),
        MoesifSink("app", "http://127.0.0.1:9", fetch_config=False),
        RunscopeSink("tok", "bucket", "http://127.0.0.1:9", log_body=True),
        WebhookSink("http://127.0.0.1:9/hook"),
        StdoutSink(stream=io.BytesIO()),
    ]


def readable(data: bytes) -> str:
    """The bytes as text, plus what any base64 string inside them decodes to (Moesif sends non-JSON bodies
    base64-encoded, and a secret must not hide there either)."""
    text = data.decode("utf-8", "replace")
    extra = []
    for candidate in _B64.findall(text):
        try:
            padded = candidate + "=" * (-len(candidate) % 4)
            raw = base64.b64decode(padded, altchars=b"-_" if "-" in candidate or "_" in candidate else None)
        except (binascii.Error, ValueError):
            continue
        if raw[:2] == b"\x1f\x8b":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error):
                pass
        extra.append(raw.decode("utf-8", "replace"))
    return "\n".join([text, *extra])


def leaked(markers: list[str], data: bytes) -> list[str]:
    text = readable(data)
    return [m for m in markers if m in text]


def encoded_by_every_sink(line: bytes) -> dict[str, bytes]:
    out = {}
    for sink in sinks():
        txn = Parser().parse(line, Position("fid", 0, len(line)))
        txn = run_chain(build_chain(), txn)
        try:
            event = sink.encode(txn)
        except (EventSkipped, EventRejected):
            continue
        request = sink.request([event])
        body = request.read()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        out[sink.name] = bytes(event) + b"\n" + body
    return out


@st.composite
def kong_lines(draw) -> tuple[bytes, list[str]]:
    pick = lambda options: draw(st.sampled_from(options))  # noqa: E731 - hypothesis' draw as leaks.Pick
    base = draw(st.integers(0, 10**6))
    record = gen.kong_record(draw(st.integers(0, 999)), version=pick(["3", "2", "0"]))
    shapes = draw(st.lists(st.sampled_from(sorted(leaks.SHAPES)), min_size=1, max_size=6))
    markers = []
    for i, shape in enumerate(shapes):
        markers.append(leaks.marker(base * 10 + i))
        leaks.SHAPES[shape](record, markers[-1], pick)
    return gen.kong_line(record), markers


@st.composite
def nginx_lines(draw) -> tuple[bytes, list[str]]:
    pick = lambda options: draw(st.sampled_from(options))  # noqa: E731
    base = draw(st.integers(0, 10**6))
    markers = [leaks.marker(base * 10 + i) for i in range(3)]
    return gen.nginx_line(leaks.nginx_record(draw(st.integers(0, 999)), markers, pick)), markers


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.one_of(kong_lines(), nginx_lines()))
def test_no_marker_reaches_any_sink_or_a_dead_letter(case):
    line, markers = case
    events = encoded_by_every_sink(line)
    assert {"webhook", "runscope"} <= set(events)  # the line was understood and shipped: not a vacuous pass
    for name, data in events.items():
        assert not leaked(markers, data), (name, leaked(markers, data), data[:3000])
    # The same line dead-lettered: whole, or cut short as an oversize line's prefix is, or not JSON at all.
    for variant in (line, line[: len(line) * 2 // 3], b"garbage " + line):
        kept = mask_line(variant).encode()
        assert not leaked(markers, kept), (leaked(markers, kept), kept[:3000])


# -- one normalisation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["X-Api-Key", "x_api_key", "X_API_KEY", "x%2Dapi%2Dkey", "x%252Dapi-key",
                                  "PROXY-AUTHORIZATION", "Set-Cookie", "ApiKey", " token ", "tok%65n", "%6Bey"])
def test_one_normalisation_for_every_name(name):
    masker = Masker()
    assert masker.names.is_secret(name)
    assert masker.mask_params(f"a=1&{name}=v") == f"a=1&{name}={MASK}"
    assert masker.mask_value({"x": {name: "v"}}) == {"x": {name: MASK}}
    assert normalize("API%255FKEY") == "api_key"


def test_innocent_lookalikes_are_left_alone_and_unchanged_parts_are_not_copied():
    masker = Masker()
    body = {"monkey": "banana", "keys": ["k"], "author": "a", "tokens_used": 3, "nested": {"note": "key=no space"}}
    assert masker.mask_value(body) is body
    assert masker.mask_params("monkey=1&keys=2&tokenizer=3") == "monkey=1&keys=2&tokenizer=3"
    headers = {"accept": "*/*", "x-request-id": "r"}
    assert masker.mask_headers(headers) is headers


def test_bodies_json_form_base64_and_withheld():
    masker = Masker(["card"])
    assert masker.mask_body({"a": [{"Card": "4111", "Password": "p"}]}) == {"a": [{"Card": MASK, "Password": MASK}]}
    assert orjson.loads(masker.mask_body('{"refresh-token": "r", "ok": 1}')) == {"refresh-token": MASK, "ok": 1}
    assert masker.mask_body("user%5Bpassword%5D=p&x=1") == f"user%5Bpassword%5D={MASK}&x=1"
    zipped = base64.b64encode(gzip.compress(b'{"api_key": "s", "n": 1}')).decode()
    assert orjson.loads(masker.mask_body(zipped)) == {"api_key": MASK, "n": 1}
    clean = base64.b64encode(gzip.compress(b'{"n": 1}')).decode()
    assert masker.mask_body(clean) is clean  # nothing secret: shipped as it came (Moesif decompresses it)
    for raw in ("plain text with s3cret", base64.b64encode(bytes(range(200))).decode(), "<xml/>"):
        withheld = masker.mask_body(raw)
        assert isinstance(withheld, dict) and "withheld" in withheld["msg"] and "bytes" in withheld["msg"]
    assert Masker(ship_raw_bodies=True).mask_body("plain text") == "plain text"
    assert Masker(ship_raw_bodies=True).mask_body("a=1&password=p") == f"a=1&password={MASK}"  # still masked


def test_private_jwt_claims_and_entity_urls():
    token = gen.make_jwt({"sub": "u1", "sid": "s1", "email": "e@x", "iat": 1})
    record = gen.kong_record(1, version="0", extra={"jwt": token})
    record["api"]["upstream_url"] = "http://svc:pw@orders.internal/p?apikey=k"
    txn = run_chain(build_chain(), Parser().parse(gen.kong_line(record), Position("f", 0, 1)))
    assert txn.user_id == "u1" and txn.jwt_claims == {"sub": "u1", "sid": "s1", "iat": 1}
    assert txn.service["upstream_url"] == f"http://{MASK}@orders.internal/p?apikey={MASK}"
    assert record["api"]["upstream_url"].startswith("http://svc:pw@")  # the parsed record is not changed


def test_registered_claims_of_another_shape_do_not_leave():
    """A registered name keeps its claim only in the shape RFC 7519 gives it: an object or a list under `iss`,
    `sub` or `jti` (and objects in `aud`) may hold anything, and reached the webhook and `parse`."""
    m = leaks.marker(9)
    token = gen.make_jwt({"sub": {"id": m}, "iss": {"a": m}, "aud": ["api", {m: 1}], "jti": [m], "iat": 1,
                          "exp": 2.5, "nbf": None, "sid": "s1"})
    txn = run_chain(build_chain(), Parser().parse(gen.kong_line(gen.kong_record(1, extra={"jwt": token})),
                                                  Position("f", 0, 1)))
    assert txn.jwt_claims == {"iat": 1, "exp": 2.5, "nbf": None, "sid": "s1"}
    assert m not in orjson.dumps(txn.to_dict()).decode()
    plain = {"sub": "u", "aud": ["a", "b"]}
    assert Masker().kept_claims(plain) is plain  # nothing dropped: the object itself


def test_the_claims_remembered_are_bounded_by_their_weight():
    """Identity does not remember large tokens, so each brings new claims: any client can send a distinct one a
    request. The masker's memory of claims is bounded by weight as well as number."""
    import tracemalloc

    masker = Masker()
    tracemalloc.start()
    try:
        for i in range(200):
            claims = {"sub": f"u{i}", "email": "e", "blob": "x" * 100_000 + str(i)}
            assert masker.kept_claims(claims) == {"sub": f"u{i}"}
            del claims
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 4 << 20, held  # 200 x 100 KB remembered before


def test_kongs_dotted_names_and_name_value_lists_are_masked_everywhere():
    """One mechanism for every record: a form's dotted names (`config.redis.password`, as `curl -d` configures a
    plugin) and transformer plugins' "name:value" lists, in query strings, bodies, entities (audit records had
    their own copy of these rules; event hooks and bodies had none)."""
    masker = Masker()
    assert masker.mask_params("config.token=s1&config.redis.password=s2&name=ok") == (
        f"config.token={MASK}&config.redis.password={MASK}&name=ok")
    assert orjson.loads(masker.mask_body('{"config.api_key": "s3", "config": {"remove": {"headers": ["apikey"]}}}')) == (
        {"config.api_key": MASK, "config": {"remove": {"headers": ["apikey"]}}})
    entity = {"config": {"add": {"headers": ["Authorization:Bearer s4", "x-ok:1", "https://h/?token=s5"],
                                 "querystring": ["api_key:s6"], "body": ["password:s7", {"token": "s8"}]}},
              "key_alt": "s9", "secret_id": "s10", "headers": {"x-ok": "1"}}
    masked = orjson.dumps(masker.mask_value(entity)).decode()
    assert not [s for s in ("s4", "s5", "s6", "s7", "s8", "s9", "s10") if f"{s}\"" in masked or f"{s}&" in masked
                or f" {s}" in masked], masked
    assert '"x-ok:1"' in masked and '"headers":{"x-ok":"1"}' in masked


def test_dead_letter_lines_are_masked_structurally_or_textually():
    line = orjson.dumps({"request": {"headers": {"Authorization": "Bearer abcdefgh123"}, "uri": "/x?tok%65n=t1",
                                      "body": "plain secret text"}, "http_Cookie": "c1"})  # fmt: skip
    kept = orjson.loads(mask_line(line))
    assert kept["request"]["headers"]["Authorization"] == MASK and kept["request"]["uri"] == f"/x?tok%65n={MASK}"
    assert "withheld" in kept["request"]["body"]["msg"] and kept["http_Cookie"] == MASK
    broken = b'{"headers": {"X-API-KEY": "k1", "cookie": "c=1"}, "uri": "/a?api%255Fkey=k2#id_token=k3", "body": "t"'
    text = mask_line(broken)
    assert not any(s in text for s in ("k1", "c=1", "k2", "k3", '"t"')), text
    cut = mask_line(b'{"jwk": {"d": "k4", "e": {"f": "}"}}, "n": 5, "credentials": {"secret": {"d": "k5"')
    assert "k4" not in cut and "k5" not in cut and '"n": 5' in cut, cut
    assert mask_text("x Cookie: sid=abc (in a raw line, a header ends at the line's end)", raw_line=True) == (
        f"x Cookie: {MASK}"
    )
    prose = "no Admin API token: export KONG_ADMIN_TOKEN=... or pass --admin-token-file"
    assert mask_text(prose) == prose  # our own messages stay readable
    assert mask_text("see eyJhbGciOi.eyJzdWIi.c2ln at https://u:p@h/") == f"see {MASK} at https://{MASK}@h/"


def test_redact_url():
    assert redact_url("https://user:pw@example.com/p?token=t&x=1") == f"https://{MASK}@example.com/p?token={MASK}&x=1"
    assert redact_url("https://example.com/p") == "https://example.com/p"


def test_a_password_with_a_raw_at_sign_is_masked_whole_in_events_and_messages():
    # Userinfo runs to the authority's last `@`: `user:p@ss@host` must not leave `ss` behind.
    url = "https://svc:pa@ss-MARK@upstream.internal:8443/v1?x=1"
    entity = Masker().mask_entity({"id": "s1", "upstream_url": url})
    for shown in (entity["upstream_url"], redact_url(url), mask_text(f"fatal: cannot reach {url}")):
        assert "ss-MARK" not in shown and f"https://{MASK}@upstream.internal:8443/v1?x=1" in shown


def test_secret_named_parameters_are_found_in_linear_time_after_long_runs_of_name_characters():
    """A hostile line (a long run of letters, then `token=…`) must not make the dead-letter redaction quadratic:
    a parameter name is only looked for where a run of name characters starts (the search from every position
    of a 20 kB run took 3.5 s; a line of megabytes, hours)."""
    hostile = "a" * 200_000 + " token=s3cr3t-marker&x=1"
    masked = mask_text(hostile, raw_line=True)
    assert "s3cr3t-marker" not in masked and masked.endswith(" token=*****&x=1")
    assert mask_text("aaaa" * 1000 + "token=v", raw_line=True).endswith("token=v")  # one name, "aaa…token": no secret
    assert mask_text("x&aaaatoken=1&access_token=s3cr3t", raw_line=True) == "x&aaaatoken=1&access_token=*****"

"""Secrets in the corners of targets, end to end (found by the review of the worker paths; each test failed
before the masks below): a URL's password cut by a dead letter's 4 KiB prefix before its `@`
(redact._CUT_TAIL); secret parameters inside a query value that is itself a target, as Kong decodes it into the
query object and as clients percent-encode it (params.mask_in_value); `;name=value` path parameters
(params._mask_path_params); userinfo in `request.url` without a port, taken for the host (values.split_url);
objects nested in the query object (params.ParamMasks.mask_query)."""

from __future__ import annotations

import gzip
from urllib.parse import quote

import orjson
import pytest

import gen
import leaks
from fakes.moesif import FakeMoesif
from fakes.runscope import FakeRunscope
from fakes.segment import FakeSegment
from test_worker_secrets import CREDENTIALS, MAX_LINE, backfill, cut_in_secret, everything_that_left, scan


@pytest.mark.parametrize("workers", ["2", "0"])
@pytest.mark.parametrize("before", [
    b'"service":{"url":"https:\\/\\/svc:',  # Kong's cjson escapes `/`
    b'"service":{"url":"https://svc:',
    b'"headers":{"referer":"https:\\/\\/alice:',
])
def test_a_url_password_cut_by_the_dead_letter_prefix_is_masked(tmp_path, before, workers):
    m = leaks.marker(1)
    log = tmp_path / "kong.json"
    log.write_bytes(gen.kong_line(gen.kong_record(0)) + cut_in_secret(before, m, MAX_LINE + 1000))
    with FakeSegment(CREDENTIALS["segment"]) as fake:
        result = backfill(log, tmp_path / "state", "segment", fake.url, "--workers", workers)
        assert result.returncode == 0, result.stderr
        letter = orjson.loads((tmp_path / "state" / "dead-letter.jsonl").read_bytes())
        assert letter["reason"] == "too_long"
        found = [f for where, data in everything_that_left(fake, result, tmp_path / "state").items()
                 for f in scan([m], where, data)]
    assert not found, (found, letter["line"][-80:])


def nested(seq: int, m: str, encoded: bool) -> dict:
    rec = gen.kong_record(seq)
    inner = f"/cb?token={m}"
    shown = quote(inner, safe="") if encoded else inner
    rec["request"]["uri"] += f"&next={shown}"
    rec["request"]["url"] += f"&next={shown}"
    rec["request"]["querystring"]["next"] = inner  # decoded once, as Kong does
    return rec


def matrix(seq: int, m: str) -> dict:
    rec = gen.kong_record(seq)
    rec["request"]["uri"] = f"/orders;jsessionid=x;token={m}?seq={seq}"
    rec["request"]["url"] = f"https://api.example.com:443/orders;token={m}?seq={seq}"
    rec["upstream_uri"] = f"/orders;token={m}?seq={seq}"
    return rec


def object_in_query(seq: int, m: str) -> dict:
    """Kong writes texts, true and lists of texts into the query object; a hand-made or hostile record may nest
    objects, whose secret names are masked as the top level's are (at any depth)."""
    rec = gen.kong_record(seq)
    deep: dict = {"access_token": m}
    for level in range(12):
        deep = {f"l{level}": deep}
    rec["request"]["querystring"].update({"filter": {"token": m, "ok": "v"}, "list": [{"Password": m}, "x"],
                                          "deep": deep})
    return rec


FAKES = {"segment": FakeSegment, "moesif": FakeMoesif, "runscope": FakeRunscope}


@pytest.mark.parametrize("sink", ["segment", "moesif", "runscope"])
@pytest.mark.parametrize("shape", ["query_object_url", "encoded_url_in_query", "matrix_param", "object_in_query"])
def test_secret_parameters_nested_in_a_query_value_or_in_path_params_are_masked(tmp_path, sink, shape):
    m = leaks.marker(2)
    rec = {"query_object_url": lambda: nested(5, m, False), "encoded_url_in_query": lambda: nested(5, m, True),
           "matrix_param": lambda: matrix(5, m), "object_in_query": lambda: object_in_query(5, m)}[shape]()
    log = tmp_path / "kong.json"
    log.write_bytes(gen.kong_line(rec))
    with FAKES[sink](CREDENTIALS[sink]) as fake:
        result = backfill(log, tmp_path / "state", sink, fake.url)
        assert result.returncode == 0, result.stderr
        bodies = [gzip.decompress(r.body) if r.headers.get("content-encoding") == "gzip" else r.body
                  for r in fake.requests if r.method == "POST"]
    assert bodies
    assert not [b for b in bodies if m.encode() in b], bodies


def test_userinfo_in_request_url_without_a_port_is_not_the_host(tmp_path):
    m = leaks.marker(4)
    rec = gen.kong_record(1)
    rec["request"]["url"] = f"https://{m}:x-oauth-basic@api.example.com/v1/x?seq=1"
    (tmp_path / "k.json").write_bytes(gen.kong_line(rec))
    with FakeSegment(CREDENTIALS["segment"]) as fake:
        result = backfill(tmp_path / "k.json", tmp_path / "state", "segment", fake.url)
        assert result.returncode == 0, result.stderr
        bodies = [gzip.decompress(r.body) for r in fake.requests]
    assert bodies and not [b for b in bodies if m.encode() in b], fake.messages[0]["properties"]["host"]


def test_bug5_credential_headers_outside_the_exact_name_list_leave(tmp_path):
    names = ["X-Client-Secret", "X-Password", "X-Refresh-Token", "X-Vault-Token", "Private-Token", "X-Goog-Api-Key",
             "X-Amz-Security-Token", "Ocp-Apim-Subscription-Key"]
    rec = gen.kong_record(1)
    markers = {name: leaks.marker(50 + i) for i, name in enumerate(names)}
    for name, m in markers.items():
        rec["request"]["headers"][name.lower()] = m
    (tmp_path / "k.json").write_bytes(gen.kong_line(rec))
    with FakeMoesif(CREDENTIALS["moesif"]) as fake:
        result = backfill(tmp_path / "k.json", tmp_path / "state", "moesif", fake.url)
        assert result.returncode == 0, result.stderr
        body = b"".join(gzip.decompress(r.body) for r in fake.requests if r.method == "POST")
    assert body and not [name for name, m in markers.items() if m.encode() in body]

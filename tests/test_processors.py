"""Identity (who made the call) and masking (what must not leave), each tested alone."""

from __future__ import annotations

import base64
import json

import orjson

from shipper.formats import Parser
from shipper.model import Position, Transaction
from shipper.processors import build_chain, run_chain
from shipper.processors.identity import decode_jwt, identify
from shipper.processors.masking import MASK, Masker, drop_raw, mask_secrets


def b64url(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def token(claims: dict) -> str:
    return f"{b64url({'alg': 'HS256', 'typ': 'JWT'})}.{b64url(claims)}.c2lnbmF0dXJl"


def kong(**over) -> Transaction:
    record = {
        "request": {"method": "GET", "uri": "/a?seq=1", "url": "http://h:80/a?seq=1", "headers": {}},
        "response": {"status": 200},
        "started_at": 1,
        "client_ip": "198.51.100.1",
    }
    for key, value in over.items():
        if key == "headers":
            record["request"]["headers"] = value
        else:
            record[key] = value
    line = orjson.dumps(record)
    return Parser().parse(line, Position("fid", 0, len(line) + 1))


def test_jwt_from_authorization_header_with_bearer_prefix():
    txn = identify()(kong(headers={"authorization": "Bearer " + token({"sub": "u-1"})}))
    assert (txn.user_id, txn.user_source) == ("u-1", "jwt")
    assert txn.jwt_claims == {"sub": "u-1"}


def test_redacted_authorization_means_no_token_then_the_top_level_jwt_field():
    txn = identify()(kong(headers={"authorization": "REDACTED"}, jwt=token({"sub": "from-field"})))
    assert txn.user_id == "from-field"


def test_configured_places_and_claim():
    txn = kong(headers={"x-token": token({"user": {"id": 42}})})
    txn = identify(["request.headers.x-token"], "user.id")(txn)
    assert txn.user_id == "42"


def test_base64url_characters_in_the_payload_decode():
    # A payload whose base64 has '-' and '_' (kong-plugin-moesif's plain base64 broke on these).
    claims = {"sub": "ü>>>???~~~"}
    encoded = token(claims)
    assert "-" in encoded.split(".")[1] or "_" in encoded.split(".")[1]
    assert identify()(kong(jwt=encoded)).user_id == "ü>>>???~~~"


def test_malformed_token_falls_back_to_the_consumer():
    consumer = {"id": "c-id", "username": "alice", "custom_id": "cust-9"}
    txn = identify()(kong(jwt="not.a.token", consumer=consumer))
    assert (txn.user_id, txn.user_source) == ("cust-9", "consumer")
    txn = identify()(kong(jwt="garbage", consumer={"id": "c-id", "username": "alice"}))
    assert txn.user_id == "alice"


def test_credential_then_consumer_headers_then_anonymous():
    txn = identify()(kong(authenticated_entity={"id": "cred-1"}))
    assert (txn.user_id, txn.user_source) == ("cred-1", "credential")
    txn = identify()(kong(headers={"x-consumer-username": "bob"}))
    assert (txn.user_id, txn.user_source) == ("bob", "header")
    first = identify()(kong(headers={"user-agent": "ua"}))
    second = identify()(kong(headers={"user-agent": "ua"}))
    assert first.user_id is None and first.anonymous_id == second.anonymous_id
    assert first.anonymous_id.startswith("anon-")
    other = identify()(kong(headers={"user-agent": "other"}))
    assert other.anonymous_id != first.anonymous_id


def test_each_distinct_token_is_decoded_once():
    decode_jwt.cache_clear()
    tok = token({"sub": "cached"})
    process = identify()
    for _ in range(50):
        process(kong(jwt=tok))
    info = decode_jwt.cache_info()
    assert info.misses == 1 and process(kong(jwt=tok)).user_id == "cached"


def test_nginx_authorization_header_is_a_token_place():
    line = orjson.dumps(
        {"request_method": "GET", "request_uri": "/x", "http_authorization": "Bearer " + token({"sub": "ngx"})}
    )
    txn = Parser().parse(line, Position("f", 0, 1))
    assert identify()(txn).user_id == "ngx"


def test_default_masks_cover_headers_query_object_string_and_uri():
    txn = kong(
        headers={
            "authorization": "Bearer x.y.z",
            "proxy-authorization": "Basic abc",
            "cookie": "session=1",
            "apikey": "k1",
            "x-api-key": ["k2", "k3"],
            "accept": "*/*",
        },
    )
    txn.response_headers = {"set-cookie": "sid=2", "content-type": "text/plain"}
    txn.query = {"apikey": "q1", "API_KEY": "q2", "key": "q3", "token": "q4", "access_token": "q5", "page": "1"}
    txn.query_string = "apikey=q1&API_KEY=q2&key=q3&token=q4&access_token=q5&page=1"
    txn.raw_path = "/a?" + txn.query_string
    txn.upstream_uri = "/up?token=q4&x=1"
    txn = mask_secrets()(txn)
    assert txn.request_headers == {
        "authorization": MASK,
        "proxy-authorization": MASK,
        "cookie": MASK,
        "apikey": MASK,
        "x-api-key": [MASK, MASK],
        "accept": "*/*",
    }
    assert txn.response_headers == {"set-cookie": MASK, "content-type": "text/plain"}
    assert all(v == MASK for k, v in txn.query.items() if k != "page") and txn.query["page"] == "1"
    expected = f"apikey={MASK}&API_KEY={MASK}&key={MASK}&token={MASK}&access_token={MASK}&page=1"
    assert txn.query_string == expected
    assert txn.raw_path == "/a?" + expected
    assert txn.upstream_uri == f"/up?token={MASK}&x=1"
    for secret in ("q1", "q2", "q3", "q4", "q5", "k1", "k2", "k3", "session=1", "sid=2", "abc", "x.y.z"):
        assert secret not in orjson.dumps(txn.to_dict()).decode()


def test_extra_masks_and_innocent_lookalikes():
    txn = kong(headers={"x-secret": "s"})
    txn.query = {"monkey": "banana", "sig": "abc"}
    txn.query_string = "monkey=banana&sig=abc"
    txn = mask_secrets(["x-secret"], ["sig"])(txn)
    assert txn.request_headers["x-secret"] == MASK
    assert txn.query == {"monkey": "banana", "sig": MASK}  # `key` must not match inside `monkey`
    assert txn.query_string == f"monkey=banana&sig={MASK}"


def test_the_default_chain_drops_the_raw_record():
    txn = kong(jwt=token({"sub": "z"}), headers={"cookie": "c=1"})
    assert txn.raw is not None
    out = run_chain(build_chain(), txn)
    assert out.raw is None and out.user_id == "z" and out.request_headers["cookie"] == MASK
    assert drop_raw(out) is out


def test_the_default_masks_reach_any_depth_without_touching_the_input():
    entity = {"consumer": {"id": "c1"}, "Key": "k-123", "nested": [{"password": "p", "name": "n"}, "key"],
              "token": None, "credentials": {"client_secret": "s", "jwk": {"d": "x"}}}
    masked = Masker().mask_value(entity)
    assert masked == {"consumer": {"id": "c1"}, "Key": MASK, "nested": [{"password": MASK, "name": "n"}, "key"],
                      "token": None, "credentials": {"client_secret": MASK, "jwk": MASK}}
    assert entity["Key"] == "k-123" and entity["nested"][0]["password"] == "p"
    deep: dict = {}
    cursor = deep
    for _ in range(100):
        cursor["a"] = {}
        cursor = cursor["a"]
    assert MASK in str(Masker().mask_value(deep))  # a pathological nesting ends in a mask, not a RecursionError

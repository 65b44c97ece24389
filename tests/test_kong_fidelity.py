"""Issue 13, parsing: what Kong logs beyond the basics keeps its meaning — retries' upstream statuses, the 3.x
fields (receive latency, TLS, trace and correlation ids, tries, AI usage), stream sessions, ids logged as
objects, records without a time, times in any unit, and the Basic user."""

from __future__ import annotations

import base64
import time

import orjson
import pytest

from shipper.formats import ParseError, Parser
from shipper.model import Position
from shipper.processors import build_chain, run_chain
from shipper.processors.identity import basic_user, identify
from shipper.processors.window import time_window


def parse(record, fmt="auto"):
    line = orjson.dumps(record)
    return Parser(fmt).parse(line, Position("fid", 7, 8 + len(line)))


def kong(**over):
    record = {
        "request": {"method": "GET", "uri": "/a", "url": "https://h.example:443/a", "headers": {"host": "h.example"}},
        "response": {"status": 200},
        "latencies": {"request": 10, "kong": 1, "proxy": 9},
        "started_at": 1726783839538,
        "client_ip": "192.0.2.1",
    }
    for key, value in over.items():
        if key == "headers":
            record["request"]["headers"] = value
        elif key == "tls":
            record["request"]["tls"] = value
        else:
            record[key] = value
    return record


def stream(**over):
    record = {
        "session": {"received": 100, "sent": 2000, "status": 200, "server_port": 9000},
        "upstream": {"received": 1990, "sent": 110},
        "latencies": {"kong": 2, "session": 1234.5},
        "tries": [{"ip": "10.0.0.1", "port": 6000, "balancer_latency": 0}],
        "service": {"id": "s", "name": "db", "protocol": "tcp"},
        "route": {"id": "r", "protocols": ["tcp"]},
        "client_ip": "198.51.100.7",
        "started_at": 1726783900000,
        "workspace": "ws-1",
        "workspace_name": "default",
    }
    record.update(over)
    return record


# -- 1. upstream statuses of retries ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "logged, last, every",
    [
        ("200", 200, None),
        ("502, 200", 200, [502, 200]),
        ("500, 200 : 200, 200", 200, [500, 200, 200, 200]),
        ("502, 504 : 503", 503, [502, 504, 503]),
        ("-, 502, abc, 200", 200, [502, 200]),  # non-numeric parts are skipped
        ("502, -", 502, None),  # one status left: no list
        ("-, -", None, None),
        (" : ", None, None),
        ("", None, None),
        ("502, 1e30, 99999, 200", 200, [502, 200]),  # never raises for a list
    ],
)
def test_upstream_status_keeps_every_try_and_the_last_counts(logged, last, every):
    txn = parse(kong(upstream_status=logged))
    assert (txn.upstream_status, txn.upstream_statuses) == (last, every)


def test_a_single_absurd_upstream_status_is_still_a_bad_value():
    with pytest.raises(ParseError) as info:
        parse(kong(upstream_status="1e30"))
    assert info.value.reason == "bad_value" and "upstream_status" in info.value.detail


def test_nginx_upstream_statuses_too():
    line = {"request_method": "GET", "request_uri": "/x", "status": "200", "msec": "1726783839.538",
            "upstream_status": "502, 200 : 200"}  # fmt: skip
    txn = parse(line)
    assert (txn.upstream_status, txn.upstream_statuses) == (200, [502, 200, 200])


# -- 2. Kong 3.x fields ---------------------------------------------------------------------------------------------
def test_absent_3x_fields_are_none():
    txn = parse(kong())
    for name in ("latency_receive", "tls", "trace_id", "correlation_id", "upstream_tries", "ai", "upstream_statuses",
                 "workspace_name", "tries", "basic_user"):  # fmt: skip
        assert getattr(txn, name) is None, name


def test_receive_latency_tls_and_workspace_name():
    record = kong(workspace_name="default", tls={"version": "TLSv1.2", "cipher": "ECDHE-RSA-AES256-GCM-SHA384",
                                                 "supported_client_ciphers": "X", "client_verify": 7})  # fmt: skip
    record["latencies"]["receive"] = 3
    txn = parse(record)
    assert txn.latency_receive == 3.0 and txn.workspace_name == "default"
    assert txn.tls == {"version": "TLSv1.2", "cipher": "ECDHE-RSA-AES256-GCM-SHA384"}  # strings only, known keys
    assert parse(kong(tls={"cipher": None})).tls is None and parse(kong(tls="TLSv1.3")).tls is None


@pytest.mark.parametrize(
    "logged, expected",
    [
        ({"w3c": "4bf92f3577b34da6a3ce929d0e0e4736", "datadog": "11803532876627986230"}, "4bf92f3577b34da6a3ce929d0e0e4736"),
        ({"datadog": "11803532876627986230", "w3c": "4bf92f3577b34da6a3ce929d0e0e4736"}, "4bf92f3577b34da6a3ce929d0e0e4736"),
        ({"b3": 5, "jaeger": "", "ot": "abcd"}, "abcd"),  # no w3c: the first non-empty string
        ("0af7651916cd43dd8448eb211c80319c", "0af7651916cd43dd8448eb211c80319c"),
        ({"w3c": None}, None),
        (12345, None),
        ("", None),
    ],
)
def test_trace_id(logged, expected):
    assert parse(kong(trace_id=logged)).trace_id == expected


def test_correlation_id():
    assert parse(kong(correlation_id="2b1f6c36#12")).correlation_id == "2b1f6c36#12"
    assert parse(kong(correlation_id={"id": 1})).correlation_id is None


def test_tries_are_counted_and_sanitised():
    tries = [
        {"ip": "10.0.0.1", "port": 80, "balancer_latency": 2, "state": "next", "code": 502, "balancer_start": 1,
         "balancer_latency_ns": 2e6, "unknown": {"x": 1}},
        {"ip": 10, "port": "8080", "balancer_latency": "1.5", "state": ["failed"], "code": "504"},
        {"port": 70000, "balancer_latency": -1, "code": 42},
        "not a try",
    ]  # fmt: skip
    txn = parse(kong(tries=tries))
    assert txn.tries == 4
    assert txn.upstream_tries == [
        {"ip": "10.0.0.1", "port": 80, "balancer_latency": 2.0, "state": "next", "code": 502},
        {"port": 8080, "balancer_latency": 1.5, "code": 504},
        {},
        {},
    ]
    assert parse(kong(tries=[])).upstream_tries is None and parse(kong(tries=[])).tries == 0


AI_37 = {
    "payload": {"request": "[$optional_payload_request_]"},
    "ai-request-transformer": {"usage": {"prompt_token": 1, "total_tokens": 2, "completion_token": 1},
                               "meta": {"provider_name": "cohere", "request_model": "command"}},
    "ai-proxy": {"usage": {"prompt_token": 28, "total_tokens": 48, "completion_token": 20, "cost": 0.0038},
                 "meta": {"request_model": "command", "provider_name": "cohere", "response_model": "command-r"}},
}  # fmt: skip


@pytest.mark.parametrize(
    "logged, expected",
    [
        (AI_37, {"provider": "cohere", "model": "command-r", "prompt_tokens": 28, "completion_tokens": 20,
                 "total_tokens": 48, "cost": 0.0038}),
        # 3.10+: `ai.proxy`; Kong's own keys are plural; time_per_token in ms
        ({"proxy": {"meta": {"provider_name": "openai", "request_model": "gpt-4o", "response_model": "UNSPECIFIED"},
                    "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52, "cost": 0.00042,
                              "time_per_token": 30.5}}},
         {"provider": "openai", "model": "gpt-4o", "prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52,
          "cost": 0.00042, "time_per_token": 30.5}),
        # 3.6: no plugin level
        ({"meta": {"provider_name": "openai", "request_model": "gpt-3.5-turbo"}, "usage": {"total_tokens": 31}},
         {"provider": "openai", "model": "gpt-3.5-turbo", "total_tokens": 31}),
        # another AI plugin alone still counts
        ({"payload": {"request": "x"}, "ai-prompt-guard": {"meta": {"provider_name": "azure"}}}, {"provider": "azure"}),
        # numbers that are not sane are left out, never raised
        ({"proxy": {"usage": {"prompt_tokens": -1, "completion_tokens": 1e300, "total_tokens": "12", "cost": "nan",
                              "time_per_token": 1e300}}}, {"total_tokens": 12}),
        ({"proxy": {"usage": {"cost": -0.5}}}, None),
        ({"payload": {"request": "x"}}, None),
        ("ai", None),
        ({}, None),
    ],
)  # fmt: skip
def test_ai_usage_is_normalized(logged, expected):
    assert parse(kong(ai=logged)).ai == expected


# -- 3. stream sessions --------------------------------------------------------------------------------------------
def test_a_stream_record_is_a_stream_transaction():
    txn = parse(stream())
    assert (txn.kind, txn.source_format, txn.protocol, txn.event_id) == ("stream", "kong", "tcp", "fid-7")
    assert (txn.request_size, txn.response_size, txn.status, txn.port) == (100, 2000, 200, 9000)
    assert (txn.latency_request, txn.latency_kong, txn.started_at) == (1234.5, 2.0, 1726783900000)
    assert txn.details == {"upstream_received": 1990, "upstream_sent": 110}
    assert (txn.client_ip, txn.workspace, txn.workspace_name, txn.tries) == ("198.51.100.7", "ws-1", "default", 1)
    assert txn.upstream_tries == [{"ip": "10.0.0.1", "port": 6000, "balancer_latency": 0.0}]
    assert (txn.method, txn.path, txn.host, txn.tls) == ("", "", "", None)
    assert txn.service["name"] == "db" and txn.route["id"] == "r"


@pytest.mark.parametrize(
    "over, protocol",
    [
        ({"session": {"tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "client_verify": "NONE"}}},
         "tls"),  # Kong terminated TLS: whatever the upstream protocol
        ({"route": {"protocols": ["tcp", "tls"]}}, "tcp"),  # no TLS info: not TLS
        ({"route": {"protocols": ["udp"]}, "service": {"protocol": "udp"}}, "udp"),
        ({"route": {"protocols": ["tls_passthrough"]}, "service": {"protocol": "tcp"}}, "tls_passthrough"),
        ({"route": None, "service": {"protocol": "udp"}}, "udp"),
        ({"route": {"protocols": [["x"], {"y": 1}]}, "service": {"protocol": {"z": 1}}}, ""),
    ],
)  # fmt: skip
def test_stream_protocol_comes_from_tls_then_route_then_service(over, protocol):
    assert parse(stream(**over)).protocol == protocol


def test_stream_tls_and_missing_parts():
    record = stream(upstream="none", latencies=None, tries=None)
    record["session"] = {"tls": {"version": "TLSv1.2", "cipher": "C", "client_verify": "SUCCESS"}}
    txn = parse(record)
    assert txn.tls == {"version": "TLSv1.2", "cipher": "C", "client_verify": "SUCCESS"} and txn.protocol == "tls"
    assert (txn.details, txn.request_size, txn.status, txn.latency_request, txn.tries) == (None, None, None, None, None)


def test_stream_records_parse_with_format_kong_and_other_shapes_still_fail():
    assert parse(stream(), fmt="kong").kind == "stream"
    for bad in ({"session": "x"}, {"session": {}, "request": "x"}):
        with pytest.raises(ParseError) as info:
            parse(bad)
        assert info.value.reason == "unknown_format"


def test_a_stream_record_whose_numbers_are_absurd_is_a_bad_value():
    with pytest.raises(ParseError) as info:
        parse(stream(session={"received": 1e30}))
    assert info.value.reason == "bad_value" and "session.received" in info.value.detail


# -- 4. ids logged as objects ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "entity, user",
    [
        ({"consumer_id": {"uuid": "80f74eef-31b8-45d5-c525-ae532297ea8e"}, "id": "cred"}, "80f74eef-31b8-45d5-c525-ae532297ea8e"),
        ({"consumer_id": {"id": "c-9"}}, "c-9"),
        ({"consumer_id": {"other": "x"}, "id": {"uuid": "cred-uuid"}}, "cred-uuid"),  # the credential's own id
        ({"consumer_id": ["a", "b"], "id": "cred-2"}, "cred-2"),
    ],
)  # fmt: skip
def test_a_credential_id_given_as_an_object_is_the_id_inside_it(entity, user):
    txn = identify()(parse(kong(authenticated_entity=entity)))
    assert (txn.user_id, txn.user_source) == (user, "credential")
    assert "{" not in txn.user_id and "[" not in txn.user_id
    for value in txn.authenticated_entity.values():  # normalized for the sinks too
        assert type(value) is str


def test_an_id_object_without_an_id_is_skipped_not_shown():
    txn = identify()(parse(kong(authenticated_entity={"consumer_id": {"x": 1}}, consumer={"id": {"uuid": 5}},
                                headers={"x-consumer-username": "from-header"})))  # fmt: skip
    assert (txn.user_id, txn.user_source) == ("from-header", "header")
    assert txn.authenticated_entity is not None and "consumer_id" not in txn.authenticated_entity


def test_a_consumer_id_object():
    txn = identify()(parse(kong(consumer={"id": {"uuid": "c-uuid"}, "username": None})))
    assert (txn.user_id, txn.user_source, txn.consumer["id"]) == ("c-uuid", "consumer", "c-uuid")


# -- 5. records without a time --------------------------------------------------------------------------------------
def _undated(kind):
    if kind == "kong":
        record = kong()
        del record["started_at"]
        return record
    if kind == "stream":
        record = stream()
        del record["started_at"]
        return record
    return {"request_method": "GET", "request_uri": "/x", "status": "200"}  # nginx: no msec, no time


@pytest.mark.parametrize("kind", ["kong", "stream", "nginx"])
def test_an_undated_record_is_dated_when_read(kind):
    before = int(time.time() * 1000)
    txn = parse(_undated(kind))
    assert before <= txn.started_at <= int(time.time() * 1000)
    assert txn.started_at_estimated is True
    assert parse(kong()).started_at_estimated is False


def test_the_window_keeps_an_undated_record_and_places_a_dated_one():
    past_window = time_window(1_000_000_000_000, 1_000_000_000_001)  # a millisecond in 2001
    assert past_window(parse(_undated("kong"))) is not None
    assert past_window(parse(kong())) is None


# -- 6. times in seconds, ms, µs, ns --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "logged, ms",
    [
        (1700000000, 1700000000000),  # seconds (old Kong, public datasets)
        (1700000000.123, 1700000000123),
        ("1700000000.5", 1700000000500),
        (1700000000123, 1700000000123),  # milliseconds
        (1.700000000123e12, 1700000000123),
        (1700000000123456, 1700000000123),  # microseconds
        (1700000000123456789, 1700000000123),  # nanoseconds
    ],
)
def test_kong_started_at_in_any_unit_becomes_milliseconds(logged, ms):
    for record in (kong(started_at=logged), stream(started_at=logged)):
        txn = parse(record)
        assert (txn.started_at, txn.started_at_estimated) == (ms, False)


# -- 7. the Basic user ----------------------------------------------------------------------------------------------
def basic(user_pass: bytes) -> str:
    return "Basic " + base64.b64encode(user_pass).decode()


@pytest.mark.parametrize(
    "header, user",
    [
        (basic(b"alice:s3cret"), "alice"),
        (basic(b"bob:pa:ss:word"), "bob"),
        ("basic " + base64.b64encode(b"carol:x").decode(), "carol"),
        ([basic(b"dave:x"), basic(b"eve:y")], "dave"),
        (basic("jürgen:pw".encode()), "jürgen"),
        (basic("ren\xe9:pw".encode("latin-1")), "ren\xe9"),  # not UTF-8: Latin-1
        (basic(b"nocolon"), None),
        (basic(b":only-password"), None),
        ("Basic !!!not-base64!!!", None),
        ("Basic YWxpY2U6cw", None),  # cut short: bad padding
        ("REDACTED", None),
        ("Bearer a.b.c", None),
        ("", None),
    ],
)  # fmt: skip
def test_basic_user(header, user):
    assert basic_user(header) == user
    txn = identify()(parse(kong(headers={"authorization": header})))
    assert txn.basic_user == user


def test_basic_user_is_evidence_after_the_credential_and_before_consumer_headers():
    auth = basic(b"alice:s3cret")
    txn = identify()(parse(kong(headers={"authorization": auth, "x-consumer-username": "hdr"})))
    assert (txn.user_id, txn.user_source) == ("alice", "basic")
    txn = identify()(parse(kong(headers={"authorization": auth}, authenticated_entity={"id": "cred"})))
    assert (txn.user_id, txn.user_source, txn.basic_user) == ("cred", "credential", "alice")
    txn = identify()(parse(kong(headers={"authorization": auth}, jwt=_token({"sub": "jwt-user"}))))
    assert (txn.user_id, txn.user_source, txn.basic_user) == ("jwt-user", "jwt", "alice")


def test_the_password_never_leaves_and_nginx_lines_work_too():
    line = {"request_method": "GET", "request_uri": "/x", "status": "200", "msec": "1726783839.538",
            "http_authorization": basic(b"ngx-user:hunter2")}  # fmt: skip
    txn = run_chain(build_chain(), parse(line))
    assert (txn.user_id, txn.user_source, txn.basic_user) == ("ngx-user", "basic", "ngx-user")
    dumped = orjson.dumps(txn.to_dict()).decode()
    assert "hunter2" not in dumped and base64.b64encode(b"ngx-user:hunter2").decode() not in dumped


def _token(claims: dict) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"

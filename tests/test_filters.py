"""Filters (issue 17): rules by path, method, status, service, route, consumer, workspace and host, exclude or keep,
for some sinks or all; every drop counted as filtered under its rule's name, the accounting invariant holding.

The end-to-end test runs the real `kong-ship backfill` (worker processes, so the block path too) to a strict
fake Segment on loopback and to the stdout sink, from records whose seq says what each rule should do with them;
the expected counts are worked out here, independently of the processors."""

from __future__ import annotations

import re
import tomllib
from collections import Counter

import orjson
import pytest

import gen
from conftest import FAST, ship, ship_env, summary_rows
from fakes.segment import FakeSegment
from shipper.errors import ConfigError
from shipper.formats import Parser
from shipper.model import Position
from shipper.processors import Dropped, run_chain
from shipper.processors.filters import Filter, flag_filters, parse_statuses
from shipper.transform import FILTERED, NormalizedLines, Transformer


def txn(seq: int = 1, **kw):
    line = gen.kong_line(gen.kong_record(seq, **kw))
    return Parser("kong").parse(line, Position("f", 0, len(line)), None)


# -- the rules ---------------------------------------------------------------------------------------------------
def test_status_specs_are_codes_classes_and_ranges():
    assert parse_statuses("404") == {404} and parse_statuses(404) == {404}
    assert parse_statuses("5xx") == set(range(500, 600)) and parse_statuses("2XX") == set(range(200, 300))
    assert parse_statuses("500-504") == {500, 501, 502, 503, 504}
    for bad in ("5x", "600-500", "99", "1000", "abc", "0xx", ""):
        with pytest.raises(ValueError):
            parse_statuses(bad)


def test_each_matcher_and_the_and_of_them():
    health = txn(1, path="/health", status=200, method="GET", consumer="alice")
    orders = txn(2, path="/orders/7", status=503, method="POST")
    assert Filter("a", paths=["/health"]).matches(health) and not Filter("a", paths=["/health"]).matches(orders)
    assert Filter("a", paths=["/orders/*"]).matches(orders)
    assert not Filter("a", paths=["/HEALTH"]).matches(health)  # paths are case-sensitive, as URLs are
    assert Filter("a", methods=["post"]).matches(orders) and not Filter("a", methods=["POST"]).matches(health)
    assert Filter("a", statuses=["5xx"]).matches(orders) and Filter("a", statuses=["500-503"]).matches(orders)
    assert not Filter("a", statuses=["500-502", 504]).matches(orders)
    # services and routes by name or id; consumers by username or id; workspaces by id or name; hosts by glob
    assert Filter("a", services=["orders-api"]).matches(health)
    assert Filter("a", services=[gen.SERVICE["id"]]).matches(health)
    assert not Filter("a", services=["billing"]).matches(health)
    assert Filter("a", routes=["orders"]).matches(health) and Filter("a", routes=[gen.ROUTE["id"]]).matches(health)
    assert Filter("a", consumers=["alice"]).matches(health) and not Filter("a", consumers=["alice"]).matches(orders)
    assert Filter("a", workspaces=["default"]).matches(health) and Filter("a", workspaces=[gen.WORKSPACE]).matches(health)
    assert Filter("a", hosts=["*.EXAMPLE.com"]).matches(health) and not Filter("a", hosts=["*.internal"]).matches(health)
    # every matcher given must hold
    assert Filter("a", paths=["/health"], statuses=["2xx"]).matches(health)
    assert not Filter("a", paths=["/health"], statuses=["5xx"]).matches(health)


def test_exclude_drops_a_match_and_keep_drops_the_rest_each_with_its_name():
    health, orders = txn(1, path="/health"), txn(2, path="/orders/1")
    exclude = Filter("probes", paths=["/health", "/metrics*"])
    keep = Filter("orders-only", "keep", paths=["/orders/*"])
    assert exclude(orders) is orders and keep(orders) is orders
    with pytest.raises(Dropped) as dropped:
        exclude(health)
    assert dropped.value.reason == "filter:probes"
    with pytest.raises(Dropped) as dropped:
        keep(health)
    assert dropped.value.reason == "filter:orders-only"
    assert repr(exclude) == "filter[probes](exclude paths=['/health', '/metrics*'])"
    assert repr(Filter("x", "keep", statuses=["5xx"], sinks=["segment"])) == (
        "filter[x](keep statuses=['5xx'], sinks=['segment'])"
    )


def test_flags_make_rules_named_after_the_flag_and_sinks_select_lanes():
    rules = flag_filters(["/health", "/metrics*"], ["5xx", "404"])
    assert [r.reason for r in rules] == ["filter:exclude-path", "filter:exclude-status"]
    assert flag_filters([], []) == []
    only = Filter("s", paths=["/x"], sinks=["segment"])
    assert only.applies_to("segment") and only.applies_to("segment@team-a") and not only.applies_to("moesif")
    assert only.applies_to(None)  # check-config shows every rule


def test_the_transformer_counts_a_named_drop_as_filtered_with_its_reason():
    transform = Transformer(Parser("kong"), [Filter("probes", paths=["/health"])], NormalizedLines())
    line = gen.kong_line(gen.kong_record(1, path="/health")).rstrip(b"\n")
    assert transform("f", line, 0, len(line)) == (FILTERED, "filter:probes", False)
    kept = gen.kong_line(gen.kong_record(2, path="/orders/1")).rstrip(b"\n")
    assert transform("f", kept, 0, len(kept))[0] != FILTERED
    assert run_chain([Filter("probes", paths=["/nothing"])], txn(3)) is not None


# -- the configuration file --------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, message", [
    ('[[filter]]\nname = "a"\npaths = ["/x"]\ncolour = "red"\n', "filter[1]: colour: unknown key"),
    ('[[filter]]\nname = "a"\npaths = ["/x"]\n[[filter]]\nname = "b"\nstatuses = ["6xy"]\n',
     "filter[2]: statuses: '6xy' is not a status"),
    ('[[filter]]\nname = "a"\naction = "drop"\npaths = ["/x"]\n', "filter[1]: action 'drop'"),
    ('[[filter]]\npaths = ["/x"]\n', "filter[1]: name: missing"),
    ('[[filter]]\nname = "a"\n', "filter[1]: a filter needs at least one of"),
    ('[[filter]]\nname = "a"\npaths = "/x"\n', "filter[1]: paths: expected a list"),
    ('[[filter]]\nname = "a"\npaths = ["/x"]\nsinks = ["segmnet"]\n', "filter[1]: sinks: unknown sink 'segmnet'"),
    ("[filter]\nname = 'a'\n", "filter: expected tables like [[filter]]"),
    ("[[filters]]\nname = 'a'\n", "[filters]: unknown section (known: input, masks, delivery, state, log, "
     "metrics, sampling, sinks, route, routing, filter)"),
    ("[sampling]\nrate = 2\n", "sampling.rate"),
    ("[sampling]\nrates = 0.1\n", "sampling.rates: unknown key"),
    ('[[sampling.rule]]\nname = "a"\nrate = 0.1\n', "sampling.rule[1]: a sampling rule needs services"),
    ('[[sampling.rule]]\nname = "a"\nrate = 7\nservices = ["x"]\n', "sampling.rule[1]: rate:"),
    ('[[sampling.rule]]\nrate = 0.5\nservices = ["x"]\n', "sampling.rule[1]: name: missing"),
])
def test_config_errors_name_the_file_and_the_key(tmp_path, body, message):
    from shipper.cli import cli
    from shipper.service.config import default_map

    path = str(tmp_path / "kong-ship.toml")
    with pytest.raises(ConfigError) as error:
        default_map(tomllib.loads(body), path, cli.commands["tail"])
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value), str(error.value)


def test_check_config_shows_every_rule_in_the_chain_and_prints_them_back_as_filter_tables(tmp_path):
    config = tmp_path / "kong-ship.toml"
    config.write_text('[[filter]]\nname = "probes"\npaths = ["/health"]\n'
                      '[[filter]]\nname = "mine"\naction = "keep"\nconsumers = ["alice"]\nsinks = ["segment"]\n'
                      '[sampling]\nrate = 0.5\n')
    (tmp_path / "kong.json").write_text("")
    env = ship_env(SEGMENT_WRITE_KEY="k", KONG_SHIP_STATE_DIR=str(tmp_path / "state"))
    result = ship("check-config", "--config", str(config), str(tmp_path / "kong.json"), "--sink", "segment",
                  "--exclude-status", "5xx", env=env)
    assert result.returncode == 0, result.stderr
    chain = next(line for line in result.stderr.decode().splitlines() if line.startswith("processors: "))
    assert chain.startswith("processors: filter[exclude-status](exclude statuses=['5xx']) → filter[probes](exclude "
                            "paths=['/health']) → filter[mine](keep consumers=['alice'], sinks=['segment']) → "
                            "sample(rate=0.5) → Identify("), chain
    printed = tomllib.loads(result.stdout.decode())
    assert [f["name"] for f in printed["filter"]] == ["exclude-status", "probes", "mine"]
    assert printed["sampling"]["rate"] == 0.5
    again = tmp_path / "again.toml"
    again.write_bytes(result.stdout)
    second = ship("check-config", "--config", str(again), str(tmp_path / "kong.json"), env=env)
    assert second.returncode == 0 and chain in second.stderr.decode(), second.stderr


# -- end to end ----------------------------------------------------------------------------------------------------
PATHS = ["/health", "/orders/7", "/metrics/cpu", "/Health", "/users/3"]
STATUSES = [200, 404, 503, 201]
CONFIG = """
[[filter]]
name = "metrics"
paths = ["/metrics*"]

[[filter]]
name = "orders-api-only"
action = "keep"
services = ["orders-api"]

[[filter]]
name = "no-404-to-segment"
statuses = [404]
sinks = ["segment"]

[[filter]]
name = "no-options"
methods = ["OPTIONS"]
"""


def record(seq: int) -> dict:
    extra = {"service": {**gen.SERVICE, "name": "billing", "id": "b1"}} if seq % 7 == 0 else None
    return gen.kong_record(seq, path=PATHS[seq % 5], status=STATUSES[seq // 5 % 4],
                           method="OPTIONS" if seq % 11 == 0 else "GET", extra=extra)


def expected(seqs, sink: str) -> tuple[set[int], Counter]:
    """What each lane should ship, and its drops by rule: the rules in chain order (flags, then the file's)."""
    kept, dropped = set(), Counter()
    for seq in seqs:
        rec = record(seq)
        path, status = rec["request"]["uri"].split("?")[0], rec["response"]["status"]
        rules = [
            ("filter:exclude-path", path == "/health"),
            ("filter:exclude-status", 500 <= status < 600),
            ("filter:metrics", path.startswith("/metrics")),
            ("filter:orders-api-only", rec["service"]["name"] != "orders-api"),
            ("filter:no-404-to-segment", sink == "segment" and status == 404),
            ("filter:no-options", rec["request"]["method"] == "OPTIONS"),
        ]
        reason = next((name for name, drops in rules if drops), None)
        if reason is None:
            kept.add(seq)
        else:
            dropped[reason] += 1
    return kept, dropped


def reasons_said(stderr: str) -> dict[str, dict[str, int]]:
    """The summary's `filtered (SINK): N reason, ...` lines."""
    out = {}
    for sink, said in re.findall(r"^filtered \((\w+)\): (.*)$", stderr, re.MULTILINE):
        out[sink] = {reason: int(n.replace(",", "")) for n, reason in (part.split(" ") for part in said.split(", "))}
    return out


def test_rules_drop_exactly_what_they_say_per_sink_counted_by_name(tmp_path):
    seqs = range(1, 601)
    log = tmp_path / "kong.json"
    with open(log, "wb") as handle:
        handle.writelines(gen.kong_line(record(seq)) for seq in seqs)
        handle.write(b"\n")  # a blank line: counted as blank, not filtered
    config = tmp_path / "kong-ship.toml"
    config.write_text(CONFIG)
    with FakeSegment() as segment:
        result = ship("backfill", str(log), "--config", str(config), "--sink", "segment", "--sink", "stdout",
                      "--endpoint", f"segment={segment.url}", "--state-dir", str(tmp_path / "state"), "--workers", "2",
                      "--exclude-path", "/health", "--exclude-status", "5xx", *FAST,
                      env=ship_env(SEGMENT_WRITE_KEY="test-key"))
        assert result.returncode == 0, result.stderr
        to_segment = Counter(gen.seq_of_segment_message(m) for m in segment.messages)
    to_stdout = Counter(gen.seq_of_segment_message(orjson.loads(line)) for line in result.stdout.splitlines())
    want_segment, dropped_segment = expected(seqs, "segment")
    want_stdout, dropped_stdout = expected(seqs, "stdout")
    assert to_segment == Counter(want_segment) and to_stdout == Counter(want_stdout)
    assert want_stdout - want_segment and not want_segment - want_stdout  # the 404s: stdout's, not Segment's
    # every rule did something: no rule's count is zero by accident of the data
    assert set(dropped_segment) == {"filter:exclude-path", "filter:exclude-status", "filter:metrics",
                                    "filter:orders-api-only", "filter:no-404-to-segment", "filter:no-options"}
    stderr = result.stderr.decode()
    assert reasons_said(stderr) == {"segment": dict(dropped_segment), "stdout": dict(dropped_stdout)}, stderr
    rows = summary_rows(stderr)
    for sink, dropped, shipped in (("segment", dropped_segment, want_segment), ("stdout", dropped_stdout, want_stdout)):
        row = rows[sink]
        assert row["read"] == len(seqs) + 1 and row["blank"] == 1
        assert row["filtered"] == sum(dropped.values()) and row["shipped"] == len(shipped)
        assert row["read"] == row["shipped"] + row["dead-lettered"] + row["filtered"] + row["rejected"] + \
            row["skipped"] + row["blank"]


def test_the_json_summary_says_the_reasons(tmp_path):
    log = tmp_path / "kong.json"
    with open(log, "wb") as handle:
        handle.writelines(gen.kong_line(gen.kong_record(seq, path="/health")) for seq in range(1, 41))
        handle.writelines(gen.kong_line(gen.kong_record(seq, path="/orders/1")) for seq in range(41, 61))
    result = ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "state"), "--workers", "0",
                  "--exclude-path", "/health", "--log-format", "json", *FAST)
    assert result.returncode == 0, result.stderr
    summary = next(s for s in map(orjson.loads, result.stderr.splitlines()) if s.get("message") == "summary")
    assert summary["filtered_by_reason"] == {"stdout": {"filter:exclude-path": 40}}
    assert summary["sinks"][0]["filtered"] == 40 and summary["sinks"][0]["shipped"] == 20


def test_the_metric_the_status_line_and_kong_ship_status_say_the_reasons(tmp_path, shippers):
    import httpx

    from conftest import FAST_FOLLOW, wait_until
    from test_service_metrics import free_port, scrape

    log = tmp_path / "kong.json"
    with open(log, "wb") as handle:
        handle.writelines(gen.kong_line(gen.kong_record(seq, path="/health")) for seq in range(1, 13))
        handle.writelines(gen.kong_line(gen.kong_record(seq, path="/orders/1", status=404)) for seq in range(13, 18))
        handle.writelines(gen.kong_line(gen.kong_record(seq, path="/orders/1", status=200)) for seq in range(18, 21))
    port = free_port()
    state = tmp_path / "state"
    run = ["--sink", "stdout", "--state-dir", str(state), "--exclude-path", "/health", "--exclude-status", "404",
           *FAST_FOLLOW]
    proc = shippers("tail", str(log), *run, "--metrics-addr", f"127.0.0.1:{port}")
    path_metric = 'kong_ship_events_filtered_total{reason="filter:exclude-path",sink="stdout"}'
    status_metric = 'kong_ship_events_filtered_total{reason="filter:exclude-status",sink="stdout"}'

    def scraped():
        try:
            values = scrape(port)
        except httpx.HTTPError:
            return None
        return values if values.get(status_metric) == 5 else None

    values = wait_until(scraped, timeout=15)
    assert values and values[path_metric] == 12, values
    code, out, err = proc.stop()
    assert code == 0, err
    assert len(out.splitlines()) == 3
    assert "17 filtered (filter:exclude-path 12, filter:exclude-status 5)" in err, err  # the status line at the end
    said = ship("status", "--state-dir", str(state))
    assert said.returncode == 0
    assert "stdout: 17 filtered (filter:exclude-path 12, filter:exclude-status 5)" in said.stdout.decode()
    # over the runs: a second run adds its own
    with open(log, "ab") as handle:
        handle.writelines(gen.kong_line(gen.kong_record(seq, path="/health")) for seq in range(21, 24))
    result = ship("backfill", str(log), *run[:-len(FAST_FOLLOW)], *FAST)
    assert result.returncode == 0, result.stderr
    said = ship("status", "--state-dir", str(state), "--json")
    assert orjson.loads(said.stdout)["filtered"] == {"stdout": {"filter:exclude-path": 15, "filter:exclude-status": 5}}

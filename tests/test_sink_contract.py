"""The sink contract (`sinks.base.Sink`) and each sink's configuration: every sink as the CLI builds it has the
attributes the lane and sender use, with the right types; every configuration field has exactly one flag whose
click default is the field's; the README's option tables name the flags, keys and defaults the code has."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import httpx
import pytest

from shipper.sinks import SINK_NAMES, sink_class, sink_module
from shipper.sinks.base import OptionList, Sink, SinkLimits
from shipper.sinks.config import flag_of, option_fields, option_name

README = Path(__file__).resolve().parent.parent / "README.md"
CREDENTIALS = {
    "SEGMENT_WRITE_KEY": "wk", "MOESIF_APPLICATION_ID": "app", "RUNSCOPE_ACCESS_TOKEN": "tok",
}


@pytest.fixture
def built(monkeypatch):
    """Every sink as `from_options` builds it from click's defaults (what the CLI hands over)."""
    for env, value in CREDENTIALS.items():
        monkeypatch.setenv(env, value)
    monkeypatch.delenv("KONG_SHIP_WEBHOOK_SECRET", raising=False)

    def build(name: str) -> Sink:
        opts = {click.Option(decls, **kwargs).name: click.Option(decls, **kwargs).default
                for decls, kwargs in sink_class(name).OPTIONS}
        if name == "runscope":
            opts["runscope_bucket_key"] = "bucket"
        return sink_class(name).from_options(opts, "http://127.0.0.1:9/hook")

    return build


def declared(name: str) -> list[dataclasses.Field]:
    """The configuration fields behind the sink's options (stdout declares Segment's event options only)."""
    flags = {decls[0] for decls, _ in sink_class(name).OPTIONS}
    return [f for f in option_fields(sink_class(name).Config) if flag_of(f) in flags]


@pytest.mark.parametrize("name", SINK_NAMES)
def test_every_sink_satisfies_the_contract(name, built):
    sink = built(name)
    assert isinstance(sink, Sink)
    assert sink.name == name and isinstance(type(sink).parallel_safe, bool) and isinstance(sink.url, str)
    limits = sink.limits
    assert isinstance(limits, SinkLimits)
    assert isinstance(limits.max_batch_events, int) and limits.max_batch_events >= 1
    assert isinstance(limits.max_batch_bytes, int) and limits.max_batch_bytes > limits.envelope_bytes >= 0
    assert limits.default_batch_events is None or 1 <= limits.default_batch_events <= limits.max_batch_events
    assert limits.queue_events is None or limits.queue_events >= 1
    assert limits.http_timeout is None or isinstance(limits.http_timeout, httpx.Timeout)
    assert isinstance(limits.keepalive_expiry, float) and limits.keepalive_expiry > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_batch_events = 1  # type: ignore[misc]
    assert sink_module(name).OPTIONS is type(sink).OPTIONS  # the CLI reads the module's, the same list
    transport = sink.transport()
    assert transport is None or isinstance(transport, httpx.BaseTransport)


@pytest.mark.parametrize("name", SINK_NAMES)
def test_every_config_field_has_exactly_one_flag_with_its_default(name):
    options: OptionList = sink_class(name).OPTIONS
    fields = declared(name)
    assert [flag_of(f) for f in fields] == [decls[0] for decls, _ in options]  # one each, nothing else
    assert len({option_name(f) for f in fields}) == len(fields)
    config = sink_class(name).Config
    assert dataclasses.fields(config) and config.__dataclass_params__.frozen
    for field, (decls, kwargs) in zip(fields, options):
        assert decls == (flag_of(field),)
        option = click.Option(decls, **kwargs)
        assert option.name == option_name(field)
        assert option.default == field.default, f"{decls[0]}: click default {option.default!r}, field {field.default!r}"
        assert option.help, f"{decls[0]} has no help"
        # The TOML key under [sinks.NAME] is the option's name without the sink's prefix: the field's name.
        assert option.name.removeprefix(f"{name}_") == field.name


def test_from_options_fills_every_field_and_keeps_the_defaults():
    config_type = sink_class("moesif").Config
    given = {option_name(f): f.default for f in option_fields(config_type)}
    assert sink_class("moesif").Config() == config_type(**{f.name: f.default for f in option_fields(config_type)})
    from shipper.sinks.config import config_from_options

    assert config_from_options(config_type, {}) == config_type()
    assert config_from_options(config_type, given) == config_type()
    changed = config_from_options(config_type, {"moesif_event_queue_size": 7, "moesif_request_body_masks": ["a,b"]})
    assert changed.event_queue_size == 7 and changed.request_body_masks == ("a,b",)
    assert config_from_options(config_type, {"moesif_api_version": ""}).api_version == "1.0"  # blank: the default


# -- the README's option tables ------------------------------------------------------------------------------------
def readme_tables() -> dict[str, list[list[str]]]:
    """Each table whose header has a "config key (`[sinks.NAME]`)" column, by sink: its rows as cells."""
    tables: dict[str, list[list[str]]] = {}
    lines = README.read_text().splitlines()
    for i, line in enumerate(lines):
        found = re.search(r"config key \(`\[sinks\.(\w+)\]`\)", line)
        if not (line.startswith("|") and found):
            continue
        header = [cell.strip() for cell in line.strip("|").split("|")]
        rows = tables.setdefault(found.group(1), [])
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            cells = [cell.strip() for cell in row.strip("|").split("|")]
            rows.append(cells[len(cells) - len(header):])  # the flag, key and default columns end each row
    return tables


def documented(default_cell: str, value: object) -> bool:
    """Whether the README's default cell states `value` (before any explanation in parentheses)."""
    head = default_cell.split(" (")[0].strip()
    if value is None or value == ():
        return head.startswith("—")
    if isinstance(value, bool):
        return head == str(value).lower()
    if isinstance(value, int):
        return head == str(value)
    return head == f"`{value}`"


@pytest.mark.parametrize("name", ["moesif", "runscope", "webhook"])
def test_the_readme_option_table_names_the_flags_keys_and_defaults_of_the_config(name):
    rows = readme_tables()[name]
    by_flag = {flag_of(f): f for f in declared(name)}
    seen = set()
    for flag_cell, key_cell, default_cell in (row[-3:] for row in rows):
        flags = re.findall(rf"--{name}-[a-z-]+", flag_cell)
        for flag in flags:
            assert flag in by_flag, f"README names {flag}, which the {name} sink does not have"
        if not flags or not key_cell:
            continue  # a core option (--endpoint, --batch-size), a plugin option with no equivalent, or an alias
        (flag,) = flags
        field = by_flag[flag]
        assert key_cell.split(" ")[0] == f"`{field.name}`", f"{flag}: README key {key_cell}, config field {field.name}"
        assert documented(default_cell, field.default), f"{flag}: README default {default_cell!r}, code {field.default!r}"
        seen.add(flag)
    assert seen == set(by_flag), f"not in the README's [sinks.{name}] table: {sorted(set(by_flag) - seen)}"


# -- Moesif's /v1/config: on its own thread, never the reader's ---------------------------------------------------
def test_moesif_fetches_its_config_on_a_timer_thread_with_the_senders_client():
    import threading

    import orjson

    from shipper.model import Transaction
    from shipper.sinks.base import EventSkipped
    from shipper.sinks.moesif import MoesifSink

    fetched_on: list[str] = []
    config = {"sample_rate": 0}

    def answer(request: httpx.Request) -> httpx.Response:
        fetched_on.append(threading.current_thread().name)
        return httpx.Response(200, json=config, headers={"x-moesif-config-etag": f"v{len(fetched_on)}"})

    sink = MoesifSink("app", "http://moesif.test")
    txn = Transaction(event_id="e1", source_format="kong", method="GET", host="h", path="/", raw_path="/")
    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        sink.use_client(client)
        with pytest.raises(EventSkipped):  # the reader waited for the first fetch, and did not make it
            sink.encode(txn)
        config["sample_rate"] = 100
        sink.sampler.config_changed("v-new")  # as a batch's answer would: the next event uses the new rules
        assert orjson.loads(sink.encode(txn))["weight"] == 1
    assert fetched_on == ["moesif-config", "moesif-config"]

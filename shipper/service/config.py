"""The TOML configuration file: everything the flags hold, for services.

It is turned into click's `default_map`, which gives the precedence for free: flags > environment > file >
defaults. The mapping from file keys to options is a table, and every value is checked by the option's own
click type (`type.convert`, the same check a flag gets), so a new option needs no new code here — only, for a
new section key, a line in `SECTIONS`.
Unknown keys and wrong types are errors naming the file, the key and what was expected.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import click

from shipper.errors import ConfigError
from shipper.sinks import SINK_NAMES, sink_class

SYSTEM_CONFIG = "/etc/kong-ship/kong-ship.toml"

# section -> {file key: option name}
SECTIONS: dict[str, dict[str, str]] = {
    "input": {
        "paths": "paths",
        "format": "fmt",
        "nginx_fields": "nginx_field",
        "jwt_from": "jwt_from",
        "jwt_claim": "jwt_claim",
        "max_line_bytes": "max_line_bytes",
        "start_at": "start_at",
        "ignore_older": "ignore_older",
        "poll_interval": "poll_interval",
        "rotate_wait": "rotate_wait",
    },
    "masks": {"headers": "mask_header", "query": "mask_query", "body_keys": "mask_body_key",
              "ship_raw_bodies": "ship_raw_bodies"},
    "delivery": {
        "batch_size": "batch_size",
        "flush_interval": "flush_interval",
        "queue_size": "queue_size",
        "concurrency": "concurrency",
        "shutdown_timeout": "shutdown_timeout",
        "retry_initial_delay": "retry_initial_delay",
        "retry_max_delay": "retry_max_delay",
        "give_up_after": "give_up_after",
        "timeout": "timeout",
        "workers": "workers",
        "max_rate": "max_rate",
        "ca_file": "ca_file",
    },
    "state": {"dir": "state_dir", "dead_letter": "dead_letter"},
    "log": {"level": "log_level", "format": "log_format"},
    "metrics": {"addr": "metrics_addr"},
    "sampling": {"rate": "sample_rate", "rule": "sample_rule"},  # rule: [[sampling.rule]] tables
}
# Options given as lists of tables ([[filter]] at the top level, [[sampling.rule]]): each table is judged by the
# option's type (options.RuleType), and an error names the table by its place, `filter[2]`.
TABLES = frozenset({"filter_rule", "sample_rule"})


def find_config(argv: list[str], environ: dict[str, str] | None = None) -> str | None:
    """--config from the command line, else KONG_SHIP_CONFIG, else the system file if it exists."""
    env = os.environ if environ is None else environ
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            continue
        if not path:
            raise ConfigError("--config: expected a file name, got an empty one")
        return path
    if env.get("KONG_SHIP_CONFIG"):
        return env["KONG_SHIP_CONFIG"]
    return SYSTEM_CONFIG if os.path.exists(SYSTEM_CONFIG) else None


def load(path: str) -> dict[str, Any]:
    import tomllib  # here, not at the top: every command start imports this module, most runs have no file

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (a TOML file is UTF-8): byte 0x{exc.object[exc.start]:02x} "
                          f"at offset {exc.start}") from None


def sink_option_names(sink: str) -> set[str]:
    names = set()
    for decls, _ in sink_class(sink).OPTIONS:
        flag = decls[0].split("/")[0]
        names.add(flag.lstrip("-").replace("-", "_"))
    return names


def _expected(param: click.Parameter) -> str:
    kind = param.type
    if param.multiple or param.nargs == -1:
        return "a list of strings"
    if getattr(param, "is_flag", False):
        return "true or false"
    if isinstance(kind, click.Choice):
        return "one of " + ", ".join(repr(c) for c in kind.choices)
    if isinstance(kind, (click.types.IntParamType, click.IntRange)):
        return "an integer"
    if isinstance(kind, (click.types.FloatParamType, click.FloatRange)):
        return "a number"
    return "a string"


def _check(path: str, where: str, param: click.Parameter, value: Any) -> Any:
    kind = param.type
    ok: bool
    if param.multiple or param.nargs == -1:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif getattr(param, "is_flag", False):
        ok = isinstance(value, bool)
    elif isinstance(kind, (click.types.IntParamType, click.IntRange)):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(kind, (click.types.FloatParamType, click.FloatRange)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(kind, click.Choice):
        ok = isinstance(value, str) and value in kind.choices
    else:
        ok = isinstance(value, (str, int)) and not isinstance(value, bool)
        value = str(value) if ok else value
    if not ok:
        raise ConfigError(f"{path}: {where}: expected {_expected(param)}, got {value!r}")
    # Then the option's own type judges it, as it judges a flag (a range, `auto` or a number of workers, an
    # http URL, FIELD=KEY). Paths are left to the run: whether a file exists is a question for then, not now.
    if not isinstance(kind, click.Path):
        for item in value if isinstance(value, list) else [value]:
            try:
                kind.convert(item, param, None)
            except click.BadParameter as exc:
                raise ConfigError(f"{path}: {where}: {exc.format_message()}") from None
            except ConfigError as exc:  # kong-ship's own types word it for the flag: the key is named first
                raise ConfigError(f"{path}: {where}: {exc}") from None
    return value  # as written: click converts the defaults it is given (check-config prints them as given)


def default_map(data: dict[str, Any], path: str, command: click.Command) -> dict[str, Any]:
    """The file's values as defaults for `command`'s parameters (keys the command does not take are left
    out: `parse` has no sinks)."""
    params = {p.name: p for p in command.params}
    out: dict[str, Any] = {}

    def put(where: str, name: str, value: Any) -> None:
        param = params.get(name)
        if param is None:
            return
        if name == "nginx_field" and isinstance(value, dict):
            value = [f"{k}={v}" for k, v in value.items()]
        if name in TABLES:
            out[name] = _tables(path, where, param, value)
            return
        out[name] = _check(path, where, param, value)

    for section, table in data.items():
        if section == "filter":  # [[filter]] tables (processors/filters.py)
            put("filter", "filter_rule", table)
            continue
        if section in ("route", "routing"):
            # [[route]] and [routing]: checked and built by shipper/routing.py when a shipping command starts
            if "sinks" in params:
                out.setdefault("__routing__", {"path": path})[section] = table
            continue
        if section == "sinks":
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: sinks: expected tables like [sinks.segment]")
            sinks, endpoints = [], []
            for sink, options in table.items():
                if sink not in SINK_NAMES:
                    raise ConfigError(f"{path}: sinks.{sink}: unknown sink (known: {', '.join(SINK_NAMES)})")
                if not isinstance(options, dict):
                    raise ConfigError(f"{path}: sinks.{sink}: expected a table")
                sinks.append(sink)
                names = sink_option_names(sink)
                for key, value in options.items():
                    where = f"sinks.{sink}.{key}"
                    if key == "endpoint":
                        if not isinstance(value, str):
                            raise ConfigError(f"{path}: {where}: expected a string (a URL)")
                        if "endpoint" in params:
                            _check(path, where, params["endpoint"], [f"{sink}={value}"])
                        endpoints.append(f"{sink}={value}")
                        continue
                    name = next((n for n in (f"{sink}_{key}", key) if n in names), None)
                    if name is None:
                        known = sorted({"endpoint", *(n.removeprefix(f"{sink}_") for n in names)})
                        raise ConfigError(f"{path}: {where}: unknown key (known: {', '.join(known)})")
                    put(where, name, value)
            if "sinks" in params:
                out["sinks"] = sinks
            if endpoints and "endpoint" in params:
                out["endpoint"] = endpoints
            continue
        keys = SECTIONS.get(section)
        if keys is None:
            sections = ", ".join([*SECTIONS, "sinks", "route", "routing", "filter"])  # `known` is a list above
            raise ConfigError(f"{path}: [{section}]: unknown section (known: {sections})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}]: expected a table")
        for key, value in table.items():
            name = keys.get(key)
            if name is None:
                raise ConfigError(f"{path}: {section}.{key}: unknown key (known: {', '.join(keys)})")
            put(f"{section}.{key}", name, value)
    return out


def check_sections(data: dict[str, Any], path: str) -> None:
    """The file's names (sections, keys, sinks) checked whichever command runs, before any: `default_map` for a
    command without parameters checks them and takes no value."""
    default_map(data, path, click.Command("kong-ship"))


def _tables(path: str, where: str, param: click.Parameter, value: Any) -> list[dict[str, Any]]:
    """A list of tables, each judged by the option's type; kept as written (click converts them)."""
    if not isinstance(value, list):
        raise ConfigError(f"{path}: {where}: expected tables like [[{where}]]")
    for i, table in enumerate(value, 1):
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {where}[{i}]: expected a table like [[{where}]]")
        try:
            param.type.convert(table, param, None)
        except ConfigError as exc:  # worded for the flag: `--filter-rule: reason`; the reason is what counts
            raise ConfigError(f"{path}: {where}[{i}]: {str(exc).partition(': ')[2]}") from None
    return value


# -- the effective configuration, as a TOML file (check-config) ----------------------------------------------
REDACTED = "(redacted)"
# The credential each sink reads from a file option or, without one, from the environment.
CREDENTIALS = {
    "segment": ("segment_write_key_file", "SEGMENT_WRITE_KEY", "write key"),
    "moesif": ("moesif_application_id_file", "MOESIF_APPLICATION_ID", "application id"),
    "runscope": ("runscope_access_token_file", "RUNSCOPE_ACCESS_TOKEN", "access token"),
    "webhook": ("webhook_secret_file", "KONG_SHIP_WEBHOOK_SECRET", "signing secret"),
}
_PATHS = {"paths", "state_dir", "dead_letter", "ca_file"}  # resolved to absolute paths, like every *_file option


def toml_value(value: Any) -> str:
    """One TOML value: strings, numbers, booleans, lists of them and flat tables (all check-config needs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # 0.25, 10.0, 1e-05: TOML reads Python's float repr as it is
    if isinstance(value, str):
        # JSON's string escapes are TOML's (basic strings); DEL is the one control character JSON leaves raw.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if hasattr(value, "to_table"):  # a filter or sampling rule (processors/filters.py, sampling.py)
        return toml_value(value.to_table())
    raise TypeError(f"no TOML form for {value!r}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_value(key)


def effective_toml(kw: dict[str, Any], paths: list[str], resolved: dict[str, Any], sinks: list[str],
                   endpoints: dict[str, str | None], default_urls: dict[str, str | None]) -> str:
    """The configuration a command runs with, as a file in the documented keys (examples/kong-ship.toml):
    saved, it is a valid --config that gives the same effective configuration. `resolved` holds the values the
    run computed from the options (absolute paths, the default JWT places, the dead-letter file); secrets
    (credentials, webhook header values) never appear, only where they come from."""
    lines = [
        "# kong-ship: the effective configuration (file, environment and flags; secrets are not shown).",
        "# Save it and run with --config FILE: it gives this same configuration.",
    ]

    def put(key: str, name: str, value: Any, note: str = "") -> None:
        if value is None:
            lines.append(f"# {key} = (not set{': ' + note if note else ''})")
            return
        if name in _PATHS or name.endswith("_file"):
            value = [os.path.abspath(v) for v in value] if isinstance(value, (list, tuple)) else os.path.abspath(value)
        lines.append(f"{key} = {toml_value(value)}")

    notes = {"batch_size": "the vendor's maximum", "max_rate": "no limit", "metrics_addr": "no metrics endpoint",
             "ca_file": "the default CAs only"}
    for section, keys in SECTIONS.items():
        entries = [(key, name) for key, name in keys.items() if name in kw or name == "paths"]
        if not entries:
            continue
        lines += ["", f"[{section}]"]
        for key, name in entries:
            value = resolved[name] if name in resolved else kw.get(name)
            if isinstance(value, tuple):
                value = list(value)
            put(key, name, value, notes.get(name, ""))
    for sink in sinks:
        lines += ["", f"[sinks.{sink}]"]
        if endpoints.get(sink):
            lines.append(f"endpoint = {toml_value(endpoints[sink])}")
        elif default_urls.get(sink):
            lines.append(f"# endpoint = (not set: the vendor's default; requests go to {default_urls[sink]})")
        credential = CREDENTIALS.get(sink)
        if credential and not kw.get(credential[0]):
            lines.append(f"# the {credential[2]}: from ${credential[1]}, if set (not shown)")
        for decls, _ in sink_class(sink).OPTIONS:
            name = decls[0].split("/")[0].lstrip("-").replace("-", "_")
            key = name.removeprefix(f"{sink}_")
            value = kw.get(name)
            if name == "webhook_header" and value:
                # Header values are often credentials (`Authorization: Bearer …`): the names are enough to check.
                value = [f"{h.partition(':')[0].strip()}: {REDACTED}" for h in value]
            if credential and name == credential[0] and value is None:
                continue  # said above
            put(key, name, list(value) if isinstance(value, tuple) else value)
    # The filters last, as [[filter]] tables: the flags' rules (--exclude-path, --exclude-status) too, by their names.
    from shipper.processors.filters import flag_filters

    for rule in [*flag_filters(kw.get("exclude_path", ()), kw.get("exclude_status", ())), *kw.get("filter_rule", ())]:
        lines += ["", "[[filter]]", *(f"{_toml_key(k)} = {toml_value(v)}" for k, v in rule.to_table().items())]
    return "\n".join(lines) + "\n"

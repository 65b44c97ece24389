"""The TOML configuration file: everything the flags hold, for services.

It is turned into click's `default_map`, which gives the precedence for free: flags > environment > file >
defaults. The mapping from file keys to options is a table, and every value is checked against the option's
own click type, so a new option needs no new code here — only, for a new section key, a line in `SECTIONS`.
Unknown keys and wrong types are errors naming the file, the key and what was expected.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

import click

from shipper.errors import ConfigError
from shipper.sinks import SINK_NAMES, sink_module

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
        "timeout": "timeout",
        "workers": "workers",
        "max_rate": "max_rate",
        "ca_file": "ca_file",
    },
    "state": {"dir": "state_dir", "dead_letter": "dead_letter"},
    "log": {"level": "log_level", "format": "log_format"},
    "metrics": {"addr": "metrics_addr"},
}


def find_config(argv: list[str], environ: dict[str, str] | None = None) -> str | None:
    """--config from the command line, else KONG_SHIP_CONFIG, else the system file if it exists."""
    env = os.environ if environ is None else environ
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    if env.get("KONG_SHIP_CONFIG"):
        return env["KONG_SHIP_CONFIG"]
    return SYSTEM_CONFIG if os.path.exists(SYSTEM_CONFIG) else None


def load(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def sink_option_names(sink: str) -> set[str]:
    names = set()
    for decls, _ in sink_module(sink).OPTIONS:
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
    if isinstance(kind, (click.IntRange, click.FloatRange)):
        try:
            kind.convert(value, param, None)
        except click.BadParameter as exc:
            raise ConfigError(f"{path}: {where}: {exc.format_message()}") from None
    return value


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
        out[name] = _check(path, where, param, value)

    for section, table in data.items():
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
            raise ConfigError(f"{path}: [{section}]: unknown section (known: {', '.join([*SECTIONS, 'sinks'])})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}]: expected a table")
        for key, value in table.items():
            name = keys.get(key)
            if name is None:
                raise ConfigError(f"{path}: {section}.{key}: unknown key (known: {', '.join(keys)})")
            put(f"{section}.{key}", name, value)
    return out

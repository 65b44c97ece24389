"""The shape of the package (issue 14): every module imports on its own, no module reaches into another's private
names, nothing but the entry points imports the command line, modules stay short, and the command line's
options are accounted for (a default written once, each option core or a sink's)."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys
from dataclasses import fields

import click
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "shipper"
MAX_LINES = 450


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue  # running it is running the command
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def test_every_module_imports_on_its_own():
    """Each in a fresh interpreter, so that an import circle hidden by a lucky import order shows (it hid one:
    `import shipper.commands.receive` failed when nothing had imported shipper.cli first)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = {
        name: subprocess.Popen([sys.executable, "-c", f"import {name}"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name in MODULES
    }
    failed = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        if proc.returncode:
            failed[name] = err.decode().strip().splitlines()[-1:]
    assert not failed, failed


def _imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node, node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, []


def test_no_module_imports_another_modules_private_names():
    found = []
    for name, path in MODULES.items():
        for node, module, names in _imports(path):
            for imported in names:
                if module.startswith("shipper") and imported.startswith("_") and not imported.startswith("__"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {module} import {imported}")
    assert not found, "\n".join(found)


def test_only_the_entry_points_import_the_command_line():
    """Commands are imported by shipper.cli, never the other way: shipper.cli is the top of the import graph."""
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for name, path in MODULES.items()
        for node, module, names in _imports(path)
        if module == "shipper.cli" or (module == "shipper" and "cli" in names)
    ]
    assert not found, found
    assert "from shipper.cli import main" in (PACKAGE / "__main__.py").read_text()
    assert 'kong-ship = "shipper.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_modules_are_short():
    long = {str(path.relative_to(ROOT)): n for path in MODULES.values() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


# -- the options -----------------------------------------------------------------------------------------------
def test_each_option_default_is_the_settings_default():
    """The defaults live in Settings: an option filling a field has the field's default (or none at all)."""
    from shipper.commands import options
    from shipper.settings import Settings

    defaults = {f.name: f.default for f in fields(Settings) if isinstance(f.default, (int, float, str))}
    command = click.command()(options.apply_options(
        [*options.understanding_options, *options.shipping_options, *options.following_options]
    )(lambda **kw: None))
    checked = 0
    for param in command.params:
        field = options.SETTINGS_FIELD.get(param.name, param.name)
        # click marks "no default" with None or a sentinel of its own: only real values are compared
        if field in defaults and isinstance(param.default, (int, float, str)) and not getattr(param, "is_flag", False):
            assert param.default == defaults[field], param.name
            checked += 1
    assert checked >= 10


def test_sink_options_are_exactly_the_sinks_declared_ones():
    from shipper.commands import options
    from shipper.sinks import SINK_NAMES, sink_module

    declared = {click.Option(decls, **kwargs).name for name in SINK_NAMES for decls, kwargs in sink_module(name).OPTIONS}
    assert options.SINK_OPTION_NAMES == declared
    assert declared <= set(options.SHARED_OPTION_NAMES)


def test_an_option_neither_core_nor_a_sinks_is_refused():
    from shipper.commands import options

    options.check_option_names(options.SHARED_OPTION_NAMES, options.SINK_OPTION_NAMES)  # as at import
    with pytest.raises(RuntimeError, match="colour"):
        options.check_option_names([*options.SHARED_OPTION_NAMES, "colour"], options.SINK_OPTION_NAMES)
    with pytest.raises(RuntimeError, match="timeout"):
        options.check_option_names(options.SHARED_OPTION_NAMES, options.SINK_OPTION_NAMES | {"timeout"})


def test_sink_options_reach_the_sinks_and_nothing_else_does():
    from shipper.commands import options
    from shipper.commands.running import settings_fields

    sink_name = sorted(options.SINK_OPTION_NAMES)[0]
    got = settings_fields({"sinks": ("stdout",), "flush_interval": 0.5, "log_level": "info", sink_name: "x"})
    assert got["sink_options"] == {sink_name: "x"}
    assert got["flush_interval"] == 0.5 and "log_level" not in got and sink_name not in got


def test_the_custom_types_check_flags_and_file_values_alike():
    from shipper.commands.options import EndpointType, NginxFieldType, TimeType, WorkersType
    from shipper.errors import ConfigError

    assert WorkersType().convert("auto", None, None) == "auto" and WorkersType().convert("4", None, None) == 4
    assert NginxFieldType().convert("client_ip=real_ip", None, None) == ("client_ip", "real_ip")
    assert EndpointType().convert("segment=http://h/x?a=b", None, None) == ("segment", "http://h/x?a=b")
    assert EndpointType().convert("http://h/x?a=b", None, None) == (None, "http://h/x?a=b")
    assert TimeType().convert("0", None, None).ms == 0
    for kind, bad in ((WorkersType(), "65"), (NginxFieldType(), "nonsense"), (EndpointType(), "ftp://h"),
                      (TimeType(), "last tuesday")):
        with pytest.raises(ConfigError):
            kind.convert(bad, None, None)


def test_processors_show_what_they_were_configured_with():
    from shipper.processors import build_chain, describe_chain

    text = describe_chain(build_chain(since_ms=0, until_ms=None))
    assert text.startswith("time_window(since=1970-01-01T00:00:00.000Z, until=-) → ")
    assert "0x" not in text  # no default object reprs

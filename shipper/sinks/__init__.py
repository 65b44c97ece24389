"""Sinks by name. Adding a vendor is one module with a class following `base.Sink` (mypy checks it: see the
`_CONTRACT` line at the end of each sink module), its frozen configuration (`config.option` fields, from which
its `OPTIONS` and `from_options` are derived), plus one line here."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:  # not at run time: `kong-ship --version` and the config file's reading need no httpx
    from shipper.sinks.base import OptionList, Sink

_MODULES = {
    "segment": ("shipper.sinks.segment", "SegmentSink"),
    "moesif": ("shipper.sinks.moesif", "MoesifSink"),
    "runscope": ("shipper.sinks.runscope", "RunscopeSink"),
    "stdout": ("shipper.sinks.stdout", "StdoutSink"),
    "webhook": ("shipper.sinks.webhook", "WebhookSink"),
}

SINK_NAMES = tuple(_MODULES)


def sink_module(name: str) -> ModuleType:
    return importlib.import_module(_MODULES[name][0])


def sink_class(name: str) -> type[Sink]:
    module, cls = _MODULES[name]
    return cast("type[Sink]", getattr(importlib.import_module(module), cls))


def all_options() -> OptionList:
    """Every sink's options as (declarations, click keyword arguments), once each: sinks may share one, as
    the stdout sink shares --event-name-template with the Segment sink."""
    seen: set[str] = set()
    out: OptionList = []
    for name in _MODULES:
        options: OptionList = sink_class(name).OPTIONS
        for decls, kwargs in options:
            if decls[0] not in seen:
                seen.add(decls[0])
                out.append((decls, kwargs))
    return out

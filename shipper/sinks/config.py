"""A sink's configuration is one frozen dataclass whose fields carry their click option (flag, help, type).

The defaults are written once, beside the fields (as Vector's `HttpSinkConfig` or httpx's `Timeout`): the
sink's `OPTIONS` (its flags, hence its TOML keys under `[sinks.NAME]`, which are the field names) and the
filling of the configuration from the command line's options (`from_options`) are derived from them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import Field, field, fields
from typing import Any, ClassVar, Protocol, TypeVar

from shipper.sinks.base import OptionList

_FLAG = "flag"
_CLICK = "click"
_BLANK_IS_DEFAULT = "blank_is_default"


class DataclassType(Protocol):
    """Any dataclass (what `dataclasses.fields` takes), as a type variable's bound."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]


ConfigT = TypeVar("ConfigT", bound=DataclassType)


def option(flag: str, *, help: str, default: Any = None, blank_is_default: bool = False, **click_kwargs: Any) -> Any:
    """A configuration field and the click option that sets it: `flag` as click declares it (`--a/--no-a` for a
    pair), `default` the field's (and so the flag's) default, the rest click's keyword arguments.

    `blank_is_default`: an empty value means the default, as the plugin treated an empty setting as unset (an
    empty event name or api_version could only produce events the vendor refuses)."""
    return field(default=default, metadata={_FLAG: flag, _CLICK: {"help": help, **click_kwargs},
                                            _BLANK_IS_DEFAULT: blank_is_default})


def option_fields(config: type[DataclassType], *, without: Collection[str] = ()) -> list[Field[Any]]:
    """The fields of `config` that are set by a flag, in declaration order (the order of --help)."""
    return [f for f in fields(config) if _FLAG in f.metadata and f.name not in without]


def flag_of(item: Field[Any]) -> str:
    return str(item.metadata[_FLAG])


def option_name(item: Field[Any]) -> str:
    """The name click gives the field's option (the key of `from_options`' mapping): its first long flag."""
    return flag_of(item).split("/")[0].lstrip("-").replace("-", "_")


def options_of(config: type[DataclassType], *, without: Collection[str] = ()) -> OptionList:
    """The click options of `config`'s fields, as (declarations, keyword arguments)."""
    out: OptionList = []
    for item in option_fields(config, without=without):
        kwargs: dict[str, Any] = {"default": item.default, **item.metadata[_CLICK]}
        if not (item.default is None or item.default is False or item.default == ()):
            kwargs["show_default"] = True  # a value worth reading in --help; unset, off and empty are not
        out.append(((flag_of(item),), kwargs))
    return out


def config_from_options(config: type[ConfigT], opts: Mapping[str, Any], *, without: Collection[str] = ()) -> ConfigT:
    """`config` filled from the command line's options by name. A missing or None value keeps the field's
    default (a sink built by hand, or by a test, passes only what it sets); lists become tuples (frozen)."""
    values: dict[str, Any] = {}
    for item in option_fields(config, without=without):
        value = opts.get(option_name(item))
        if value is None or (value == "" and item.metadata[_BLANK_IS_DEFAULT]):
            continue
        values[item.name] = tuple(value) if isinstance(value, list) else value
    return config(**values)

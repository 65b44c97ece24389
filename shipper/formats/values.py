"""Defensive coercions shared by the formats: real logs write numbers as strings, in exponent form, or as `-`.

The checked ones (`epoch_ms_field`, `status_field`, `count_field`, `port_field`, `latency_field`) also keep every
number a Transaction carries finite and in its range, so no sink meets a value it cannot encode (orjson refuses
integers past 64 bits, `datetime` years past 9999, `int()` a NaN). A present number no unit makes sane raises
`ParseError("bad_value", "<field>: ...")`; text that is no number at all (`-`, ``) stays None, as before. Each has
a fast path for the ordinary value (an int in range), so the per-line cost is one type check and a comparison.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from shipper.formats.decode import ParseError

# Epoch milliseconds an ISO date can show (1970 up to 9999-12-31T23:59:59.999Z).
MAX_EPOCH_MS = 253_402_300_799_999
# Magnitudes that tell the unit of an epoch number: seconds below 1e11 (up to the year 5138), then milliseconds
# (from 1973), microseconds, nanoseconds; each range covers 1973–5138 in its unit.
_SECONDS_BELOW, _MS_BELOW, _US_BELOW, _NS_BELOW = 1e11, 1e14, 1e17, 1e20
MAX_COUNT = (1 << 53) - 1  # bytes, tries: exact in a double, so every vendor's JSON parser reads it back
MAX_LATENCY_MS = 1e10  # about 115 days: beyond any request a gateway keeps open


def to_int(value: Any) -> int | None:
    """An integer from an int, a float (`1.7638e+12`), or a numeric string; None for anything else."""
    if type(value) is int:
        return value
    if isinstance(value, float):
        return int(value) if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, str) and value:
        try:
            return int(value)
        except ValueError:
            try:
                return to_int(float(value))
            except ValueError:
                return None
    return None


def to_float(value: Any) -> float | None:
    kind = type(value)
    if kind is int or kind is float:
        return float(value)
    if isinstance(value, str) and value:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (dict, list)):
        return ""
    return str(value)


def split_target(target: str) -> tuple[str, str, str]:
    """`/p/a?x=1#frag` → (`/p/a`, `x=1`, `frag`)."""
    rest, _, fragment = target.partition("#")
    path, _, query = rest.partition("?")
    return path, query, fragment


def parse_query(query: str) -> dict[str, Any]:
    """Decode a query string the way Kong fills `request.querystring`: a repeated argument becomes a list,
    a bare `flag` is True, `a=` is "". Invalid UTF-8 after percent-decoding is replaced, not fatal."""
    out: dict[str, Any] = {}
    if not query:
        return out
    for part in query.split("&"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        key = unquote_plus(key, errors="replace")
        item: Any = unquote_plus(value, errors="replace") if eq else True
        if key in out:
            prev = out[key]
            if isinstance(prev, list):
                prev.append(item)
            else:
                out[key] = [prev, item]
        else:
            out[key] = item
    return out


def split_url(url: str) -> tuple[str, str, int | None, str]:
    """`https://host:443/p?q` → (`https`, `host`, 443, `/p?q`) without urllib's overhead; IPv6 hosts keep
    their brackets; userinfo is dropped."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", "", None, url
    hostport, slash, target = rest.partition("/")
    target = slash + target
    if "@" in hostport:  # userinfo (`https://TOKEN:x-oauth-basic@host/`) is never the host, nor its port
        hostport = hostport.rpartition("@")[2]
    if hostport.startswith("["):
        host, _, tail = hostport.partition("]")
        host += "]"
        port = to_int(tail[1:]) if tail.startswith(":") else None
    else:
        host, colon, port_s = hostport.rpartition(":")
        if not colon:
            host, port_s = port_s, ""
        port = int(port_s) if len(port_s) < 6 and port_s.isdecimal() else to_int(port_s)  # to_int's int(), sooner
    return scheme.lower(), host, port, target or "/"


def host_of_header(value: str) -> str:
    """The host of a Host header's `host[:port]`: `api.example.com:8000` → `api.example.com`, `[::1]:8000` and
    `[::1]` → `[::1]` (an IPv6 host keeps its brackets, as split_url keeps them)."""
    if value.startswith("["):
        return value.partition("]")[0] + "]"
    return value.rpartition(":")[0] or value


# -- checked fields ----------------------------------------------------------------------------------------------
def to_number(value: Any) -> int | float | None:
    """An int or float from a number or numeric text (non-finite ones included); None for anything else.
    Text is read as a float, in one attempt (a failed int() first costs an exception per Nginx value): the
    checked fields turn it back into an int, exact below 2**53, and everything above is out of range anyway."""
    kind = type(value)
    if kind is int or kind is float:
        return value
    if kind is str and value:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def bad_value(field: str, value: Any, expected: str) -> ParseError:
    return ParseError("bad_value", f"{field}: {repr(value)[:60]} is not {expected}")


def epoch_ms(number: int | float) -> int | None:
    """Epoch milliseconds from Unix seconds, ms, µs or ns, the unit told by the magnitude; None if no unit
    gives a date between 1970 and 9999 (non-finite, zero, negative, or past nanoseconds)."""
    if not number > 0:  # NaN too
        return None
    if number < _SECONDS_BELOW:
        return int(round(number * 1000))
    if number < _MS_BELOW:
        return int(number)
    if number < _US_BELOW:
        return int(number // 1000)
    if number < _NS_BELOW:
        return int(number // 1_000_000)
    return None


def epoch_ms_field(value: Any, field: str) -> int | None:
    """A start time as epoch ms; None when absent or not numeric; ParseError when no unit makes it a date."""
    if type(value) is int and _SECONDS_BELOW <= value < _MS_BELOW:
        return value  # the ordinary case: already milliseconds
    number = to_number(value)
    if number is None:
        return None
    ms = epoch_ms(number)
    if ms is None:
        raise bad_value(field, value, "a time in s, ms, µs or ns since 1970")
    return ms


def iso_epoch_ms(text: Any) -> int | None:
    """ISO-8601 text (no zone means UTC, `Z` accepted) as epoch ms; None if it is not a time from 1970 to 9999."""
    if type(text) is not str or not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ms = int(when.timestamp() * 1000)
    except (ValueError, OverflowError):
        return None
    return ms if 0 <= ms <= MAX_EPOCH_MS else None


def status_field(value: Any, field: str) -> int | None:
    """An HTTP status: 100–999, or 0 (no response was sent, as Nginx logs `000`)."""
    if type(value) is str and len(value) < 16 and value.isdecimal():
        value = int(value)  # Nginx writes every number as text: the cheap way to an int
    if type(value) is int and 100 <= value <= 999:
        return value
    number = to_number(value)
    if number is None:
        return None
    if number == 0 or (100 <= number <= 999 and number == int(number)):
        return int(number)
    raise bad_value(field, value, "an HTTP status")


def upstream_status_field(value: Any, field: str) -> tuple[int | None, list[int] | None]:
    """`$upstream_status` as (the last status, every status when there were several): retries write
    `"502, 200"`, and ` : ` separates upstream groups (`"500, 200 : 200, 200"`). A list never raises: parts that
    are no status (`-`, text, out of range) are skipped, as one bad try says nothing about the response. A single
    value is checked like any status (`status_field`)."""
    if type(value) is str and len(value) == 3 and value.isdecimal() and value[0] != "0":
        return int(value), None  # the ordinary case: one try
    if type(value) is str and ("," in value or ":" in value):
        statuses = []
        for part in value.replace(":", ",").split(","):
            part = part.strip()
            if len(part) == 3 and part.isdecimal():
                number = int(part)
                if number >= 100:
                    statuses.append(number)
            elif part == "0" or part == "000":  # no response from that upstream, as nginx writes it
                statuses.append(0)
        if not statuses:
            return None, None
        return statuses[-1], statuses if len(statuses) > 1 else None
    return status_field(value, field), None


def count_field(value: Any, field: str) -> int | None:
    """A non-negative integer (bytes) up to 2**53 - 1."""
    if type(value) is str and len(value) < 16 and value.isdecimal():
        value = int(value)  # as in status_field
    if type(value) is int and 0 <= value <= MAX_COUNT:
        return value
    number = to_number(value)
    if number is None:
        return None
    if 0 <= number <= MAX_COUNT:  # False for NaN
        return int(number)
    raise bad_value(field, value, f"a count from 0 to {MAX_COUNT}")


def port_field(value: Any, field: str) -> int | None:
    if type(value) is str and len(value) < 16 and value.isdecimal():
        value = int(value)  # as in status_field
    if type(value) is int and 0 <= value <= 65535:
        return value
    number = to_number(value)
    if number is None:
        return None
    if 0 <= number <= 65535 and number == int(number):
        return int(number)
    raise bad_value(field, value, "a port (0–65535)")


def latency_field(value: Any, field: str, scale: int = 1) -> float | None:
    """Milliseconds as a float (`scale` 1000 for a log that writes seconds). A negative value means "unknown"
    (Kong writes -1 for no upstream call, and clock steps make others), so it is None; a non-finite or absurd
    one is a bad value."""
    if type(value) is int and scale == 1 and 0 <= value <= MAX_LATENCY_MS:
        return float(value)  # the ordinary case: Kong's integer milliseconds
    number = to_number(value)
    if number is None:
        return None
    number *= scale  # a float overflows to inf here, never raises
    if 0 <= number <= MAX_LATENCY_MS:  # False for NaN
        return float(number)
    if -MAX_LATENCY_MS <= number < 0:
        return None
    raise bad_value(field, value, "a latency (finite, under 115 days)")

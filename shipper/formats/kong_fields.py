"""Kong record parts shared by the HTTP (`kong`) and stream (`kong_stream`) serializers, normalized for the
sinks: the client TLS, the balancer tries, the tracing id, AI Gateway usage, and entity ids.

None of these may cost a record: a value of the wrong type or out of range is left out, never raised, because
it describes the call without being the call (the status, times and sizes are checked strictly elsewhere).
Each function is only called when its field is present, so a record without it pays one dict lookup.
"""

from __future__ import annotations

from typing import Any

from shipper.formats.decode import ParseError
from shipper.formats.values import count_field, latency_field, port_field, status_field, to_number

# Kong 3.10+ names the AI Proxy block `proxy`; 3.7–3.9 by the plugin name. Other AI plugins (prompt guard,
# request transformer, …) write blocks of the same shape; the proxy one is the call to the model.
_AI_PROXY_BLOCKS = ("proxy", "ai-proxy", "ai-proxy-advanced")
# Kong's own AI code writes `prompt_tokens` (3.6, 3.8+); 3.7 and the docs write `prompt_token`.
_TOKEN_KEYS = (
    ("prompt_tokens", ("prompt_tokens", "prompt_token")),
    ("completion_tokens", ("completion_tokens", "completion_token")),
    ("total_tokens", ("total_tokens",)),
)
_UNSET_MODEL = "UNSPECIFIED"  # what Kong's serializer writes when it knows no provider or model


def tls_info(value: Any) -> dict[str, str] | None:
    """`request.tls` / `session.tls`: only `version`, `cipher`, `client_verify`, and only as strings (0.x–2.x
    also logged `supported_client_ciphers`, which no sink wants)."""
    if type(value) is not dict:
        return None
    get = value.get
    version, cipher, verify = get("version"), get("cipher"), get("client_verify")
    out = {}
    if type(version) is str:
        out["version"] = version
    if type(cipher) is str:
        out["cipher"] = cipher
    if type(verify) is str:
        out["client_verify"] = verify
    return out or None


def trace_id(value: Any) -> str | None:
    """Kong 3.5+ logs `trace_id` as an object with one entry per propagation format (`{"w3c": …, "datadog":
    …}`): the W3C one if present, else the first string. A plain string (custom fields, older plugins) as is."""
    if type(value) is str:
        return value or None
    if type(value) is dict:
        w3c = value.get("w3c")
        if type(w3c) is str and w3c:
            return w3c
        for item in value.values():
            if type(item) is str and item:
                return item
    return None


def _checked(check: Any, value: Any) -> Any:
    # The formats' checked coercions (numeric text, exponent form, ranges), minus their refusal: here an absurd
    # number is left out instead of costing the record.
    if value is None:
        return None
    try:
        return check(value, "")
    except ParseError:
        return None


def upstream_tries(value: list) -> list[dict[str, Any]] | None:
    """Kong `tries[]`, one dict per balancer attempt with `ip` (str), `port` (int), `balancer_latency` (ms,
    float), `state` (str, `next`/`failed` on a failed try) and `code` (int, that try's status); other keys
    (`balancer_start`, the `_ns` ones) are dropped, and so is a value of the wrong type. One dict per entry, so
    the list is as long as `tries` counts; None for an empty list."""
    out = []
    for item in value:
        clean: dict[str, Any] = {}
        if type(item) is dict:
            ip, port, latency, state, code = (
                item.get("ip"), item.get("port"), item.get("balancer_latency"), item.get("state"), item.get("code"),
            )  # fmt: skip
            if type(ip) is str:
                clean["ip"] = ip
            # Kong writes ints: test those inline (every 3.x line has a try), the checked coercion for the rest.
            if type(port) is int and 0 <= port <= 65535 or (port := _checked(port_field, port)) is not None:
                clean["port"] = port
            if type(latency) is int and 0 <= latency <= 1000:
                clean["balancer_latency"] = float(latency)
            elif (latency := _checked(latency_field, latency)) is not None:
                clean["balancer_latency"] = latency
            if type(state) is str:
                clean["state"] = state
            if code is not None and (code := _checked(status_field, code)) is not None:
                clean["code"] = code
        out.append(clean)
    return out or None


def _amount(value: Any) -> int | float | None:
    # A cost: any finite non-negative number (numeric text too) up to an absurd 1e12; NaN fails the comparison.
    number = to_number(value)
    return number if number is not None and 0 <= number <= 1e12 else None


def _ai_block(ai: dict[str, Any]) -> dict[str, Any] | None:
    if type(ai.get("usage")) is dict or type(ai.get("meta")) is dict:
        return ai  # Kong 3.6: `ai.usage`, `ai.meta` with no plugin level
    for name in _AI_PROXY_BLOCKS:
        block = ai.get(name)
        if type(block) is dict:
            return block
    for name, block in ai.items():  # another AI plugin only (`payload` is the shared request body)
        if name != "payload" and type(block) is dict and (type(block.get("usage")) is dict or type(block.get("meta")) is dict):
            return block
    return None


def ai_usage(value: Any) -> dict[str, Any] | None:
    """The `ai` block as `provider`, `model` (the response model, else the requested one), `prompt_tokens`,
    `completion_tokens`, `total_tokens` (ints), `cost` and `time_per_token` (ms) (finite non-negative numbers);
    a key Kong did not log, or logged as something else, is left out. None when nothing is left."""
    if type(value) is not dict:
        return None
    block = _ai_block(value)
    if block is None:
        return None
    out: dict[str, Any] = {}
    meta = block.get("meta")
    if type(meta) is dict:
        provider = meta.get("provider_name")
        if type(provider) is str and provider and provider != _UNSET_MODEL:
            out["provider"] = provider
        for key in ("response_model", "request_model"):
            model = meta.get(key)
            if type(model) is str and model and model != _UNSET_MODEL:
                out["model"] = model
                break
    usage = block.get("usage")
    if type(usage) is dict:
        for name, keys in _TOKEN_KEYS:
            for key in keys:
                tokens = _checked(count_field, usage.get(key))
                if tokens is not None:
                    out[name] = tokens
                    break
        cost = _amount(usage.get("cost"))
        if cost is not None:
            out["cost"] = cost
        per_token = _checked(latency_field, usage.get("time_per_token"))
        if per_token is not None:
            out["time_per_token"] = per_token
    return out or None


def object_id(value: Any) -> str | None:
    """An entity id as a string. Kong 1.x/2.x could log a foreign key as an object (`{"uuid": "…"}` or
    `{"id": "…"}`): the id inside it; never the object's repr."""
    kind = type(value)
    if kind is str:
        return value or None
    if kind is int:
        return str(value)
    if kind is dict:
        inner = value.get("uuid") or value.get("id")
        return inner if type(inner) is str and inner else None
    return None


def entity(value: Any, id_keys: tuple[str, ...]) -> dict[str, Any] | None:
    """An entity as Kong logged it, except that an id given as an object becomes its string (or is dropped).
    No copy in the ordinary case: this runs for every line, and the record's dict is not shared."""
    if type(value) is not dict or not value:
        return None
    for key in id_keys:
        inner = value.get(key)
        if inner is not None and type(inner) is not str:
            ident = object_id(inner)
            value = dict(value)
            if ident is None:
                del value[key]
            else:
                value[key] = ident
    return value

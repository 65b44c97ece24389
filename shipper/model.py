"""The one contract between parsing and the sinks: `Transaction`, and where a record came from: `Position`.

Every field is documented here and nowhere else (the README links to this module). Formats build a
Transaction from one log line; processors (identity, masks) fill in or rewrite fields; sinks map a
Transaction to their vendor's event and never look at the raw log record.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

# A header or query value as the logs write it: a string, a list of strings for a repeated header or argument,
# or `True` for a bare `?flag`.
Value = str | bool | list[Any]


@dataclass(slots=True, frozen=True)
class Position:
    """Where a line lives: the file's identity (a fingerprint of its first line, stable across renames and
    gzip rotation), the byte offset of the line's first byte and the offset just past its newline. Offsets of
    gzip files count decompressed bytes, so a file keeps its positions when logrotate compresses it."""

    file_id: str
    offset: int
    end: int


@dataclass(slots=True)
class Transaction:
    """One API call, normalized from a Kong file-log record or an Nginx JSON access-log line.

    Owned by the pipeline: each processor may change fields in place and returns it (or None to drop it).
    Times are integers of epoch milliseconds, latencies are milliseconds (floats where the log has fractions),
    sizes are bytes; unknown values are None, never guessed. Every number is sane for every sink: the formats
    check them (`shipper.formats.values`): times from 1970 to 9999, statuses 0 or 100–999, sizes 0 to 2**53-1,
    ports 0–65535, latencies finite and non-negative; a log line whose number fits none of that never becomes a
    Transaction (it is dead-lettered as `bad_value`; an event hook's or audit record's absurd time gives way to
    the time it was received).
    """

    # -- identity of the record ------------------------------------------------------------------------------
    event_id: str
    """Stable id of this record: the log's request id (Kong's `request.id`, Nginx `$request_id`) when present,
    else `<file fingerprint>-<offset>`. Never random: a resend after a crash carries the same id, which the
    vendors de-duplicate on (Segment `messageId`, Moesif `transaction_id`)."""
    source_format: str
    """`kong` or `nginx`: the format the line was understood as."""
    position: Position | None = None
    """File and offsets of the line (None for records that did not come from a file)."""

    # -- the request -------------------------------------------------------------------------------------------
    started_at: int | None = None
    """When the request started, epoch milliseconds (Kong `started_at`, Nginx `$msec` or `$time_iso8601`)."""
    started_at_estimated: bool = False
    """True when the record had no start time and `started_at` is the time the line was read (one rule for
    every sink)."""
    method: str = ""
    """HTTP method, upper case."""
    scheme: str = ""
    """`http` or `https` (from Kong `request.url`, Nginx `$scheme`)."""
    host: str = ""
    """Host the client asked for, without port."""
    port: int | None = None
    """Port the client connected to."""
    raw_path: str = ""
    """The request target as received: path, `?query` and `#fragment` if any (Kong `request.uri`, before 0.12
    the path of `request.request_uri`; Nginx `$request_uri`)."""
    path: str = ""
    """The path alone, percent-encoding kept, no query."""
    query_string: str = ""
    """The raw query string without `?` (masked values replaced)."""
    query: dict[str, Value] = field(default_factory=dict)
    """Decoded query arguments. A repeated argument is a list, a bare `?flag` is True, `a=` is ""."""
    fragment: str = ""
    """The `#fragment` of the raw path, if a log carries one."""
    request_headers: dict[str, Value] = field(default_factory=dict)
    """Request headers, names lower-cased; a repeated header is a list of strings."""
    request_size: int | None = None
    """Request size in bytes (Kong `request.size`, Nginx `$request_length`)."""
    request_body: Any = None
    """Request body when the log carries one (a custom field or Nginx `$request_body`), else None."""
    client_ip: str = ""
    """The client address Kong or Nginx saw (`client_ip`, `$remote_addr`)."""
    tls: dict[str, Any] | None = None
    """The client connection's TLS as Kong logged it (`request.tls`: `version`, `cipher`, `client_verify`)."""
    user_agent: str = ""
    """The `User-Agent` request header."""

    # -- the response ------------------------------------------------------------------------------------------
    status: int | None = None
    """Response status code sent to the client."""
    response_headers: dict[str, Value] = field(default_factory=dict)
    """Response headers, names lower-cased."""
    response_size: int | None = None
    """Response size in bytes (Kong `response.size`, Nginx `$bytes_sent` or `$body_bytes_sent`)."""
    response_body: Any = None
    """Response body when the log carries one, else None."""

    # -- timing ------------------------------------------------------------------------------------------------
    latency_request: float | None = None
    """Total time from first byte received to last byte sent, ms (Kong `latencies.request`, Nginx
    `$request_time` × 1000)."""
    latency_kong: float | None = None
    """Time spent in the gateway itself, ms (Kong `latencies.kong`)."""
    latency_receive: float | None = None
    """Time spent receiving the request body, ms (Kong 3.7+ `latencies.receive`; from 3.7 `latencies.kong`
    no longer includes it)."""
    latency_proxy: float | None = None
    """Time waiting for the upstream, ms (Kong `latencies.proxy`; None when Kong wrote -1, i.e. no upstream
    call; Nginx: the sum of `$upstream_response_time` values)."""

    # -- gateway context ---------------------------------------------------------------------------------------
    service: dict[str, Any] | None = None
    """The Kong service as Kong logged it (`id`, `name`, `host`, `port`, `protocol`, …; 0.x: the `api` entity
    with `id`, `name`, `upstream_url`)."""
    route: dict[str, Any] | None = None
    """The Kong route as Kong logged it (`id`, `name`, `paths`, …)."""
    workspace: str | None = None
    """Kong workspace id (3.x)."""
    workspace_name: str | None = None
    upstream_uri: str | None = None
    upstream_status: int | None = None
    """Status from the last upstream try (Kong 3.3+ `upstream_status`, Nginx `$upstream_status`)."""
    upstream_addr: str | None = None
    upstream_statuses: list[int] | None = None
    """Every upstream status Kong logged, in order, when there was more than one (`"502, 200"`, groups separated
    by ` : `); `upstream_status` is the last of them."""
    tries: int | None = None
    """Number of balancer attempts (Kong `tries`)."""
    upstream_tries: list[dict[str, Any]] | None = None
    """Kong `tries[]`, one dict per balancer attempt: `ip`, `port`, `balancer_latency` (ms), `state`, `code`."""
    trace_id: str | None = None
    """The trace id Kong logged when a tracing plugin ran (3.5+ `trace_id`)."""
    correlation_id: str | None = None
    """The correlation-id plugin's id (`correlation_id`)."""
    ai: dict[str, Any] | None = None
    """AI Gateway usage (Kong 3.6+ `ai.<plugin>`, 3.10+ `ai.proxy`), normalized: `provider`, `model`,
    `prompt_tokens`, `completion_tokens`, `total_tokens`, `cost`, `time_per_token` (absent keys are left out)."""
    protocol: str = ""
    """For stream sessions (`kind` `stream`): `tcp`, `tls`, `udp` as Kong logged them."""
    response_source: str | None = None
    """Who produced the response: `upstream`, `kong`, … (Kong 3.6+ `source`)."""

    # -- who made the call (filled by processors.identity) -------------------------------------------------
    consumer: dict[str, Any] | None = None
    """The Kong consumer (`id`, `username`, `custom_id`, …) when one was authenticated."""
    authenticated_entity: dict[str, Any] | None = None
    """The Kong credential (`id`, `consumer_id`)."""
    user_id: str | None = None
    """The user behind the call: JWT claim, else consumer, else credential, else `x-consumer-*` headers."""
    user_source: str | None = None
    """Where `user_id` came from: `jwt`, `consumer`, `credential`, `header`, or None."""
    anonymous_id: str | None = None
    """Set when no user is known: a stable id derived from client IP and user agent."""
    jwt_claims: dict[str, Any] | None = None
    """The decoded (unverified) JWT payload, if a token was found."""
    basic_user: str | None = None
    """The user name of an HTTP Basic `Authorization` header (read before masking; the password never kept)."""

    # -- what kind of record this is -----------------------------------------------------------------------
    kind: str = "api"
    """`api` for a proxied call (every log line); `admin_request` and `config_change` for Kong Admin API audit
    records. Sinks name their events after it."""
    details: dict[str, Any] | None = None
    """Kind-specific facts that have no field above (for audit records: the audit entry, minus its
    signature); shipped as event properties."""

    # -- the decoded log line, for processors that read custom fields (`--jwt-from`). Sinks never read it,
    # and the masking processor drops it, so nothing unmasked leaves the process through it.
    raw: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The normalized view printed by `kong-ship parse` (everything but `raw`)."""
        out: dict[str, Any] = {}
        for f in _PUBLIC_FIELDS:
            value = getattr(self, f)
            if f == "position" and value is not None:
                value = {"file_id": value.file_id, "offset": value.offset, "end": value.end}
            out[f] = value
        return out


_PUBLIC_FIELDS = tuple(f.name for f in fields(Transaction) if f.name != "raw")

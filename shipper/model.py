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
    """One API call, normalized from a Kong file-log record or an Nginx JSON access-log line — or one Kong stream
(TCP/TLS/UDP) session, `kind` `stream`, which fills only the fields that say so below.

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
    else `<file fingerprint>-<offset>` (always so for stream sessions, which have no request id). Never random: a resend after a crash carries the same id, which the
    vendors de-duplicate on (Segment `messageId`, Moesif `transaction_id`)."""
    source_format: str
    """`kong` (HTTP and stream records) or `nginx`: the format the line was understood as."""
    position: Position | None = None
    """File and offsets of the line (None for records that did not come from a file)."""

    # -- the request -------------------------------------------------------------------------------------------
    started_at: int | None = None
    """When the request (or stream session) started, epoch milliseconds (Kong `started_at`, Nginx `$msec` or
    `$time_iso8601`); a number in seconds, ms, µs or ns is recognised by its magnitude. Never None once parsed: a
    record without a usable time gets the time the line was read (see `started_at_estimated`)."""
    started_at_estimated: bool = False
    """True when the record had no usable start time and `started_at` is the time the line was read, in epoch ms,
    set by the parser — one rule for every format (Kong HTTP and stream, Nginx) and every sink. `--since/--until`
    keep such a record whatever the window (its read time says nothing about when the call happened)."""
    method: str = ""
    """HTTP method, upper case."""
    scheme: str = ""
    """`http` or `https` (from Kong `request.url`, Nginx `$scheme`)."""
    host: str = ""
    """Host the client asked for, without port."""
    port: int | None = None
    """Port the client connected to (stream: `session.server_port`)."""
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
    """Request size in bytes (Kong `request.size`, Nginx `$request_length`; stream: bytes received from the
    client, `session.received`)."""
    request_body: Any = None
    """Request body when the log carries one (a custom field or Nginx `$request_body`), else None."""
    client_ip: str = ""
    """The client address Kong or Nginx saw (`client_ip`, `$remote_addr`)."""
    tls: dict[str, Any] | None = None
    """The client connection's TLS as Kong logged it (`request.tls`, stream `session.tls`): only the string
    values of `version` (`TLSv1.3`), `cipher` and `client_verify` (`NONE`, `SUCCESS`, `FAILED:…`, as nginx's
    `$ssl_client_verify`); other keys (0.x–2.x `supported_client_ciphers`) are dropped. None on plain connections."""
    user_agent: str = ""
    """The `User-Agent` request header."""

    # -- the response ------------------------------------------------------------------------------------------
    status: int | None = None
    """Response status code sent to the client (stream: the session status Kong logs, `session.status`: 200
    for a session that ended normally, 400, 403, 500, 502, 503 as nginx's stream `$status`)."""
    response_headers: dict[str, Value] = field(default_factory=dict)
    """Response headers, names lower-cased."""
    response_size: int | None = None
    """Response size in bytes (Kong `response.size`, Nginx `$bytes_sent` or `$body_bytes_sent`; stream: bytes sent
    to the client, `session.sent`)."""
    response_body: Any = None
    """Response body when the log carries one, else None."""

    # -- timing ------------------------------------------------------------------------------------------------
    latency_request: float | None = None
    """Total time from first byte received to last byte sent, ms (Kong `latencies.request`, Nginx
    `$request_time` × 1000; stream: the whole session, `latencies.session`)."""
    latency_kong: float | None = None
    """Time spent in the gateway itself, ms (Kong `latencies.kong`, stream too)."""
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
    """Kong workspace id (2.x Enterprise, 3.x; stream too)."""
    workspace_name: str | None = None
    """Kong workspace name (3.4+ `workspace_name`, e.g. `default`; stream too)."""
    upstream_uri: str | None = None
    """The target Kong sent upstream (`upstream_uri`, 0.13+), query included."""
    upstream_status: int | None = None
    """Status from the last upstream try (Kong 3.3+ `upstream_status`, Nginx `$upstream_status`)."""
    upstream_addr: str | None = None
    """The upstream address(es) Nginx logged (`$upstream_addr`); Kong logs them in `upstream_tries`."""
    upstream_statuses: list[int] | None = None
    """Every upstream status logged, in order, only when there was more than one (retries: `"502, 200"`; groups of
    upstreams separated by ` : `, `"500, 200 : 200"`, are flattened), from Kong 3.3+ `upstream_status` and Nginx
    `$upstream_status`; parts that are no status (`-`) are skipped, and such a list never makes a record a bad
    value. `upstream_status` is the last of them. None for a single status."""
    tries: int | None = None
    """Number of balancer attempts (Kong `tries`, the length of the list; stream too)."""
    upstream_tries: list[dict[str, Any]] | None = None
    """Kong `tries[]` (0.11+, stream too), one dict per balancer attempt, in order, with only the keys Kong logged
    and whose value is sane: `ip` (str), `port` (int), `balancer_latency` (float ms), `state` (str: `next` or
    `failed` on a try that failed), `code` (int: that try's status). Other keys (`balancer_start`, `_ns` ones) are
    dropped, and an entry that is not an object is `{}`, so the list is `tries` long. None when Kong logged none."""
    trace_id: str | None = None
    """The trace id Kong logged when a tracing plugin (OpenTelemetry, Zipkin) ran. Kong 3.5+ logs an object with one
    entry per propagation format (`{"w3c": "4bf9…", "datadog": "1180…"}`): the `w3c` one, else the first string;
    a plain string (custom fields) as it is."""
    correlation_id: str | None = None
    """The correlation-id plugin's id (`correlation_id`, a string only)."""
    ai: dict[str, Any] | None = None
    """AI Gateway usage, normalized from the `ai` block, whose shape changed with Kong versions: 3.6 `ai.meta` and
    `ai.usage`; 3.7–3.9 `ai.<plugin name>` (`ai-proxy`, …, beside `ai.payload`); 3.10+ `ai.proxy`. The proxy
    plugin's block wins (`proxy`, `ai-proxy`, `ai-proxy-advanced`), else the first AI plugin's. Keys:
    `provider` (`meta.provider_name`), `model` (`meta.response_model`, else `meta.request_model`; Kong's
    `UNSPECIFIED` is no model), `prompt_tokens`, `completion_tokens` (Kong 3.7 and the docs write `prompt_token`,
    `completion_token`), `total_tokens` (ints), `cost` (number, the provider's currency), `time_per_token` (3.8+,
    float ms). A key Kong did not log, or logged as no sane number, is left out; None when nothing is left."""
    protocol: str = ""
    """For stream sessions (`kind` `stream`) only: `tls`, `tcp`, `udp` or `tls_passthrough`. Kong's stream record
    names no protocol, so it is derived: `tls` when the record has `session.tls` (Kong terminated TLS), else
    the one stream protocol other than `tls` that the route accepts (`route.protocols`), else the service's
    `protocol`; "" when none says. "" for HTTP records (see `scheme`)."""
    response_source: str | None = None
    """Who produced the response: `upstream`, `kong`, … (Kong 3.6+ `source`)."""

    # -- who made the call (filled by processors.identity) -------------------------------------------------
    consumer: dict[str, Any] | None = None
    """The Kong consumer (`id`, `username`, `custom_id`, …) when one was authenticated. An `id` Kong logged as an
    object (`{"uuid": "…"}`, 1.x/2.x) is the string inside it, or left out."""
    authenticated_entity: dict[str, Any] | None = None
    """The Kong credential (`id`, `consumer_id`), ids as strings as for `consumer`."""
    user_id: str | None = None
    """The user behind the call: JWT claim, else consumer, else credential, else the HTTP Basic user name, else
    the `x-consumer-*` headers."""
    user_source: str | None = None
    """Where `user_id` came from: `jwt`, `consumer`, `credential`, `basic`, `header`, or None."""
    anonymous_id: str | None = None
    """Set when no user is known: a stable id derived from client IP and user agent."""
    jwt_claims: dict[str, Any] | None = None
    """The decoded (unverified) JWT payload, if a token was found."""
    basic_user: str | None = None
    """The user name of an HTTP Basic `Authorization` header (`Basic base64(user:password)`), read by the identity
    processor before masking, whatever else identifies the user; the password is never kept. None when there is
    no such header or it is malformed. Kong 2.1+ logs `REDACTED`, so this comes from older Kong, Nginx
    (`$http_authorization`) or custom fields."""

    # -- what kind of record this is -----------------------------------------------------------------------
    kind: str = "api"
    """`api` for a proxied HTTP call; `stream` for a Kong stream (TCP/TLS/UDP) session; `admin_request` and
    `config_change` for Kong Admin API audit records. Sinks name their events after it.

    A `stream` record (Kong 2.2+ stream serializer: `session`, `upstream`, `latencies.session`, no `request`) fills:
    `protocol`, `client_ip`, `port` (`session.server_port`), `request_size` (bytes from the client,
    `session.received`), `response_size` (bytes to the client, `session.sent`), `status` (`session.status`),
    `latency_request` (the session's duration), `latency_kong`, `tls` (`session.tls`), `started_at`, `service`,
    `route`, `consumer`, `authenticated_entity` (and so `user_id`), `workspace`, `workspace_name`, `tries`,
    `upstream_tries`, and `details` = {`upstream_received`, `upstream_sent`}: bytes Kong received from and sent to
    the upstream. `method`, `scheme`, `host`, paths, query, headers and bodies stay empty, `event_id` is the
    file position."""
    details: dict[str, Any] | None = None
    """Kind-specific facts that have no field above, shipped as event properties: for audit records the audit
    entry minus its signature; for `stream` sessions the upstream bytes (`upstream_received`, `upstream_sent`,
    each only when logged)."""
    sample_rate: float = 1.0
    """The rate kong-ship's own sampling (`--sample-rate`, `[sampling]`, processors.sampling) kept this record at,
    0 < rate ≤ 1; 1.0 when it was not sampled. A kept event stands for 1/rate records: Segment ships it as
    `properties.sampleRate` (only when below 1), Moesif folds it into `weight`."""

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

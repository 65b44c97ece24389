""""Secrets never leave", on the backfill's block paths: `kong-ship backfill --workers 2` with blocks forced
small (KONG_SHIP_BLOCK_BYTES), so the parent reads blocks into memory shared with the workers, the workers split
and transform them (transform.transform_block) through each sink's flat encoder (segment_flat, moesif_flat,
runscope_flat: chosen only with the default chain and one sink, so each sink runs alone here), and Segment's and
Moesif's batches are closed and compressed in the workers (delivery/closed.py). tests/test_no_secret_leaves.py
runs every sink at once with the line path; this file runs the paths it never reaches.

The log holds marker secrets in every shape of tests/leaks.py plus the variants named below (header-name case,
percent- and double-encoded query names, fragments, `upstream_uri`, `request.url` apart from `request.uri`,
entity fields, JSON bodies), over-long lines whose kept 4 KiB prefix carries secrets (some cut in the middle
of a value, inside a block and as lines longer than a block), and lines that are no JSON. Every byte that left
is scanned: what the fake vendors received (decompressed, base64 decoded), stdout, stderr at --log-level debug,
every file of the state directory (checkpoints, dead letters) and their modes. A marker's first 9 characters
name it alone, so a secret cut short is caught as well as a whole one.
"""

from __future__ import annotations

import gzip
import os
import stat

from urllib.parse import unquote_plus

import orjson
import pytest

import gen
import leaks
from conftest import FAST, every_byte_under, ship, ship_env
from fakes.moesif import FakeMoesif
from fakes.runscope import FakeRunscope
from fakes.segment import FakeSegment
from test_masking import readable

BLOCK = 16_384  # a few records a block: many blocks, lines across block ends
MAX_LINE = 6_000  # over it: an Oversize, whose 4 KiB prefix goes to the dead-letter file
CREDENTIALS = {"segment": "ZQ8000001MRKCRED1QZ", "moesif": "ZQ8000002MRKCRED2QZ", "runscope": "ZQ8000003MRKCRED3QZ"}


def env() -> dict[str, str]:
    return ship_env(SEGMENT_WRITE_KEY=CREDENTIALS["segment"], MOESIF_APPLICATION_ID=CREDENTIALS["moesif"],
                    RUNSCOPE_ACCESS_TOKEN=CREDENTIALS["runscope"], RUNSCOPE_BUCKET_KEY="bucket1",
                    KONG_SHIP_BLOCK_BYTES=str(BLOCK))  # fmt: skip


class Log:
    """A log's lines and the markers planted in them."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.markers: list[str] = []
        self.ids: list[str] = []  # request ids of the shipped Kong records, in order
        self.seqs: list[str] = []  # and their x-seq headers
        self.shipped = 0
        self.dead = 0
        self.n = 0

    def marker(self) -> str:
        self.n += 1
        m = leaks.marker(self.n)
        self.markers.append(m)
        return m

    def record(self, seq: int, version: str = "3") -> dict:
        return gen.kong_record(seq, version=version, jwt_sub=f"user-{seq % 5}")

    def add(self, rec: dict) -> None:
        self.lines.append(gen.kong_line(rec))
        if "id" in rec["request"]:  # Kong 3.x: the Segment messageId
            self.ids.append(rec["request"]["id"])
        self.seqs.append(rec["request"]["headers"]["x-seq"])
        self.shipped += 1

    def add_dead(self, line: bytes) -> None:
        self.lines.append(line)
        self.dead += 1


def add_query(rec: dict, name: str, value: str, *, uri: bool = True, url: bool = True) -> None:
    request = rec["request"]
    if uri:
        request["uri"] += f"&{name}={value}"
        request["querystring"][unquote_plus(name)] = value
    if url:
        request["url" if "url" in request else "request_uri"] += f"&{name}={value}"  # 0.x: request_uri


# The variants the brief names, beyond leaks.SHAPES' random ones: each plants one marker in a record.
def _authorization_upper(rec, m):
    rec["request"]["headers"]["AUTHORIZATION"] = f"Bearer {m}"


def _api_key_mixed(rec, m):
    rec["request"]["headers"]["x-Api-KEY"] = m


def _proxy_authorization(rec, m):
    rec["request"]["headers"]["Proxy-Authorization"] = f"Basic {m}"


def _set_cookie_list(rec, m):
    rec["response"]["headers"]["Set-Cookie"] = ["theme=dark", f"sid={m}; Path=/; HttpOnly"]


def _tok65n(rec, m):
    add_query(rec, "tok%65n", m)


def _api5fkey(rec, m):
    add_query(rec, "api%5Fkey", m)


def _double_encoded(rec, m):
    add_query(rec, "api%255Fkey", m)


def _all_encoded(rec, m):
    add_query(rec, "%74%6F%6B%65%6E", m)


def _fragment(rec, m):
    rec["request"]["uri"] += f"#access_token={m}&state=1"
    rec["request"]["url"] += f"#access_token={m}&state=1"


def _url_userinfo(rec, m):
    rec["request"]["url"] = rec["request"]["url"].replace("https://", f"https://alice:{m}@")


def _url_user_token(rec, m):
    rec["request"]["url"] = rec["request"]["url"].replace("https://", f"https://{m}@")


def _fragment_route(rec, m):
    rec["request"]["uri"] += f"#/callback?id_token=x&token={m}"


def _only_in_url(rec, m):
    add_query(rec, "access_token", m, uri=False)


def _only_in_uri(rec, m):
    add_query(rec, "apikey", m, url=False)


def _upstream_uri(rec, m):
    rec["upstream_uri"] = f"/internal/orders?KEY={m}&a=1"


def _upstream_uri_fragment(rec, m):
    rec["upstream_uri"] = f"/internal/orders#token={m}"


def _service_url(rec, m):
    url = f"https://svc:{m}@orders.internal:8443/p"
    rec["service"] = dict(gen.SERVICE, url=url, id="5e7f0000-0000-4000-8000-0000000000a1")


def _service_secret_field(rec, m):
    certificate = {"id": "c1", "key": m}
    rec["service"] = dict(gen.SERVICE, client_certificate=certificate, id="5e7f0000-0000-4000-8000-0000000000a2")


def _route_header(rec, m):
    rec["route"] = dict(gen.ROUTE, headers={"X-API-KEY": [m]}, id="7e7f0000-0000-4000-8000-0000000000a3")


def _consumer_credential(rec, m):
    rec["consumer"] = {"id": "c0ffee00-0000-4000-8000-0000000000a4", "username": "bob", "credentials": {"Secret": m}}


def _request_json_body(rec, m):
    rec["request"]["body"] = {"user": {"login": "bob", "Password": m}, "items": [1, 2]}


def _response_json_text(rec, m):
    rec["response"]["body"] = orjson.dumps({"data": [{"refresh_token": m, "ok": True}]}).decode()


def _form_body(rec, m):
    rec["request"]["body"] = f"grant_type=password&client_secret={m}&user[password]={m}"


def _authenticated_entity(rec, m):
    rec["authenticated_entity"] = {"id": "cred-a5", "consumer_id": "c0ffee00-0000-4000-8000-0000000000a5", "key": m}


VARIANTS = [
    _authorization_upper, _api_key_mixed, _proxy_authorization, _set_cookie_list, _tok65n, _api5fkey,
    _double_encoded, _all_encoded, _fragment, _url_userinfo, _url_user_token, _fragment_route, _only_in_url,
    _only_in_uri, _upstream_uri, _upstream_uri_fragment, _service_url, _service_secret_field, _route_header,
    _consumer_credential, _request_json_body, _response_json_text, _form_body, _authenticated_entity,
]  # fmt: skip

# Where a secret sits when the 4 KiB an over-long line keeps ends in the middle of it (the text before the marker).
CUT_CONTEXTS = [
    b'"headers":{"authorization":"Bearer ', b'"headers":{"AUTHORIZATION":"', b'"headers":{"x-Api-KEY":"',
    b'"headers":{"cookie":"theme=dark; session=', b'"uri":"\\/a?b=1&tok%65n=', b'"uri":"\\/a?api%255Fkey=',
    b'"uri":"\\/a?x=1#access_token=', b'"upstream_uri":"\\/u?token=', b'"body":"{\\"password\\":\\"',
    b'"body":{"user":{"Password":"', b'"body":"a=1&client_secret=', b'"headers":{"x-api-key":["x","',
    b'"querystring":{"api_key":"',
]  # fmt: skip
KEPT = 4096  # reading.PREFIX_BYTES


def over_long(rec: dict, size: int) -> bytes:
    """`rec` as a line of `size` bytes or so: its request first (so its secrets are in the kept prefix), then
    the rest, then padding."""
    ordered = {"request": rec["request"], **{k: v for k, v in rec.items() if k != "request"}}
    line = gen.kong_line(ordered)
    assert len(line) < KEPT - 200, len(line)  # every secret of the record inside the prefix
    return line[:-2] + b',"zpad":"' + b"y" * (size - len(line)) + b'"}\n'


def cut_in_secret(before: bytes, m: str, size: int) -> bytes:
    """A line over the limit whose kept prefix ends 12 characters into the marker, after `before`."""
    head = b'{"started_at":1700000000000,"pad":"'
    filler = KEPT - 12 - len(head) - len(b'",') - len(before) - 1
    line = head + b"x" * filler + b'",' + b"{" + before + m.encode()
    assert line.index(m.encode()) == KEPT - 12
    return line + b'"}' + b"y" * (size - len(line)) + b"\n"


def write_log(path) -> Log:
    log = Log()
    seq = 0
    for round_ in range(2):
        for shape in sorted(leaks.SHAPES):
            rec = log.record(seq := seq + 1, version="302"[seq % 3])  # Kong 0.x, 2.x, 3.x
            leaks.SHAPES[shape](rec, log.marker(), leaks.fixed_pick(seq))
            log.add(rec)
        for variant in VARIANTS:
            rec = log.record(seq := seq + 1)
            variant(rec, log.marker())
            log.add(rec)
        # Over-long lines: inside a block (under BLOCK), and longer than a block (the line path's chunks).
        for size in (MAX_LINE + 2_000, BLOCK + 5_000):
            rec = log.record(seq := seq + 1)
            rec["request"]["headers"]["Authorization"] = f"Bearer {log.marker()}"
            rec["request"]["headers"]["X-API-Key"] = log.marker()
            add_query(rec, "api%5Fkey", log.marker())
            rec["request"]["uri"] += f"#access_token={log.marker()}"
            rec["request"]["body"] = {"login": {"password": log.marker()}}
            rec["upstream_uri"] = f"/up?token={log.marker()}"
            log.add_dead(over_long(rec, size))
        for before in CUT_CONTEXTS:
            log.add_dead(cut_in_secret(before, log.marker(), MAX_LINE + 1_000 + round_ * BLOCK))
        # Lines that are no JSON, or no longer.
        rec = log.record(seq := seq + 1)
        rec["request"]["headers"]["Authorization"] = f"Bearer {log.marker()}"
        rec["request"]["uri"] += f"&tok%65n={log.marker()}#access_token={log.marker()}"
        log.add_dead(gen.kong_line(rec)[:-60] + b"\n")
        log.add_dead(f"GET /x?api%255Fkey={log.marker()} HTTP/1.1 Cookie: sid={log.marker()}\n".encode())
        log.add_dead(b'["not an object", {"X-API-KEY": "' + log.marker().encode() + b'"}]\n')
        # Nginx lines (the Transaction path, no flat one), and Kong records in CRI framing inside a block of plain
        # lines (the block's Framer): one whole, one split into a partial and a final piece.
        for i in range(3):
            trio = [log.marker() for _ in range(3)]
            log.lines.append(gen.nginx_line(leaks.nginx_record(seq + i, trio, leaks.fixed_pick(seq + i))))
            log.shipped += 1
        for split in (False, True):
            rec = log.record(seq := seq + 1)
            rec["request"]["headers"]["X-Auth-Token"] = log.marker()
            add_query(rec, "access%5Ftoken", log.marker())
            body = gen.kong_line(rec)[:-1]
            stamp = b"2024-05-01T10:00:00.000000001Z stdout "
            if split:
                log.lines.append(stamp + b"P " + body[:1500] + b"\n")
                log.lines.append(stamp + b"F " + body[1500:] + b"\n")
            else:
                log.lines.append(stamp + b"F " + body + b"\n")
            log.ids.append(rec["request"]["id"])
            log.seqs.append(rec["request"]["headers"]["x-seq"])
            log.shipped += 1
        rec = log.record(seq := seq + 1)
        rec["request"]["headers"]["Cookie"] = f"sid={log.marker()}"
        log.add_dead(stamp + b"F " + over_long(rec, MAX_LINE + 1_500))  # over the limit, in CRI framing
    # The last line unterminated: reported (by path), never shipped, never shown.
    rec = log.record(seq + 1)
    rec["request"]["headers"]["Authorization"] = f"Bearer {log.marker()}"
    log.lines.append(gen.kong_line(rec)[:-1])
    path.write_bytes(b"".join(log.lines))
    return log


def scan(markers: list[str], where: str, data: bytes) -> list[str]:
    """Each marker found in `data`, whole or its first 9 characters (a secret cut short leaks as much)."""
    text = readable(data)
    return [f"{m} in {where}" for m in markers if m[:9] in text]


def everything_that_left(fake, result, state) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for i, request in enumerate(fake.requests if fake is not None else []):
        body = request.body
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        out[f"request {i} {request.path}"] = request.path.encode() + b"\n" + body
    out["stdout"], out["stderr"] = result.stdout, result.stderr
    out.update(every_byte_under(state))
    return out


def modes_not_private(state) -> dict[str, str]:
    found = {str(state): stat.S_IMODE(os.stat(state).st_mode)}
    for directory, dirs, files in os.walk(state):
        for name in dirs + files:
            path = os.path.join(directory, name)
            found[path] = stat.S_IMODE(os.lstat(path).st_mode)
    return {p: oct(m) for p, m in found.items() if m != (0o700 if os.path.isdir(p) else 0o600)}


FAKES = {
    "segment": lambda: FakeSegment(CREDENTIALS["segment"]),
    "moesif": lambda: FakeMoesif(CREDENTIALS["moesif"]),
    "runscope": lambda: FakeRunscope(CREDENTIALS["runscope"]),
}
SINK_ARGS = {"segment": [], "moesif": [], "runscope": ["--runscope-log-body"], "stdout": []}


def received(name: str, fake) -> int:
    return len(fake.messages if name in ("segment", "runscope") else fake.events)


def backfill(log_path, state, sink: str, url: str | None, *more: str):
    endpoint = ["--endpoint", url] if url else []
    return ship("backfill", str(log_path), "--sink", sink, *endpoint, "--state-dir", str(state), "--workers", "2",
                "--max-line-bytes", str(MAX_LINE), "--log-level", "debug", *FAST, *SINK_ARGS[sink], *more,
                env=env(), timeout=60)  # fmt: skip


@pytest.fixture(scope="module")
def secret_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "kong.json"
    return path, write_log(path)


@pytest.mark.parametrize("sink", ["segment", "moesif", "runscope", "stdout", "segment.gz"])
def test_no_secret_leaves_a_block_backfill_with_workers(tmp_path, secret_log, sink):
    """`segment.gz`: the log gzipped (sources/blocks.py gzip_blocks), whose unterminated last line is shipped. Its
    blocks end elsewhere: the split CRI record's partial piece ends one, and a split container line waiting at
    a block's end in a file that is no container log is dead-lettered, its last piece skipped (transform_block's
    known limit): one record less, one dead letter more."""
    path, log = secret_log
    shipped, dead = log.shipped, log.dead
    if sink.endswith(".gz"):
        sink, path = sink[:-3], tmp_path / "kong.json.gz"
        path.write_bytes(gzip.compress(secret_log[0].read_bytes(), compresslevel=1, mtime=0))
        dead += 1  # shipped: one more (the unterminated last line), one less (the split CRI record)
    state = tmp_path / "state"
    fake = FAKES[sink]() if sink in FAKES else None
    if fake is not None:
        fake.__enter__()
    try:
        result = backfill(path, state, sink, fake.url if fake else None)
        assert result.returncode == 0, result.stderr.decode()[-3000:]
        # Not vacuous: every record arrived (bodies too), the over-long and broken lines were dead-lettered with
        # what could be kept of them, and the run took the block path (the dead letters of lines cut in a block).
        if fake is not None:
            assert received(sink, fake) == shipped
        else:
            assert result.stdout.count(b"\n") == shipped
        letters = [orjson.loads(line) for line in (state / "dead-letter.jsonl").read_bytes().splitlines()]
        assert len(letters) == dead
        if not path.name.endswith(".gz"):  # a plain file's unterminated last line is reported, not read
            assert b"kong.json" in result.stderr and b"newline" in result.stderr.lower()
        too_long = [e for e in letters if e["reason"] == "too_long"]
        assert len(too_long) == 2 * (3 + len(CUT_CONTEXTS)) and all(len(e["line"]) > 3000 for e in too_long)
        assert all("*****" in e["line"] for e in too_long)
        found = []
        for where, data in everything_that_left(fake, result, state).items():
            found += scan(log.markers + list(CREDENTIALS.values()), where, data)
        assert not found, found
        assert not modes_not_private(state)
    finally:
        if fake is not None:
            fake.__exit__(None, None, None)


class RefusingMoesif(FakeMoesif):
    """Answers 400 to a batch holding an event of a record whose `x-seq` header is in `refuse`."""

    def __init__(self, application_id: str, refuse: set[str]):
        super().__init__(application_id)
        self.refuse_seqs = refuse

    def respond(self, req):
        if req.method == "POST":  # the sink always gzips its batches
            events = orjson.loads(gzip.decompress(req.body))
            if any(event["request"]["headers"].get("x-seq") in self.refuse_seqs for event in events):
                return self.refuse(400, "events[0]: refused by the test")
        return super().respond(req)


@pytest.mark.parametrize("refusal", ["segment-400", "segment-413", "moesif-400"])
def test_refused_and_split_batches_made_in_the_workers_leak_nothing(tmp_path, secret_log, refusal):
    """Segment's and Moesif's batches are closed and compressed in the workers; a batch refused (400: events the
    fake rejects; 413: a body over the fake's bound) is decompressed into items and halved: down to the
    offending event, dead-lettered with its event (400), or to halves under the bound, sent again (413). Neither
    the halves sent again nor the dead letters carry a secret."""
    path, log = secret_log
    state = tmp_path / "state"
    sink = refusal.partition("-")[0]
    if refusal == "moesif-400":
        rejected = set(log.seqs[3::7])
        fake: FakeSegment | FakeMoesif = RefusingMoesif(CREDENTIALS["moesif"], rejected)
    else:
        rejected = set(log.ids[3::7]) if refusal == "segment-400" else set()
        fake = FakeSegment(CREDENTIALS["segment"], reject_message_ids=rejected,
                           max_body_bytes=2_400 if refusal == "segment-413" else 500_000)  # fmt: skip
    with fake:
        result = backfill(path, state, sink, fake.url, "--batch-size", "4", "--concurrency", "1")
        letters = [orjson.loads(line) for line in (state / "dead-letter.jsonl").read_bytes().splitlines()]
        refused = [orjson.loads(e["event"]) for e in letters if e["reason"] == "rejected"]
        if refusal == "segment-413":
            assert result.returncode == 0, result.stderr.decode()[-3000:]
            assert len(fake.rejections) >= 5 and {status for status, _ in fake.rejections} == {413}
            assert not refused
        else:  # a backfill with rejected events exits 1 (README: Exit codes)
            assert result.returncode == 1, result.stderr.decode()[-3000:]
            ids = [e["messageId"] if sink == "segment" else e["request"]["headers"]["x-seq"] for e in refused]
            assert sorted(ids) == sorted(rejected)
        assert received(sink, fake) + len(refused) == log.shipped
        found = []
        for where, data in everything_that_left(fake, result, state).items():
            found += scan(log.markers + list(CREDENTIALS.values()), where, data)
        assert not found, found
        assert not modes_not_private(state)

"""Kubernetes container logs: CRI (containerd, CRI-O) and Docker json-file lines, read by the real file source and
shipped by a real `kong-ship` process to the strict fake Segment. Every Kong record carries a unique sequence
number; each test checks the exact set that arrived, and where it matters that the counts add up."""

from __future__ import annotations

import gzip
import os
import pathlib
import threading
import time

import orjson
import pytest

from conftest import FAST, FAST_FOLLOW, ship, ship_env, summary_rows, wait_until
from fakes.segment import FakeSegment
from shipper.formats import Parser
from shipper.sources.container import NOT_ACCESS_LOG, STDERR, Framed, Framer, Ignored, Unframed, runtime_ms
from shipper.sources.files import FileSource, Oversize
from shipper.transform import BLANK, EVENT, IGNORED, INVALID, NormalizedLines, Transformer

SAMPLE = orjson.loads((pathlib.Path(__file__).resolve().parents[1] / "examples" / "kong-3x.jsonl").read_bytes().splitlines()[0])
ENV = ship_env(SEGMENT_WRITE_KEY="test-key")
TIME = "2026-01-01T00:00:00.123456789Z"
TIME_MS = 1767225600123
TEXT_ACCESS = b'10.0.0.1 - - [01/Jan/2026:00:00:00 +0000] "GET /orders HTTP/1.1" 200 12 "-" "curl/8.5.0"'
NOTICE = b"2026/01/01 00:00:00 [notice] 1#0: signal process started"


def record(seq: int) -> bytes:
    rec = orjson.loads(orjson.dumps(SAMPLE))
    rec["request"]["uri"] = f"/orders/{seq}?seq={seq}"
    rec["request"]["url"] = f"https://api.example.com:443/orders/{seq}?seq={seq}"
    rec["request"]["querystring"] = {"seq": str(seq)}
    rec["request"].pop("id", None)
    rec["started_at"] = 1763800000000 + seq
    return orjson.dumps(rec)


def cri(content: bytes, stream: str = "stdout", piece: int = 0) -> bytes:
    """The runtime's lines for one line of a container's stream: split into `piece`-byte P entries, then F."""
    parts = [content[i : i + piece] for i in range(0, len(content), piece)] if piece else [content]
    tags = ["P"] * (len(parts) - 1) + ["F"]
    return b"".join(f"{TIME} {stream} {tag} ".encode() + part + b"\n" for tag, part in zip(tags, parts))


def docker(content: bytes, stream: str = "stdout", piece: int = 0) -> bytes:
    """Docker json-file entries for one line: 16 KiB splits carry no trailing newline, the last one has it."""
    text = content.decode() + "\n"
    parts = [text[i : i + piece] for i in range(0, len(text), piece)] if piece else [text]
    return b"".join(orjson.dumps({"log": part, "stream": stream, "time": TIME}) + b"\n" for part in parts)


def read_all(path, fmt: str = "auto", max_line_bytes: int = 1 << 20) -> list:
    source = FileSource([str(path)], known=lambda fingerprint: {}, follow=False, framing=fmt,
                        max_line_bytes=max_line_bytes)  # fmt: skip
    items = list(source.read_all())
    source.close()
    return items


def seq_of(message: dict) -> int:
    return int(message["properties"]["queryObject"]["seq"])


def exactly_once(fake: FakeSegment, seqs) -> None:
    got = [seq_of(m) for m in list(fake.messages)]
    missing = sorted(set(seqs) - set(got))
    doubled = sorted({s for s in got if got.count(s) > 1})
    extra = sorted(set(got) - set(seqs))
    assert not missing and not doubled and not extra, (missing[:10], doubled[:10], extra[:10])


def args(fake, tmp_path, *more):
    return ["--sink", "segment", "--endpoint", fake.url, "--state-dir", str(tmp_path / "state"), *FAST, *more]


@pytest.fixture
def segment():
    with FakeSegment() as fake:
        yield fake


# -- the framing, through the real file source -----------------------------------------------------------------
def test_cri_pieces_are_joined_and_span_from_the_first_piece_to_the_last(tmp_path):
    log = tmp_path / "0.log"
    body = record(1)
    split = cri(body, piece=100)
    # Kong's error log writes on stderr between the pieces of a stdout line.
    pieces = split.splitlines(keepends=True)
    data = cri(record(0)) + pieces[0] + cri(b"[error] upstream timed out", "stderr") + b"".join(pieces[1:]) + cri(record(2))
    log.write_bytes(data)
    items = read_all(log)
    kinds = [type(item[1]) for item in items]
    assert kinds == [Framed, Ignored, Framed, Framed]
    first, stderr, joined, last = items
    assert first[1].content == record(0) and first[1].logged_at == TIME_MS
    assert joined[1].content == body
    start = len(cri(record(0)))
    assert joined[2] == start and joined[3] == len(data) - len(cri(record(2)))
    # The stderr line is done, but the checkpoint it allows stops where the joined record starts.
    assert stderr[1].counter == STDERR and stderr[3] == start
    assert [item[3] for item in items] == sorted(item[3] for item in items)


def test_docker_16k_splits_are_joined(tmp_path):
    log = tmp_path / "container-json.log"
    big = orjson.loads(record(7))
    big["request"]["headers"]["x-padding"] = "p" * 40_000
    body = orjson.dumps(big)
    log.write_bytes(docker(record(6)) + docker(body, piece=16_384) + docker(b"plain text notice"))
    items = read_all(log)
    assert [type(item[1]) for item in items] == [Framed, Framed, Ignored]
    assert items[1][1].content == body and items[1][1].logged_at == TIME_MS
    assert items[1][2] == len(docker(record(6))) and items[2][1].counter == NOT_ACCESS_LOG


def test_plain_lines_and_a_plain_file_are_untouched(tmp_path):
    log = tmp_path / "kong.json"
    log.write_bytes(record(1) + b"\n" + b"not json\n\n")
    items = read_all(log)
    assert [item[1] for item in items] == [record(1), b"not json", b""]


def test_forced_framing_dead_letters_other_lines_and_auto_keeps_them_as_they_are(tmp_path):
    log = tmp_path / "0.log"
    log.write_bytes(record(1) + b"\n" + cri(record(2)))
    forced = read_all(log, "cri")
    assert type(forced[0][1]) is Unframed and type(forced[1][1]) is Framed
    assert [type(item[1]) for item in read_all(log, "docker")] == [Unframed, Unframed]
    assert [type(item[1]) for item in read_all(log, "auto")] == [bytes, Framed]


def test_a_joined_line_over_max_line_bytes_is_too_long_whole(tmp_path):
    log = tmp_path / "0.log"
    big = cri(b"{" + b"x" * 5000 + b"}", piece=1000)
    log.write_bytes(cri(record(1)) + big + cri(record(2)))
    items = read_all(log, max_line_bytes=4000)
    assert [type(item[1]) for item in items] == [Framed, Oversize, Framed]
    assert items[1][2] == len(cri(record(1))) and items[1][3] == len(cri(record(1))) + len(big)
    assert items[1][1].length == 5002


def test_a_split_line_without_its_last_piece_waits_in_a_plain_file_and_ends_a_compressed_one(tmp_path):
    head = cri(record(1))
    tail = cri(record(2), piece=200).splitlines(keepends=True)[:-1]  # no F yet
    plain = tmp_path / "0.log"
    plain.write_bytes(head + b"".join(tail))
    source = FileSource([str(plain)], known=lambda fingerprint: {}, follow=False)
    assert [type(item[1]) for item in source.read_all()] == [Framed]
    assert source.unterminated == [(str(plain), sum(map(len, tail)))]
    packed = tmp_path / "0.log.20260101-000000.gz"
    packed.write_bytes(gzip.compress(head + b"".join(tail)))
    items = read_all(packed)
    assert [type(item[1]) for item in items] == [Framed, Framed]  # what there is, for the parsers to judge


def test_runtime_times():
    assert runtime_ms("2026-01-01T01:00:00.123456789+01:00") == TIME_MS
    assert runtime_ms(b"2026-01-01T00:00:00.1234Z") == TIME_MS
    assert runtime_ms(b"2026-01-01T00:00:00Z") == TIME_MS - 123
    assert runtime_ms(b"yesterday") is None and runtime_ms(b"2026-01-01T00:00:00") is None


def test_framer_rejects_an_unknown_mode():
    with pytest.raises(ValueError):
        Framer("json", 100)


# -- the transformer -------------------------------------------------------------------------------------------
def test_the_runtime_time_dates_a_record_without_started_at():
    transform = Transformer(Parser("cri"), [], NormalizedLines())
    rec = orjson.loads(record(1))
    del rec["started_at"]
    fate, payload, _ = transform("f1", Framed(orjson.dumps(rec), TIME_MS), 0, 10)
    txn = orjson.loads(payload)
    assert fate == EVENT and txn["started_at_estimated"] is False
    assert txn["started_at"] == TIME_MS - int(rec["latencies"]["request"])
    fate, payload, _ = transform("f1", Framed(record(1), TIME_MS), 0, 10)
    assert orjson.loads(payload)["started_at"] == 1763800000001  # the record's own time wins
    assert transform("f1", Ignored(STDERR), 0, 10) == (IGNORED, STDERR, False)
    assert transform("f1", Framed(b"", TIME_MS), 0, 10)[0] == BLANK
    assert transform("f1", Unframed(b"x", "not a cri log line"), 0, 10)[0] == INVALID
    assert transform("f1", Framed(b'{"a": 1}', TIME_MS), 0, 10)[1][0] == "unknown_format"  # as today


# -- a real `kong-ship` ------------------------------------------------------------------------------------------
def test_backfill_of_a_cri_log_ships_kongs_records_once_and_counts_its_own_lines_as_skipped(segment, tmp_path):
    log = tmp_path / "0.log"
    with open(log, "wb") as out:
        for seq in range(300):
            out.write(cri(record(seq), piece=700 if seq % 3 == 0 else 0))
            if seq % 10 == 0:
                out.write(cri(TEXT_ACCESS) + cri(b"[warn] 1#0: *5 a client request body is buffered", "stderr"))
        out.write(cri(NOTICE) + cri(b"{broken", "stdout"))
    result = ship("backfill", str(log), *args(segment, tmp_path), env=ENV)
    assert result.returncode == 0, result.stderr
    exactly_once(segment, range(300))
    row = summary_rows(result.stderr)["segment"]
    assert row["shipped"] == 300 and row["skipped"] == 30 + 30 + 1 and row["dead-lettered"] == 1
    assert row["read"] == row["shipped"] + row["skipped"] + row["dead-lettered"] + row.get("blank", 0)
    dead = [orjson.loads(x) for x in (tmp_path / "state" / "dead-letter.jsonl").read_bytes().splitlines()]
    assert [d["reason"] for d in dead] == ["not_json"] and dead[0]["line"] == "{broken"

    again = ship("backfill", str(log), *args(segment, tmp_path), env=ENV)
    assert again.returncode == 0
    exactly_once(segment, range(300))


def test_backfill_of_a_docker_json_file_log(segment, tmp_path):
    log = tmp_path / "abc-json.log"
    with open(log, "wb") as out:
        for seq in range(100):
            out.write(docker(record(seq), piece=500 if seq % 2 else 0))
            out.write(docker(b"[notice] worker started", "stderr"))
    # In worker processes: what the framing makes of a line crosses to them and back.
    result = ship("backfill", str(log), *args(segment, tmp_path, "--format", "docker", "--workers", "2"), env=ENV)
    assert result.returncode == 0, result.stderr
    exactly_once(segment, range(100))
    assert summary_rows(result.stderr)["segment"]["skipped"] == 100


def test_a_crash_never_halves_a_joined_record(segment, tmp_path):
    """The last record's pieces are on disk but its last piece is not: it is not shipped, and the checkpoint
    stays before its first piece, so the next run ships it whole, once."""
    log = tmp_path / "0.log"
    pieces = cri(record(20), piece=300).splitlines(keepends=True)
    with open(log, "wb") as out:
        for seq in range(20):
            out.write(cri(record(seq)))
        out.write(b"".join(pieces[:-1]) + cri(b"[error] oops", "stderr"))
    result = ship("backfill", str(log), *args(segment, tmp_path), env=ENV)
    assert result.returncode == 0, result.stderr
    exactly_once(segment, range(20))
    assert "unfinished line" in result.stderr.decode()
    with open(log, "ab") as out:
        out.write(pieces[-1] + cri(record(21)))
    again = ship("backfill", str(log), *args(segment, tmp_path), env=ENV)
    assert again.returncode == 0, again.stderr
    exactly_once(segment, range(22))


def test_parse_dates_a_timeless_record_with_the_runtime_time(tmp_path):
    rec = orjson.loads(record(1))
    del rec["started_at"]
    log = tmp_path / "0.log"
    log.write_bytes(cri(orjson.dumps(rec), piece=400) + cri(TEXT_ACCESS))
    result = ship("parse", str(log))
    assert result.returncode == 0, result.stderr
    (txn,) = [orjson.loads(x) for x in result.stdout.splitlines()]
    assert txn["started_at"] == TIME_MS - int(rec["latencies"]["request"]) and not txn["started_at_estimated"]


class Runtime:
    """A container runtime writing Kong's stdout to `0.log` as kubelet rotates it: rename to
    `0.log.<timestamp>`, a few late writes to the renamed file, reopen; later the rotated file gzip-compressed
    (`.tmp`, then renamed to `.gz`, the original removed)."""

    def __init__(self, directory: pathlib.Path):
        self.dir = directory
        self.path = directory / "0.log"
        self.out = open(self.path, "ab")
        self.lock = threading.Lock()
        self.seq = 0
        self.rotated: list[pathlib.Path] = []

    def write(self, n: int) -> None:
        with self.lock:
            for _ in range(n):
                seq = self.seq
                self.out.write(cri(record(seq), piece=900 if seq % 4 == 0 else 0))
                if seq % 7 == 0:
                    self.out.write(cri(TEXT_ACCESS) + cri(b"[error] upstream reset", "stderr"))
                self.seq += 1
            self.out.flush()

    def rotate(self, n: int) -> None:
        with self.lock:
            target = self.dir / f"0.log.20260101-00000{n}"
            os.rename(self.path, target)
        self.write(5)  # the runtime has not reopened yet
        with self.lock:
            self.out.close()
            self.out = open(self.path, "ab")
        self.rotated.append(target)

    def compress(self, target: pathlib.Path) -> None:
        tmp = target.with_name(target.name + ".tmp")
        with open(target, "rb") as src, gzip.open(tmp, "wb") as dst:
            dst.write(src.read())
        os.rename(tmp, target.with_name(target.name + ".gz"))
        os.remove(target)


def test_tail_follows_kubelet_rotation_and_compression_without_loss_or_duplicates(segment, tmp_path, shippers):
    pod = tmp_path / "pods" / "kong_kong-7d9f_0f1e" / "proxy"
    pod.mkdir(parents=True)
    runtime = Runtime(pod)
    runtime.write(50)
    glob = str(tmp_path / "pods" / "*" / "*" / "*.log*")
    proc = shippers("tail", glob, "--sink", "segment", "--endpoint", segment.url, "--state-dir",
                    str(tmp_path / "state"), *FAST_FOLLOW, env=ENV)  # fmt: skip
    stop = threading.Event()

    def kong() -> None:
        while not stop.is_set():
            runtime.write(3)
            time.sleep(0.005)

    writer = threading.Thread(target=kong)
    writer.start()
    try:
        for n in range(3):
            time.sleep(0.4)
            runtime.rotate(n)
            if n:
                time.sleep(0.2)
                runtime.compress(runtime.rotated[n - 1])  # kubelet keeps the newest rotation uncompressed
    finally:
        stop.set()
        writer.join()
    runtime.write(10)
    total = runtime.seq
    assert wait_until(lambda: len(segment.messages) >= total, timeout=30), (len(segment.messages), total)
    time.sleep(1.0)  # anything sent twice would arrive by now
    code, _, err = proc.stop()
    assert code == 0, err
    exactly_once(segment, range(total))
    assert "not access-log records" in err and "stderr lines" in err  # the live status line, when stopping
    assert sorted(p.name for p in pod.iterdir()) == [
        "0.log", "0.log.20260101-000000.gz", "0.log.20260101-000001.gz", "0.log.20260101-000002"
    ]


def test_metrics_count_the_skipped_lines_by_kind(segment, tmp_path, shippers):
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "0.log"
    log.write_bytes(cri(record(1)) + cri(TEXT_ACCESS) * 2 + cri(b"[error] boom", "stderr") * 3)
    proc = shippers("tail", str(log), "--sink", "segment", "--endpoint", segment.url, "--state-dir",
                    str(tmp_path / "state"), "--metrics-addr", f"127.0.0.1:{port}", *FAST_FOLLOW, env=ENV)  # fmt: skip

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                return answer.read().decode()
        except OSError:
            return ""

    text = wait_until(lambda: (t := scrape()) and "kong_ship_stderr_lines_total 3.0" in t and t)
    code, _, err = proc.stop()
    assert code == 0, err
    assert "kong_ship_lines_not_access_log_total 2.0" in text and "kong_ship_stderr_lines_total 3.0" in text, text
    assert 'kong_ship_events_skipped_total{sink="segment"} 5.0' in text
    exactly_once(segment, [1])

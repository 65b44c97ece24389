"""Container runtime log files: a line framing in front of the parsers, not a parser.

In Kubernetes, Kong's file-log points at /dev/stdout and the container runtime writes each line of the stream,
wrapped, to a file under /var/log/pods:

- CRI (containerd, CRI-O): `<RFC3339Nano time> <stdout|stderr> <tag> <content>`; the tag is `F` for a whole
  line or `P` for a piece of one (the runtime splits lines longer than its buffer, 16 KiB by default), possibly
  followed by `:`-separated extras;
- Docker's json-file: `{"log":"<content>\\n","stream":"stdout","time":"<RFC3339Nano>"}`; a line over 16 KiB is
  split into several entries, all but the last without the trailing newline.

A `Framer` (one per open file) unwraps each entry, joins the pieces of a split line, and hands on one of:
`Framed` (content for the parsers, with the runtime's time), `Ignored` (stderr, or stdout that is no JSON
object: Kong's own text access log and notices; counted, not dead-lettered), `Unframed` (a line that is not in
the framing `--format` forces: dead-lettered), `Oversize` (a joined line over --max-line-bytes), or the line
itself (auto mode: a line in no container framing goes to the parsers as it is).

Positions: a joined record runs from its first piece's offset to its last piece's end. While a stdout record is
waiting for its last piece, whatever else is handed on (stderr entries written in between) ends, as far as the
checkpoints know, where that record starts: a checkpoint never lands inside a joined record, so a crash resends
the whole record, never its second half.

Detection in auto mode costs a plain file one byte comparison per line: a line that does not start with `{` is
tried as CRI; one that does is a plain JSON line, except in a file whose first line is Docker's (dockerd writes
nothing else there), where every line is tried as json-file.

Known limit: a line whose pieces the runtime wrote on both sides of a rotation (it reopened the file between
them) is two fragments: the rotated file's is dead-lettered, as the broken JSON it is, once its compressed copy
is read (a file that may still grow keeps it waiting); the new file's does not start like a JSON object
(skipped, `not_access_log`).

A raw line over --max-line-bytes (possible for a piece only with a limit under the runtime's 16 KiB split) is
not unwrapped, but what it is shows in its first bytes (CRI) or last bytes (json-file: the stream and whether
the text ends with a newline), so a record split into such pieces is still one dead letter, and stderr is
skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import orjson

from shipper.formats.values import MAX_EPOCH_MS, MAX_LATENCY_MS
from shipper.sources.reading import DOCKER_PREFIX, PREFIX_BYTES, Oversize

FRAMINGS = ("auto", "cri", "docker")
# How dockerd ends a json-file entry (jsonlog's MarshalJSONBuf: log, stream, attrs if any, time): the backslashes
# and character that end the `log` text, the stream, the time.
_DOCKER_END = re.compile(rb'(\\*)(.)","stream":"(stdout|stderr)"(?:,"attrs":\{[^{}]*\})?,"time":"([^"]*)"\}\s*$')
STDERR = "stderr_lines"  # the counters (shipper/counters.py) these lines are counted in, besides `skipped`
NOT_ACCESS_LOG = "not_access_log"


@dataclass(slots=True)
class Framed:
    """A container log line's content (its pieces joined), and when the runtime wrote it (epoch ms, or None)."""

    content: bytes
    logged_at: int | None


@dataclass(slots=True)
class Ignored:
    """A container log line that holds no access-log record; `counter` says which kind (STDERR, NOT_ACCESS_LOG)."""

    counter: str


@dataclass(slots=True)
class Unframed:
    """A line that is not in the framing `--format` forces."""

    line: bytes
    detail: str


# (file_id, item, offset of its first byte, offset just past its last byte as far as checkpoints go)
Item = tuple[str, "bytes | Oversize | Framed | Ignored | Unframed", int, int]


class Framer:
    """The framing state of one open file: `mode` is `auto`, `cri` or `docker`. Only stdout lines are ever
    joined (stderr is ignored whole, piece by piece), so at most one record is pending."""

    __slots__ = ("mode", "limit", "direct", "pending_from", "_plain_json", "_pieces", "_size", "_time")

    def __init__(self, mode: str, limit: int):
        if mode not in FRAMINGS:
            raise ValueError(f"unknown container log framing {mode!r}")
        self.mode = mode
        self.limit = limit  # --max-line-bytes, for the joined content
        self.pending_from: int | None = None  # offset of the first piece of the stdout record being joined
        self._pieces: list[bytes] = []
        self._size = 0
        self._time: bytes | str | None = None
        # In auto mode a line starting with `{` is a plain JSON line (the hot path: `reading.emit` pays one byte
        # comparison for it), except in a file whose first line is Docker's (dockerd writes nothing else there).
        self._plain_json = mode == "auto"
        self.direct = self._plain_json  # ... and nothing is pending

    def start(self, head: bytes) -> None:
        """A file (re)positioned: nothing pending; `head` is its first line."""
        self._plain_json = self.mode == "auto" and not head.startswith(DOCKER_PREFIX)
        self.reset()

    def reset(self) -> None:
        self.pending_from, self._pieces, self._size, self._time = None, [], 0, None
        self.direct = self._plain_json

    def frame(self, file_id: str, line: bytes | Oversize, start: int, end: int) -> Iterator[Item]:
        if isinstance(line, Oversize):
            # A raw line over --max-line-bytes: its content cannot be unwrapped, but a CRI line's first bytes say
            # what it is, and a json-file entry's last ones. A piece of stdout is taken as the next piece of its
            # record, so the record (too long either way) ends as one dead letter at its last piece; stderr is
            # skipped as ever. Anything else (no last bytes were kept: a block's line) ends the record here.
            told = self._cri(line.prefix) if self.mode != "docker" else None
            if told is None and self.mode != "cri":
                told = self._docker_ends(line)
            if told is not None and told[0] != "stdout":
                yield self._clamped(file_id, Ignored(STDERR), start, end)
            elif told is not None and told[1]:
                if self.pending_from is None:
                    self.pending_from, self._time, self.direct = start, told[3], False
                self._size += line.length
                self._pieces = [(b"".join(self._pieces) + told[2])[:PREFIX_BYTES]]
            else:
                yield self._oversize(file_id, line, start, end)
            return
        entry: tuple[str, bool, bytes, bytes | str | None] | None = self._cri(line) if self.mode != "docker" else None
        if entry is None and self.mode != "cri":
            entry = self._docker(line)
        if entry is None:
            if self.mode == "auto":
                yield self._clamped(file_id, line, start, end)  # no container line: the parsers decide
            else:
                yield self._clamped(file_id, self._unframed(line), start, end)
            return
        stream, partial, content, when = entry
        if stream != "stdout":
            yield self._clamped(file_id, Ignored(STDERR), start, end)
            return
        if self.pending_from is None:
            if not partial:
                yield file_id, self._record(content, when), start, end
                return
            self.pending_from, self._time, self.direct = start, when, False
        self._size += len(content)
        self._pieces.append(content)
        if self._size > self.limit:
            # Over --max-line-bytes: only the dead letter's prefix is kept, so memory stays bounded.
            self._pieces = [b"".join(self._pieces)[:PREFIX_BYTES]]
        if not partial:
            yield self.finish(file_id, end)

    def _unframed(self, line: bytes) -> Unframed:
        """A line not in the forced framing. One of the other framing (`--format docker` on a CRI log) may be a
        piece cut inside a token, which no mask can tell from text: its content is not kept (the file has it)."""
        other = "docker" if self.mode == "cri" else "cri"
        if (self._docker(line) if other == "docker" else self._cri(line)) is not None:
            return Unframed(b"", f"a {other} log line, not {self.mode} (--format {self.mode}; its content is not kept)")
        return Unframed(line, f"not a {self.mode} log line (--format {self.mode})")

    def finish(self, file_id: str, end: int) -> Item:
        """The pending record, ended at `end` (its last piece, or the end of a file that will not grow)."""
        start, size, pieces, when = self.pending_from, self._size, self._pieces, self._time
        assert start is not None
        self.reset()
        content = b"".join(pieces)
        if size > self.limit:
            return file_id, Oversize(content[:PREFIX_BYTES], size), start, end
        return file_id, self._record(content, when), start, end

    def _oversize(self, file_id: str, line: Oversize, start: int, end: int) -> Item:
        if self.pending_from is None:
            return file_id, line, start, end
        first = self.pending_from
        prefix = b"".join(self._pieces)[:PREFIX_BYTES]
        size = self._size + line.length
        self.reset()
        return file_id, Oversize(prefix, size), first, end

    def _clamped(self, file_id: str, item: bytes | Ignored | Unframed, start: int, end: int) -> Item:
        # Written between the pieces of a stdout record: done, but the checkpoint must not pass that record's start.
        return file_id, item, start, end if self.pending_from is None else self.pending_from

    @staticmethod
    def _record(content: bytes, when: bytes | str | None) -> Framed | Ignored:
        if not content.startswith(b"{"):
            stripped = content.strip()
            if stripped and not stripped.startswith(b"{"):
                return Ignored(NOT_ACCESS_LOG)  # Kong's text access log, nginx notices: no JSON objects
        return Framed(content, runtime_ms(when))

    @staticmethod
    def _cri(line: bytes) -> tuple[str, bool, bytes, bytes] | None:
        """(stream, partial, content, time) of a CRI line, or None if it is not one."""
        space = line.find(b" ", 0, 40)
        if space < 20 or line[4:5] != b"-" or line[10:11] != b"T":
            return None
        rest = space + 1
        if line.startswith(b"stdout ", rest):
            stream = "stdout"
        elif line.startswith(b"stderr ", rest):
            stream = "stderr"
        else:
            return None
        tag_at = rest + 7
        tag_end = line.find(b" ", tag_at)
        tag = line[tag_at:] if tag_end < 0 else line[tag_at:tag_end]
        kind = tag.split(b":", 1)[0]
        if kind not in (b"P", b"F"):
            return None
        content = b"" if tag_end < 0 else line[tag_end + 1 :]
        return stream, kind == b"P", content, line[:space]

    @staticmethod
    def _docker_ends(line: Oversize) -> tuple[str, bool, bytes, bytes] | None:
        """(stream, partial, content's start, time) of a json-file entry too long to read, from its first and last
        bytes; None if they do not say (not an entry, no last bytes, a run of backslashes longer than them)."""
        if not line.prefix.startswith(DOCKER_PREFIX):
            return None
        end = _DOCKER_END.search(line.suffix)
        if end is None or end.start() == 0:
            return None
        # The text ends with a newline when its last escape is `\n`: an odd run of backslashes before an `n`.
        partial = not (end.group(2) == b"n" and len(end.group(1)) % 2 == 1)
        stream = "stdout" if end.group(3) == b"stdout" else "stderr"
        content = line.prefix[len(DOCKER_PREFIX) + 1 :]  # raw JSON text: kept for the dead letter's prefix only
        return stream, partial, content, end.group(4)

    @staticmethod
    def _docker(line: bytes) -> tuple[str, bool, bytes, str | None] | None:
        """(stream, partial, content, time) of a json-file entry, or None if it is not one."""
        if not line.startswith(DOCKER_PREFIX):
            return None
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None  # a broken entry: the parsers dead-letter it as the JSON it is not
        log = entry.get("log") if type(entry) is dict else None
        stream = entry.get("stream") if type(entry) is dict else None
        if type(log) is not str or stream not in ("stdout", "stderr"):
            return None
        partial = not log.endswith("\n")
        content = log[:-1] if not partial else log
        when = entry.get("time")
        return stream, partial, content.encode(), when if type(when) is str else None


def runtime_ms(when: bytes | str | None) -> int | None:
    """The runtime's RFC 3339 time (nanoseconds, `Z` or an offset) as epoch ms; None if it is not one, or not one
    a sink can date a record by: it must be an ISO date up to 9999, and less any request's latency (at most
    MAX_LATENCY_MS, subtracted by the parser) still after 1970. (Year 1 made Segment's encoder fail, and Runscope
    and the webhook send negative times.)"""
    if when is None:
        return None
    text = when.decode("ascii", "replace") if isinstance(when, bytes) else when
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dot = text.find(".")
    if dot > 0:
        # datetime takes at most 6 fractional digits; the runtimes write 9 (and CRI-O drops trailing zeros).
        digits = dot + 1
        while digits < len(text) and text[digits].isdigit():
            digits += 1
        text = text[: min(digits, dot + 7)] + text[digits:]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # no zone: not a time the runtime wrote
    ms = int(moment.timestamp() * 1000)
    return ms if MAX_LATENCY_MS < ms <= MAX_EPOCH_MS else None

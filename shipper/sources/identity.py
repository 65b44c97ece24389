"""Which file is this, and where did we stop in it?

A file is known by its content, not its path or inode, so that a renamed file, a file logrotate compressed (new
inode, same bytes) and a re-pointed symlink keep their place, and a reused inode is not taken for the file that
had it. The content has two parts:

- the *fingerprint*: a hash of the first line (at most `HEAD_BYTES`). It only says "maybe the same file": two
  gateways' logs may begin with the same record, or with a blank line, or differ only after a 5 KB cookie;
- the *tail hash*: a hash of the `TAIL_BYTES` just before a position, kept with each checkpoint. A file with the
  fingerprint is taken to continue a known position only if its bytes before that position hash the same.
  4 KiB, not the last line's end: every Kong file-log line ends with the same bytes (its workspace and service
  ids), so 64 bytes (as before) matched at any line boundary, and a new file beginning like the old one (a blank
  first line, a long shared first line) whose lines fell at the same offset took the old one's position: its
  first lines were never read. A hash written before (16 hex digits, no `2:`) still confirms over 64 bytes.

An identity (`file_id`) is the fingerprint, `f` + 16 hex digits, for the first file seen with it (so the ids of
earlier versions, and the event ids derived from them, stay valid), and the fingerprint plus `.` and a
discriminator for any other file with the same fingerprint. Two files that exist at the same time and differ
are never one identity; a byte-for-byte copy of a file (the `.gz` logrotate makes, the copy `copytruncate`
makes) is, up to where the original had been read, because those bytes are already shipped.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("kong-ship")

HEAD_BYTES = 4096  # the fingerprint covers the first line, or this many bytes if the first line is longer
TAIL_BYTES = 4096  # bytes before a position whose hash confirms it
LEGACY_TAIL_BYTES = 64  # what a hash without the `2:` mark covers (checkpoints written before 4 KiB)


@dataclass(slots=True, frozen=True)
class Known:
    """A position known for an identity: from a checkpoint, or from a file this run let go of."""

    offset: int
    tail: str | None  # hash of the bytes before `offset`; None when it could not be taken (older gzip entries)
    path: str = ""


def identity(head: bytes) -> str:
    """The fingerprint of a file whose head (first line, or first `HEAD_BYTES`) is `head`."""
    return "f" + hashlib.blake2b(head, digest_size=8).hexdigest()


def head_of(data: bytes) -> bytes | None:
    """The identifying head in the first `HEAD_BYTES` of a file, or None while its first line is incomplete."""
    newline = data.find(b"\n")
    if newline >= 0:
        return data[: newline + 1]
    return data if len(data) >= HEAD_BYTES else None


def family(file_id: str) -> str:
    """The fingerprint part of an identity."""
    return file_id.partition(".")[0]


def tail_hash(data: bytes) -> str:
    """The tail hash of `data`, the (up to) TAIL_BYTES before a position."""
    return "2:" + hashlib.blake2b(data, digest_size=8).hexdigest()


def new_id(fingerprint: str, key: tuple[int, int], taken: Callable[[str], bool]) -> str:
    """An identity for a file seen for the first time: the bare fingerprint when no other file uses it, else one
    derived from its device and inode (stable across restarts until a checkpoint holds it; a counter steps over
    a reused inode's old identity)."""
    if not taken(fingerprint):
        return fingerprint
    n = 0
    while True:
        candidate = fingerprint + "." + hashlib.blake2b(f"{key[0]}:{key[1]}:{n}".encode(), digest_size=4).hexdigest()
        if not taken(candidate):
            return candidate
        n += 1


def confirms(known: Known, size: int | None, read_before: Callable[[int], bytes]) -> bool:
    """Does a file with the same fingerprint continue this known position? `size` is None for gzip files
    (their decompressed size is unknown until read); `read_before(offset)` gives the bytes before an offset."""
    if known.offset == 0:
        return True
    if size is not None and known.offset > size:
        return False  # shorter than our position: rewritten, truncated, or another file
    if known.tail is None:
        return True  # nothing more to compare (entries written without a tail hash)
    before = read_before(known.offset)
    if not known.tail.startswith("2:"):  # written before TAIL_BYTES was 4 KiB: its last 64 bytes
        return hashlib.blake2b(before[-LEGACY_TAIL_BYTES:], digest_size=8).hexdigest() == known.tail
    return tail_hash(before) == known.tail


def choose(
    fingerprint: str,
    known: dict[str, Known],
    held: set[str],
    path: str,
    size: int | None,
    read_before: Callable[[int], bytes],
) -> tuple[str, int] | None:
    """The known identity this file continues, and where: the furthest confirmed position among the identities
    of its fingerprint that no open file holds. None: a file not seen before."""
    for file_id, entry in sorted(known.items(), key=lambda kv: -kv[1].offset):
        if file_id in held or family(file_id) != fingerprint:
            continue
        if confirms(entry, size, read_before):
            return file_id, entry.offset
        if entry.path == path:
            log.warning(
                "%s no longer holds what was read from it at offset %d (rewritten or replaced): reading it from "
                "its start as a new file",
                path,
                entry.offset,
            )
    return None

"""The C allocator's settings for the process: big buffers in mappings of their own, so memory stays flat.

glibc's malloc serves a request of 128 KiB or more with a mapping of its own, returned to the system when it is
freed, but the first time such a mapping is freed it raises that bound to the freed size (up to 32 MiB) and the
bound for giving back the top of a heap to twice that. The shipper's big buffers are short-lived and come back
every few milliseconds: a block of lines for a worker (1 MiB, pickled in the queue's feeder thread, a chunk of
512 lines when this was measured; now copied into memory shared with the workers, workers.BlockRing), the
worker's events read back from its pipe (about 0.8 MB, in the reader), a vendor's request body and its gzip
(up to 500 KB, in each sender thread). Once the bound is raised they are cut from the heaps of the threads'
arenas instead, and the small events that live longer (queued, in a batch) settle in the holes between them and
pin those pages: in the main process of a backfill with workers, Python's own objects stay the same (allocated
blocks, malloc's used bytes: 17-21 MB) while glibc's heaps, spread over eight arenas, grew from 28 MB (9 free)
to 48 MB (25 free) over a million records. Fixing the bound at glibc's default (which also stops its
adjustment) keeps the heaps for small objects, for a few more mmap/munmap calls per chunk and per batch.

What is left creeps more slowly: the lines (about 2.7 KB) and events (about 1.5 KB) are too big for Python's
own allocator, live for different times, and the pieces glibc splits off between them are seldom the size
of the next one: free space inside the heaps still grows, by 1-2 MB per 100k records. `malloc_trim` hands the
free pages among them back to the system (they are mapped again when used); done every few seconds, by a
thread of its own, it keeps the resident memory flat. Backfill to a loopback Segment, default workers, main
process's peak RSS at 100k and 1M records: 74.4 and 90.5 MiB before, 66.6 and 70.0 MiB with both.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
BIG_BUFFER = 128 * 1024  # glibc's default bound, kept fixed
WORKER_HEAP = 4 * 1024 * 1024  # keep_worker_heap: over a block (1 MiB, or a gzip block with a long line carried in)
TRIM_INTERVAL = 5.0  # seconds between malloc_trim calls

_trimming: threading.Thread | None = None


def map_big_buffers() -> bool:
    """Fix glibc's mmap bound at `BIG_BUFFER`; False where it cannot be set (not glibc, or MALLOC_MMAP_THRESHOLD_
    in the environment: whoever set it chose for themselves). Call it once, before the worker processes fork
    (they inherit it)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    mallopt = _libc_function("mallopt")
    return mallopt is not None and mallopt(M_MMAP_THRESHOLD, BIG_BUFFER) == 1


def keep_worker_heap(bound: int = WORKER_HEAP) -> bool:
    """In a worker process: serve buffers up to `bound` from the heap and keep that much free at its top, so
    what one block needs (its 1 MiB of bytes, its lines, their events) is mapped once and used again by the next
    block, instead of mapped, faulted in page by page and unmapped for every block. A worker's memory is one
    block's working set, the same from block to block: nothing settles between long-lived objects as in the
    reader, so its heap stays as big as one block needs (a few MiB; what a huge line took above `2 * bound` is
    given back). Measured: copying a 1 MiB block out of shared memory and splitting it took 5.2 µs a line with
    glibc's 128 KiB bounds, 1.8-2.1 with these; a backfill's workers went from 79-81 to 68 µs a record."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return mallopt(M_MMAP_THRESHOLD, bound) == 1 and mallopt(M_TRIM_THRESHOLD, 2 * bound) == 1


def return_free_pages(interval: float = TRIM_INTERVAL) -> threading.Thread | None:
    """Start a daemon thread that gives the heaps' free pages back every `interval` seconds; None without
    glibc's malloc_trim. (It holds no lock of Python's: ctypes lets go of the GIL for the call, and glibc
    takes each arena's lock, as a fork does, so forking workers beside it is safe.)"""
    global _trimming
    if _trimming is not None:  # once per process (tests call main() many times)
        return _trimming
    trim = _libc_function("malloc_trim")
    if trim is None:
        return None

    def run() -> None:
        while True:
            time.sleep(interval)
            trim(0)

    _trimming = threading.Thread(target=run, name="malloc-trim", daemon=True)
    _trimming.start()
    return _trimming


def _libc_function(name: str):
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # no C library to load, or one without it (musl, macOS)
        return None

"""Big buffers stay out of the heaps (issue 16's flat memory; why in shipper/allocator.py).

glibc raises its mmap bound to the size of the first mapped block freed, so the next block of that size is cut
from a heap, where the small objects allocated around it pin its pages once it is freed. kong-ship's main()
fixes the bound first: the second big block must be a mapping of its own, as the first was. Each case runs in
a process of its own, as kong-ship does (the bound is the process's); both read glibc's own count of mapped
bytes (mallinfo2), so the test says what the allocator did, not what a timing or an RSS suggests.
"""

from __future__ import annotations

import ctypes
import pathlib
import subprocess
import sys

import pytest

from shipper.allocator import map_big_buffers

# Frees a 1 MiB block, then allocates another and prints how many bytes glibc holds in mappings meanwhile.
PROBE = """
import ctypes, sys
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "fixed":
    from shipper.allocator import map_big_buffers
    assert map_big_buffers()
before = libc.mallinfo2().hblkhd
libc.free(libc.malloc(1 << 20))  # the first big block: mapped, and its free raises glibc's bound
second = libc.malloc(1 << 20)
print(libc.mallinfo2().hblkhd - before)
libc.free(second)
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        libc = ctypes.CDLL(None)
        return hasattr(libc, "mallinfo2") and hasattr(libc, "mallopt")
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc's malloc (2.33 or later) only")


def _mapped_during_second_block(mode: str) -> int:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_after_a_big_block_is_freed_the_next_one_is_still_a_mapping_of_its_own():
    assert _mapped_during_second_block("fixed") >= 1 << 20


def test_without_the_fixed_bound_glibc_would_cut_it_from_a_heap():
    # What the fix is for: the probe is able to tell the two apart.
    assert _mapped_during_second_block("default") < 1 << 20


def test_a_bound_chosen_in_the_environment_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert map_big_buffers() is False

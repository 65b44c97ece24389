"""When a followed file can be passed over on a round: nothing was written, truncated or rewritten since a round
that found nothing in it.

An idle tail over hundreds of files (old rotations matched by a glob) read every file on every round (each
--poll-interval and each notification): the copytruncate checks (its first line, the bytes before our position)
and a read of a chunk that returned nothing, three reads a file, for nothing. One look now tells (discovery's
stat of its path on the round it runs, an fstat on the others): a file whose stamp is the one noted on a round
that found nothing is passed over; any other goes through the checks and the read as before.

The stamp is the inode (st_dev, st_ino), the size, st_mtime_ns and st_ctime_ns. A write or a truncation sets the
size, the mtime and the ctime; a rewrite to the same size sets the mtime and the ctime; putting the old mtime
back (`touch -d`, `cp -p`, utime) sets the ctime, which no one can set back. What the stamp cannot show is a
change within the same tick of the file system's clock as the change it records (a kernel tick for ext4's
"nanosecond" stamps, a second for a file system without them): truncated and rewritten to the same size within
that tick, a file keeps its stamp. So a stamp is noted only once it is settled, older than SETTLED_NS when it was
taken: a change after that stamp would carry a later time. Until then (a file changed in the last 2.5 seconds,
such as the one being written to) every round checks the file in full, as before. (A clock of the file server's
that lags ours by more than that, on a network file system, would shorten the wait; the stamp still tells every
change that is not within one tick.) A file with no complete first line yet is not opened again by discovery
while its settled stamp holds, on the same grounds.
"""

from __future__ import annotations

import os
import time

# Older than the coarsest clock of a file system a log is kept on (ext3's whole seconds; FAT's two seconds).
SETTLED_NS = 2_500_000_000

Stamp = tuple[int, int, int, int, int]

wall_clock_ns = time.time_ns  # what a stamp's age is measured against (the file system's clock; tests move it on)


def stamp(st: os.stat_result) -> Stamp:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def settled_stamp(st: os.stat_result) -> Stamp | None:
    """The file's stamp, if it can stand for its content from now on (see the module's docstring); else None."""
    if wall_clock_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > SETTLED_NS:
        return stamp(st)
    return None

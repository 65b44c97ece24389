"""`--ignore-older SECONDS` (Filebeat's `ignore_older`, Vector's `ignore_older_secs`), for the file source.

The unit follows `/var/log/kong/*.json*`: on a first start every rotated file matches too, 14 days of history that
a Kong plugin may have shipped already. A file found with no checkpoint and last modified longer ago than this is
history: it starts at its end, as `--start-at end` starts the files present at the first start (what is appended
later is shipped, and the position saved is that end, so a restart reads none of it either); a `.gz` too, its end
found by decompressing it once. A file with a checkpoint resumes at it whatever its age, and a file made by rotation is
fresh, so it is read from its start as ever. The test is made at every discovery of an unknown file (one moved in
while running too), by `FileSource._assign`.
"""

from __future__ import annotations

import logging
import os
import time

from shipper.sources.reading import OpenFile

log = logging.getLogger("kong-ship")


def older_than(handle: OpenFile, seconds: float | None) -> os.stat_result | None:
    """The file's stat when it was last modified more than `seconds` ago (then said in the log, once per file: its
    history is not read); None when it is read from its start as usual, or there is no limit."""
    if seconds is None:
        return None
    st = os.fstat(handle.fd)
    age = time.time() - st.st_mtime
    if age <= seconds:
        return None
    log.info(
        "%s: no checkpoint and last modified %s ago (--ignore-older %g): started at its end%s", handle.path,
        _age(age), seconds, "" if handle.gz is not None else "; what is appended from now on is shipped",
    )  # fmt: skip
    return st


def _age(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / 3600:.1f} hours" if seconds >= 3600 else f"{seconds:.0f} s"

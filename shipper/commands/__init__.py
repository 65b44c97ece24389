"""Commands that live in their own modules (wired into `shipper.cli` at its end)."""

from __future__ import annotations

import os
from typing import Any

from shipper.settings import Settings, default_state_dir


def prepare_spooled(kw: dict[str, Any], name: str, max_line_bytes: int) -> tuple[Settings, list, str]:
    """Settings and sinks for a command whose records reach the pipeline through a spool (`receive`, `audit
    tail`), and the spool's directory.

    Everything of such a command lives in STATE_DIR/<name>/ (spool, checkpoints, dead letters), so a `tail` on
    the same node may share --state-dir without the two mixing their checkpoints. Spooled records are kong-ship's
    own JSON envelopes: no format guessing, no JWTs or header masks to configure, read from their start in one
    process."""
    from shipper.cli import _prepare

    spool_dir = os.path.join(os.path.abspath(kw.get("state_dir") or default_state_dir()), name)
    kw.update(
        state_dir=spool_dir, fmt="auto", nginx_field=(), jwt_from=(), jwt_claim="sub", mask_header=(), mask_query=(),
        max_line_bytes=max_line_bytes, workers="0", start_at="beginning",
    )
    settings, sinks = _prepare((os.path.join(spool_dir, "spool-*.jsonl"),), kw)  # creates spool_dir
    return settings, sinks, spool_dir

"""The benchmark's table and verdicts (bench/run.py), from its results dictionary.

Throughput rows are medians of the alternated runs (floor, variant, floor, variant …): records/s, the ratio to
the floor measured next to each run (median of those ratios), kong-ship's own CPU µs per input record (user +
system of its process tree). The `target` column says PASS or MISS against issue 16's targets.
"""

from __future__ import annotations

from typing import Any

TARGETS = {
    "floor_ratio": 0.5,  # backfill → Segment ÷ floor
    "moesif_floor_ratio": 0.35,  # backfill → Moesif ÷ floor
    "peer_ratio": 20.0,  # backfill → Segment ÷ peer
    "rss_mib": 100.0,  # peak memory of all processes, at 100k and at 1M records
    "rss_spread_mib": 5.0,  # the two peaks within this of each other
    "tail_p99_ms": 500.0,
}


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def memory_cell(m: dict[str, Any]) -> str:
    worker = m.get("peak_rss_worker_mib") or 0
    return f"{m['peak_pss_tree_mib']:.0f} / {m['peak_rss_main_mib']:.0f} / " + (f"{worker:.0f}" if worker else "–")


def delivery(b: dict[str, Any]) -> str:
    if b["missing"] == b["doubled"] == b["unexpected"] == 0 and not b.get("fake_errors"):
        return "all once"
    return f"missing {b['missing']}, doubled {b['doubled']}, unexpected {b['unexpected']}"


def targets_of(name: str, b: dict[str, Any], peer_rate: float) -> str:
    ratio = b["floor_ratio"]
    if name == "segment":
        return (f"{mark(ratio >= TARGETS['floor_ratio'])} ≥ {TARGETS['floor_ratio']} × floor; "
                f"{mark(b['records_per_s'] / peer_rate >= TARGETS['peer_ratio'])} ≥ {TARGETS['peer_ratio']:.0f} × peer")  # fmt: skip
    if name == "moesif":
        return f"{mark(ratio >= TARGETS['moesif_floor_ratio'])} ≥ {TARGETS['moesif_floor_ratio']} × floor"
    return ""


def table(r: dict[str, Any]) -> str:
    floor = r["floor"]["records_per_s"]
    peer_rate = r["peer"]["records_per_s"]
    rows = [("measure", "records/s", "MB/s", "÷ floor", "÷ peer", "CPU µs/rec", "peak MiB: all PSS / main / worker",
             "target", "notes")]  # fmt: skip

    def add(name: str, rate: float | None, mbs: float | None, ratio: float | None, cpu: float | None, mem: str,
            target: str, notes: str) -> None:
        rows.append((name, fmt(rate) if rate else "", fmt(mbs, 1) if mbs else "", fmt(ratio, 3) if ratio else "", fmt(rate / peer_rate, 1) if rate else "",
                     fmt(cpu, 1) if cpu else "", mem, target, notes))  # fmt: skip

    def split_cpu(b: dict) -> str:
        """The CPU column's split between the main process and the workers (older reports have none)."""
        if not b.get("cpu_us_per_record_workers"):
            return ""
        return f" (CPU µs/rec: main {b['cpu_us_per_record_main']:.0f}, workers {b['cpu_us_per_record_workers']:.0f})"

    floors = r.get("floors", [])
    add("parse floor (orjson.loads per line)", floor, r["floor"]["mb_per_s"], 1.0, None, "", "",
        f"best of 2 passes; {len(floors)} more beside the runs: {fmt(min(floors, default=0))}–{fmt(max(floors, default=0))}")
    p = r["peer"]
    add("peer: segment-analytics-python", peer_rate, None, peer_rate / floor, None, "", "",
        f"delivered/s; dropped {p['dropped_by_library']:,} of {r['log']['records']:,} (queue full), lost {p['lost']:,}")
    for sink, cap in r.get("light_fake", {}).items():
        rows.append((f"light fake {sink.capitalize()} alone", fmt(cap["records_per_s"]), "", "", "", "", "", "",
                     f"its own CPU {cap['cpu_us_per_record']:.1f} µs/rec (2 clients posting pre-built gzip batches)"))
    for name, b in r["backfill"].items():
        label = f"backfill → {' + '.join(s.capitalize() for s in b['sinks'])}"
        runs = b.get("runs", [b])
        add(label, b["records_per_s"], b["mb_per_s"], b["floor_ratio"], b["cpu_us_per_record"], memory_cell(b),
            targets_of(name, b, peer_rate),
            f"median of {len(runs)}; {delivery(b)}; {b['processes']} process{'es' if b['processes'] > 1 else ''}"
            f"{split_cpu(b)}; fake {fmt(b['fake_cpu_us_per_record'], 1)} µs/rec")  # fmt: skip
    for name in r["notes"]:
        if name not in r["backfill"]:
            rows.append((f"backfill → {name}", "n/a", "", "", "", "", "", "", r["notes"][name]))
    rec = r.get("receive")
    if rec:
        add(f"receive http-log (batches of {rec['batch']}, {rec['clients']} clients)", rec["records_per_s"],
            rec["mb_per_s"], rec["floor_ratio"], rec["cpu_us_per_record"], "", "",
            f"median of {len(rec['runs'])}; accepted (fsynced); {'all once' if rec['valid'] else 'NOT all once'}; "
            f"1,000 records in one request {rec['one_request_ms']:.0f} ms")  # fmt: skip
    t = r.get("tail")
    if t:
        add(f"tail at {t['rate']:,} lines/s → Segment", None, None, None, None, memory_cell(t),
            f"{mark(t['p99_ms'] < TARGETS['tail_p99_ms'])} p99 < {TARGETS['tail_p99_ms']:.0f} ms",
            f"append→ack p50 {t['p50_ms']:.0f} ms, p99 {t['p99_ms']:.0f} ms, max {t['max_ms']:.0f} ms "
            f"({t['acknowledged']:,} lines, missing {t['missing']})")  # fmt: skip
    for m in r["memory"]:
        add(f"memory: backfill {m['records']:,} → Segment", m["records_per_s"], m["mb_per_s"], None,
            m.get("cpu_us_per_record"), memory_cell(m),
            f"{mark(m['peak_pss_tree_mib'] < TARGETS['rss_mib'])} < {TARGETS['rss_mib']:.0f} MiB", delivery(m))
    spread = memory_spread(r)
    if spread is not None:
        small, big = r["memory"][0]["records"], r["memory"][-1]["records"]
        rows.append((f"memory: peak at {big:,} − at {small:,}", "", "", "", "", "", f"{spread:+.1f}",
                     f"{mark(abs(spread) <= TARGETS['rss_spread_mib'])} within {TARGETS['rss_spread_mib']:.0f} MiB", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def memory_spread(r: dict[str, Any]) -> float | None:
    if len(r["memory"]) < 2:
        return None
    return r["memory"][-1]["peak_pss_tree_mib"] - r["memory"][0]["peak_pss_tree_mib"]


def verdicts(r: dict[str, Any]) -> list[str]:
    out = []
    seg = r["backfill"].get("segment")
    if seg:
        out.append(f"{mark(seg['floor_ratio'] >= TARGETS['floor_ratio'])} backfill → Segment ÷ floor = "
                   f"{seg['floor_ratio']:.3f} (median of {len(seg['runs'])}; target ≥ {TARGETS['floor_ratio']}); "
                   f"{delivery(seg)}")  # fmt: skip
        ratio = seg["records_per_s"] / r["peer"]["records_per_s"]
        out.append(f"{mark(ratio >= TARGETS['peer_ratio'])} backfill → Segment ÷ peer = {ratio:.1f} (target ≥ {TARGETS['peer_ratio']:.0f})")
    moesif = r["backfill"].get("moesif")
    if moesif:
        out.append(f"{mark(moesif['floor_ratio'] >= TARGETS['moesif_floor_ratio'])} backfill → Moesif ÷ floor = "
                   f"{moesif['floor_ratio']:.3f} (target ≥ {TARGETS['moesif_floor_ratio']})")  # fmt: skip
    for m in r["memory"]:
        mem = m["peak_pss_tree_mib"]
        out.append(f"{mark(mem < TARGETS['rss_mib'])} peak memory at {m['records']:,} records = {mem:.0f} MiB "
                   f"(all processes, PSS; main process RSS {m['peak_rss_main_mib']:.0f}, "
                   f"largest worker RSS {m['peak_rss_worker_mib']:.0f}) (target < {TARGETS['rss_mib']:.0f})")  # fmt: skip
    spread = memory_spread(r)
    if spread is not None:
        out.append(f"{mark(abs(spread) <= TARGETS['rss_spread_mib'])} peak memory at {r['memory'][-1]['records']:,} records − at "
                   f"{r['memory'][0]['records']:,} = {spread:+.1f} MiB "
                   f"(target within {TARGETS['rss_spread_mib']:.0f})")  # fmt: skip
    t = r.get("tail")
    if t:
        out.append(f"{mark(t['p99_ms'] < TARGETS['tail_p99_ms'])} tail p99 = {t['p99_ms']:.0f} ms (target < {TARGETS['tail_p99_ms']:.0f})")
    return out

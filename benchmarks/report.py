"""Rows of the benchmark's JSON from measured statistics, and the tables printed from them."""

from __future__ import annotations

from collections import Counter

from .cases import RowSpec

__all__ = ["format_markdown", "format_table", "make_row", "peer_lines", "summarize_rows"]


def _rates(t, median: float) -> dict:
    """Throughput and bandwidths of one timed call whose median time is `median` seconds."""
    out = {"bandwidth_gbs": t.bytes_moved / median / 1e9}
    if t.flops:
        out["gflops"] = t.flops / median / 1e9
    if t.weight_bytes:
        out["weight_bandwidth_gbs"] = t.weight_bytes / median / 1e9
    return out


def _entry(key: str, grp, stats: dict) -> dict:
    """What was measured for one timed call: statistics, rates, check and facts."""
    if key in grp.problems:
        return {"name": key, **grp.problems[key]}
    t = grp.timed[key]
    out = {"name": key, "check": t.check, "flops": t.flops, "bytes_moved": t.bytes_moved,
           "weight_bytes": t.weight_bytes, "info": t.info}
    if key in stats:
        out["time"] = stats[key]
        out.update(_rates(t, stats[key]["median"]))
    return out


def _failure(row: dict, status: str, reason: str) -> dict:
    row.update(status=status, passed=False, reason=reason)
    return row


def make_row(spec: RowSpec, cfg, grp, stats: dict, key: str, base_key: str | None,
             extras: tuple[str, ...], load: list[float]) -> dict:
    """One row of the results: times, baseline, ratio, goal and pass/fail (see cases.Goal)."""
    size = cfg.small if spec.kind == "small" else cfg.size
    row = {"name": spec.name, "case": spec.case, "kind": spec.kind, "format": spec.fmt,
           "M": spec.M or None, "K": size, "N": size, "group_size": cfg.group_size,
           "goal": spec.goal.to_json(), "load_average": load}
    cand = _entry(key, grp, stats)
    row["lowbitc"] = cand
    row["extra"] = [_entry(k, grp, stats) for k in extras]
    if key in grp.problems:
        return _failure(row, grp.problems[key]["status"], f"{key}: {grp.problems[key]['reason']}")
    if not grp.timed[key].correct:
        c = grp.timed[key].check
        return _failure(row, "wrong", f"output differs from numpy: max rel error "
                        f"{c['max_rel_error']} > {c['tolerance']} ({c.get('detail', '')})")
    if base_key is None:
        return _failure(row, "error", "baseline was not measured")
    base = _entry(base_key, grp, stats)
    row["baseline"] = base
    if base_key in grp.problems:
        return _failure(row, grp.problems[base_key]["status"],
                        f"{base_key}: {grp.problems[base_key]['reason']}")
    if not grp.timed[base_key].correct:
        return _failure(row, "error", f"baseline {base_key} gave a wrong result")
    t, b = stats[key]["median"], stats[base_key]["median"]
    row["time"] = stats[key]
    row["baseline_time"] = stats[base_key]
    metric = spec.goal.metric
    if metric == "bandwidth_fraction":
        row["ratio"] = cand["bandwidth_gbs"] / base["bandwidth_gbs"]
        measured = row["ratio"]
    else:
        row["ratio"] = b / t  # speedup over the baseline
        measured = t if metric == "seconds" else row["ratio"]
    row["measured"] = measured
    row["passed"] = spec.goal.holds(measured)
    row["status"] = "pass" if row["passed"] else "fail"
    row["reason"] = "" if row["passed"] else f"{metric} {measured:.4g} misses {spec.goal.text}"
    return row


def summarize_rows(rows: list[dict]) -> dict:
    counts = Counter(r["status"] for r in rows)
    return {"rows": len(rows), **{s: counts.get(s, 0) for s in
                                  ("pass", "fail", "wrong", "error", "skipped")},
            "all_passed": bool(rows) and all(r["status"] == "pass" for r in rows)}


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    return f"{s * 1e3:.3f} ms"


def _cells(r: dict) -> list[str]:
    t, b = r.get("time"), r.get("baseline_time")
    base_name = r.get("baseline", {}).get("name", "-")
    if r["goal"]["metric"] == "bandwidth_fraction" and "ratio" in r:
        ratio = (f"{r['lowbitc']['bandwidth_gbs']:.1f}/{r['baseline']['bandwidth_gbs']:.1f} "
                 f"GB/s = {r['ratio']:.2f}")
    else:
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
    spread = f"{_seconds(t['p10'])}-{_seconds(t['p90'])}" if t else "-"
    status = r["status"].upper() if r["status"] != "pass" else "pass"
    read = r.get("read_bandwidth_fraction")
    one = next((e.get("time", {}).get("median") for e in r.get("extra", [])
                if e["name"].endswith("_one_weight")), None)
    return [r["name"], _seconds(t["median"]) if t else "-", spread, base_name,
            _seconds(b["median"]) if b else "-", ratio, r["goal"]["text"], status,
            f"{read:.0%}" if read is not None else "-", _seconds(one) if one else "-"]


_HEAD = ["row", "lowbitc", "p10-p90", "baseline", "baseline time", "ratio", "goal", "status",
         "of read BW", "one weight (in cache)"]


def format_table(results: dict) -> str:
    """A plain-text table of every row, for the terminal."""
    lines = [_HEAD] + [_cells(r) for r in results["rows"]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(_HEAD))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in lines]
    for r in results["rows"]:
        if r["status"] != "pass":
            text.append(f"  {r['name']}: {r['reason']}")
    return "\n".join(text + peer_lines(results))


PEERS = ("ggml_", "torch_")  # other engines' calls recorded beside a row (extras)


def peer_lines(results: dict) -> list[str]:
    """One line per row that recorded other engines' calls: their medians and speedups over
    the row's baseline, beside lowbitc's (a skipped peer says why)."""
    out = []
    for r in results["rows"]:
        peers = [e for e in r.get("extra", []) if e["name"].startswith(PEERS)
                 and e["name"] != r.get("baseline", {}).get("name")]
        if not peers or "baseline_time" not in r:
            continue
        base = r["baseline_time"]["median"]
        cells = [f"lowbitc {_seconds(r['time']['median'])} ({r['ratio']:.2f}x)"]
        for e in peers:
            t = e.get("time", {}).get("median")
            cells.append(f"{e['name']} {_seconds(t)} ({base / t:.2f}x)" if t else
                         f"{e['name']} {e.get('status', 'not timed')}: {e.get('reason', '')}")
        out.append(f"  peers {r['name']} vs {r['baseline']['name']}: " + ", ".join(cells))
    return out


_COMPACT = (0, 1, 3, 4, 5, 6, 7, 8, 9)  # the columns a README table keeps (no p10-p90)


def format_markdown(results: dict, compact: bool = False) -> str:
    """The same table in Markdown (for the README and docs); `compact` drops p10-p90."""
    keep = _COMPACT if compact else range(len(_HEAD))
    rows = [_HEAD] + [_cells(r) for r in results["rows"]]
    lines = ["| " + " | ".join(row[i] for i in keep) + " |" for row in rows]
    lines.insert(1, "|" + "---|" * len(keep))
    return "\n".join(lines)

"""PNG of a CPU benchmark run: GEMV throughput and effective bandwidth per format.

matplotlib is optional (`lowbitc[plot]`): without it `plot_results` returns None.
"""

from __future__ import annotations

from pathlib import Path

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
except ImportError:
    plt = Patch = None

__all__ = ["plot_results"]


def _gemv_rows(results: dict) -> list[dict]:
    return [r for r in results["rows"] if r["kind"] == "gemv" and "time" in r]


def _baseline(results: dict, name: str) -> dict | None:
    for r in results["rows"]:
        if r.get("baseline", {}).get("name") == name and "time" in r["baseline"]:
            return r["baseline"]
    return None


def _bars(ax, labels: list[str], values: list[float], colors: list[str]) -> None:
    bars = ax.bar(labels, values, color=colors)
    for bar, v in zip(bars, values, strict=True):
        ax.annotate(f"{v:.0f}" if v >= 10 else f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, v),
                    ha="center", va="bottom", fontsize=8)
    ax.tick_params(axis="x", labelrotation=45)


def _hline(ax, y: float | None, label: str, style: str, color: str) -> None:
    if y:
        ax.axhline(y, linestyle=style, color=color, label=f"{label}: {y:.1f}")


def _colors(rows: list[dict]) -> list[str]:
    return ["tab:green" if r["status"] == "pass" else "tab:red" for r in rows]


def _legend(ax, top: float) -> None:
    """Line labels plus what the bar colours mean (the row's goal met or missed), above the
    tallest bar or line (`top`)."""
    ax.set_ylim(0, top * 1.5 if top > 0 else 1)
    handles, labels = ax.get_legend_handles_labels()
    for color, text in (("tab:green", "lowbitc: row meets its goal"),
                        ("tab:red", "lowbitc: row misses its goal")):
        handles.append(Patch(color=color))
        labels.append(text)
    ax.legend(handles, labels, fontsize=8, loc="upper left")


def plot_results(results: dict, path: str | Path) -> Path | None:
    """Write the two-panel PNG to `path`; None (nothing written) without matplotlib."""
    if plt is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gemv = _gemv_rows(results)
    labels = [r["format"] for r in gemv]
    numpy_b, torch_b = _baseline(results, "numpy_fp32_M1"), _baseline(results, "torch_int4_bf16_M1")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))

    flops = [r["lowbitc"]["gflops"] for r in gemv]
    lines1 = [numpy_b and numpy_b["gflops"], torch_b and torch_b["gflops"]]
    _bars(ax1, labels, flops, _colors(gemv))
    _hline(ax1, lines1[0], "numpy fp32 (OpenBLAS)", "--", "tab:blue")
    _hline(ax1, lines1[1], "torch int4, bf16 act.", ":", "tab:purple")
    ax1.set_ylabel("GFLOP/s (2*N*K / median time)")
    ax1.set_title("GEMV M=1 throughput per weight format")
    _legend(ax1, max([*flops, *(v for v in lines1 if v)], default=0))

    deq = [r for r in results["rows"] if r["kind"] == "dequant" and "time" in r]
    bw_rows = gemv + deq
    bw_labels = labels + [f"dequant {r['format']}\n(read+write)" for r in deq]
    bw = [r["lowbitc"]["weight_bandwidth_gbs"] for r in gemv]
    bw += [r["lowbitc"]["bandwidth_gbs"] for r in deq]
    _bars(ax2, bw_labels, bw, _colors(bw_rows))
    copy = results.get("copy_bandwidth", {})
    _hline(ax2, copy.get("best_gbs"), f"copy bandwidth ({copy.get('best', '')})", "--", "black")
    lines2 = [copy.get("best_gbs"), numpy_b and numpy_b.get("weight_bandwidth_gbs")]
    _hline(ax2, lines2[1], "numpy fp32 GEMV", "--", "tab:blue")
    ax2.set_ylabel("GB/s (weight + scale + zero bytes / time)")
    ax2.set_title("Effective weight bandwidth (dequant: bytes read + written)")
    _legend(ax2, max([*bw, *(v for v in lines2 if v)], default=0))

    cfg, load = results["config"], results["load_average"]
    git = results.get("git", {}).get("describe") or "?"
    others = [g["cpu_usage"]["others_cpus"] for g in results.get("groups", [])
              if g.get("cpu_usage", {}).get("others_cpus") is not None]
    busy = f"; other processes used {min(others):.1f}-{max(others):.1f} CPUs" if others else ""
    fig.suptitle(
        f"lowbitc CPU bench, K=N={cfg['size']}, group {cfg['group_size']}, "
        f"{cfg['threads']} threads, {results['machine'].get('cpu_model', '?')}; "
        f"load avg {load['start'][0]:.1f} -> {load['end'][0]:.1f}{busy}; git {git}"
        + (" (QUICK)" if results.get("quick") else ""),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

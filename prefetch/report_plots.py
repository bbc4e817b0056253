"""The report's PNG plots: hit rate and slowdown bars, the budget sweep.

matplotlib's object API with the Agg canvas: no pyplot, no global backend change.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any, Sequence

from prefetch.report_inputs import ORACLE, ReportError
from prefetch.report_rows import ORACLE_LABEL, _policy_rank, _same


POLICY_COLORS = {
    "none": "#9e9e9e",
    "replay": "#1f77b4",
    "markov": "#ff7f0e",
    "learned": "#2ca02c",
}
_EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728")
SLOWDOWN_TARGET = 1.08
"""The issue's target for learned on static workloads: drawn as a reference line."""


# -- plots ----------------------------------------------------------------------------------


def _colors(policies: Sequence[str]) -> dict[str, str]:
    colors, extra = {}, iter(_EXTRA_COLORS * 4)
    for p in policies:
        colors[p] = POLICY_COLORS.get(p) or next(extra)
    return colors


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _grouped_bars(rows: list[dict[str, Any]], path: Path, *, metric: str, title: str, ylabel: str,
                  as_pct: bool, ref: float | None = None, ref_label: str = "") -> None:
    runs = [r for r in rows if r["kind"] == "run" and r[metric] is not None]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in runs))
    colors = _colors(policies)
    scale = 100.0 if as_pct else 1.0
    per: dict[tuple[str, str], list[float]] = {}
    for r in runs:  # in-sample learned runs are refused, never plotted
        if r["in_sample"] is not True:
            per.setdefault((r["workload"], r["policy"]), []).append(scale * r[metric])
    value = {k: statistics.median(v) for k, v in per.items()}  # bars: the median over seeds
    spread = {k: (value[k] - min(v), max(v) - value[k]) for k, v in per.items()}  # whiskers: min-max
    # The oracle is simulated: it is not drawn over live bars (the table sets it beside simulated figures).
    oracle: dict[str, float] = {}
    n = max(len(policies), 1)
    width = 0.8 / n
    fig = _figure(max(7.0, 0.5 * len(workloads) * max(n, 2) + 2.0), 4.8)
    ax = fig.add_subplot()
    top = max([*value.values(), *oracle.values(), 1.0])
    label_size = 8 if len(workloads) * n <= 16 else 7
    for j, p in enumerate(policies):
        xs = [i + (j - (n - 1) / 2) * width for i, w in enumerate(workloads) if (w, p) in value]
        ys = [value[(w, p)] for w in workloads if (w, p) in value]
        errs = [[spread[(w, p)][0] for w in workloads if (w, p) in value],
                [spread[(w, p)][1] for w in workloads if (w, p) in value]]
        bars = ax.bar(xs, ys, width * 0.92, color=colors[p], label=p, zorder=2,
                      yerr=errs if any(errs[0] + errs[1]) else None, ecolor="black", capsize=2)
        for b, y in zip(bars, ys):
            text = f"{y:.1f}" if as_pct else f"{y:.2f}"
            inside = y > 0.35 * top
            if inside and not as_pct:  # at the base: clear of the oracle line near the tops
                xy, va = (b.get_x() + b.get_width() / 2, 0.02 * top), "bottom"
            else:
                xy = (b.get_x() + b.get_width() / 2, y - 0.015 * top if inside else y + 0.015 * top)
                va = "top" if inside else "bottom"
            ax.text(*xy, text, rotation=90, ha="center", va=va, fontsize=label_size,
                    color="white" if inside and p != "none" else "black", zorder=3)
    first_oracle = True
    for i, w in enumerate(workloads):
        if w in oracle:
            y = oracle[w]
            ax.hlines(y, i - 0.45, i + 0.45, colors="black", linestyles="--", lw=1.6, zorder=4,
                      label=ORACLE_LABEL if first_oracle else None)
            first_oracle = False
            ax.text(i + 0.45, y + 0.012 * top, f"oracle {y:.1f}" if as_pct else f"oracle {y:.2f}", ha="right",
                    va="bottom", fontsize=label_size, zorder=5,
                    bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8))
    if ref is not None:
        ax.axhline(ref, color="#555555", lw=1.0, ls=":", zorder=1, label=ref_label or None)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_xlim(-0.6, len(workloads) - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("workload")
    ax.set_title(title)
    if as_pct:
        ax.set_ylim(0, 112)
        ax.set_yticks(range(0, 101, 20))
    else:
        ax.set_ylim(0, top * 1.15)
    ax.grid(axis="y", color="#dddddd", zorder=0)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6),
               frameon=False)
    fig.savefig(path)


def plot_hit_rate(rows: list[dict[str, Any]], path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Grouped bars: strict live hit rate per policy per workload, median over seeds with min-max whiskers."""
    path = Path(path)
    sub = _subtitle(rows)
    _grouped_bars(rows, path, metric="hit_rate", as_pct=True, ylabel="hit rate (% of accesses, strict)",
                  title=(title + ": " if title else "") + "hit rate per policy" + sub)
    return path


def plot_slowdown(rows: list[dict[str, Any]], path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Grouped bars: step time / all resident per policy per workload, median over seeds with min-max."""
    path = Path(path)
    _grouped_bars(rows, path, metric="slowdown", as_pct=False, ylabel="step time / all resident (x)",
                  title=(title + ": " if title else "") + "slowdown vs all resident" + _subtitle(rows),
                  ref=1.0, ref_label="all resident (1.0x)")
    return path


def _subtitle(rows: list[dict[str, Any]]) -> str:
    runs = [r for r in rows if r["kind"] == "run"]
    bf = _same(r["budget_fraction"] for r in runs)
    dev = list(dict.fromkeys(r["device"] for r in runs))
    bits = ([f"budget {100 * bf:.0f}%"] if bf is not None else []) + ([", ".join(dev)] if dev else [])
    return f"\n({', '.join(bits)})" if bits else ""


def plot_sweep(sweep: list[dict[str, Any]], path: str | os.PathLike[str], *, title: str | None = None,
               workloads: Sequence[str] | None = None, budget_mark: float | None = None) -> Path | None:
    """Hit rate and slowdown over the budget: one row of two panels per workload, a line per policy."""
    path = Path(path)
    points = [s for s in sweep if s["hit_rate"] is not None]
    names = list(dict.fromkeys(s["workload"] for s in points))
    if workloads:
        missing = [w for w in workloads if w not in names]
        if missing:
            raise ReportError(f"no sweep data for workload(s) {', '.join(missing)}; have {', '.join(names) or 'none'}")
        names = list(workloads)
    if not names:
        return None
    policies = list(dict.fromkeys(s["policy"] for s in points if s["policy"] != ORACLE))
    policies.sort(key=_policy_rank(policies))
    colors = _colors(policies)
    fig = _figure(10.5, 2.7 * len(names) + 0.9)
    axes = fig.subplots(len(names), 2, squeeze=False)
    for i, w in enumerate(names):
        ax_hit, ax_slow = axes[i]
        for p in [*policies, ORACLE]:
            pts = sorted((s for s in points if s["workload"] == w and s["policy"] == p),
                         key=lambda s: s["budget_fraction"])
            if not pts:
                continue
            x = [100 * s["budget_fraction"] for s in pts]
            style = dict(color="black", ls="--", marker="D", ms=4) if p == ORACLE else dict(color=colors[p], marker="o", ms=4)
            label = ORACLE_LABEL if p == ORACLE else p
            ax_hit.plot(x, [100 * s["hit_rate"] for s in pts], label=label, lw=1.6, **style)
            ax_slow.plot(x, [s["slowdown"] if s["slowdown"] is not None else float("nan") for s in pts],
                         label=label, lw=1.6, **style)
        ax_hit.set_ylim(0, 102)
        ax_hit.set_ylabel("hit rate (%)")
        ax_slow.set_ylabel("step time / all resident (x)")
        ax_slow.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax_hit.set_title(f"{w}: hit rate", fontsize=10)
        ax_slow.set_title(f"{w}: slowdown", fontsize=10)
        for ax in (ax_hit, ax_slow):
            ax.grid(color="#e0e0e0")
            ax.set_xlim(0, 102)
            if budget_mark is not None:
                ax.axvline(100 * budget_mark, color="#d62728", lw=0.8, ls=":")
            if i == len(names) - 1:
                ax.set_xlabel("device budget (% of managed bytes)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if budget_mark is not None:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="#d62728", lw=0.8, ls=":"))
        labels.append(f"run budget ({100 * budget_mark:.0f}%)")
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), frameon=False)
    fig.suptitle((title + ": " if title else "") + "hit rate and slowdown over the device budget (simulated)",
                 fontsize=12)
    fig.savefig(path)
    return path

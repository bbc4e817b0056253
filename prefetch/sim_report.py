"""The simulator's report (SimReport, a runtime.run_report.RunReport): per trace and summed, and a table."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from runtime.run_report import RunReport
from runtime.stats import AccessStats


@dataclass(kw_only=True, slots=True)
class SimReport(RunReport):
    """The simulator's report: a RunReport (runtime.run_report) whose device is the simulated one.

    The simulator sets the simulator-only fields (events, budget, measured_ns, baseline_ns,
    write_stall_ns, prefetch_requested, optimizer_wait_ns, lookahead, variant, traces,
    outcomes) and the traffic the live run has too (bytes_h2d, bytes_d2h, grad_wait_ns,
    grad_moves, grad_holds); step_time_s, baseline_step_time_s and slowdown follow from measured_ns and
    baseline_ns. With a GPU model (prefetch.gpu_model) prefetch.simulate sets `gpu_model` and the
    baseline's own time. The JSON keys are RunReport.as_dict()'s."""

    device: str = "simulated"


def _combine(runs: list[SimReport]) -> SimReport:
    """One report over several traces: counters summed, sizes the largest, the per-trace reports kept."""
    stats, warm = AccessStats(), AccessStats()
    for r in runs:
        stats = _add(stats, r.stats)
        warm = _add(warm, r.warmup or AccessStats())
    links = [r.link for r in runs]
    link = dict(links[0]) if all(lk == links[0] for lk in links) else {
        "bandwidth_GBps": None, "latency_us": links[0].get("latency_us"), "ratio": links[0].get("ratio"),
        "per_trace": True,
    }
    return SimReport(
        policy=runs[0].policy, link=link,
        managed_bytes=max(r.managed_bytes for r in runs),
        budget_bytes=max(r.budget_bytes for r in runs),
        budget=runs[0].budget, ahead_share=runs[0].ahead_share, early_step=runs[0].early_step,
        peak_device_bytes=max(r.peak_device_bytes for r in runs),
        steps=sum(r.steps for r in runs), warmup_steps=runs[0].warmup_steps,
        events=sum(r.events or 0 for r in runs), stats=stats, warmup=warm,
        measured_ns=sum(r.measured_ns or 0 for r in runs), baseline_ns=sum(r.baseline_ns or 0 for r in runs),
        overcommits=sum(r.overcommits for r in runs), write_stall_ns=sum(r.write_stall_ns for r in runs),
        prefetch_requested=sum(r.prefetch_requested for r in runs),
        prefetch_refused=sum(r.prefetch_refused for r in runs),
        prefetch_held=sum(r.prefetch_held for r in runs),
        optimizer_wait_ns=sum(r.optimizer_wait_ns for r in runs), lookahead=runs[0].lookahead, traces=runs,
        bytes_h2d=_sum_counts([r.bytes_h2d for r in runs]), bytes_d2h=_sum_counts([r.bytes_d2h for r in runs]),
        grad_wait_ns=sum(r.grad_wait_ns for r in runs), grad_moves=sum(r.grad_moves for r in runs),
        grad_holds=sum(r.grad_holds for r in runs), router_hints=sum(r.router_hints for r in runs),
        hint_cancelled=sum(r.hint_cancelled for r in runs), early_stepped=sum(r.early_stepped for r in runs),
        variant=runs[0].variant if all(r.variant == runs[0].variant for r in runs) else "per trace",
    )


def _sum_counts(counts: list[dict[str, int] | None]) -> dict[str, int] | None:
    """Byte counts by kind summed over traces (None when no trace has them)."""
    if all(c is None for c in counts):
        return None
    out: dict[str, int] = {}
    for c in counts:
        for k, v in (c or {}).items():
            out[k] = out.get(k, 0) + v
    return out


def _add(a: AccessStats, b: AccessStats) -> AccessStats:
    return AccessStats(**{f.name: getattr(a, f.name) + getattr(b, f.name) for f in dataclasses.fields(AccessStats)})


def format_table(reports: Sequence[SimReport]) -> str:
    """A plain-text table: one row per report (policy x budget)."""
    head = f"{'policy':>10} {'budget':>8} {'hit rate':>9} {'late':>7} {'miss':>7} {'stall s':>9} " \
           f"{'accuracy':>9} {'step ms':>9} {'slowdown':>9}"
    rows = [head, "-" * len(head)]
    for r in reports:
        s = r.stats
        frac = (r.budget_bytes or 0) / max(r.managed_bytes, 1)
        slow = f"{r.slowdown:.3f}" if r.slowdown is not None else "n/a"
        rows.append(
            f"{r.policy:>10} {frac:>8.0%} {s.hit_rate:>9.2%} {s.late:>7} {s.misses:>7} "
            f"{s.stall_ns / 1e9:>9.4f} {s.accuracy:>9.1%} {(r.step_time_s or 0.0) * 1e3:>9.2f} {slow:>9}"
        )
    return "\n".join(rows)


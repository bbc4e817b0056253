"""The simulator's report (SimReport): DESIGN.md's report keys, per trace and summed, and a table."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from runtime.budget import format_bytes
from runtime.stats import AccessStats


@dataclass(kw_only=True, slots=True)
class SimReport:
    """What one simulation found: the DESIGN.md report keys, per trace and summed."""

    policy: str
    device: str = "simulated"
    link: dict[str, Any]
    """LinkModel.describe(); bandwidth is None when per-trace links differ."""
    managed_bytes: int
    """Bytes of the managed tensors (trace_format.is_managed; the largest over traces when several)."""
    budget_bytes: int
    """Device budget in bytes (the largest over traces when several)."""
    budget: str
    """The budget as given (a fraction of managed bytes or a size)."""
    peak_device_bytes: int
    """Most bytes on the simulated device during the measured steps."""
    steps: int
    """Measured steps (all traces)."""
    warmup_steps: int
    """Steps dropped at the start of each trace."""
    events: int
    """Managed events replayed, warm-up included."""
    stats: AccessStats
    """Measured steps only."""
    warmup: AccessStats
    """Warm-up steps only."""
    measured_ns: int
    """Simulated time of the measured steps: compute plus stalls."""
    baseline_ns: int
    """Compute time of the measured steps with everything resident."""
    overcommits: int = 0
    """Demand fetches and writes let through over budget (measured steps; the live
    report's `budget_overflows`)."""
    write_stall_ns: int = 0
    """Part of stall_ns that writes spent waiting for copies in flight to land (measured steps)."""
    prefetch_requested: int = 0
    """Requests queued (a tensor with no live entry; measured steps)."""
    prefetch_refused: int = 0
    """Times draining stopped at a refused request (measured steps)."""
    optimizer_wait_ns: int = 0
    """Time the optimizer step waited for parameter copies in flight (step time, not stall)."""
    lookahead: int | None = None
    """The lookahead a named policy was built with."""
    trace: str | None = None
    """The trace's stem, for a single-trace report."""
    traces: list["SimReport"] = field(default_factory=list)
    """Per-trace reports when several traces were simulated."""
    variant: str | None = None
    """The oracle's strategy kept for this trace (see prefetch.oracle), else None."""
    outcomes: np.ndarray | None = field(default=None, repr=False, compare=False)
    provenance: dict[str, Any] | None = None
    """A learned policy: train_seeds, eval_seeds, in_sample, in_sample_reason (predictor.provenance)."""
    """Single trace: per event HIT, LATE, MISS (reads) or WRITE, warm-up included (not in as_dict)."""

    @property
    def step_time_s(self) -> float:
        return self.measured_ns / 1e9 / self.steps if self.steps else 0.0

    @property
    def baseline_step_time_s(self) -> float:
        return self.baseline_ns / 1e9 / self.steps if self.steps else 0.0

    @property
    def slowdown(self) -> float | None:
        return self.measured_ns / self.baseline_ns if self.baseline_ns else None

    @property
    def hit_rate(self) -> float:
        return self.stats.hit_rate

    def as_dict(self) -> dict[str, Any]:
        """The JSON report: DESIGN.md's keys, stall and byte counters, warm-up apart, per trace."""
        d: dict[str, Any] = {
            "policy": self.policy,
            "device": self.device,
            "link": dict(self.link),
            "lookahead": self.lookahead,
            "managed_bytes": self.managed_bytes,
            "budget": self.budget,
            "budget_bytes": self.budget_bytes,
            "budget_fraction": self.budget_bytes / self.managed_bytes if self.managed_bytes else None,
            "peak_device_bytes": self.peak_device_bytes,
            "steps": self.steps,
            "warmup_steps": self.warmup_steps,
            "events": self.events,
        }
        s = self.stats.as_dict()
        for key in ("accesses", "hits", "late", "misses", "hit_rate", "coverage", "stall_s", "stall_ns",
                    "bytes_copied", "bytes_written_back", "prefetch_issued", "prefetch_used", "accuracy",
                    "evictions"):
            d[key] = s[key]
        d.update(
            prefetch_requested=self.prefetch_requested,
            prefetch_refused=self.prefetch_refused,
            overcommits=self.overcommits,
            budget_overflows=self.overcommits,
            write_stall_s=self.write_stall_ns / 1e9,
            optimizer_wait_s=self.optimizer_wait_ns / 1e9,
            step_time_s=self.step_time_s,
            baseline_step_time_s=self.baseline_step_time_s,
            slowdown=self.slowdown,
            warmup=self.warmup.as_dict(),
        )
        if self.variant is not None:
            d["oracle_variant"] = self.variant
        if self.trace is not None:
            d["trace"] = self.trace
        if self.provenance is not None:
            d.update(self.provenance)
        if self.traces:
            d["traces"] = [t.as_dict() for t in self.traces]
        return d

    def summary(self) -> str:
        """One line: policy, budget, hit/late/miss, stall, slowdown."""
        s = self.stats
        slow = f"{self.slowdown:.3f}x" if self.slowdown is not None else "n/a"
        where = f"{self.trace}: " if self.trace else ""
        variant = f" [{self.variant}]" if self.variant else ""
        if self.provenance is not None and self.provenance.get("in_sample"):
            variant += " [IN SAMPLE]"
        return (
            f"{where}{self.policy:>8}{variant}  budget {format_bytes(self.budget_bytes)} "
            f"({self.budget_bytes / max(self.managed_bytes, 1):.0%})  "
            f"hit {s.hit_rate:6.2%}  late {s.late}  miss {s.misses}  of {s.accesses}  "
            f"stall {s.stall_ns / 1e9:.4f}s  copied {s.bytes_copied / 2**20:.1f} MiB  "
            f"accuracy {s.accuracy:.1%}  step {self.step_time_s * 1e3:.2f} ms "
            f"vs {self.baseline_step_time_s * 1e3:.2f} ms  slowdown {slow}"
        )



def _combine(runs: list[SimReport]) -> SimReport:
    stats, warm = AccessStats(), AccessStats()
    for r in runs:
        stats = _add(stats, r.stats)
        warm = _add(warm, r.warmup)
    links = [r.link for r in runs]
    link = dict(links[0]) if all(lk == links[0] for lk in links) else {
        "bandwidth_GBps": None, "latency_us": links[0].get("latency_us"), "ratio": links[0].get("ratio"),
        "per_trace": True,
    }
    return SimReport(
        policy=runs[0].policy, link=link,
        managed_bytes=max(r.managed_bytes for r in runs),
        budget_bytes=max(r.budget_bytes for r in runs),
        budget=runs[0].budget,
        peak_device_bytes=max(r.peak_device_bytes for r in runs),
        steps=sum(r.steps for r in runs), warmup_steps=runs[0].warmup_steps,
        events=sum(r.events for r in runs), stats=stats, warmup=warm,
        measured_ns=sum(r.measured_ns for r in runs), baseline_ns=sum(r.baseline_ns for r in runs),
        overcommits=sum(r.overcommits for r in runs), write_stall_ns=sum(r.write_stall_ns for r in runs),
        prefetch_requested=sum(r.prefetch_requested for r in runs),
        prefetch_refused=sum(r.prefetch_refused for r in runs),
        optimizer_wait_ns=sum(r.optimizer_wait_ns for r in runs), lookahead=runs[0].lookahead, traces=runs,
        variant=runs[0].variant if all(r.variant == runs[0].variant for r in runs) else "per trace",
    )


def _add(a: AccessStats, b: AccessStats) -> AccessStats:
    return AccessStats(**{f.name: getattr(a, f.name) + getattr(b, f.name) for f in dataclasses.fields(AccessStats)})


def format_table(reports: Sequence[SimReport]) -> str:
    """A plain-text table: one row per report (policy x budget)."""
    head = f"{'policy':>10} {'budget':>8} {'hit rate':>9} {'late':>7} {'miss':>7} {'stall s':>9} " \
           f"{'accuracy':>9} {'step ms':>9} {'slowdown':>9}"
    rows = [head, "-" * len(head)]
    for r in reports:
        s = r.stats
        frac = r.budget_bytes / max(r.managed_bytes, 1)
        slow = f"{r.slowdown:.3f}" if r.slowdown is not None else "n/a"
        rows.append(
            f"{r.policy:>10} {frac:>8.0%} {s.hit_rate:>9.2%} {s.late:>7} {s.misses:>7} "
            f"{s.stall_ns / 1e9:>9.4f} {s.accuracy:>9.1%} {r.step_time_s * 1e3:>9.2f} {slow:>9}"
        )
    return "\n".join(rows)


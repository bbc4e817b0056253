"""A live run on the simulated device and the simulation of that very run's trace, side by side.

    from prefetch.live_vs_sim import live_and_simulated
    rows = live_and_simulated("gpt2", ["none", "replay"], seed=2, steps=4, out=tmp_dir)

The check issue 10 asks for: the simulator is the model the learned policy is taught and
judged in, so it must reproduce a live run. Per workload, one all-resident pass (the
baseline step time, which fixes the link) and one recorded pass (the tensor table, which
fixes tensor ids and the budget up front, as `prefetch run` does); then per policy one
prefetched run that keeps its own trace (PrefetchConfig.trace_out: managed events timed
by the simulated device's compute clock, runtime.live_trace) and
`simulate_like_run(report, trace)` on it. No all-resident twin: the live slowdown here is
the device clock's, (compute + waits) / compute over the measured steps, the quantity the
simulator models; a wall slowdown against the baseline pass is given beside it.

A learned run goes through the daemon; its trace keeps the event each reply was read at
(predictor.daemon_path.ReplySchedule), which the simulation follows: the row's
`daemon_replies` says "recorded". `modelled_too` adds, per learned run, a row simulated
with the round-trip model instead ("modelled"): what the latency model alone gives.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from runtime.link import DEFAULT_LINK_RATIO


def _baseline(workload, seed: int, steps: int, warmup: int) -> tuple[float, float]:
    """Median wall and CPU seconds of a measured all-resident step."""
    from prefetch.run import timed_steps

    _, wall, cpu = timed_steps(workload.build(seed), steps)
    return statistics.median(wall[warmup:]), statistics.median(cpu[warmup:])


def _recorded(workload, seed: int, steps: int, out: Path,
              routers: str | None = "auto") -> tuple[list[dict[str, Any]], Path]:
    """The recorded pass's tensor table (the live ids and the budget follow from it) and trace stem."""
    from prefetch.recording import record_workload
    from runtime.trace_format import load_trace

    stem = record_workload(workload, steps, out, seed=seed, progress=False, routers=routers)
    return load_trace(stem).tensors.to_pylist(), stem


def live_run(workload, policy: str, *, seed: int, steps: int, budget: float, link_ratio: float, warmup: int,
             baseline: tuple[float, float], reference: list[dict[str, Any]], out: Path,
             wall_clock: bool = False, routers: str | None = "auto") -> tuple[dict[str, Any], Path]:
    """One prefetched run on the simulated device that keeps its own trace: (report, trace stem).
    `wall_clock`: the trace is timed in wall time instead (how it was before the compute
    clock; for the benchmark's before/after). The report gains `clock_slowdown` (device clock over its compute, measured steps) and
    `wall_slowdown` (median step over the baseline's). `routers`: PrefetchConfig.routers."""
    from runtime.prefetcher import PrefetchConfig, Prefetcher

    job = workload.build(seed)
    cfg = PrefetchConfig(policy=policy, budget=budget, link_ratio=link_ratio, warmup_steps=warmup, device="simulated",
                         baseline_step_time_s=baseline[0], baseline_step_cpu_s=baseline[1],
                         reference_tensors=reference, seed=seed, workload=workload.name, trace_out=out,
                         routers=routers)
    pf = Prefetcher(job.model, job.optimizer, cfg)
    if wall_clock:
        pf.tracker.clock = time.monotonic_ns
    clock = pf.device.clock
    marks: list[tuple[int, int]] = []
    times = []
    try:
        for i in range(steps):
            if i == warmup:
                marks.append((clock.now_ns(), clock.compute_ns()))
            t0 = time.perf_counter()
            job.step(i)
            times.append(time.perf_counter() - t0)
        marks.append((clock.now_ns(), clock.compute_ns()))
    finally:
        pf.close()
    report = pf.report()
    (n0, c0), (n1, c1) = marks
    report["clock_slowdown"] = (n1 - n0) / max(c1 - c0, 1)
    report["wall_slowdown"] = statistics.median(times[warmup:]) / baseline[0]
    assert pf.trace_stem is not None
    return report, pf.trace_stem


def compare(live: dict[str, Any], sim: dict[str, Any]) -> dict[str, Any]:
    """One row: live and simulated hit rate, stall and slowdown, and their differences."""
    row = {
        "hit_rate_live": live["hit_rate"], "hit_rate_sim": sim["hit_rate"],
        "hit_pt": 100 * (live["hit_rate"] - sim["hit_rate"]),
        "stall_s_live": live["stall_s"], "stall_s_sim": sim["stall_s"],
        "stall_ms_diff": 1e3 * (live["stall_s"] - sim["stall_s"]),
        "slowdown_live": live["clock_slowdown"], "slowdown_sim": sim["slowdown"],
        "slowdown_diff": live["clock_slowdown"] - (sim["slowdown"] or 0.0),
        "wall_slowdown_live": live["wall_slowdown"],
    }
    for key in ("hits", "late", "misses", "accesses"):
        row[f"{key}_live"], row[f"{key}_sim"] = live[key], sim[key]
    return row


def live_and_simulated(workload_name: str, policies: list[str], *, seed: int, steps: int, out: str | Path | None = None,
                       budget: float = 0.4, link_ratio: float = DEFAULT_LINK_RATIO, warmup: int = 1,
                       trace_clock: str = "compute", keep_outcomes: bool = False,
                       modelled_too: bool = False, routers: str | None = "auto") -> list[dict[str, Any]]:
    """One row per policy (see `compare`), with `workload`, `policy`, `seed`, `trace` and
    `in_sample` (a learned model trained on this seed). `trace_clock` says which trace is
    simulated: "compute" (the run's own, timed by the device clock: the check), "wall"
    (the run's own, timed in wall time) or "recorded" (the recorded pass's, what `prefetch
    run --trace-out` keeps). `keep_outcomes`: each row also carries the simulation's
    per-event outcomes (`sim_outcomes`) and the live report (for diagnosis). `daemon_replies`:
    for a learned row, "recorded" or "modelled" (module docstring; `modelled_too` adds the
    modelled row after each recorded one), else None."""
    if trace_clock not in ("compute", "wall", "recorded"):
        raise ValueError(f"trace_clock must be compute, wall or recorded, got {trace_clock!r}")
    from prefetch.simulate import simulate_like_run
    from prefetch.workloads import get_workload

    workload = get_workload(workload_name)
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="live-vs-sim-")
        out = tmp.name
    out = Path(out)
    try:
        baseline = _baseline(workload, seed, steps, warmup)
        reference, recorded = _recorded(workload, seed, steps, out / "recorded")
        rows = []
        for policy in policies:
            label = policy.partition(":")[0]
            live, stem = live_run(workload, policy, seed=seed, steps=steps, budget=budget, link_ratio=link_ratio,
                                  warmup=warmup, baseline=baseline, reference=reference, out=out / label,
                                  wall_clock=trace_clock == "wall", routers=routers)
            trace = recorded if trace_clock == "recorded" else stem
            sims = [simulate_like_run(live, trace)]
            if modelled_too and sims[0].extra.get("daemon_replies") == "recorded":
                sims.append(simulate_like_run(live, trace, daemon=True))  # the round-trip model alone
            for sim in sims:
                row = {"workload": workload_name, "policy": label, "seed": seed, "trace_clock": trace_clock,
                       "trace": str(trace), "daemon_replies": sim.extra.get("daemon_replies"),
                       "in_sample": live.get("in_sample"), **compare(live, sim.as_dict())}
                if keep_outcomes:
                    row["sim_outcomes"] = sim.outcomes
                    row["live_report"] = live
                rows.append(row)
        return rows
    finally:
        if tmp is not None:
            tmp.cleanup()

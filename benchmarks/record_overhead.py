"""Step-time overhead of recording, per workload (target: <= 3%).

    python benchmarks/record_overhead.py [--steps 30] [--workloads gpt2,moe] [--json out/record_overhead.json]

Two jobs of the same workload and seed in one process, one recorded and one not, run
step i alternately (plain i, recorded i, plain i+1, ...). Both do identical work at
step i (same losses), so the per-step ratio isolates the recorder's cost; the table
gives the median of those ratios and the two median step times. One torch thread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import machine_info, markdown_table, write_json  # noqa: E402


def measure(name: str, steps: int, warmup: int, out_dir: str) -> dict:
    from prefetch.workloads import get_workload
    from runtime.recorder import Recorder

    w = get_workload(name)
    plain, recorded = w.build(0), w.build(0)
    rec = Recorder(recorded.model, recorded.optimizer, out_dir, workload=name, seed=0).start()
    t_plain, t_rec = [], []
    try:
        for i in range(steps + warmup):
            t0 = time.perf_counter()
            a = plain.step(i)
            t1 = time.perf_counter()
            b = recorded.step(i)
            t2 = time.perf_counter()
            if a != b:
                raise AssertionError(f"{name}: recording changed the loss at step {i}: {a} != {b}")
            if i >= warmup:
                t_plain.append(t1 - t0)
                t_rec.append(t2 - t1)
    finally:
        rec.close()
    ratios = [r / p for r, p in zip(t_rec, t_plain)]
    return {
        "workload": name,
        "steps": steps,
        "plain_step_ms": 1e3 * statistics.median(t_plain),
        "recorded_step_ms": 1e3 * statistics.median(t_rec),
        "overhead_pct": 100 * (statistics.median(ratios) - 1),
        "events_per_step": rec.writer.num_events / (steps + warmup),
    }


def main(argv: list[str] | None = None) -> int:
    from prefetch.workloads import WORKLOADS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads.split(","):
            r = measure(name, args.steps, args.warmup, tmp)
            results.append(r)
            print(f"  {name}: {r['overhead_pct']:+.1f}%", file=sys.stderr)
    print(f"recording overhead, median of {args.steps} paired steps, torch threads = {torch.get_num_threads()}")
    print(markdown_table(
        ["workload", "plain step ms", "recorded step ms", "overhead %", "events/step"],
        [[r["workload"], r["plain_step_ms"], r["recorded_step_ms"], f"{r['overhead_pct']:+.1f}", int(r["events_per_step"])] for r in results],
    ))
    write_json(args.json, {"machine": machine_info(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

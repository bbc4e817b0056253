"""The learned policy as a new user meets it: `runtime.record` -> `prefetch train` -> `runtime.prefetching`.

    python benchmarks/user_path.py [--seeds 2000-2005] [--steps 10] [--budget 0.4]
        [--out out/benchmarks/user_path] [--json out/benchmarks/user_path.json]

The other benchmarks run the reference path (`prefetch run`: a recorded tensor table fixes
the budget and the link before the first step, an all-resident twin is stepped between
steps). A user's own script has none of that: the budget is a fraction fixed by the
warm-up step, the policy starts knowing only the parameters, and the link is timed from
that first step. This runs exactly what docs/usage.md tells a user to type, per generated
architecture (prefetch.workloads.generated; generator seeds 2000 on, a range neither tuned
on (0-99) nor reported by the generalisation suite (1000-1019)):

  1. `with runtime.record(model, opt, out=..., seed=s)` around the training loop, run seeds 0 and 1;
  2. `python -m prefetch train TRACES --out MODELS` (the CLI: model, then the guard's prior);
  3. run seed 2, which the model never saw, all resident (the step time the slowdown is over),
     then under `runtime.prefetching(model, opt, policy=P, budget=0.4, seed=2)` for none, replay,
     markov, mirror and learned:MODELS, each a fresh process-local job on the simulated device.

Printed per architecture: hit rate, stall and slowdown of every policy; learned minus the
best simple policy (points), and learned's stall over the least simple stall. Slowdown is the
median measured step over the all-resident run's median step, run one after the other (not
interleaved as `prefetch run` does): read it with the load average printed.

The simulated link is the architecture's, the same for all its runs: every run is given the
all-resident run's step time, wall and work clock (`baseline_step_time_s`,
`baseline_step_cpu_s`, as `prefetch run` gives its runs), and fixes its link from it before
its first step. Left to time the link from its own first step (runtime.prefetcher._fix_link,
`--own-links`), each run got its own: one architecture's links differed up to 5x on
2026-12-02 (first calls in a fresh job, a daemon starting beside a learned run), which
decided more of the comparison than the policies did. A real GPU's link is the same
whatever the policy. The last column shows the links' spread.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from common import load_average, machine_info, markdown_table, write_json  # noqa: E402
from generalisation import parse_seeds  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEEDS = "2000-2005"
"""Generator seeds: disjoint from the tuning seeds (0-99) and the generalisation suite's (1000-1019)."""
TRAIN_SEEDS = (0, 1)
EVAL_SEED = 2
SIMPLE = ("none", "replay", "markov", "mirror")
"""The simple policies learned is compared with (the issue's three, and mirror)."""


def evaluate(gen_seed: int, *, steps: int, budget: float, out: Path, same_link: bool = True) -> dict[str, Any]:
    """Record, train (the CLI) and run one architecture as a user would; one result dict."""
    import runtime
    from prefetch.run import timed_steps
    from prefetch.workloads.generated import generate, workload_for

    arch = generate(gen_seed)
    workload = workload_for(arch)
    base = out / arch.name
    t0 = time.monotonic()
    for seed in TRAIN_SEEDS:
        job = workload.build(seed)
        with runtime.record(job.model, job.optimizer, out=base / "traces" / f"seed{seed}", seed=seed):
            timed_steps(job, steps)
    train = subprocess.run([sys.executable, "-m", "prefetch", "train", str(base / "traces"), "--out",
                            str(base / "models"), "--no-progress", "--threads", "1"],
                           cwd=ROOT, capture_output=True, text=True)
    if train.returncode != 0:
        raise RuntimeError(f"prefetch train failed for {arch.name}:\n{train.stderr[-2000:]}")
    t_train = time.monotonic() - t0
    _, wall, cpu = timed_steps(workload.build(EVAL_SEED), steps)
    plain, plain_cpu = statistics.median(wall[1:]), statistics.median(cpu[1:])
    # one link for every policy, from this all-resident run (a GPU's link does not depend on
    # the policy); timed by each run from its own first step, links of one architecture
    # differed up to 5x (first calls in a fresh job, a daemon starting beside it)
    link = {"baseline_step_time_s": plain, "baseline_step_cpu_s": plain_cpu} if same_link else {}
    runs: dict[str, dict[str, Any]] = {}
    for policy in (*SIMPLE, f"learned:{base / 'models'}"):
        job = workload.build(EVAL_SEED)
        with runtime.prefetching(job.model, job.optimizer, policy=policy, budget=budget, seed=EVAL_SEED,
                                 workload=arch.name, device="simulated", **link) as pf:
            timed_steps(job, steps)
        r = pf.report()
        runs[policy.partition(":")[0]] = {
            "hit_rate": r["hit_rate"], "stall_s": r["stall_s"], "slowdown": r["step_time_s"] / plain,
            "bytes_copied": r["bytes_copied"], "in_sample": r.get("in_sample"), "note": r.get("policy_note"),
            "link_GBps": r["link"]["bandwidth_GBps"]}
    best = max(SIMPLE, key=lambda p: runs[p]["hit_rate"])
    least_stall = min(runs[p]["stall_s"] for p in SIMPLE)
    return {"gen_seed": gen_seed, "name": arch.name, "arch": arch.describe(), "plain_step_s": plain, "runs": runs,
            "best_simple": best, "learned_minus_best_pt": 100 * (runs["learned"]["hit_rate"] - runs[best]["hit_rate"]),
            "learned_stall_over_least": runs["learned"]["stall_s"] / max(least_stall, 1e-9),
            "seconds": {"record_train": t_train, "total": time.monotonic() - t0}}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    return {"architectures": n,
            "share_learned_ge_best": sum(r["learned_minus_best_pt"] >= 0 for r in rows) / n,
            "learned_below_none": sum(r["runs"]["learned"]["hit_rate"] < r["runs"]["none"]["hit_rate"] for r in rows),
            "learned_minus_best_pt_median": statistics.median(r["learned_minus_best_pt"] for r in rows),
            "learned_stall_over_least_median": statistics.median(r["learned_stall_over_least"] for r in rows),
            "learned_stall_over_least_max": max(r["learned_stall_over_least"] for r in rows),
            "in_sample": sorted({str(r["runs"]["learned"]["in_sample"]) for r in rows})}


def _span(values: list[float]) -> tuple[float, float]:
    return min(values), max(values)


def print_tables(rows: list[dict[str, Any]], s: dict[str, Any]) -> None:
    pols = (*SIMPLE, "learned")
    print(markdown_table(
        ["arch", "features", *[f"{p} hit % / stall ms / slowdown" for p in pols], "learned - best pt",
         "learned stall / least", "links GB/s (min-max)"],
        [[r["name"], r["arch"], *[f"{100 * r['runs'][p]['hit_rate']:.1f} / {1e3 * r['runs'][p]['stall_s']:.0f} / "
                                   f"{r['runs'][p]['slowdown']:.2f}x" for p in pols],
          f"{r['learned_minus_best_pt']:+.1f} ({r['best_simple']})", f"{r['learned_stall_over_least']:.2f}",
          "{:.3f}-{:.3f}".format(*_span([r["runs"][p]["link_GBps"] for p in pols]))]
         for r in rows]))
    print()
    print(markdown_table(["", "value"], [
        ["learned >= best simple policy (share of archs)", f"{s['share_learned_ge_best']:.0%}"],
        ["learned < none (archs)", s["learned_below_none"]],
        ["learned - best simple, pt (median)", f"{s['learned_minus_best_pt_median']:+.1f}"],
        ["learned stall / least simple stall (median, max)",
         f"{s['learned_stall_over_least_median']:.2f}, {s['learned_stall_over_least_max']:.2f}"],
        ["learned in_sample", ", ".join(s["in_sample"])]]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default=SEEDS, help=f"generator seeds (default {SEEDS})")
    ap.add_argument("--steps", type=int, default=10, help="steps per run (default 10; the first is warm-up)")
    ap.add_argument("--budget", type=float, default=0.4)
    ap.add_argument("--out", default="out/benchmarks/user_path")
    ap.add_argument("--json", default=None)
    ap.add_argument("--own-links", action="store_true",
                    help="each run times its simulated link from its own first step, as runtime.prefetching "
                         "does without a baseline (default: one link per architecture, from its all-resident run)")
    args = ap.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        ap.error(str(exc))
    if any(s < 2000 for s in seeds):
        ap.error("--seeds: use 2000 and up (0-99 are for tuning, 1000-1019 the generalisation suite's)")
    if args.steps < 4:
        ap.error("--steps must be >= 4 (a warm-up, the guard's scored steps)")
    torch.set_num_threads(1)
    load_before = load_average()
    t0 = time.monotonic()
    rows = []
    for seed in seeds:
        rows.append(evaluate(seed, steps=args.steps, budget=args.budget, out=Path(args.out),
                             same_link=not args.own_links))
        r = rows[-1]
        print(f"  {r['name']} ({r['arch']}): learned {100 * r['runs']['learned']['hit_rate']:.1f}% vs best "
              f"{r['best_simple']} {r['learned_minus_best_pt']:+.1f} pt; stall x{r['learned_stall_over_least']:.2f} "
              f"of the least; {r['seconds']['total']:.0f} s", file=sys.stderr, flush=True)
    s = summary(rows)
    print(f"User path: {len(rows)} generated architectures (generator seeds {args.seeds}); recorded with "
          f"runtime.record on run seeds {', '.join(map(str, TRAIN_SEEDS))}, trained with `prefetch train`, run with "
          f"runtime.prefetching on run seed {EVAL_SEED} (never trained on), {args.steps} steps (1 warm-up), budget "
          f"{args.budget}, simulated device (link ratio default, "
          f"{'each run timing its own link' if args.own_links else 'one link per architecture, from its all-resident run'}"
          f"), torch threads 1; load average before {load_before}, "
          f"after {load_average()}; {time.monotonic() - t0:.0f} s.\n")
    print_tables(rows, s)
    write_json(args.json, {"rows": rows, "summary": s, "args": vars(args), "machine": machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())

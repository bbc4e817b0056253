"""A live run against the simulation of its own trace, per workload and policy (issue 10).

    python benchmarks/live_vs_sim.py [--workloads gpt2,moe] [--policies none,replay,markov,learned]
        [--models out/benchmarks/models] [--seed 2] [--steps 8] [--budget 0.4]
        [--trace-clock compute|wall|recorded] [--quick] [--json out/benchmarks/live_vs_sim.json]

Each workload runs live on the simulated device (budget 0.4, link ratio 0.5) with its
trace kept, and `prefetch.simulate.simulate_like_run(report, trace)` replays that trace
(prefetch.live_vs_sim). `learned` runs live through the daemon (what `learned:DIR` does)
with the model in --models (run_all trains it on the samples, seeds 0 and 1): the seed
must be one it never saw, and the row says IN SAMPLE otherwise. The table gives live and
simulated hit rate, stall and slowdown and their differences; the target is |hit pt| <= 1.
A learned run has two rows: `daemon replies` "recorded" simulates it with the event each
reply was read at live (kept in its trace: the simulation of that very run, the one the
target counts), "modelled" with the round-trip latency model instead (what the model alone
gives a trace without a record; shown, not counted).
`--trace-clock wall` times the live trace in wall time and `recorded` simulates the
recorded pass's trace instead (the comparison as it was before the compute clock). One
torch thread; the machine's load is printed with the table: on a loaded machine the live
figures move (stalls are slept in wall time), the simulated ones do not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from common import load_average, machine_info, markdown_table, write_json  # noqa: E402
from prefetch.workloads import WORKLOADS  # noqa: E402
from runtime.link import DEFAULT_LINK_RATIO  # noqa: E402

TARGET_PT = 1.0
"""Issue 10: live and simulated hit rates agree within this many points."""
DEFAULT_MODELS = "out/benchmarks/models"


def _policies(text: str, models: str) -> list[str]:
    """`learned` means learned:MODELS; a learned policy without models is skipped, saying so."""
    from runtime.policy_spec import check_policy_spec

    out = []
    for p in (p.strip() for p in text.split(",") if p.strip()):
        p = f"learned:{models}" if p == "learned" else p
        try:
            check_policy_spec(p)
        except ValueError as exc:
            print(f"skipping {p}: {exc} (python benchmarks/run_all.py trains {DEFAULT_MODELS})", file=sys.stderr)
            continue
        out.append(p)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="default: all seven reference workloads")
    ap.add_argument("--policies", default="none,replay,markov,learned")
    ap.add_argument("--models", default=DEFAULT_MODELS, help="the learned policy's model folder")
    ap.add_argument("--seed", type=int, default=2, help="evaluated seed; the models are trained on 0 and 1")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default 8; --quick 4)")
    ap.add_argument("--budget", type=float, default=0.4)
    ap.add_argument("--link-ratio", type=float, default=DEFAULT_LINK_RATIO)
    ap.add_argument("--trace-clock", choices=("compute", "wall", "recorded"), default="compute")
    ap.add_argument("--quick", action="store_true", help="4 steps per run")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from prefetch.live_vs_sim import live_and_simulated

    steps = args.steps or (4 if args.quick else 8)
    bad = [w for w in args.workloads.split(",") if w not in WORKLOADS]
    if bad:
        print(f"live_vs_sim.py: --workloads: unknown {', '.join(bad)}; choose from {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    policies = _policies(args.policies, args.models)
    load_before, t0 = load_average(), time.monotonic()
    rows: list[dict[str, Any]] = []
    for w in args.workloads.split(","):
        for r in live_and_simulated(w, policies, seed=args.seed, steps=steps, budget=args.budget,
                                    link_ratio=args.link_ratio, trace_clock=args.trace_clock, modelled_too=True):
            rows.append(r)
            replies = f" (daemon replies {r['daemon_replies']})" if r["daemon_replies"] else ""
            print(f"  {w} {r['policy']}{replies}: live {r['hit_rate_live']:.2%} simulated {r['hit_rate_sim']:.2%} "
                  f"({r['hit_pt']:+.2f} pt)", file=sys.stderr)
    good = [abs(r["hit_pt"]) <= TARGET_PT for r in rows]
    ok = [g for r, g in zip(rows, good) if r["daemon_replies"] != "modelled"]  # the model alone: shown, not counted
    print(f"Live on the simulated device vs the simulation of the same run's trace ({args.trace_clock} clock): "
          f"seed {args.seed} (the learned models were trained on seeds 0 and 1), {steps} steps, warm-up 1, "
          f"budget {args.budget}, link ratio {args.link_ratio}; torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average before {load_before}, "
          f"after {load_average()}; {time.monotonic() - t0:.0f} s. Slowdown: the device clock's (compute + waits) / "
          f"compute; wall: median step over the all-resident one. Target |hit pt| <= {TARGET_PT}: "
          f"{sum(ok)}/{len(ok)} rows (learned: with its recorded daemon replies; the modelled rows are not counted).")
    print()
    print(markdown_table(
        ["workload", "policy", "daemon replies", "hit live", "hit sim", "hit pt", "late live/sim", "miss live/sim", "stall ms live",
         "stall ms sim", "slowdown live", "slowdown sim", "wall slowdown", "target"],
        [[r["workload"], r["policy"], r["daemon_replies"] or "", f"{r['hit_rate_live']:.2%}", f"{r['hit_rate_sim']:.2%}", f"{r['hit_pt']:+.2f}",
          f"{r['late_live']}/{r['late_sim']}", f"{r['misses_live']}/{r['misses_sim']}",
          round(1e3 * r["stall_s_live"], 1), round(1e3 * r["stall_s_sim"], 1), f"{r['slowdown_live']:.3f}x",
          f"{r['slowdown_sim']:.3f}x", f"{r['wall_slowdown_live']:.3f}x",
          ("ok" if g else "**miss**") + (" (model, not counted)" if r["daemon_replies"] == "modelled" else "")
          + (" IN SAMPLE" if r.get("in_sample") else "")]
         for r, g in zip(rows, good)],
    ))
    write_json(args.json, {"machine": machine_info(), "load_before": load_before, "load_after": load_average(),
                           "seed": args.seed, "steps": steps, "budget": args.budget, "link_ratio": args.link_ratio,
                           "trace_clock": args.trace_clock, "target_pt": TARGET_PT, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

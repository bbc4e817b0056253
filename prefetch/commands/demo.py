"""`prefetch demo`: record -> train per architecture -> run -> report, in one command."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole flow: record, train, run every policy, report",
                       description="Record the reference workloads, train a predictor per architecture, run each "
                                   "workload live with none/replay/markov/learned, bound it with the simulated "
                                   "oracle, and print the table (what `make demo` runs).")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    p.add_argument("--quick", action="store_true", help="gpt2 and moe only, 8 live steps (a couple of minutes)")
    p.add_argument("--workloads", default=None, help="comma-separated workloads (default: all)")
    p.add_argument("--steps", type=int, default=None, help="live steps per run (default 12; --quick 8)")
    p.add_argument("--train-steps", type=int, default=16, help="recorded training steps per workload (default 16)")
    p.add_argument("--budget", type=float, default=0.4, help="device budget, fraction of managed bytes (default 0.4)")
    p.add_argument("--link-ratio", type=float, default=0.5, help="simulated link: copy-all time / step time (default 0.5)")
    p.add_argument("--no-sweep", action="store_true", help="skip the simulated budget sweep")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from prefetch.demo import ALL_WORKLOADS, QUICK_WORKLOADS, run_demo

    torch.set_num_threads(args.threads)
    workloads = args.workloads.split(",") if args.workloads else (QUICK_WORKLOADS if args.quick else ALL_WORKLOADS)
    steps = args.steps or (8 if args.quick else 12)
    doc = run_demo(args.out, workloads=workloads, steps=steps, train_steps=args.train_steps, budget=args.budget,
                   link_ratio=args.link_ratio, sweep=not args.no_sweep, progress=not args.no_progress)
    print(Path(doc["report"]["markdown"]).read_text() if "markdown" in doc.get("report", {}) else doc["report"])
    bad = [f"{r['workload']}/{r['policy']}" for r in doc["runs"] if not r["losses_identical"]]
    if bad:
        print(f"prefetch demo: losses differ with prefetching for {', '.join(bad)}")
        return 1
    return 0

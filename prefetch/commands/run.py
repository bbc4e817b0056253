"""`prefetch run`: a reference workload with prefetching, and the same job all resident."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a workload with prefetching and report hit rate, stalls, slowdown",
                       description="Run a reference workload with managed tensors offloaded and prefetched, "
                                   "plus the same steps all resident; print the JSON report. Exit code 1 when the "
                                   "losses, final parameters or optimizer state differ from the all-resident run "
                                   "(bit for bit), 2 on bad input (refused before any training step).")
    p.add_argument("--workload", required=True)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--policy", default="replay", help="none | replay | markov | learned:MODEL_DIR (default replay)")
    p.add_argument("--budget", default="0.4", help="fraction of managed bytes (0.4) or a size (2GiB)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--link-ratio", type=float, default=0.5, help="simulated device: copy-all time / step time")
    p.add_argument("--lookahead", type=int, default=64, help="future reads a policy keeps requested")
    p.add_argument("--warmup", type=int, default=1, help="warm-up steps excluded from the figures")
    p.add_argument("--device", default="auto", help="auto | simulated | cuda[:N]")
    p.add_argument("--daemon", default=None, help="endpoint of a running daemon (learned policies)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, >= 1 (default 1)")
    p.add_argument("--trace-out", type=Path, default=None, help="also keep the run's trace here")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--timeline", type=Path, default=None, metavar="DIR",
                   help="write a Perfetto/chrome://tracing timeline of the prefetched run into DIR")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from prefetch.run import bit_identical, run_workload, summary_line

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    budget = args.budget  # parsed (and checked) by prefetch.budget
    report = run_workload(args.workload, steps=args.steps, policy=args.policy, budget=budget, seed=args.seed,
                          link_ratio=args.link_ratio, lookahead=args.lookahead, warmup_steps=args.warmup,
                          device=args.device, daemon=args.daemon, trace_out=args.trace_out,
                          timeline_dir=args.timeline, progress=not args.no_progress)
    text = json.dumps(report, indent=2)
    print(text)
    print(summary_line(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return 0 if bit_identical(report) else 1  # losses, parameters and optimizer state

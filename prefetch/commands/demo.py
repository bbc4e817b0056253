"""`prefetch demo`: record -> train -> run every policy on unseen seeds -> report, in one command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefetch.demo import QUICK_STEPS, QUICK_TRAIN_STEPS, STEPS, TRAIN_STEPS
from runtime.link import DEFAULT_LINK_RATIO


def _seeds(text: str, flag: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"{flag}: name at least one seed")
    return seeds


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole flow: record, train, run every policy on unseen seeds, report",
                       description="Record the reference workloads on the training seeds, train a predictor per "
                                   "architecture, run each workload live on the unseen evaluation seeds with "
                                   "none/replay/markov/learned, simulate each run's own trace with the same "
                                   "policies and the oracle, and print the table (what `make demo` runs).")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    p.add_argument("--quick", action="store_true",
                   help=f"gpt2 and moe only, {QUICK_STEPS} live steps, {QUICK_TRAIN_STEPS} training steps")
    p.add_argument("--workloads", default=None, help="comma-separated workloads (default: all 7)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"live steps per run, the first is warm-up (default {STEPS}; --quick {QUICK_STEPS})")
    p.add_argument("--train-steps", type=int, default=None,
                   help=f"recorded steps per training seed (default {TRAIN_STEPS}; --quick {QUICK_TRAIN_STEPS})")
    p.add_argument("--train-seeds", type=lambda t: _seeds(t, "--train-seeds"), default=(0, 1),
                   help="seeds recorded to train the learned model (default 0,1)")
    p.add_argument("--seeds", type=lambda t: _seeds(t, "--seeds"), default=(2, 3, 4),
                   help="evaluation seeds of the live runs, disjoint from --train-seeds (default 2,3,4)")
    p.add_argument("--policies", default=None,
                   help="comma-separated live policies (default none,replay,markov,learned; 'learned' uses OUT/models)")
    p.add_argument("--budget", type=float, default=0.4, help="device budget, fraction of managed bytes (default 0.4)")
    p.add_argument("--link-ratio", type=float, default=DEFAULT_LINK_RATIO,
                   help=f"simulated link: copy-all time / step time (default {DEFAULT_LINK_RATIO})")
    p.add_argument("--sweep-workloads", default=None,
                   help="workloads whose first evaluation trace gets a budget sweep (default: all run)")
    p.add_argument("--no-sweep", action="store_true", help="skip the simulated budget sweep")
    p.add_argument("--no-plots", action="store_true", help="skip the report's PNG plots")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from prefetch.demo import ALL_WORKLOADS, QUICK_WORKLOADS, DemoConfig, DemoError, run_demo
    from prefetch.report_inputs import load_inputs
    from prefetch.report_rows import build_rows
    from prefetch.report_tables import format_table

    torch.set_num_threads(args.threads)
    workloads = tuple(args.workloads.split(",")) if args.workloads else (QUICK_WORKLOADS if args.quick else ALL_WORKLOADS)
    policies = None
    if args.policies:
        learned = f"learned:{args.out / 'models'}"
        policies = tuple(learned if p.strip() == "learned" else p.strip() for p in args.policies.split(",") if p.strip())
    sweep = () if args.no_sweep else (tuple(args.sweep_workloads.split(",")) if args.sweep_workloads else None)
    cfg = DemoConfig(out=args.out, workloads=workloads, steps=args.steps or (QUICK_STEPS if args.quick else STEPS),
                     train_steps=args.train_steps or (QUICK_TRAIN_STEPS if args.quick else TRAIN_STEPS),
                     train_seeds=args.train_seeds, eval_seeds=args.seeds, policies=policies, budget=args.budget,
                     link_ratio=args.link_ratio, sweep_workloads=sweep, plots=not args.no_plots,
                     progress=not args.no_progress)
    try:
        doc = run_demo(config=cfg)
    except DemoError as exc:
        print(f"prefetch demo: REFUSED: {exc}", file=sys.stderr)
        return 1
    print(format_table(build_rows(load_inputs([cfg.out / "results.json"]))))
    print(f"\nreport: {doc['report'].get('markdown')}")
    bad = doc["identity_failures"]
    if bad:
        print("prefetch demo: prefetching changed the training state (not bit-identical to the all-resident twin): "
              + "; ".join(bad), file=sys.stderr)
        return 1
    return 0

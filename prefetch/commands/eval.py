"""`prefetch eval`: learned predictor and baselines, offline, on held-out steps and runs.

    prefetch eval --model models/ traces/moe/ traces/moe-seed1/ --json eval.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runtime.defaults import EVAL_LOOKAHEAD


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="score the learned predictor and the baselines on traces",
        description="Next-access top-1/top-k and recall of the next D reads for learned, none, replay "
                    "and markov: on the steps held out of training for traces of runs the model was "
                    "trained on (the same workload and seed, or the same access order step by step when "
                    "a seed is unknown; flagged in_sample, with a WARNING on stderr), on all steps but "
                    "the first for other runs (e.g. another seed).",
        epilog="example:\n  prefetch eval --model models/ traces/moe/ traces/moe-seed1/ --json eval.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("traces", nargs="+", type=Path, metavar="TRACE_DIR", help="trace folders or files")
    p.add_argument("--model", required=True, type=Path, metavar="MODEL_DIR", help="output of `prefetch train`")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the full results as JSON")
    p.add_argument("--lookahead", type=int, default=EVAL_LOOKAHEAD,
                   help=f"D, the horizon of recall@D and of the policies (default {EVAL_LOOKAHEAD})")
    p.add_argument("--topk", type=int, default=5, help="k of top-k accuracy (default 5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from predictor.evaluate import evaluate, format_report
    from runtime.trace_format import load_traces

    if args.lookahead < 1 or args.topk < 1:
        raise ValueError("--lookahead and --topk must be >= 1")
    report = evaluate(str(args.model), load_traces(args.traces, managed_only=True), lookahead=args.lookahead, topk=args.topk,
                      progress=not args.no_progress)  # fmt: skip
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return 0

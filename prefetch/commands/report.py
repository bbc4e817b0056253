"""`prefetch report RUN_JSON... --out DIR [--title T]`: the table, plots and a timeline from run reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="turn run reports into a Markdown/JSON table, PNG plots and a Perfetto timeline",
        description=(
            "Read run reports (`prefetch run --json`), lists of them, or a results document "
            "(`prefetch demo`: runs, oracle, sweep) and write into --out: report.md and report.json "
            "(workload x policy -> hit rate, late, misses, stall, slowdown, MiB copied, losses identical, "
            "the oracle's hit rate), hit_rate.png, slowdown.png, budget_sweep.png (with sweep data) and "
            "timeline.trace.json (the first run with a timeline). The table is also printed."
        ),
        epilog="example:\n  prefetch report out/demo/results.json --out out/demo/report\n"
               "  prefetch report runs/*.json --out report/ --title 'gpt2, budget 40%'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="RUN_JSON", help="run report / results JSON files")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--title", default=None, help="report title (default 'Prefetch report')")
    p.add_argument("--sweep-workloads", default=None, metavar="W1,W2",
                   help="workloads in budget_sweep.png (default: all with sweep data)")
    p.add_argument("--timeline-run", default=None, metavar="WORKLOAD/POLICY",
                   help="whose timeline to copy, e.g. gpt2/learned (default: the first run that has one)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prefetch.report import write_report

    sweep_workloads = [w.strip() for w in args.sweep_workloads.split(",") if w.strip()] if args.sweep_workloads else None
    written = write_report(args.inputs, args.out, title=args.title, plots=not args.no_plots,
                           sweep_workloads=sweep_workloads, timeline_run=args.timeline_run,
                           stdout=sys.stdout)
    for key in ("markdown", "json", "hit_rate_png", "slowdown_png", "budget_sweep_png", "timeline"):
        if key in written:
            print(f"wrote {written[key]}", file=sys.stderr)
    return 0

"""`prefetch trace info FILE`: what a trace holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runtime.trace_format import find_traces, load_trace


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="inspect traces", description="Inspect recorded traces.")
    tsub = p.add_subparsers(dest="trace_command", metavar="SUBCOMMAND", required=True)
    info = tsub.add_parser("info", help="summarise a trace: steps, events per phase and kind, tensors, bytes",
                           description="Summarise traces (a trace file, its stem, or a folder of them).")
    info.add_argument("paths", nargs="+", metavar="FILE", help="trace file(s) or folder(s)")
    info.add_argument("--json", type=Path, default=None, help="also write the summaries as JSON")
    info.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    from prefetch.trace_summary import format_summary, summarize

    summaries = []
    for stem in find_traces(args.paths):
        s = summarize(load_trace(stem))
        summaries.append(s)
        print(format_summary(s))
        print()
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=2))
    return 0

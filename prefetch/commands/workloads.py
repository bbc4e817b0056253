"""`prefetch workloads`: the reference training jobs."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("workloads", help="list the reference workloads",
                       description="List the reference workloads (real transformers models built from configs).")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prefetch.workloads import list_workloads

    for w in list_workloads():
        print(f"{w.name:<16} {'dynamic' if w.dynamic else 'static ':<8} {w.description}")
    return 0

"""The `prefetch` command line: one entry point, a verb per job.

    prefetch --help
    prefetch record --workload gpt2 --steps 8 --out traces/gpt2

Each verb lives in `prefetch/commands/<verb>.py` with `register(subparsers)`; this file
only wires them up and turns expected errors into one clear line and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# verb module names under prefetch.commands, in --help order
COMMANDS = ("workloads", "record", "trace", "train", "eval", "simulate", "run", "daemon", "report", "demo")


class CommandError(Exception):
    """An expected failure: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefetch",
        description="Learned tensor prefetching for PyTorch training: record, train, simulate, run.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"prefetch.commands.{name.replace('-', '_')}")
        except ModuleNotFoundError as exc:
            if exc.name == f"prefetch.commands.{name}":
                continue  # verb not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("prefetch: interrupted", file=sys.stderr)
        return 130
    except (CommandError, OSError, ValueError, KeyError, LookupError) as exc:
        if getattr(args, "debug", False):
            raise
        msg = str(exc) if not isinstance(exc, KeyError) else str(exc.args[0]) if exc.args else repr(exc)
        print(f"prefetch {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

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
from pathlib import Path
from typing import NoReturn, Sequence

# verb module names under prefetch.commands, in --help order
COMMANDS = ("workloads", "record", "trace", "train", "eval", "simulate", "run", "daemon", "report", "demo")


class CommandError(Exception):
    """An expected failure: printed as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming the verb and the flag (not a usage dump).

    Subparsers inherit the class, so every verb gets the same shape as CommandError."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def output_dir(text: str) -> Path:
    """argparse type for an output folder: refuses '' (which would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty string (use . for the current folder)")
    return Path(text)


def positive_int(text: str) -> int:
    """argparse type for a count that must be >= 1 (threads, steps, trees)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type for a finite number > 0 (a bandwidth, a ratio)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """argparse type for a finite number >= 0 (a latency)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type for a count that may be 0 (warm-up steps)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="prefetch",
        description="Learned tensor prefetching for PyTorch training: record, train, simulate, run.",
    )
    # dest "verb", not "command": `record` and `run` take the script after -- as `command`
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
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
        print(f"prefetch {args.verb}: error: {' '.join(msg.splitlines())}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""`prefetch record`: a reference workload, or any Python training script unchanged.

    prefetch record --workload gpt2 --steps 8 --out traces/gpt2
    prefetch record --out traces/mine -- python train.py --lr 3e-4
    prefetch record --out traces/ddp -- torchrun --nproc-per-node 2 train.py     # a trace per rank
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from prefetch.cli import CommandError, output_dir, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "record", help="record the tensor-access trace of a training job",
        description="Record a reference workload (--workload) or an unmodified script (after --).",
        epilog="examples:\n  prefetch record --workload gpt2 --steps 8 --out traces/gpt2\n"
               "  prefetch record --out traces/mine -- python train.py --lr 3e-4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workload", help="a reference workload (see `prefetch workloads`)")
    p.add_argument("--steps", type=positive_int, default=8, help="optimizer steps to record (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed for model init and data (default 0)")
    p.add_argument("--out", required=True, type=output_dir, help="output folder (created if missing)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--name", default=None, help="trace name for a script (default: the model class)")
    p.add_argument("--routers", default="auto", metavar="auto|off|PATH[:K],...",
                   help="mixture-of-experts routers whose hints the trace keeps for the simulator (runtime.routers): "
                        "found (auto, the default), none (off), or the router modules named")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- python SCRIPT ARGS, or -- torchrun ... SCRIPT ARGS (a trace per rank)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if bool(command) == bool(args.workload):
        raise CommandError("give either --workload NAME or a command after -- (not both)")
    if args.workload:
        import torch

        from prefetch.recording import record_workload
        from prefetch.trace_summary import format_summary, summarize
        from runtime.trace_format import load_trace

        torch.set_num_threads(args.threads)
        stem = record_workload(args.workload, args.steps, args.out, seed=args.seed, progress=not args.no_progress,
                               routers=args.routers)
        print(format_summary(summarize(load_trace(stem))))
        return 0
    return _record_script(command, args)


def _record_script(command: list[str], args: argparse.Namespace) -> int:
    from runtime.trace_writer import check_output_dir

    check_output_dir(args.out)
    from prefetch.script_run import parse_command

    cmd = parse_command(command, "record")  # python SCRIPT|-m MODULE, or torchrun ... SCRIPT (a trace per rank)
    # The launcher runs under this interpreter (which has this package), with the
    # script's own arguments untouched.
    opts = ["--out", str(args.out), "--routers", args.routers]
    if args.name:
        opts += ["--name", args.name]
    if args.no_progress:
        opts.append("--no-progress")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    root = str(Path(__file__).resolve().parent.parent.parent)  # the launcher importable in every rank
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd.argv("runtime.launch", opts), env=env)
    if proc.returncode not in (0,):
        if proc.returncode < 0:
            raise CommandError(f"script {cmd.script} was killed by signal {-proc.returncode}; "
                               f"its trace in {args.out} is readable up to the last complete step")
        return proc.returncode
    return 0

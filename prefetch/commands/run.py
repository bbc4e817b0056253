"""`prefetch run`: a reference workload, or any training script unchanged, with prefetching.

    prefetch run --workload gpt2 --policy replay --budget 0.4
    prefetch run --compare --json out/tiny.json -- python examples/train_tiny.py --steps 12
    prefetch run --policy learned:models/ -- torchrun --nproc-per-node 2 examples/train_ddp.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from predictor.policies import spec_help
from runtime.defaults import AHEAD_SHARE, LIVE_LOOKAHEAD
from runtime.link import DEFAULT_LINK_RATIO
from runtime.placement import PLACEMENTS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a workload or a script with prefetching and report hit rate, stalls, slowdown",
                       description="Run a reference workload (--workload) with managed tensors offloaded and "
                                   "prefetched, plus the same steps all resident; or any Python training script, "
                                   "unchanged, after -- (python SCRIPT ARGS, or torchrun ... SCRIPT ARGS: one report "
                                   "per rank). Prints the JSON report. Exit code 1 when the losses, final parameters "
                                   "or optimizer state differ from the all-resident run (bit for bit; scripts: with "
                                   "--compare), 2 on bad input (refused before any training step); a script's own "
                                   "non-zero exit code passes through.",
                       epilog="examples:\n  prefetch run --workload gpt2 --policy replay\n"
                              "  prefetch run --compare -- python examples/train_tiny.py --steps 12\n"
                              "  prefetch run --json out/ddp.json -- torchrun --nproc-per-node 2 examples/train_ddp.py",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default=None, help="a reference workload (or a script after --)")
    p.add_argument("--steps", type=int, default=12, help="--workload only: steps to run (default 12)")
    p.add_argument("--policy", default="replay", help=f"{spec_help()}; NAME:key=value sets a parameter (default replay)")
    p.add_argument("--budget", default="0.4", help="fraction of managed bytes (0.4) or a size (2GiB)")
    p.add_argument("--seed", type=int, default=None,
                   help="--workload: its seed (default 0); a script: the seed it uses, if known (provenance)")
    p.add_argument("--link-ratio", type=float, default=DEFAULT_LINK_RATIO,
                   help=f"simulated device: copy-all time / step time (default {DEFAULT_LINK_RATIO})")
    p.add_argument("--lookahead", type=int, default=LIVE_LOOKAHEAD,
                   help=f"future reads a policy keeps requested (default {LIVE_LOOKAHEAD})")
    p.add_argument("--ahead-share", type=float, default=AHEAD_SHARE, metavar="S",
                   help="prefetch window: prefetches issued and not yet read hold at most this share of the "
                        f"budget, 0 for none (default {AHEAD_SHARE}; runtime.defaults.AHEAD_SHARE)")
    p.add_argument("--routers", default="auto", metavar="auto|off|PATH[:K],...",
                   help="mixture-of-experts router lookahead (runtime.routers): find the routers (auto, the "
                        "default), none (off), or the router modules named; the guarded learned policy takes "
                        "their hints, the simple policies ignore them")
    p.add_argument("--warmup", type=int, default=1, help="warm-up steps excluded from the figures")
    p.add_argument("--no-early-step", action="store_true",
                   help="host stepping without stepping first what the next step reads first (for an optimizer "
                        "whose step couples parameters; runtime.tier early_params)")
    p.add_argument("--no-guard", action="store_true",
                   help="learned:MODEL_DIR alone, without the guard that leans on mirror, scan, markov or none "
                        "where they stall less (predictor.guard)")
    p.add_argument("--optimizer", default="auto", choices=PLACEMENTS,
                   help="where the optimizer steps the managed parameters: host masters, the device (its state "
                        "streamed in and out), or auto: the cost model's pick from the first step (default auto; "
                        "the report's `optimizer` says which ran and why)")
    p.add_argument("--device", default="auto", help="auto | simulated | simulated:alias (no real copies: "
                   "measures the emulation's cost, docs/overhead.md) | cuda[:N]")
    p.add_argument("--daemon", default=None, help="endpoint of a running daemon (learned policies)")
    p.add_argument("--daemon-keys", default=None, metavar="DIR",
                   help="CURVE keys for a remote --daemon: DIR holds its server.key and your client.key_secret "
                        "(sets PREFETCH_DAEMON_KEYS; see `prefetch daemon --gen-keys`)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, >= 1 (default 1)")
    p.add_argument("--trace-out", type=Path, default=None, help="also keep the run's trace here")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--timeline", type=Path, default=None, metavar="DIR",
                   help="write a Perfetto/chrome://tracing timeline of the prefetched run into DIR")
    p.add_argument("--compare", action="store_true",
                   help="a script: run it all resident first, then prefetched; compare losses (every backward()'s "
                        "tensor) and the final parameters and optimizer state bit for bit")
    p.add_argument("--name", default=None, help="a script: the workload name in its report (default: the script's)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- python SCRIPT ARGS, or -- torchrun ... SCRIPT ARGS")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from prefetch.cli import CommandError
    from prefetch.run import bit_identical, run_workload, summary_line

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.daemon_keys is not None:  # read by runtime.daemon_policy, here and in a launched script
        import os

        from runtime.daemon_launch import load_client_keys

        load_client_keys(args.daemon_keys)  # a missing or unreadable key file: one line naming it
        os.environ["PREFETCH_DAEMON_KEYS"] = str(Path(args.daemon_keys).resolve())
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if bool(command) == bool(args.workload):
        raise CommandError("give either --workload NAME or a command after -- (not both)")
    if command:
        if args.trace_out is not None:
            raise CommandError("--trace-out is for --workload; record a script with `prefetch record --out DIR -- ...`")
        return _run_script(command, args)
    if args.compare:
        raise CommandError("--compare is for a script: --workload runs always compare with an all-resident twin")
    args.seed = 0 if args.seed is None else args.seed
    torch.set_num_threads(args.threads)
    budget = args.budget  # parsed (and checked) by runtime.budget
    report = run_workload(args.workload, steps=args.steps, policy=args.policy, budget=budget, seed=args.seed,
                          link_ratio=args.link_ratio, lookahead=args.lookahead, warmup_steps=args.warmup,
                          device=args.device, daemon=args.daemon, trace_out=args.trace_out,
                          timeline_dir=args.timeline, progress=not args.no_progress, guard=not args.no_guard,
                          optimizer_placement=args.optimizer, ahead_share=args.ahead_share, routers=args.routers,
                          early_step=not args.no_early_step)
    text = json.dumps(report, indent=2)
    print(text)
    print(summary_line(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return 0 if bit_identical(report) else 1  # losses, parameters and optimizer state


def _run_script(command: list[str], args: argparse.Namespace) -> int:
    """Every flag checked here, before the script starts; then the launch (prefetch.script_run)."""
    from runtime.budget import parse_budget
    from prefetch.run import bit_identical, check_device, summary_line
    from runtime.policy_spec import check_policy_spec
    from prefetch.script_run import parse_command, run_script
    from runtime.prefetcher import PrefetchConfig

    check_policy_spec(args.policy, daemon=args.daemon)  # unknown names, a missing or empty model folder
    check_device(args.device)
    try:
        parse_budget(args.budget)
    except ValueError as exc:
        raise ValueError(f"--{exc}") from None
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    PrefetchConfig(policy=args.policy, budget=args.budget, link_ratio=args.link_ratio, lookahead=args.lookahead,
                   device=args.device, ahead_share=args.ahead_share, routers=args.routers)
    parse_command(command, "run")  # a missing script, a non-Python program
    code, reports = run_script(command, policy=args.policy, budget=args.budget, lookahead=args.lookahead,
                               link_ratio=args.link_ratio, warmup=args.warmup, device=args.device,
                               daemon=args.daemon, json_out=args.json, timeline=args.timeline,
                               compare=args.compare, threads=args.threads, seed=args.seed, name=args.name,
                               guard=not args.no_guard, optimizer_placement=args.optimizer,
                               ahead_share=args.ahead_share, routers=args.routers, early_step=not args.no_early_step)
    if reports:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2, default=str))
    for r in reports:
        if r.get("accesses"):
            tag = f"rank {r['rank']}/{r['world_size']} " if r.get("world_size", 1) > 1 else ""
            print(f"{tag}{summary_line(r)}", file=sys.stderr)
        for note in r.get("notes") or ():
            print(f"prefetch run: note: {note}", file=sys.stderr)
    if code:
        return code  # the script's own exit code (or 2: refused, 130: interrupted)
    if args.compare and not all(bit_identical(r) for r in reports):
        return 1
    return 0

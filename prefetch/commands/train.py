"""`prefetch train`: one predictor per architecture found in the traces.

    prefetch train traces/moe/ traces/gpt2/ --out models/
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from prefetch.cli import CommandError, output_dir, positive_float, positive_int
from runtime.defaults import EVAL_LOOKAHEAD


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train the learned predictor (one per architecture) from traces",
        description="Train one LightGBM predictor per architecture found in the traces; the last "
                    "--holdout of each trace's steps is held out and scored.",
        epilog="example:\n  prefetch train traces/moe/ --out models/\n"
               "  prefetch eval --model models/ traces/moe/ traces/moe-seed1/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("traces", nargs="+", type=Path, metavar="TRACE_DIR", help="trace folders or files")
    p.add_argument("--out", required=True, type=output_dir, metavar="MODEL_DIR", help="where the artifacts go (one folder per architecture)")
    p.add_argument("--lookahead", type=positive_int, default=None, help=f"D: predict the reads within the next D (default {EVAL_LOOKAHEAD})")
    p.add_argument("--holdout", type=_holdout, default=None, help="share of each trace's last steps held out (default 0.25)")
    p.add_argument("--trees", type=positive_int, default=None, help="boosting rounds (default 30)")
    p.add_argument("--threads", type=positive_int, default=None, help="LightGBM training threads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed for subsampling and LightGBM (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-guard-prior", action="store_true",
                   help="do not simulate the model and the guard's rivals on the held-out steps (the guard's "
                        "prior: which one serves a learned run from its first scored step; docs/predictor.md)")
    p.add_argument("--dask", type=_dask_target, default=None, metavar="local:N|ADDRESS",
                   help="train on Dask: local:N starts a LocalCluster of N worker processes here; an address "
                        "(tcp://host:8786) joins a running scheduler whose workers see the trace paths (docs/dask.md)")
    p.add_argument("--dask-timeout", type=positive_float, default=10.0, metavar="SECONDS",
                   help="how long to wait for the scheduler at --dask ADDRESS and its workers (default 10)")
    p.add_argument("--dask-fit-timeout", type=positive_float, default=None, metavar="SECONDS",
                   help="--dask: a distributed LightGBM fit, or a wait for the workers' results, not done within "
                        "SECONDS is taken as hung (LightGBM's worker network can hang, LightGBM issue 4942): the "
                        "workers restart and the training runs once more (default: no watchdog)")
    p.set_defaults(func=run)


def _dask_target(text: str):
    """argparse type for --dask: local:N or a scheduler address."""
    from predictor.dask_cluster import DaskTarget

    try:
        return DaskTarget.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _holdout(text: str) -> float:
    """argparse type for --holdout: a finite share in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not (math.isfinite(value) and 0 <= value < 1):
        raise argparse.ArgumentTypeError(f"must be a share in [0, 1), got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    from predictor.train import TrainConfig, train

    overrides = {
        "lookahead": args.lookahead,
        "holdout_fraction": args.holdout,
        "num_trees": args.trees,
        "num_threads": args.threads,
    }
    if args.lookahead is not None:  # keep candidates per context >= the horizon
        overrides["max_candidates"] = max(TrainConfig().max_candidates, 2 * args.lookahead)
    config = TrainConfig(seed=args.seed, **{k: v for k, v in overrides.items() if v is not None})
    if args.dask is not None:
        from predictor.dask_cluster import DaskError
        from predictor.train_dask import train_dask

        try:
            folders = train_dask(args.traces, args.out, config, dask=args.dask, connect_timeout_s=args.dask_timeout,
                                 fit_timeout_s=args.dask_fit_timeout)
        except DaskError as exc:
            raise CommandError(str(exc)) from None
    else:
        folders = train(args.traces, args.out, config, progress=not args.no_progress)
    if not args.no_guard_prior:
        from prefetch.guard_prior_fit import fit_priors

        fit_priors(folders, args.traces, progress=not args.no_progress)
    return 0

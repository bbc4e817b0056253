"""Runs an unmodified training script with prefetching: global hooks, no code change.

    prefetch run --policy replay --budget 0.4 --json out/run.json -- python train.py --lr 3e-4
    python -m runtime.run_launch --policy replay --json out/run.json -- train.py --lr 3e-4   # what that runs

The same launcher idea as recording (runtime.launch): the model is adopted at the first
top-level forward of a module with parameters, the optimizer at its first `step()` over
that model's parameters; a fractional budget is fixed after the first step. The report
(JSON, and one summary line on stderr) is written when the script ends, raises, or is
interrupted (SIGINT/SIGTERM); the script's own exit code passes through.

`--resident` runs the script with nothing offloaded (the all-resident half of
`prefetch run --compare`). `--state-out F` (both modes) writes what the comparison needs,
as JSON, never a pickle: a SHA-256 of every backward()'s tensor (the losses) and of every
tensor of the final model and optimizer state (runtime.state_compare naming), and the
step times. Under torchrun every rank writes its own files: `F` becomes `F.r<rank>`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from runtime.closure_step import ClosureFirst
from runtime.defaults import AHEAD_SHARE, LIVE_LOOKAHEAD
from runtime.launch import run_script, script_target
from runtime.link import DEFAULT_LINK_RATIO

EXIT_REFUSED = 2
DAEMON_ENV = "PREFETCH_DAEMON_ENDPOINT"
"""A daemon endpoint shared by every rank of a job (`prefetch run` starts one per node)."""


class Refused(BaseException):
    """A setting the job cannot run with, found once the model is known (a budget below
    its largest tensor). A BaseException: a script's `except Exception` must not swallow it."""


def rank_info() -> tuple[int, int]:
    """(rank, world size) of this process: torch.distributed's when initialised, else
    torchrun's environment, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    env = os.environ
    rank = int(env["RANK"]) if env.get("RANK", "").isdigit() else 0
    world = int(env["WORLD_SIZE"]) if env.get("WORLD_SIZE", "").isdigit() else 1
    return rank, world


def per_rank(path: Path, rank: int, world_size: int) -> Path:
    """`out/run.json` for one process, `out/run.r1.json` for rank 1 of several."""
    return path if world_size <= 1 else path.with_name(f"{path.stem}.r{rank}{path.suffix}")


def tensor_digest(t: torch.Tensor) -> str:
    """dtype, shape and SHA-256 of the raw bytes (NaN payloads and signed zeros count).
    note: a device-to-host copy (sync point) for a CUDA tensor; called only with --state-out."""
    from runtime.state_compare import _bytes

    if hasattr(t, "to_local"):  # a DTensor (FSDP2): this rank's shard
        t = t.to_local()
    b = _bytes(t.detach().cpu())
    return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}:{hashlib.sha256(b.numpy().tobytes()).hexdigest()}"


def state_digests(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, str]:
    """Every entry of runtime.state_compare.snapshot (`model:` / `optimizer:` prefixed) as a digest."""
    from runtime.state_compare import snapshot

    snap = snapshot(model, optimizer, copy=False)
    out = {}
    for part, entries in (("model", snap.model), ("optimizer", snap.optimizer)):
        for name, v in entries.items():
            out[f"{part}:{name}"] = tensor_digest(v) if isinstance(v, torch.Tensor) else repr(v)
    return out


def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without distributed
        return False
    return isinstance(t, DTensor)


class LossLog:
    """Hooks `torch.Tensor.backward` and `torch.autograd.backward`: the tensor each
    backward() is called on is a loss. Keeps its digest (and its value when a scalar)."""

    def __init__(self) -> None:
        self.digests: list[str] = []
        self.values: list[float | None] = []
        self._inside = False
        self._tensor_backward = torch.Tensor.backward
        self._autograd_backward = torch.autograd.backward
        log = self

        def tensor_backward(self_t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            log._take(self_t)
            log._inside = True  # Tensor.backward calls torch.autograd.backward: one loss, not two
            try:
                return log._tensor_backward(self_t, *args, **kwargs)
            finally:
                log._inside = False

        def autograd_backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            if not log._inside:
                for t in (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors):
                    log._take(t)
            return log._autograd_backward(tensors, *args, **kwargs)

        torch.Tensor.backward = tensor_backward  # type: ignore[method-assign]
        torch.autograd.backward = autograd_backward  # type: ignore[assignment]

    def _take(self, t: torch.Tensor) -> None:
        self.digests.append(tensor_digest(t))
        self.values.append(float(t.detach().float().cpu()) if t.numel() == 1 else None)  # note: sync on CUDA

    def close(self) -> None:
        torch.Tensor.backward = self._tensor_backward  # type: ignore[method-assign]
        torch.autograd.backward = self._autograd_backward  # type: ignore[assignment]


class GlobalPrefetcher:
    """Adopts the first model and optimizer the script uses and prefetches for them
    (or, with `resident`, only watches them). Other models and optimizers are left
    alone and named in the report."""

    def __init__(self, config: Any, *, resident: bool = False):
        self.config = config
        self.resident = resident
        self.pf: Any = None  # runtime.prefetcher.Prefetcher once the model is adopted
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._first_optimizer: torch.optim.Optimizer | None = None
        self.other_models: dict[int, str] = {}
        self.other_optimizers: dict[int, str] = {}
        self.step_times: list[float] = []
        self._t_step = 0.0
        self._depth = 0
        self.closures = ClosureFirst()
        self._handles = [
            register_module_forward_pre_hook(self._pre),
            register_module_forward_hook(self._post, always_call=True),
            register_optimizer_step_pre_hook(self._closure_pre),  # first: step(closure)'s forward and backward
            register_optimizer_step_pre_hook(self._opt_pre),
            register_optimizer_step_post_hook(self._opt_post),
        ]
        # Installed for the whole main thread before the script runs, as the recorder's:
        # entering a saved-tensor context inside the first forward could be popped by a
        # context of the script's own (save_on_cpu, checkpointing).
        self._saved: Any = None
        if not resident:
            self._saved = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
            self._saved.__enter__()

    # -- adoption ------------------------------------------------------------------------
    def _pre(self, module: torch.nn.Module, args: Any) -> None:
        self._depth += 1
        if self._depth != 1 or next(module.parameters(), None) is None:
            return
        if self.model is None:
            self._adopt_model(module, args)
        elif module is not self.model and id(module) not in self.other_models and \
                not any(m is module for m in self.model.modules()):
            self.other_models[id(module)] = type(module).__name__

    def _adopt_model(self, module: torch.nn.Module, args: Any) -> None:
        self.model = module
        self._t_step = time.perf_counter()
        if self.resident:
            return
        from runtime.prefetcher import Prefetcher
        from runtime.store import BudgetError

        if any(_is_dtensor(p) for p in module.parameters()):
            # FSDP2 (fully_shard) swaps sharded and unsharded parameters itself; rebinding
            # their data under it crashed the process (SIGSEGV) when tried. Recording works.
            raise Refused(f"{type(module).__name__} has DTensor parameters (FSDP2 fully_shard): prefetching does not "
                          "support them yet; `prefetch record` does. Use DDP, or run without prefetching")
        try:
            pf = Prefetcher(module, None, self.config)
        except BudgetError as exc:  # parameters are known now: refuse before the first forward runs
            raise Refused(str(exc)) from None
        # Prefetcher.attach entered its own saved-tensor context inside this forward: ours,
        # installed at start, serves instead (see __init__). Nothing else ran in between.
        tracker = pf.tracker
        if tracker._saved_hooks is not None:
            tracker._saved_hooks.__exit__(None, None, None)
            tracker._saved_hooks = None
        inner_end = pf.store.step_end

        def step_end(step: int) -> None:
            try:
                inner_end(step)
            except BudgetError as exc:  # a fractional budget fixed after step 0 below an activation
                raise Refused(str(exc)) from None

        pf.store.step_end = step_end  # type: ignore[method-assign]
        pf.closures = self.closures  # the report counts the launcher's
        self.pf = pf
        tracker.enter_root(module, args)  # this call's pre-hooks have already run

    def _post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self._depth = max(0, self._depth - 1)

    def _owns(self, optimizer: torch.optim.Optimizer) -> bool:
        if self.model is None:
            return False
        mine = {id(p) for p in self.model.parameters()}
        return any(id(p) in mine for g in optimizer.param_groups for p in g["params"])

    def _manages(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimizer adopted, or the first one stepping the adopted model's parameters."""
        if optimizer is self.optimizer or optimizer is self._first_optimizer:
            return True
        return self._first_optimizer is None and self._owns(optimizer)

    def _closure_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> tuple | None:
        """The managed optimizer's closure runs before `_opt_pre` (runtime.closure_step); so does
        any closure before the model is adopted: its forward is the first, and adopts it."""
        return self.closures(optimizer, args, kwargs) if self.model is None or self._manages(optimizer) else None

    def _opt_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        managed = self._manages(optimizer)
        if managed and self._first_optimizer is None and optimizer is not self.optimizer:
            self._first_optimizer = optimizer  # adopted in its post-hook, once this step is done
        if not managed:
            self.other_optimizers.setdefault(id(optimizer), type(optimizer).__name__)
            return
        if self.pf is not None:
            self.pf.store.before_optimizer_step()  # the optimizer updates host masters
            self.pf.place_step(optimizer, args, kwargs)

    def _opt_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        now = time.perf_counter()
        if self.optimizer is None and optimizer is self._first_optimizer:
            self.optimizer = optimizer
            if self.pf is not None:
                pf = self.pf
                pf.optimizer = optimizer
                pf.placement.post(optimizer)
                pf.store.after_optimizer_step()
                # later steps: the store's post-hook first, then the tracker's (ends the step),
                # the order Prefetcher uses
                pf._handles.append(optimizer.register_step_post_hook(lambda opt, *a: pf.placement.post(opt)))
                pf._handles.append(optimizer.register_step_post_hook(lambda *a: pf.store.after_optimizer_step()))
                pf.tracker.attach_optimizer(optimizer)  # emits this step's optimizer accesses, ends step 0
                pf.offload_gradients()  # from the next backward on, as with an optimizer given up front
        if optimizer is self.optimizer:
            self.step_times.append(now - self._t_step)
            self._t_step = time.perf_counter()

    def _pack(self, t: torch.Tensor) -> Any:
        return self.pf.tracker.pack_hook(t) if self.pf is not None else t

    def _unpack(self, packed: Any) -> torch.Tensor:
        return self.pf.tracker.unpack_hook(packed) if self.pf is not None else packed

    # -- results -------------------------------------------------------------------------
    def notes(self) -> list[str]:
        out = []
        if self.model is None:
            out.append("the script never called a module with parameters: nothing was managed or prefetched")
        elif self.optimizer is None:
            out.append(f"no optimizer.step() over the parameters of {type(self.model).__name__}: no training step ran, "
                       "so nothing was prefetched (steps end at optimizer.step(); the budget and the policy need one)")
        if self.other_models:
            out.append(f"other models not managed: {', '.join(self.other_models.values())} "
                       f"(the first, {type(self.model).__name__}, is)")
        if self.other_optimizers:
            out.append(f"other optimizers not managed: {', '.join(self.other_optimizers.values())} "
                       f"(the first over the model's parameters, {type(self.optimizer).__name__}, is)")
        return out

    def close(self) -> None:
        """Remove the hooks, put the parameters back on their masters. Idempotent."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._saved is not None:
            self._saved.__exit__(None, None, None)
            self._saved = None
        if self.pf is not None:
            self.pf.close()

    def report(self, script: str, name: str) -> dict[str, Any]:
        rank, world = rank_info()
        warm = getattr(self.config, "warmup_steps", 1)
        measured = self.step_times[warm:]
        if self.pf is not None:
            d = self.pf.report()
        else:
            d = {"policy": "resident" if self.resident else self.config.policy, "accesses": 0, "hits": 0,
                 "hit_rate": None, "late": 0, "misses": 0, "stall_s": 0.0, "bytes_copied": 0,
                 "slowdown": None, "device": "none", "steps": len(self.step_times)}
        if self.resident:
            d["policy"] = "resident"
            d["step_time_s"] = statistics.median(measured) if measured else None
        d.update(workload=name, script=script, rank=rank, world_size=world,
                 managed_model=type(self.model).__name__ if self.model is not None else None,
                 managed_optimizer=type(self.optimizer).__name__ if self.optimizer is not None else None,
                 unmanaged_models=list(self.other_models.values()),
                 unmanaged_optimizers=list(self.other_optimizers.values()),
                 optimizer_steps=len(self.step_times), notes=self.notes())
        return d


def build_config(args: argparse.Namespace) -> Any:
    from runtime.prefetcher import PrefetchConfig

    return PrefetchConfig(policy=args.policy, budget=args.budget, lookahead=args.lookahead,
                          link_ratio=args.link_ratio, warmup_steps=args.warmup, device=args.device,
                          daemon=args.daemon or os.environ.get(DAEMON_ENV) or None,
                          timeline=args.timeline is not None, seed=args.seed, guard=not args.no_guard,
                          optimizer_placement=args.optimizer, ahead_share=args.ahead_share, routers=args.routers,
                          early_step=not args.no_early_step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.run_launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="replay")
    parser.add_argument("--budget", default="0.4")
    parser.add_argument("--lookahead", type=int, default=LIVE_LOOKAHEAD)
    parser.add_argument("--link-ratio", type=float, default=DEFAULT_LINK_RATIO)
    parser.add_argument("--ahead-share", type=float, default=AHEAD_SHARE)
    parser.add_argument("--routers", default="auto")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--optimizer", default="auto", choices=("auto", "host", "device"))
    parser.add_argument("--daemon", default=None)
    parser.add_argument("--seed", type=int, default=None, help="the script's seed, when known (provenance)")
    parser.add_argument("--no-guard", action="store_true", help="a learned policy alone (predictor.guard)")
    parser.add_argument("--no-early-step", action="store_true",
                        help="host stepping without stepping first what the next step reads first")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--timeline", type=Path, default=None)
    parser.add_argument("--state-out", type=Path, default=None)
    parser.add_argument("--resident", action="store_true")
    parser.add_argument("--name", default=None)
    parser.add_argument("target", nargs=argparse.REMAINDER, help="script.py ARGS or -m module ARGS")
    args = parser.parse_args(argv)
    target = args.target[1:] if args.target[:1] == ["--"] else args.target
    if not target:
        parser.error("nothing to run: give a script or -m module after --")
    try:
        config = build_config(args)
    except ValueError as exc:
        print(f"prefetch run: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    found = script_target(target, parser, "prefetch run")
    if found is None:
        return EXIT_REFUSED
    run, what, name = found
    name = args.name or name
    losses = LossLog() if args.state_out is not None else None
    gp = GlobalPrefetcher(config, resident=args.resident)
    code, error, refused = 0, None, None
    try:
        code, error = run_script(run, passthrough=(Refused,))
    except Refused as exc:
        code, refused = EXIT_REFUSED, str(exc)
    finally:
        if losses is not None:
            losses.close()
        gp.close()
    if refused:
        print(f"prefetch run: error: {refused}", file=sys.stderr)
        return code
    report = gp.report(what.partition(" ")[2], name)
    if error:
        report["error"] = error
    report["exit_code"] = code
    rank, world = report["rank"], report["world_size"]
    if args.timeline is not None and gp.pf is not None:
        path = per_rank(args.timeline / f"{name}-{config.policy.partition(':')[0]}.trace.json", rank, world)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(gp.pf.chrome_trace()))
        report["timeline"] = str(path)
    if args.state_out is not None:
        state = {"rank": rank, "world_size": world, "loss_digests": losses.digests if losses else [],
                 "losses": losses.values if losses else [], "step_times_s": gp.step_times,
                 "state": state_digests(gp.model, gp.optimizer) if gp.model is not None else {}}
        out = per_rank(args.state_out, rank, world)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(state))
    if args.json is not None:
        out = per_rank(args.json, rank, world)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str))
    tag = f"prefetch run [rank {rank}/{world}]" if world > 1 else "prefetch run"
    for note in report["notes"]:
        print(f"{tag}: note: {note}", file=sys.stderr)
    if error:
        print(f"{tag}: error: {what} {error}; report written up to there", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""Records an unmodified training script: global hooks, no code change.

    prefetch record --out traces/mine -- python train.py --lr 3e-4
    python -m runtime.launch --out traces/mine -- train.py --lr 3e-4     # what that runs

The model is adopted at the first top-level forward call of a module with parameters;
the optimizer at its first `step()` over that model's parameters. Saved-tensor hooks
are installed for the whole main thread before the script runs. The trace is closed
when the script ends, raises, or receives SIGTERM/SIGINT; a SIGKILL leaves a trace
readable up to its last complete step.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_post_hook

from runtime.overhead import HookGuard
from runtime.recorder import Recorder

EXIT_SCRIPT_FAILED = 3


def script_target(target: list[str], parser: argparse.ArgumentParser, verb: str) -> tuple[Callable[[], Any], str, str] | None:
    """(run, what, name) for `script.py ARGS` or `-m module ARGS`, with sys.argv and sys.path
    set as `python` would set them; None, after a one-line error, when the script is missing."""
    if not target:
        parser.error("nothing to run: give a script or -m module after --")
    if target[0] == "-m":
        if len(target) < 2:
            parser.error("-m needs a module name")
        sys.argv = [target[1], *target[2:]]
        return (lambda: runpy.run_module(target[1], run_name="__main__", alter_sys=True),
                f"module {target[1]}", target[1].rpartition(".")[2])
    script = target[0]
    if not os.path.isfile(script):
        print(f"{verb}: error: script {script} not found", file=sys.stderr)
        return None
    sys.argv = list(target)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    return lambda: runpy.run_path(script, run_name="__main__"), f"script {script}", Path(script).stem


def run_script(run: Callable[[], Any], passthrough: tuple[type[BaseException], ...] = ()) -> tuple[int, str | None]:
    """Run the script: (exit code, what went wrong or None). Its own exit code passes through;
    an interrupt (SIGINT, SIGTERM) is 130, an exception EXIT_SCRIPT_FAILED with its traceback
    printed; `passthrough` exceptions propagate."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _terminate)
    if previous[signal.SIGINT] is signal.default_int_handler:  # not if the user's shell chose otherwise
        signal.signal(signal.SIGINT, _terminate)
    try:
        return _run(run, passthrough)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _run(run: Callable[[], Any], passthrough: tuple[type[BaseException], ...]) -> tuple[int, str | None]:
    try:
        run()
    except passthrough:
        raise
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return code, (f"exited with code {code}" if code else None)
    except KeyboardInterrupt as exc:
        return 130, f"interrupted ({exc})"
    except BaseException as exc:  # noqa: BLE001 - the script's own failure, reported by the caller
        traceback.print_exc()
        return EXIT_SCRIPT_FAILED, f"raised {type(exc).__name__}: {exc}"
    return 0, None


class GlobalRecorder:
    """Adopts the first model and optimizer the script uses, and records them."""

    def __init__(self, out: str, name: str | None = None, progress: bool = True, routers: str = "auto"):
        self.out = out
        self.name = name
        self.routers = routers
        self.recorder: Recorder | None = None
        self._depth = 0
        self._progress = progress
        self._bar: Any = None
        self._handles = [
            register_module_forward_pre_hook(self._pre),
            register_module_forward_hook(self._post, always_call=True),
            register_optimizer_step_post_hook(self._opt_post),
        ]
        self._saved = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._saved.__enter__()

    def _pre(self, module: torch.nn.Module, args: Any) -> None:
        self._depth += 1
        if self.recorder is None and self._depth == 1 and next(module.parameters(), None) is not None:
            if self._progress:
                from tqdm import tqdm

                self._bar = tqdm(desc="recording", unit="step", file=sys.stderr, leave=True)
            self.recorder = Recorder(module, None, self.out, workload=self.name, progress=self._bar,
                                     extra_manifest={"launcher": True}, routers=self.routers)
            self.recorder.start(saved_tensor_hooks=False)
            self.recorder.tracker.enter_root(module, args)  # this call's hooks have already fired

    def _post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self._depth = max(0, self._depth - 1)

    def _opt_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        rec = self.recorder
        if rec is not None and rec.tracker.optimizer is None and rec.tracker.optimizer_owns_params(optimizer):
            rec.tracker.attach_optimizer(optimizer)

    def _pack(self, t: torch.Tensor) -> Any:
        return self.recorder.tracker.pack_hook(t) if self.recorder is not None else t

    def _unpack(self, packed: Any) -> torch.Tensor:
        return self.recorder.tracker.unpack_hook(packed) if self.recorder is not None else packed

    def close(self, **updates: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._saved is not None:
            self._saved.__exit__(None, None, None)
            self._saved = None
        if self.recorder is not None:
            self.recorder.close(**updates)
        if self._bar is not None:
            self._bar.close()


def _terminate(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM: a KeyboardInterrupt, held until the prefetcher's hooks are left (HookGuard)."""
    HookGuard.interrupt(KeyboardInterrupt(f"signal {signum}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", default=None, help="trace name (default: the model class)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--routers", default="auto", help="router hints kept in the trace (runtime.routers)")
    parser.add_argument("target", nargs=argparse.REMAINDER, help="script.py ARGS or -m module ARGS")
    args = parser.parse_args(argv)
    target = args.target[1:] if args.target[:1] == ["--"] else args.target
    if not args.out.strip():  # Path("") is the current folder: never a silent default
        print("prefetch record: error: --out must name a folder, got an empty string", file=sys.stderr)
        return 2
    found = script_target(target, parser, "prefetch record")
    if found is None:
        return 2
    run, what, _ = found
    from runtime.recorder import _rank

    rec = GlobalRecorder(args.out, args.name, progress=not args.no_progress and _rank() == 0,  # one bar per job
                         routers=args.routers)
    try:
        code, error = run_script(run)
    finally:
        rec.close(**({"error": error} if error else {}))
    if rec.recorder is None:
        print(f"prefetch record: warning: {what} never called a model with parameters; nothing recorded", file=sys.stderr)
    else:
        print(f"prefetch record: trace {rec.recorder.stem} ({rec.recorder.steps_completed} steps)", file=sys.stderr)
    if error:
        print(f"prefetch record: error: {what} {error}; trace kept up to its last complete step", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

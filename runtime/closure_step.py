"""`optimizer.step(closure)`: the closure runs before our pre-step work, as in `backward()` then `step()`.

    closures = ClosureFirst()
    handle = optimizer.register_step_pre_hook(closures)   # before any other pre-hook of ours

A closure loop (PyTorch Lightning's automatic optimization, LBFGS-style code) runs the
step's forward and backward *inside* `optimizer.step(closure)`. The optimizer's step
pre-hooks fire before the step calls the closure, so the work we hang there (the store
drops the device copies the update makes stale and fetches the host masters; host
stepping moves parameters to the host) would happen before the step's forward: the
forward then reads everything again, and the prefetch order the policy learned from
`backward(); step()` no longer holds. Measured (docs/usage.md, "Closures"): a closure loop
under `runtime.prefetching`, bit-identical either way, hit 18.2% without this hook and
75.3-79.2% with it; the same loop written as `backward(); step()` hit 71.4-72.7%.

For an optimizer known to call its closure exactly once, before its update (every
`torch.optim` optimizer but LBFGS, unless a subclass overrides `step`), this pre-hook,
registered first, calls the closure itself, under `torch.enable_grad()` as `step()` does,
and hands `step()` a closure that returns the same result. The same computation runs in
the same order, and our hooks run after it, where they run in a `backward(); step()` loop.

An optimizer that may call its closure again inside the step (LBFGS; SAM-style optimizers,
which override `step`) is refused with a ClosureError: between its evaluations it writes
the parameters and reads the gradients the store keeps elsewhere (host masters, host
gradient sums). Measured before the refusal: LBFGS under `runtime.prefetching` at a budget
that offloads gave different losses from the second step on. LBFGS is refused when the
prefetcher is built; another optimizer at its first `step(closure)`, before anything of
that step has run.

What moves: a step pre-hook registered after this one now runs after the closure's
forward and backward instead of before them; hooks registered before it, and global
optimizer hooks registered before it, still run before the closure.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

_ONCE = tuple(
    getattr(torch.optim, name) for name in (
        "Adadelta", "Adafactor", "Adagrad", "Adam", "Adamax", "AdamW", "ASGD", "Muon", "NAdam", "RAdam",
        "RMSprop", "Rprop", "SGD", "SparseAdam",
    ) if hasattr(torch.optim, name)
)
_ONCE_STEPS = frozenset(inspect.unwrap(cls.step) for cls in _ONCE)
"""The step functions that call a closure once, before the update (checked in torch 2.13's
sources), unwrapped: torch wraps each class's `step` in its hook runner at its first instance."""


def calls_closure_once(optimizer: torch.optim.Optimizer) -> bool:
    """True when `optimizer.step(closure)` evaluates `closure` exactly once, before its update:
    a torch.optim class (or a subclass that keeps its `step`) other than LBFGS."""
    return inspect.unwrap(type(optimizer).step) in _ONCE_STEPS


class Evaluated:
    """The closure `step()` gets once ClosureFirst ran the real one: it returns that result."""

    __slots__ = ("result",)

    def __init__(self, result: Any):
        self.result = result

    def __call__(self) -> Any:
        return self.result


def _closure(args: tuple, kwargs: dict[str, Any]) -> tuple[Any, int | None]:
    """(closure or None, its position in args or None for the keyword): torch's hook wrapper
    passes `step`'s own arguments, the optimizer first (`args[0]` is self)."""
    if len(args) > 1:
        return args[1], 1
    return kwargs.get("closure"), None


class ClosureError(ValueError):
    """An optimizer whose step may evaluate its closure more than once, under prefetching."""


def check_optimizer(optimizer: torch.optim.Optimizer | None) -> None:
    """Refuse LBFGS before training starts: its every step takes a closure it calls again."""
    if isinstance(optimizer, torch.optim.LBFGS):
        raise ClosureError(_refusal(optimizer))


def _refusal(optimizer: torch.optim.Optimizer) -> str:
    return (f"{type(optimizer).__name__}.step(closure) may evaluate its closure more than once, writing the "
            "parameters in between: prefetching supports step(closure) only for optimizers that evaluate it once "
            "(torch.optim's, but LBFGS); call loss.backward() then step() instead, or train without prefetching")


class ClosureFirst:
    """The pre-hook (module docstring), with a count of the closures it ran."""

    def __init__(self) -> None:
        self.ran = 0
        """Steps whose closure this hook evaluated before the other pre-hooks."""

    def __call__(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
        closure, where = _closure(args, kwargs)
        if closure is None or isinstance(closure, Evaluated):
            return None
        if not calls_closure_once(optimizer):
            raise ClosureError(_refusal(optimizer))
        with torch.enable_grad():
            done = Evaluated(closure())
        self.ran += 1
        if where is None:
            return args, {**kwargs, "closure": done}
        return (*args[:1], done, *args[2:]), kwargs

"""Bit-for-bit comparison of a whole training state: parameters, buffers, optimizer state.

    ref = state_compare.snapshot(ref_model, ref_optimizer)     # the all-resident twin
    ...                                                        # the prefetched run
    with runtime.prefetching(model, optimizer, policy="replay") as pf:
        ...
    pf.compare_state(ref, losses=losses, reference_losses=ref_losses)
    pf.report()["params_identical"], pf.report()["optimizer_state_identical"]

Equal losses are not enough: a stale tensor in the last step, or an update lost on the
way back to the host master, leaves every loss equal and the weights different. So the
check covers every tensor in `model.state_dict()` and in `optimizer.state_dict()`
(moments, step counts) and every `param_groups` scalar (lr, betas, ...). "Identical"
means the same bytes: NaN equals NaN with the same payload, and 0.0 differs from -0.0.
Optimizer state is named by parameter name (`exp_avg[blocks.0.weight]`), not by index,
so two optimizers over the same model compare even if built in different orders.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Sequence

import torch

MAX_MISMATCHES = 5
"""How many differing names a comparison lists (the first ones, in state order)."""


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """A detached CPU copy of a model's and an optimizer's state, named."""

    model: dict[str, torch.Tensor]
    """model.state_dict() (parameters and buffers), cloned to the CPU."""
    optimizer: dict[str, Any]
    """Optimizer state by name: `state.<key>[<param name>]` tensors and
    `param_groups.<i>.<key>` scalars (lists of parameter names for `params`)."""


@dataclass(frozen=True, slots=True)
class StateComparison:
    """The outcome of `compare`: one flag per part, and the first names that differ."""

    params_identical: bool
    """Every parameter and buffer has the same names, shapes, dtypes and bytes."""
    optimizer_state_identical: bool
    """Every optimizer state tensor and param_groups scalar is the same, bit for bit."""
    state_mismatches: tuple[str, ...] = ()
    """The first (at most MAX_MISMATCHES) names that differ, `model:` or `optimizer:` prefixed."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "params_identical": self.params_identical,
            "optimizer_state_identical": self.optimizer_state_identical,
            "state_mismatches": list(self.state_mismatches),
        }


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
             copy: bool = True) -> StateSnapshot:
    """The state now (after training, or after `prefetching(...)` has closed). With
    copy=False the snapshot holds the live tensors (no memory; compare before either job
    trains on), as `prefetch run` does with two jobs side by side.

    note: a CPU-GPU sync point per CUDA tensor (the copy to the host); call it once, at the end."""
    take = _cpu if copy else _detached
    tensors = {k: take(v) for k, v in model.state_dict().items()}
    optim = _optimizer_state(model, optimizer, take) if optimizer is not None else {}
    return StateSnapshot(model=tensors, optimizer=optim)


def compare(reference: StateSnapshot, other: StateSnapshot, *, max_mismatches: int = MAX_MISMATCHES) -> StateComparison:
    """Compare `other` with `reference` bit for bit, part by part."""
    model_diff = _diff(reference.model, other.model)
    optim_diff = _diff(reference.optimizer, other.optimizer)
    names = [f"model:{n}" for n in model_diff] + [f"optimizer:{n}" for n in optim_diff]
    return StateComparison(params_identical=not model_diff, optimizer_state_identical=not optim_diff,
                           state_mismatches=tuple(names[:max_mismatches]))


def losses_identical(losses: Sequence[float], reference: Sequence[float]) -> bool:
    """Same number of losses, each with the same float64 bytes (NaN == NaN, 0.0 != -0.0)."""
    return len(losses) == len(reference) and all(_same_float(a, b) for a, b in zip(losses, reference))


def identity_report(reference: StateSnapshot, other: StateSnapshot, *, losses: Sequence[float] | None = None,
                    reference_losses: Sequence[float] | None = None) -> dict[str, Any]:
    """The report keys of `prefetch run`: `params_identical`, `optimizer_state_identical`,
    `state_mismatches`, and `losses_identical` when both loss lists are given."""
    d = compare(reference, other).as_dict()
    if losses is not None and reference_losses is not None:
        d = {"losses_identical": losses_identical(losses, reference_losses), **d}
    return d


# -- internals ---------------------------------------------------------------------------
def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True)


def _detached(t: torch.Tensor) -> torch.Tensor:
    return t.detach()


def _optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, take: Any) -> dict[str, Any]:
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    sd = optimizer.state_dict()
    index_name: dict[int, str] = {}  # state_dict's integer ids, in param_groups order
    for group, sd_group in zip(optimizer.param_groups, sd["param_groups"]):
        for p, i in zip(group["params"], sd_group["params"]):
            index_name[i] = names.get(id(p), f"#{i}")
    out: dict[str, Any] = {}
    for g, group in enumerate(sd["param_groups"]):
        for key, value in group.items():
            if key == "params":
                value = [index_name.get(i, f"#{i}") for i in value]
            out[f"param_groups.{g}.{key}"] = take(value) if isinstance(value, torch.Tensor) else value
    for i, state in sd["state"].items():
        for key, value in state.items():
            out[f"state.{key}[{index_name.get(i, f'#{i}')}]"] = take(value) if isinstance(value, torch.Tensor) else value
    return out


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Names present in only one side or differing, in a's order then b's extras."""
    out = [k for k in a if k not in b or not _same(a[k], b[k])]
    return out + [k for k in b if k not in a]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.device != b.device:  # note: a device-to-host copy (sync point)
            a, b = a.cpu(), b.cpu()
        return torch.equal(_bytes(a), _bytes(b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and type(a) is type(b) and _same_float(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes (a bitwise view), so NaN payloads and signed zeros count."""
    flat = t.contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        return flat.to(torch.uint8)
    return flat.view(torch.uint8)


def _same_float(a: float, b: float) -> bool:
    return struct.pack("<d", float(a)) == struct.pack("<d", float(b))

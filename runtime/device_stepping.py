"""Device stepping: the optimizer runs on the device, its state streamed in and out.

    pf = Prefetcher(model, optimizer, PrefetchConfig(optimizer="device"))

The default places the optimizer on the host masters (ZeRO-Offload style, runtime/store.py
`before_optimizer_step`): per step only the gradients cross the link, and every
parameter's device copy is dropped before the step and fetched again, updated, after it.
Here, instead, each managed parameter is updated where the forward used it:

    before the step   copies of parameters in flight land; the device copies stay (the
                      tier's `params_stay`); gradients reach the host as before
    the step          in the optimizer's own order, in chunks that fit the free budget:
                      the parameter's device copy (resident, or fetched for the step), its
                      gradient and its optimizer state (every non-scalar state tensor,
                      e.g. Adam's two moments) are copied in; the optimizer steps the
                      chunk; the updated parameter and state are copied back to the host
    after the step    a resident parameter keeps its (updated, clean) device copy, so the
                      next forward finds it: no re-fetch; the others are on the host

The optimizer's order is static, so the stream is exact: no prediction is involved. Each
chunk runs the optimizer's own step (the class's step without its hooks) over that chunk's
parameters only; torch's optimizers update each parameter from its own gradient and state,
so chunking computes exactly what one step over all parameters computes (bit-identical:
tests/runtime/test_device_stepping.py). Parameters the optimizer would skip (no gradient)
and any whose step cannot fit the budget stay for the optimizer's own call, on the host.

Cost per step (bytes; P parameters, G gradients, S state): host stepping moves G to the host
(overlapped with the backward) and, after the step, P_resident to the device again; device
stepping moves G back in, S both ways, P_nonresident in and P out. With Adam in fp32
(S = 2P) device stepping moves far more: it pays only when the host optimizer is slow
against the link (runtime.placement decides, for `optimizer="auto"`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from runtime.trace_format import Kind

_PARAM, _GRAD, _STATE = int(Kind.PARAMETER), int(Kind.GRADIENT), int(Kind.OPTIMIZER_STATE)
STATE_RESERVE = 2.0
"""Bytes of optimizer state per parameter byte assumed before a parameter has any (its first
step creates it on the device): Adam's two moments. Only sizes the first chunks."""


def moves_scalars(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer keeps its 0-dim state (the step count) beside the parameter:
    fused and capturable ones do; the others keep it on the CPU."""
    return any(g.get("fused") or g.get("capturable") for g in optimizer.param_groups)


def streamed(state: dict, scalars: bool) -> list[tuple[Any, torch.Tensor]]:
    """A parameter's state values that travel with it, as (key, tensor): its tensors, less a
    0-dim step count unless `scalars` (moves_scalars)."""
    return [(k, v) for k, v in state.items() if isinstance(v, torch.Tensor) and (v.dim() > 0 or scalars)]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def raw_step(optimizer: torch.optim.Optimizer) -> None:
    """The optimizer's step without its pre/post hooks (torch patches the class's step with a
    hook-running wrapper: `__wrapped__` is the step itself, grad mode handled) and without an
    LR scheduler's call counter (an instance attribute, not looked up here)."""
    step = type(optimizer).step
    getattr(step, "__wrapped__", step)(optimizer)


def raw_step_of(optimizer: torch.optim.Optimizer, mine: set[int]) -> None:
    """`raw_step` over the parameters whose id() is in `mine` only: each group keeps just
    those for the call and gets all of its own back after it (try/finally: the groups are
    the user's). Torch's optimizers update each parameter from its own gradient and state,
    so this computes for them what one step over every parameter computes."""
    saved = [g["params"] for g in optimizer.param_groups]
    try:
        for g, params in zip(optimizer.param_groups, saved):
            g["params"] = [p for p in params if id(p) in mine]
        raw_step(optimizer)
    finally:
        for g, params in zip(optimizer.param_groups, saved):
            g["params"] = params


@dataclass(slots=True)
class DeviceStepCounters:
    steps: int = 0
    """Optimizer steps run on the device."""
    chunks: int = 0
    params_stepped: int = 0
    host_fallback: int = 0
    """Parameter updates left to the host because their step could not fit the budget."""


class DeviceStepper:
    """Runs the managed parameters' optimizer step on the device, chunk by chunk (module doc).

    The store calls `step(optimizer)` in the optimizer's pre-hook, after the tier's
    optimizer_begin; the optimizer's own call then steps what is left (gradients of the
    parameters stepped here are set aside until `restore`, in the post-hook)."""

    def __init__(self, store: Any):
        self.store = store
        self.counters = DeviceStepCounters()
        self._set_aside: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def _on_device(self, tid: int, p: torch.nn.Parameter) -> torch.Tensor | None:
        """The parameter's device copy if one is resident and still current (the tier parked
        it for the step), else None: a copy the user's write to the master made stale goes."""
        st = self.store
        d = st._dev[tid]
        if d is None or tid not in st.resident or st.inflight[tid] is not None:
            return None
        if p._version != st._ver[tid]:
            st._dev[tid] = None
            st._drop_stale(tid)
            return None
        return d

    def _need(self, tid: int, p: torch.nn.Parameter, state: dict, moves_scalars: bool) -> int:
        """Device bytes the parameter's step adds: its copy unless resident, gradient, state."""
        st = self.store
        n = 0 if self._on_device(tid, p) is not None else st.nb[tid]
        n += _nbytes(p.grad)
        have = streamed(state, moves_scalars)
        n += sum(_nbytes(v) for _, v in have) if have else int(STATE_RESERVE * st.nb[tid])
        return n

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Step the managed parameters that fit, chunk by chunk. A step given a closure gets
        here after it ran (runtime.closure_step: the closure comes first, or is refused)."""
        st = self.store
        tid_of = {id(p): tid for tid, p in st.tracker.params_by_tid.items() if st.managed[tid]}
        fused = moves_scalars(optimizer)
        chunk: list[tuple[int, torch.nn.Parameter]] = []
        chunk_bytes = 0
        for group in optimizer.param_groups:
            for p in group["params"]:
                tid = tid_of.get(id(p))
                if tid is None or p.grad is None:
                    continue  # persistent (stepped where it lives) or skipped by the optimizer
                need = self._need(tid, p, optimizer.state[p], fused)
                if need > st._limit:
                    self.counters.host_fallback += 1
                    continue
                if chunk and st.used + chunk_bytes + need > st._limit:
                    self._run_chunk(optimizer, chunk, chunk_bytes, fused)
                    chunk, chunk_bytes = [], 0
                if not chunk and st.used + need > st._limit:
                    st.make_room(need, tid, False, 0)  # residents give way (LRU), or an overcommit
                    need = self._need(tid, p, optimizer.state[p], fused)
                chunk.append((tid, p))
                chunk_bytes += need
        if chunk:
            self._run_chunk(optimizer, chunk, chunk_bytes, fused)
        self._settle_parked()
        self.counters.steps += 1

    def _settle_parked(self) -> None:
        """The device copies parked for the step: one the host optimizer is about to update
        (a fallback) goes; the others (stepped here, updated, or skipped: no gradient) stay as
        landed copies whose master's version is watched like any copy's: the next read binds
        one (a hit) unless a user's write to the master made it stale first."""
        st = self.store
        for tid, p in st.tracker.params_by_tid.items():
            d = st._dev[tid]
            if d is None or tid not in st.resident or st.inflight[tid] is not None or st._bound_dev[tid]:
                continue
            st._dev[tid] = None
            if p.grad is not None:  # stepped here: its gradient was set aside
                st._uncount(tid)
            else:
                st.inflight[tid] = st.device.ready(d)

    def _run_chunk(self, optimizer: torch.optim.Optimizer, chunk: list[tuple[int, torch.nn.Parameter]],
                   nbytes: int, moves_scalars: bool) -> None:
        st, dev = self.store, self.store.device
        st.used += nbytes
        st.peak = max(st.peak, st.used)
        # In: each parameter's device copy (resident, or fetched), gradient and state.
        ins = []
        for tid, p in chunk:
            d = self._on_device(tid, p)
            pc = dev.copy_in(st._host[tid]) if d is None else None
            gc = dev.copy_in(p.grad)
            sc = {k: dev.copy_in(v) for k, v in streamed(optimizer.state[p], moves_scalars)}
            ins.append((tid, p, d, pc, gc, sc))
            if d is None:
                st.h2d[_PARAM] += st.nb[tid]
            st.h2d[_GRAD] += _nbytes(p.grad)
            st.h2d[_STATE] += sum(c.nbytes for c in sc.values())
        wait = 0
        stepped = []
        for tid, p, d, pc, gc, sc in ins:
            resident = d is not None
            if pc is not None:
                d, w = dev.wait(pc)
                wait += w
            g, w = dev.wait(gc)
            wait += w
            self._set_aside.append((p, p.grad))
            p.grad = None  # p.data and p.grad must agree on the device
            st._bind(tid, d, dev=True)
            p.grad = g
            for k, c in sc.items():
                optimizer.state[p][k], w = dev.wait(c)
                wait += w
            stepped.append((tid, p, d, resident))
        raw_step_of(optimizer, {id(p) for _, p in chunk})  # the step, over this chunk's parameters only
        # Out: the updated parameter and its state to the host.
        outs = []
        for tid, p, d, resident in stepped:
            pc = dev.copy_out(d)
            sc = {k: dev.copy_out(v) for k, v in streamed(optimizer.state[p], moves_scalars)}
            st.d2h[_PARAM] += st.nb[tid]
            st.d2h[_STATE] += sum(c.nbytes for c in sc.values())
            outs.append((tid, p, d, resident, pc, sc))
        for tid, p, d, resident, pc, sc in outs:
            host, w = dev.wait(pc)
            wait += w
            for k, c in sc.items():
                optimizer.state[p][k], w = dev.wait(c)
                wait += w
            p.grad = None  # the optimizer's own call skips it; `restore` gives the gradient back
            st._host[tid] = host  # the master is the updated copy
            st._bind(tid, host, dev=False)  # a resident copy stays parked (updated): _settle_parked
        st.optimizer_wait_ns += wait
        st.used -= nbytes
        self.counters.chunks += 1
        self.counters.params_stepped += len(chunk)

    def restore(self) -> None:
        """The optimizer's own call is over: the stepped parameters get their (host) gradients back."""
        for p, g in self._set_aside:
            if p.grad is None:
                p.grad = g if g.device == p.device else None
        self._set_aside.clear()

    def report(self) -> dict[str, Any]:
        c = self.counters
        return {"device_steps": c.steps, "chunks": c.chunks, "params_stepped": c.params_stepped,
                "host_fallback": c.host_fallback}

"""The tensor store: managed tensors live on the host; a device tier under a byte budget.

The store is the tracker's AccessSink during `runtime.prefetching(...)`:

    parameters   the host copy is the master. A read binds `param.data` to a device copy
                 (hit: already there; late: its prefetch is in flight, wait; miss: fetch
                 now). Eviction drops the device copy and rebinds the host one. The
                 optimizer runs on the host copies (ZeRO-Offload style), so device copies
                 are never dirty; they are dropped before `optimizer.step()` (or at the end
                 of a backward that may be the step's last) and fetched again, updated,
                 for the next step.
    gradients    produced on the device by backward, in the budget from then on; each is
                 held there across micro-steps or copied to the host at once, overlapped
                 with the rest of the backward (the tier decides: runtime.tier's module
                 docstring), and summed on the host in micro-step order
                 (runtime.grad_offload). The backward's end waits for the copies still in
                 flight; after one that may be the step's last, `p.grad` is the host sum,
                 so clipping before `optimizer.step()` sees every gradient.
    user writes  anything else that writes a parameter (a clamp, `load_state_dict`, an
                 EMA swap) is seen by the parameter's version counter: a copy issued
                 before the write is stale (dropped; issued again when the next forward
                 starts, or fetched at its read: a miss); a device copy written while
                 bound is written back to the master, not dropped. A tensor the user
                 assigned to `p.data` becomes the master.
    activations  produced on the device by the forward (a write, no copy). Eviction
                 writes them back to the host; the backward's read fetches them again
                 unless a prefetch already did. Read once, they are freed.

Which tensors are on the device, what is copied next and what gives way is decided by
the device tier (runtime.tier.DeviceTier, the simulator's too); this class is its engine
over a real device (CUDA, or the simulated copy thread) plus the torch glue: binding
`param.data`, saved-tensor hooks, user writes. Hot path: no device syncs; the only waits
are the late and miss waits, which are the stall we count, and the gradient copies a
backward's end waits for (`grad_wait_ns`, reported apart).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from predictor.interface import NO_PREDICTION, Policy
from runtime.budget import fraction_bytes
from runtime.defaults import AHEAD_SHARE
from runtime.tier import DeviceTier, check_ahead_share
from runtime.device import Device
from runtime.trace_format import Access, Kind, is_managed

_PARAM = int(Kind.PARAMETER)


class BudgetError(ValueError):
    """The device budget cannot hold what training needs at once."""


@dataclass(kw_only=True, slots=True)
class StoreConfig:
    """How the device tier is run."""

    budget_bytes: int | None = None
    """Device budget. None: fixed after the first step from `budget_fraction`."""
    budget_fraction: float = 0.4
    """Share of the managed bytes seen in the first step, when budget_bytes is None."""
    warmup_steps: int = 1
    """Steps run before statistics count (reported apart)."""
    ahead_share: float = AHEAD_SHARE
    """The prefetch window: unread prefetches hold at most this share of the budget (runtime.tier)."""
    early_step: bool = True
    """Host stepping: step first the parameters the next step reads first (DeviceTier.early_params)."""

    def __post_init__(self) -> None:
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be > 0, got {self.budget_bytes}")
        if not 0 < self.budget_fraction <= 1:
            raise ValueError(f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        check_ahead_share(self.ahead_share)


class TensorStore(DeviceTier):
    """Host tier, device tier, copies and counters for one model."""

    def __init__(self, device: Device, policy: Policy, config: StoreConfig):
        super().__init__(policy, config.budget_bytes)
        self.ahead_share = config.ahead_share
        self.early_step = config.early_step
        self.device = device
        self.config = config
        self.tracker: Any = None  # set by attach(); the store rebinds parameters through it
        self.managed_flags = self.managed
        """Shared with the tracker (AccessSink): events of ids flagged False are not sent."""
        self._host: list[Any] = []  # master copy (parameters) or written-back copy (activations)
        self._dev: list[torch.Tensor | None] = []
        # parameters only: what the store bound to `param.data` and the param's version then
        self._param: list[torch.nn.Parameter | None] = []
        self._bound_ptr: list[int] = []  # data_ptr() of the tensor bound (host master or device copy)
        self._bound_dev: list[bool] = []  # bound to the device copy (else the host master)
        self._ver: list[int] = []  # param._version when its copy was issued, or when the device copy was bound
        self.stale_copies = 0  # copies dropped: the master was written after they were issued
        self.dirty_writebacks = 0  # device copies the user wrote to, written back to their masters
        self.adopted_params = 0  # tensors the user assigned to `p.data`, taken as the new masters
        self.warmup_peak_device_bytes = 0
        self.persistent_bytes = 0  # small parameters kept resident (not managed)
        self.managed_events = 0  # managed accesses (reads and writes) acted on: the policy's stream
        self.step = 0
        self.timeline: list[tuple[str, int, int, int]] | None = None
        """When a list: ("late"|"miss", start_ns, wait_ns, tid) stalls and ("step", t_ns, 0, step) ends."""
        self._seen_step = self._seen_micro = -1  # (step, micro-step) of the last access: a change is a new root forward
        self.grads: Any = None
        """runtime.grad_offload.GradOffload once installed (a job with an optimizer): the gradient hooks."""
        self.footprint_extra = 0
        """Bytes of the managed parameters' gradients and optimizer state (runtime.budget
        footprint_extra), measured after the first optimizer step: the fraction 1's budget adds them."""
        self.on_step_end: Any = None
        """Called at each step's end once the budget is known (OptimizerPlacement.step_end)."""
        self.stepper: Any = None
        """runtime.device_stepping.DeviceStepper when the optimizer steps on the device (step_on_device)."""
        self._early_grads: list[tuple[torch.nn.Parameter, torch.Tensor]] = []  # set aside by _step_early until the post-hook
        self.on_new_tensor: Any = None
        """Called with each tensor row seen after the policy started (Prefetcher: policy.extend)."""

    # -- setup -------------------------------------------------------------------------
    def attach(self, tracker: Any) -> None:
        """Move every parameter to its host master copy; the device tier starts empty."""
        self.tracker = tracker
        for tid, p in tracker.params_by_tid.items():
            self._grow(tid)
            nbytes = p.numel() * p.element_size()
            managed = is_managed(Kind.PARAMETER, nbytes)
            self.declare(tid, int(Kind.PARAMETER), nbytes, managed)
            if not managed:
                self.persistent_bytes += nbytes  # stays where it is, outside the budget
                continue
            self._param[tid] = p
            self._host[tid] = self._master_of(p.data)
            self._bind(tid, self._host[tid], dev=False)
        if self.budget_bytes is not None:
            check_budget(self.budget_bytes, self.largest_managed_bytes(), self._largest_key())

    def managed_bytes(self) -> int:
        """Bytes of the managed tensors known so far (the base of a fractional budget)."""
        return sum(n for n, m in zip(self.nb, self.managed) if m)

    def largest_managed_bytes(self) -> int:
        return max((n for n, m in zip(self.nb, self.managed) if m), default=0)

    def _largest_key(self) -> str:
        cands = [i for i, m in enumerate(self.managed) if m]
        if not cands or self.tracker is None:
            return "?"
        i = max(cands, key=self.nb.__getitem__)
        keys = self.tracker.tensor_keys
        return keys[i] if i < len(keys) else "?"

    def _grow(self, tid: int) -> None:
        if tid < len(self._host):
            return
        self.reserve(tid + 1)
        grow = tid + 1 - len(self._host)
        self._host.extend([None] * grow)
        self._dev.extend([None] * grow)
        self._param.extend([None] * grow)
        self._bound_ptr.extend([0] * grow)
        self._bound_dev.extend([False] * grow)
        self._ver.extend([0] * grow)

    # -- the tier's engine: the device ------------------------------------------------------------
    def _start_copy(self, tid: int) -> Any:
        param = self._param[tid]
        if param is not None:
            self._ver[tid] = param._version  # a write after this makes the copy stale (checked at the read)
        return self.device.copy_in(self._host[tid])

    def _land(self, tid: int, copy: Any) -> int | None:
        late = not copy.done()
        self._dev[tid], waited = self.device.wait(copy)
        if not late:
            return None
        if self.timeline is not None:
            self.timeline.append(("late", time.monotonic_ns() - waited, waited, tid))
        return waited

    def _fetch(self, tid: int) -> int:
        src = self._host[tid]
        if src is None:
            raise RuntimeError(f"tensor {self._key(tid)} read but never stored")
        self._dev[tid], waited = self.device.wait(self.device.copy_in(src))
        if self.timeline is not None:
            self.timeline.append(("miss", time.monotonic_ns() - waited, waited, tid))
        return waited

    def _finish(self, tid: int, copy: Any) -> int:
        self._dev[tid], waited = self.device.wait(copy)
        return waited

    def _write_back(self, tid: int) -> None:
        dev, self._dev[tid] = self._dev[tid], None
        if dev is not None:
            self._host[tid] = self.device.pending_host(self.device.copy_out(dev))

    def _drop(self, tid: int) -> None:
        dev, self._dev[tid] = self._dev[tid], None
        self._unbind(tid, dev)  # writes back a device copy the user wrote to

    def _busy(self):
        return self.tracker.params_in_use()  # parameters of modules still in their forward

    def _grad_out(self, key: int, nbytes: int) -> Any:
        return self.grads.copy_out(key)  # copy_out(p.grad) on the copy stream / engine; p.grad = None

    def _grad_done(self, key: int, copy: Any) -> bool:
        return copy.done()

    def _grad_wait(self, key: int, copy: Any) -> int:
        host, waited = self.device.wait(copy)  # CUDA: a host sync on the copy's event (timed)
        self.grads.landed(key, host)
        return waited

    def _eta(self, tid: int) -> tuple[int, int, int]:
        raise NotImplementedError("admit_prefetch needs the future: a simulator-only policy hook")

    def describe(self, tid: int) -> str:
        return f"tensor {self._key(tid)}"

    # -- parameter binding and writes outside the optimizer ----------------------------------
    def _master_of(self, t: torch.Tensor) -> torch.Tensor:
        """The host master for a parameter's data: the tensor itself on the simulated
        device, a pinned host copy on CUDA."""
        return t if self.device.name == "simulated" else self.device.host_copy(t)

    def _bind(self, tid: int, t: torch.Tensor, *, dev: bool) -> None:
        """Point `param.data` at `t` and remember what was bound and the param's version."""
        self.tracker.rebind_param(tid, t)
        self._bound_ptr[tid] = t.data_ptr()
        self._bound_dev[tid] = dev
        self._ver[tid] = self._param[tid]._version

    def _uncount(self, tid: int) -> None:
        if tid in self.resident:
            del self.resident[tid]
            self.used -= self.nb[tid]

    def _drop_stale(self, tid: int, *, refetch: bool = False) -> None:
        """Forget a copy in flight taken before its master was written (it may even have
        raced the write). With `refetch`, request it again (issued at the next drain, from
        the written master); else the read fetches it."""
        self.inflight[tid] = None
        self.unpref(tid)
        self._uncount(tid)
        self.stale_copies += 1
        if refetch:
            when = self.pnu(tid)
            if when != NO_PREDICTION:
                self.want(tid, self.reads + when)

    def _revalidate(self) -> None:
        """A root forward begins, and user code ran since the last one: copies in flight
        whose master it wrote (a clamp after each step) are issued again now, in time for
        their reads, rather than each found stale at its read (a miss)."""
        param, ver, inflight = self._param, self._ver, self.inflight
        stale = [t for t in self.resident if inflight[t] is not None and param[t] is not None
                 and param[t]._version != ver[t]]
        for tid in stale:
            self._drop_stale(tid, refetch=True)
        if stale:
            self.drain()

    def _adopt(self, tid: int) -> None:
        """The user assigned a new tensor to `p.data`: it is the master now; whatever the
        store held for the parameter (a copy in flight, a device copy) is dropped."""
        new = self._param[tid].data
        if self.inflight[tid] is not None:
            self.stale_copies += 1
        self.inflight[tid] = None
        self._dev[tid] = None
        self.unpref(tid)
        self._uncount(tid)
        self.nb[tid] = new.numel() * new.element_size()
        self._host[tid] = self._master_of(new)
        self._bind(tid, self._host[tid], dev=False)
        self.adopted_params += 1

    def _unbind(self, tid: int, dev: torch.Tensor | None) -> None:
        """Rebind parameter `tid` to its host master. A device copy the user wrote to while
        bound (its version moved) is written back first: dropping it would lose the write."""
        p = self._param[tid]
        if p.data_ptr() != self._bound_ptr[tid]:
            self._adopt(tid)
            return
        if self._bound_dev[tid] and dev is not None and p._version != self._ver[tid]:
            self._host[tid].copy_(dev)  # note: a D2H copy and a sync on CUDA; only after a user's write
            self.dirty_writebacks += 1
            self.bytes_written_back += self.nb[tid]
            self.d2h[_PARAM] += self.nb[tid]
        self._bind(tid, self._host[tid], dev=False)

    def params_written(self) -> None:
        """Treat every managed parameter as written: for writes no version counter shows
        (in place through `p.data`, whose alias PyTorch gives a fresh counter). Copies in
        flight are dropped and requested again; bound device copies are written back to
        their masters when evicted."""
        for tid, p in self.tracker.params_by_tid.items():
            if not self.managed[tid]:
                continue
            if p.data_ptr() != self._bound_ptr[tid]:
                self._adopt(tid)
            elif self.inflight[tid] is not None:
                self._drop_stale(tid, refetch=True)
            elif self._bound_dev[tid]:
                self._ver[tid] = -1  # no version matches: dirty
        self.drain()

    # -- AccessSink ----------------------------------------------------------------------
    def new_tensor(self, row: dict[str, Any]) -> None:
        tid = row["tensor_id"]
        self._grow(tid)
        nbytes = row["nbytes"]
        # a preloaded artifact row has no size yet: managed is decided when seen
        self.declare(tid, row["kind"], nbytes, is_managed(row["kind"], nbytes) if nbytes > 0 else None)
        if self.on_new_tensor is not None:
            self.on_new_tensor(row)

    def access(self, step, micro_step, seq, phase, kind, access, tensor_id, nbytes, time_ns, module_id, layer) -> None:
        managed = self.managed[tensor_id]
        if managed is None:  # first sight of a preloaded row: its size is known now
            managed = self.managed[tensor_id] = is_managed(kind, nbytes)
            self.nb[tensor_id] = nbytes
        if not managed:
            return  # persistent (small) or not a managed kind: not an access, not in the policy's stream
        self.managed_events += 1
        if micro_step != self._seen_micro or step != self._seen_step:  # a root forward began
            self._seen_step, self._seen_micro = step, micro_step
            if self.grads is not None and self.grads.published:
                self.grads.take_back()  # gradients published as p.grad go back to their host sums
            self._revalidate()
        if access != Access.READ or kind != Kind.PARAMETER:
            self.event(step, micro_step, phase, access, tensor_id)
            return
        # a parameter written outside the optimizer since the store last looked? (attribute reads, no sync)
        tid = tensor_id
        p = self._param[tid]
        if p.data_ptr() != self._bound_ptr[tid]:
            self._adopt(tid)  # `p.data = new`: new is the master, any copy of the old one is moot
        elif self.inflight[tid] is not None and p._version != self._ver[tid]:
            self._drop_stale(tid)  # the master was written after this copy was issued: fetched below, a miss
        self.event(step, micro_step, phase, access, tid)
        if not self._bound_dev[tid]:  # a hit on a bound copy keeps its bind-time version
            self._bind(tid, self._dev[tid], dev=True)

    def pack(self, kind: int, tensor_id: int, tensor: torch.Tensor) -> Any:
        if not self.managed[tensor_id]:
            return tensor  # persistent: autograd keeps it where it is
        if kind == Kind.PARAMETER:
            # Keep only the view's geometry (autograd may save `weight.t()`), not the
            # tensor: holding it would pin the device copy until backward.
            base = self.tracker.params_by_tid[tensor_id].data
            return (tuple(tensor.shape), tensor.stride(), tensor.storage_offset() - base.storage_offset())
        tid = tensor_id
        self._grow(tid)
        if self.exists[tid]:
            self._release(tid)  # a previous step's value that was never read
        self.write(tid, tensor.numel() * tensor.element_size())
        self._dev[tid] = tensor
        return tid

    def unpack(self, kind: int, tensor_id: int, packed: Any) -> torch.Tensor:
        if not self.managed[tensor_id]:
            return packed
        if kind == Kind.PARAMETER:
            shape, stride, rel_offset = packed
            dev = self._dev_or_host(tensor_id)
            return dev.as_strided(shape, stride, dev.storage_offset() + rel_offset)
        t = self._dev_or_host(tensor_id)
        self._release(tensor_id)  # an activation is read once in backward
        return t

    def _release(self, tid: int) -> None:
        """An activation's value is gone: the tier frees it, the store drops its tensors."""
        self.free(tid)
        self._dev[tid] = None
        self._host[tid] = None

    def step_end(self, step: int) -> None:
        self.step = step + 1
        if self.timeline is not None:
            self.timeline.append(("step", time.monotonic_ns(), 0, step))
        if self.budget_bytes is None and self.step >= 1:
            self.set_budget(max(1, fraction_bytes(self.config.budget_fraction, self.managed_bytes(), self.footprint_extra)))
            check_budget(self.budget_bytes, self.largest_managed_bytes(), self._largest_key())
            self.make_room(0, -1, False, 0)
        if self.on_step_end is not None:
            self.on_step_end()  # runtime.placement: everything fits? (before the measured steps begin)
        self.steps += 1
        if self.step == self.config.warmup_steps:
            self.warmup_peak_device_bytes = self.peak
            self.begin_measurement()  # the peak reported is over measured steps

    # -- optimizer ---------------------------------------------------------------------
    def before_optimizer_step(self) -> None:
        """The optimizer updates host masters: gradients still held or on the link reach
        the host (the tier's grads_finish, within optimizer_begin), the tier drops the
        parameters' device copies and requeues those still expected, and every host
        gradient sum is published as `p.grad`. Parameters the user assigned are adopted
        first, so the optimizer updates that tensor's master."""
        for tid, p in self.tracker.params_by_tid.items():
            if self.managed[tid] and p.data_ptr() != self._bound_ptr[tid]:
                self._adopt(tid)
        self.optimizer_begin()
        if self.grads is not None:
            self.grads.publish()
        for tid, p in self.tracker.params_by_tid.items():
            if self.managed[tid] and p.grad is not None and p.grad.device != self._host[tid].device:
                # CUDA without the gradient hooks (the first step of a script whose optimizer
                # runtime.run_launch adopts after it, or a multi-rank job: Prefetcher.offload_gradients):
                # the host optimizer needs host grads. note: CPU-GPU sync point (a blocking copy
                # per managed parameter per step)
                p.grad = p.grad.to(self._host[tid].device)

    def device_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After before_optimizer_step, with device stepping on: the managed parameters step
        on the device, chunk by chunk (runtime.device_stepping); with host stepping, the ones
        the next step reads first step first (_step_early). A pre-hook of its own, not
        timed as bookkeeping: the optimizer's compute in it is the step's compute. A step
        given a closure comes here after its closure ran (runtime.closure_step)."""
        if self.resident_mode:  # a parameter evicted meanwhile (a peak over the estimate) is bound again
            for tid, p in self.tracker.params_by_tid.items():
                if self.managed[tid] and p.grad is not None and not self._bound_dev[tid]:
                    self._hold(tid)
        elif self.stepper is not None:
            self.stepper.step(optimizer)
        else:
            self._step_early(optimizer, self.early_params())

    def _step_early(self, optimizer: torch.optim.Optimizer, ids: list[int]) -> None:
        """Host stepping: the parameters the next step reads first (the tier's early_params)
        are stepped now, on their own, and their copies start (release_early) while the
        optimizer's own call steps the rest: their gradients are set aside until the post-hook
        (`_early_grads`), so that call skips them. As device stepping's chunks, this computes
        what one step over all parameters computes (each parameter from its own gradient and
        state: tests/runtime/test_early_step.py checks it bit for bit)."""
        from runtime.device_stepping import raw_step_of

        params = [self._param[t] for t in ids]
        mine = {id(p) for p in params if p.grad is not None}
        if mine:
            raw_step_of(optimizer, mine)
            for p in params:
                if id(p) in mine:
                    self._early_grads.append((p, p.grad))
                    p.grad = None
        self.release_early(ids)

    def after_optimizer_step(self) -> None:
        if self.resident_mode:  # the optimizer wrote the bound device copies: dirty, whatever their version
            for tid in self.resident:  # says (fused optimizers do not move the version counter)
                if self._bound_dev[tid]:
                    self._ver[tid] = -1
        if self.stepper is not None:
            self.stepper.restore()
        for p, g in self._early_grads:  # stepped early (_step_early): the gradient back, as the step left it
            p.grad = g
        self._early_grads.clear()
        self.optimizer_end()
        if self.grads is not None:
            self.grads.step_done()

    def step_on_device(self, on: bool) -> None:
        """From the next optimizer step on, step the managed parameters on the device
        (runtime.device_stepping) or, `on=False`, on their host masters."""
        from runtime.device_stepping import DeviceStepper

        if on and self.stepper is None:
            self.stepper = DeviceStepper(self)
        self.params_stay = on
        if not on:
            self.stepper = None

    def everything_resident(self, optimizer: torch.optim.Optimizer) -> None:
        """Everything fits (runtime.placement): from now on nothing is offloaded (the tier's
        go_resident). The gradient hooks go (gradients stay in `p.grad` on the device), every
        managed parameter is bound to a device copy with its gradient and optimizer state
        beside it, and the optimizer steps those copies in place. A copy the optimizer or the
        user writes is dirty: written back to its master if it is ever evicted, and at close
        (`_unbind`), so the masters are current whenever the model is handed back."""
        self.stepper = None
        if self.grads is not None:
            self.grads.close()  # published host sums stay the parameters' `p.grad`
            self.grads = None
        self.go_resident(self.footprint_extra)
        from runtime.device_stepping import moves_scalars, streamed

        scalars = moves_scalars(optimizer)
        for tid, p in self.tracker.params_by_tid.items():
            if not self.managed[tid]:
                continue
            for k, v in streamed(optimizer.state.get(p, {}), scalars):
                if v.device != p.device:
                    optimizer.state[p][k] = v.to(p.device)  # note: CPU-GPU copy, once per job

    def _keep_ready(self, tid: int) -> bool:
        """Resident mode (the tier's _hold): a parameter already bound to its device copy stays;
        a copy in flight taken before its master was written is dropped (fetched again)."""
        p = self._param[tid]
        if p.data_ptr() != self._bound_ptr[tid]:
            self._adopt(tid)
        elif self._bound_dev[tid]:
            return False
        if self.inflight[tid] is not None and p._version != self._ver[tid]:
            self._drop_stale(tid)
        return True

    def _kept(self, tid: int) -> None:
        """The tier's _hold made `tid` resident: bound, its gradient moved beside it."""
        p = self._param[tid]
        g, p.grad = p.grad, None  # p.data and p.grad must agree on the device
        self._bind(tid, self._dev[tid], dev=True)
        if g is not None:
            p.grad = g.to(p.device)  # note: CPU-GPU copy on CUDA (the switch only)

    def _park(self, tid: int) -> None:
        if self.resident_mode:
            return  # stays bound: the optimizer steps it in place
        if self._bound_dev[tid]:
            self._unbind(tid, self._dev[tid])  # on its master through the step; a user's write written back

    def _dev_or_host(self, tid: int) -> torch.Tensor:
        t = self._dev[tid]
        if t is None:  # the read event above fetched it; only a budget overflow gets here
            raise RuntimeError(f"tensor {self._key(tid)} not resident after its read")
        return t

    def _key(self, tid: int) -> str:
        keys = self.tracker.tensor_keys if self.tracker is not None else []
        return keys[tid] if tid < len(keys) else f"#{tid}"

    # -- results -----------------------------------------------------------------------
    def close(self) -> None:
        """Put every parameter back on its master copy (the model stays usable)."""
        if self.tracker is None:
            return
        if self.grads is not None:  # gradients on the device or the link: to their host sums, as p.grad
            self.grads_finish()
            if self.grads.acc:
                self.grads.publish()
            self.grads.close()
        for tid in list(self.tracker.params_by_tid):
            if not self.managed[tid]:
                continue
            if self.inflight[tid] is not None:  # its result is not needed: no clock, no wait for the link
                self.device.settle(self.inflight[tid])
                self.inflight[tid] = None
            self._unbind(tid, self._dev[tid])  # keeps a tensor the user assigned, writes back a written copy
            self._dev[tid] = None
        self.resident.clear()
        self.used = 0


def check_budget(budget_bytes: int, largest_bytes: int, largest_key: str = "?") -> None:
    if budget_bytes < largest_bytes:
        raise BudgetError(
            f"device budget {budget_bytes:,} bytes is below the largest managed tensor "
            f"({largest_key}, {largest_bytes:,} bytes): nothing could run; raise --budget"
        )

"""The tensor store: managed tensors live on the host; a device tier under a byte budget.

The store is the tracker's AccessSink during `runtime.prefetching(...)`:

    parameters   the host copy is the master. A read binds `param.data` to a device copy
                 (hit: already there; late: its prefetch is in flight, wait; miss: fetch
                 now). Eviction drops the device copy and rebinds the host one. The
                 optimizer runs on the host copies (ZeRO-Offload style), so device copies
                 are never dirty; they are dropped before `optimizer.step()` and fetched
                 again, updated, for the next step.
    user writes  anything else that writes a parameter (a clamp, `load_state_dict`, an
                 EMA swap) is seen by the parameter's version counter: a copy issued
                 before the write is stale (dropped; issued again when the next forward
                 starts, or fetched at its read: a miss); a device copy written while
                 bound is written back to the master, not dropped. A tensor the user
                 assigned to `p.data` becomes the master.
    activations  produced on the device by the forward (a write, no copy). Eviction
                 writes them back to the host; the backward's read fetches them again
                 unless a prefetch already did. Read once, they are freed.

Gradients and optimizer state are observed (the policy sees them) but stay where the
optimizer keeps them. Prefetch requests come from the policy, soonest first; eviction
drops tensors the policy predicts furthest away, LRU when it has no view. Hot path: no
device syncs; the only waits are the late and miss waits, which are the stall we count.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from predictor.interface import NO_PREDICTION, Policy
from runtime.device import Device
from runtime.stats import AccessStats
from runtime.trace_format import Access, Kind, is_managed


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

    def __post_init__(self) -> None:
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be > 0, got {self.budget_bytes}")
        if not 0 < self.budget_fraction <= 1:
            raise ValueError(f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


class TensorStore:
    """Host tier, device tier, copies and counters for one model."""

    def __init__(self, device: Device, policy: Policy, config: StoreConfig):
        self.device = device
        self.policy = policy
        self.config = config
        self.tracker: Any = None  # set by attach(); the store rebinds parameters through it
        self.budget_bytes: int | None = config.budget_bytes
        self.stats = AccessStats()
        self.warmup_stats: AccessStats | None = None
        self._kind: list[int] = []
        self._managed: list[bool | None] = []
        self.managed_flags = self._managed
        """Shared with the tracker (AccessSink): events of ids flagged False are not sent."""
        self._nbytes: list[int] = []
        self._host: list[Any] = []  # master copy (parameters) or written-back copy (activations)
        self._dev: list[torch.Tensor | None] = []
        self._inflight: list[Any] = []  # a Copy to the device, or None
        self._prefetched: list[bool] = []
        # parameters only: what the store bound to `param.data` and the param's version then
        self._param: list[torch.nn.Parameter | None] = []
        self._bound_ptr: list[int] = []  # data_ptr() of the tensor bound (host master or device copy)
        self._bound_dev: list[bool] = []  # bound to the device copy (else the host master)
        self._ver: list[int] = []  # param._version when its copy was issued, or when the device copy was bound
        self.stale_copies = 0  # copies dropped: the master was written after they were issued
        self.dirty_writebacks = 0  # device copies the user wrote to, written back to their masters
        self.adopted_params = 0  # tensors the user assigned to `p.data`, taken as the new masters
        self._resident: OrderedDict[int, None] = OrderedDict()  # tids holding device bytes, LRU first
        self._pending: list[tuple[float, int]] = []  # heap of (due read index, tid) not yet issued
        self._queued: dict[int, float] = {}  # tid -> its live entry's due
        self._reads = 0  # managed reads so far: the clock predictions are relative to
        self._step_start_reads = 0  # _reads when the current optimizer step began
        self._step_reads_prev = 0  # managed reads in the previous optimizer step
        self._deferred: dict[int, float] = {}  # parameter requests held until the optimizer ran
        self.device_bytes = 0
        self.peak_device_bytes = 0
        self.warmup_peak_device_bytes = 0
        self.persistent_bytes = 0  # small parameters kept resident (not managed)
        self.budget_overflows = 0  # times a needed tensor did not fit even after evicting all else
        self.prefetch_refused = 0
        self.managed_events = 0  # managed accesses (reads and writes) acted on: the policy's stream
        self.step = 0
        self.timeline: list[tuple[str, int, int, int]] | None = None
        """When a list: ("late"|"miss", start_ns, wait_ns, tid) stalls and ("step", t_ns, 0, step) ends."""
        self._in_optimizer = False
        self._current = -1
        self._seen_step = self._seen_micro = -1  # (step, micro-step) of the last access: a change is a new root forward

    # -- setup -------------------------------------------------------------------------
    def attach(self, tracker: Any) -> None:
        """Move every parameter to its host master copy; the device tier starts empty."""
        self.tracker = tracker
        for tid, p in tracker.params_by_tid.items():
            self._grow(tid)
            self._nbytes[tid] = p.numel() * p.element_size()
            self._managed[tid] = is_managed(Kind.PARAMETER, self._nbytes[tid])
            if not self._managed[tid]:
                self.persistent_bytes += self._nbytes[tid]  # stays where it is, outside the budget
                continue
            self._param[tid] = p
            self._host[tid] = self._master_of(p.data)
            self._bind(tid, self._host[tid], dev=False)
        if self.budget_bytes is not None:
            check_budget(self.budget_bytes, self.largest_managed_bytes(), self._largest_key())

    def managed_bytes(self) -> int:
        """Bytes of the managed tensors known so far (the base of a fractional budget)."""
        return sum(n for n, m in zip(self._nbytes, self._managed) if m)

    def largest_managed_bytes(self) -> int:
        return max((n for n, m in zip(self._nbytes, self._managed) if m), default=0)

    def _largest_key(self) -> str:
        cands = [i for i, m in enumerate(self._managed) if m]
        if not cands or self.tracker is None:
            return "?"
        i = max(cands, key=self._nbytes.__getitem__)
        keys = self.tracker.tensor_keys
        return keys[i] if i < len(keys) else "?"

    def _grow(self, tid: int) -> None:
        while len(self._kind) <= tid:
            self._managed.append(None)  # decided at the first known size: is_managed
            self._kind.append(-1)
            self._nbytes.append(0)
            self._host.append(None)
            self._dev.append(None)
            self._inflight.append(None)
            self._prefetched.append(False)
            self._param.append(None)
            self._bound_ptr.append(0)
            self._bound_dev.append(False)
            self._ver.append(0)

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
        if tid in self._resident:
            del self._resident[tid]
            self.device_bytes -= self._nbytes[tid]

    def _drop_stale(self, tid: int, *, refetch: bool = False) -> None:
        """Forget a copy in flight taken before its master was written (it may even have
        raced the write). With `refetch`, request it again (issued at the next drain, from
        the written master); else the read fetches it."""
        self._inflight[tid] = None
        self._prefetched[tid] = False
        self._uncount(tid)
        self.stale_copies += 1
        if refetch:
            when = self.policy.predicted_next_use(tid)
            if when != NO_PREDICTION:
                self._want(tid, self._reads + when)

    def _revalidate(self) -> None:
        """A root forward begins, and user code ran since the last one: copies in flight
        whose master it wrote (a clamp after each step) are issued again now, in time for
        their reads, rather than each found stale at its read (a miss)."""
        param, ver, inflight = self._param, self._ver, self._inflight
        stale = [t for t in self._resident if inflight[t] is not None and param[t] is not None
                 and param[t]._version != ver[t]]
        for tid in stale:
            self._drop_stale(tid, refetch=True)
        if stale:
            self._drain()

    def _adopt(self, tid: int) -> None:
        """The user assigned a new tensor to `p.data`: it is the master now; whatever the
        store held for the parameter (a copy in flight, a device copy) is dropped."""
        new = self._param[tid].data
        if self._inflight[tid] is not None:
            self.stale_copies += 1
        self._inflight[tid] = None
        self._dev[tid] = None
        self._prefetched[tid] = False
        self._uncount(tid)
        self._nbytes[tid] = new.numel() * new.element_size()
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
            self.stats.bytes_written_back += self._nbytes[tid]
        self._bind(tid, self._host[tid], dev=False)

    def params_written(self) -> None:
        """Treat every managed parameter as written: for writes no version counter shows
        (in place through `p.data`, whose alias PyTorch gives a fresh counter). Copies in
        flight are dropped and requested again; bound device copies are written back to
        their masters when evicted."""
        for tid, p in self.tracker.params_by_tid.items():
            if not self._managed[tid]:
                continue
            if p.data_ptr() != self._bound_ptr[tid]:
                self._adopt(tid)
            elif self._inflight[tid] is not None:
                self._drop_stale(tid, refetch=True)
            elif self._bound_dev[tid]:
                self._ver[tid] = -1  # no version matches: dirty
        self._drain()

    # -- AccessSink ----------------------------------------------------------------------
    def new_tensor(self, row: dict[str, Any]) -> None:
        tid = row["tensor_id"]
        self._grow(tid)
        self._kind[tid] = row["kind"]
        self._nbytes[tid] = row["nbytes"]
        if row["nbytes"] > 0:  # a preloaded artifact row has no size yet: decided when seen
            self._managed[tid] = is_managed(row["kind"], row["nbytes"])

    def access(self, step, micro_step, seq, phase, kind, access, tensor_id, nbytes, time_ns, module_id, layer) -> None:
        managed = self._managed[tensor_id]
        if managed is None:  # first sight of a preloaded row: its size is known now
            managed = self._managed[tensor_id] = is_managed(kind, nbytes)
            self._nbytes[tensor_id] = nbytes
        if not managed:
            return  # persistent (small) or not a managed kind: not an access, not in the policy's stream
        self.managed_events += 1
        if micro_step != self._seen_micro or step != self._seen_step:  # a root forward began
            self._seen_step, self._seen_micro = step, micro_step
            self._revalidate()
        if access == Access.READ:
            self._read(tensor_id)
            self._current = tensor_id  # being handed to compute: not evictable until the next access
            self._queued.pop(tensor_id, None)  # read: a pending request for it is moot
            self._reads += 1
        requests = self.policy.observe(step, micro_step, phase, access, tensor_id)
        if self._in_optimizer:
            return
        if requests:
            self._prefetch(requests)
        elif self._pending:
            self._drain()

    def pack(self, kind: int, tensor_id: int, tensor: torch.Tensor) -> Any:
        if not self._managed[tensor_id]:
            return tensor  # persistent: autograd keeps it where it is
        if kind == Kind.PARAMETER:
            # Keep only the view's geometry (autograd may save `weight.t()`), not the
            # tensor: holding it would pin the device copy until backward.
            base = self.tracker.params_by_tid[tensor_id].data
            return (tuple(tensor.shape), tensor.stride(), tensor.storage_offset() - base.storage_offset())
        tid = tensor_id
        self._grow(tid)
        if self._dev[tid] is not None or self._inflight[tid] is not None or self._host[tid] is not None:
            self._free(tid)  # a previous step's copy that was never read
        self._nbytes[tid] = tensor.numel() * tensor.element_size()
        self._make_room(self._nbytes[tid], protect=tid)  # room first: the peak never passes the budget
        self._dev[tid] = tensor
        self._account_in(tid)
        return tid

    def unpack(self, kind: int, tensor_id: int, packed: Any) -> torch.Tensor:
        if not self._managed[tensor_id]:
            return packed
        if kind == Kind.PARAMETER:
            shape, stride, rel_offset = packed
            dev = self._dev_or_host(tensor_id)
            return dev.as_strided(shape, stride, dev.storage_offset() + rel_offset)
        t = self._dev_or_host(tensor_id)
        self._free(tensor_id)  # an activation is read once in backward
        return t

    def step_end(self, step: int) -> None:
        self.step = step + 1
        if self.timeline is not None:
            self.timeline.append(("step", time.monotonic_ns(), 0, step))
        if self.budget_bytes is None and self.step >= 1:
            self.budget_bytes = max(1, int(self.config.budget_fraction * self.managed_bytes()))
            check_budget(self.budget_bytes, self.largest_managed_bytes(), self._largest_key())
            self._make_room(0)
        self.stats.steps += 1
        if self.step == self.config.warmup_steps:
            self.warmup_stats = self.stats.snapshot()
            self.warmup_peak_device_bytes = self.peak_device_bytes
            self.peak_device_bytes = self.device_bytes  # the peak reported is over measured steps

    # -- optimizer ---------------------------------------------------------------------
    def before_optimizer_step(self) -> None:
        """The optimizer updates host masters: finish copies that read them and drop the
        device copies, which it makes stale. Those the policy still expects soon are
        queued again, soonest first, and fetched (updated) once the step is done."""
        self._in_optimizer = True
        nxt = self.policy.predicted_next_use
        refetch = []
        for tid, p in list(self.tracker.params_by_tid.items()):
            if not self._managed[tid]:
                continue
            if self._inflight[tid] is not None:
                self.device.wait(self._inflight[tid])  # a copy still reading the host master
                self._inflight[tid] = None
            if p.data_ptr() != self._bound_ptr[tid]:
                self._adopt(tid)  # the user assigned p.data: the optimizer must update that tensor's master
            if tid in self._resident:
                self._prefetched[tid] = False
                self._evict(tid, invalidate=True)
                when = nxt(tid)
                if when != NO_PREDICTION:
                    refetch.append((when, tid))  # stale now; wanted again once updated
            if p.grad is not None and p.grad.device != self._host[tid].device:
                # CUDA: the host optimizer needs host grads. note: CPU-GPU sync point (a blocking
                # copy per managed parameter per step; overlapping it with backward is issue 15)
                p.grad = p.grad.to(self._host[tid].device)
        for when, tid in refetch:
            self._want(tid, self._reads + when)

    def after_optimizer_step(self) -> None:
        self._in_optimizer = False
        deferred, self._deferred = self._deferred, {}
        self._step_reads_prev = self._reads - self._step_start_reads
        self._step_start_reads = self._reads  # requests from here on belong to the next step
        for tid, due in deferred.items():
            self._want(tid, due)
        self._drain()

    # -- reads -------------------------------------------------------------------------
    def _read(self, tid: int) -> None:
        st = self.stats
        st.accesses += 1
        is_param = self._kind[tid] == Kind.PARAMETER
        if is_param:  # written outside the optimizer since the store last looked? (attribute reads, no sync)
            p = self._param[tid]
            if p.data_ptr() != self._bound_ptr[tid]:
                self._adopt(tid)  # `p.data = new`: new is the master, any copy of the old one is moot
            elif self._inflight[tid] is not None and p._version != self._ver[tid]:
                self._drop_stale(tid)  # the master was written after this copy was issued: fetch again below, a miss
        copy = self._inflight[tid]
        if copy is not None:
            late = not copy.done()
            if late:
                st.late += 1
            else:
                st.hits += 1
            t, waited = self.device.wait(copy)
            st.stall_ns += waited
            if late and self.timeline is not None:
                self.timeline.append(("late", time.monotonic_ns() - waited, waited, tid))
            self._inflight[tid] = None
            self._dev[tid] = t
        elif self._dev[tid] is not None:
            st.hits += 1
        else:
            st.misses += 1
            src = self._host[tid]
            if src is None:
                raise RuntimeError(f"tensor {self._key(tid)} read but never stored")
            self._make_room(self._nbytes[tid], protect=tid, refuse=False)
            t, waited = self.device.wait(self.device.copy_in(src))
            st.stall_ns += waited
            if self.timeline is not None:
                self.timeline.append(("miss", time.monotonic_ns() - waited, waited, tid))
            st.bytes_copied += self._nbytes[tid]
            self._dev[tid] = t
            self._account_in(tid)
        if self._prefetched[tid]:
            self._prefetched[tid] = False
            st.prefetch_used += 1
        self._resident.move_to_end(tid)
        if is_param and not self._bound_dev[tid]:  # a hit on a bound copy keeps its bind-time version
            self._bind(tid, self._dev[tid], dev=True)

    def _dev_or_host(self, tid: int) -> torch.Tensor:
        t = self._dev[tid]
        if t is None:  # the read event above fetched it; only a budget overflow gets here
            raise RuntimeError(f"tensor {self._key(tid)} not resident after its read")
        return t

    # -- prefetch and eviction ------------------------------------------------------------
    def _prefetch(self, requests) -> None:
        """Queue the policy's new requests by when they are due and issue them in that
        order while the budget allows. A refused request stays queued until room appears
        or its tensor is read, so nothing the policy asked for is lost."""
        nxt = self.policy.predicted_next_use
        now = self._reads
        for i, tid in enumerate(requests):
            if tid >= len(self._kind) or not self._managed[tid]:
                continue
            if self._dev[tid] is not None or self._inflight[tid] is not None or self._host[tid] is None:
                continue  # resident, in flight, or an activation not produced yet
            when = nxt(tid)
            self._want(tid, now + (when if when != NO_PREDICTION else i + 1))
        self._drain()

    def _want(self, tid: int, due: float) -> None:
        if self._kind[tid] == Kind.PARAMETER and self._step_reads_prev and \
                due > self._step_start_reads + self._step_reads_prev and not self._in_optimizer:
            # Expected in the next step: the optimizer will rewrite its host master first, so a
            # copy now would be thrown away. Hold the request until the step is done.
            if self._deferred.get(tid, float("inf")) > due:
                self._deferred[tid] = due
            return
        old = self._queued.get(tid)
        if old is None or due < old:
            self._queued[tid] = due
            heapq.heappush(self._pending, (due, tid))

    def _drain(self) -> None:
        pending, queued = self._pending, self._queued
        budget = self.budget_bytes
        while pending:
            due, tid = heapq.heappop(pending)
            if queued.get(tid) != due:
                continue  # superseded by an earlier due, or already served
            if self._dev[tid] is not None or self._inflight[tid] is not None or self._host[tid] is None:
                del queued[tid]
                continue
            n = self._nbytes[tid]
            if budget is not None and self.device_bytes + n > budget:
                # note: evictions may queue their victims again (heap pushes): we popped first
                if not self._make_room(n, protect=tid, refuse=True, limit=due - self._reads):
                    heapq.heappush(pending, (due, tid))
                    self.prefetch_refused += 1
                    return  # later requests are due later still: wait for the next access
            del queued[tid]
            self._inflight[tid] = self.device.copy_in(self._host[tid])
            param = self._param[tid]
            if param is not None:
                self._ver[tid] = param._version  # a write after this makes the copy stale (checked at the read)
            self._prefetched[tid] = True
            self.stats.prefetch_issued += 1
            self.stats.bytes_copied += n
            self._account_in(tid)

    def _account_in(self, tid: int) -> None:
        if tid not in self._resident:
            self._resident[tid] = None
            self.device_bytes += self._nbytes[tid]
            if self.device_bytes > self.peak_device_bytes:
                self.peak_device_bytes = self.device_bytes

    def _make_room(self, need: int, *, protect: int = -1, refuse: bool = False, limit: float = NO_PREDICTION) -> bool:
        """Evict until `need` more bytes fit: first, in LRU order, tensors outside the
        policy's horizon; then the furthest predicted use first. With `refuse`, never
        evict a tensor the policy expects sooner than `limit` reads from now
        (ChampSim-style refusal). One pass asks the policy once per candidate."""
        budget = self.budget_bytes
        if budget is None:
            return True
        if self.device_bytes + need <= budget:
            return True
        nxt = self.policy.predicted_next_use
        inflight, current = self._inflight, self._current
        busy = self.tracker.params_in_use()  # parameters of modules still in their forward
        ranked = []
        for tid in list(self._resident):
            if tid == protect or tid == current or inflight[tid] is not None or tid in busy:
                continue
            when = nxt(tid)
            if when == NO_PREDICTION:
                self._evict(tid)
                if self.device_bytes + need <= budget:
                    return True
            else:
                ranked.append((when, tid))
        ranked.sort(reverse=True)  # one ranking per call, not per eviction
        for far, tid in ranked:
            if self.device_bytes + need <= budget:
                break
            if refuse and far <= limit:
                return False
            self._evict(tid)
        if self.device_bytes + need > budget:
            if refuse:
                return False
            # A demand fetch or a write must fit: wait for copies in flight to land (a
            # stall), then evict the furthest of them. Only what is in use can overflow.
            inflight = sorted(((nxt(t), t) for t in self._resident if self._inflight[t] is not None and t != protect),
                              reverse=True)  # the copy needed last goes first (Belady), not the oldest
            for _, tid in inflight:
                if self.device_bytes + need <= budget:
                    break
                t, waited = self.device.wait(self._inflight[tid])
                self.stats.stall_ns += waited
                self._inflight[tid] = None
                self._dev[tid] = t
                self._evict(tid)
            if self.device_bytes + need > budget:
                self.budget_overflows += 1
        return True

    def _evict(self, tid: int, invalidate: bool = False) -> None:
        if tid not in self._resident:
            return
        del self._resident[tid]
        self.device_bytes -= self._nbytes[tid]
        if not invalidate:  # dropping copies the optimizer makes stale is not an eviction
            self.stats.evictions += 1
        dev = self._dev[tid]
        self._dev[tid] = None
        if self._prefetched[tid]:
            self._prefetched[tid] = False  # issued, never used
        if self._kind[tid] == Kind.PARAMETER:
            self._unbind(tid, dev)  # writes back a device copy the user wrote to
        elif dev is not None:  # an activation: write it back
            copy = self.device.copy_out(dev)
            self._host[tid] = self.device.pending_host(copy)
            self.stats.bytes_written_back += self._nbytes[tid]
        if not invalidate:
            when = self.policy.predicted_next_use(tid)
            if when != NO_PREDICTION:  # still expected: fetch it back when room appears
                self._want(tid, self._reads + when)

    def _free(self, tid: int) -> None:
        if tid in self._resident:
            del self._resident[tid]
            self.device_bytes -= self._nbytes[tid]
        self._dev[tid] = None
        self._inflight[tid] = None
        self._host[tid] = None
        self._prefetched[tid] = False

    def _key(self, tid: int) -> str:
        keys = self.tracker.tensor_keys if self.tracker is not None else []
        return keys[tid] if tid < len(keys) else f"#{tid}"

    # -- results -----------------------------------------------------------------------
    def measured_stats(self) -> AccessStats:
        return self.stats - self.warmup_stats if self.warmup_stats is not None else self.stats

    def close(self) -> None:
        """Put every parameter back on its master copy (the model stays usable)."""
        if self.tracker is None:
            return
        for tid in list(self.tracker.params_by_tid):
            if not self._managed[tid]:
                continue
            if self._inflight[tid] is not None:
                self.device.wait(self._inflight[tid])
                self._inflight[tid] = None
            self._unbind(tid, self._dev[tid])  # keeps a tensor the user assigned, writes back a written copy
            self._dev[tid] = None
        self._resident.clear()
        self.device_bytes = 0


def check_budget(budget_bytes: int, largest_bytes: int, largest_key: str = "?") -> None:
    if budget_bytes < largest_bytes:
        raise BudgetError(
            f"device budget {budget_bytes:,} bytes is below the largest managed tensor "
            f"({largest_key}, {largest_bytes:,} bytes): nothing could run; raise --budget"
        )

"""What a prefetched job costs on a real GPU: stall time from CUDA events, peak memory.

Used by `Prefetcher` when the device is a `CudaDevice`; the simulated device measures
its stalls on the host and has no allocator to ask.

Stalls. `CudaDevice.wait` makes the compute stream wait on a copy's event without
blocking the host, so a wait's cost is known only after the GPU has run it. The
device brackets each wait on a copy still in flight with two timing events; at every
step end the pairs that have finished are read (no sync) and added to the store's
stall time. At the end of the warm-up steps (once per run) and in the report the rest
are read with a sync, so warm-up stalls stay in the warm-up figures.

Peak memory. `torch.cuda.max_memory_allocated` is per device, not per job, and
`prefetch run` steps an all-resident twin in the same process. So the peak is taken
per step: at the step's first root forward the allocator's peak is reset and what is
allocated noted; at the step's end the job's peak is

    (max_memory_allocated - allocated at the step's start) + the job's own device bytes then

(the job's own bytes: the device tier, the parameters that stay resident, any
gradients, buffers and optimizer state on the device). Nothing else runs between the
two points, so another job's memory cancels out. The figure is the maximum over the
measured steps, checked against the bound

    budget + persistent + managed gradients + working set

- persistent: parameters too small to manage, their gradients, their optimizer state
  (AdamW: two tensors each) and the buffers, all on the device;
- managed gradients: the managed parameters' bytes, because backward produces their
  gradients on the device and they stay there until the optimizer's pre-hook moves
  them to the host masters (see issue 15);
- working set: what a step needs on the device outside the tier: the saved
  activations too small to manage (1 KiB to 64 KiB, on the device all step) plus
  `WORKING_SET_LARGEST` times the largest managed tensor (the op running: its output
  before the tier takes it, the gradient flowing back, a temporary, the input
  batch/logits), plus `ROUNDING_SLACK` for the allocator's 512-byte rounding.
It is an estimate: `peak_memory_within_bound` false says the job used more device
memory than the budget accounts for, and the components show where to look.
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.trace_format import Kind

WORKING_SET_LARGEST = 4
"""Largest managed tensors' worth of transient memory allowed outside the tier."""
ROUNDING_SLACK = 1 << 20
"""Bytes allowed for the caching allocator's rounding of every block up to 512 bytes."""


class CudaMonitor:
    """Stall time and peak device memory of one prefetched job on CUDA (module doc)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, store: Any,
                 device: Any, warmup_steps: int):
        self.model = model
        self.optimizer = optimizer
        self.store = store
        self.device = device
        self.warmup_steps = warmup_steps
        self.dev = device.device
        self.peak_bytes = 0  # the job's peak over the measured steps
        self.steps_measured = 0
        self._open = False
        self._start_alloc = 0
        self._own_start = 0
        self.handle = model.register_forward_pre_hook(self._step_start)

    # -- hooks ---------------------------------------------------------------------------
    def _step_start(self, module: torch.nn.Module, args: Any) -> None:
        if self._open:  # a later micro-step or generate() call of the same step
            return
        self._open = True
        self._own_start = self.own_device_bytes()
        self._start_alloc = torch.cuda.memory_allocated(self.dev)  # allocator stats: no GPU sync
        torch.cuda.reset_peak_memory_stats(self.dev)

    def before_step_end(self, step: int) -> None:
        """Called before the store's step end: finished stall timings into the stats
        (blocking once, at the end of the warm-up, so they land on the right side)."""
        self.store.stall_ns += self.device.collect_stall_ns(block=step + 1 == self.warmup_steps)

    def after_step_end(self, step: int) -> None:
        if not self._open:
            return
        self._open = False
        peak = torch.cuda.max_memory_allocated(self.dev) - self._start_alloc + self._own_start
        if step + 1 > self.warmup_steps:
            self.peak_bytes = max(self.peak_bytes, peak)
            self.steps_measured += 1

    def close(self) -> None:
        self.handle.remove()

    # -- accounting ----------------------------------------------------------------------
    def _managed_param_ids(self) -> set[int]:
        return {id(p) for tid, p in self.store.tracker.params_by_tid.items() if self.store.managed[tid]}

    def own_device_bytes(self) -> int:
        """The job's device bytes now: the tier plus every other tensor of the job on the
        device (unmanaged parameters, gradients, buffers, optimizer state), each storage once."""
        managed = self._managed_param_ids()
        seen: set[int] = set()
        total = self.store.used

        def add(t: torch.Tensor | None) -> None:
            nonlocal total
            if t is None or not t.is_cuda:
                return
            s = t.untyped_storage()
            if s.data_ptr() not in seen:
                seen.add(s.data_ptr())
                total += s.nbytes()

        for p in self.model.parameters():
            if id(p) not in managed:  # a managed one on the device is a tier tensor (counted)
                add(p.data)
            add(p.grad)
        for b in self.model.buffers():
            add(b)
        for t in self._optimizer_tensors():
            add(t)
        return total

    def _optimizer_tensors(self):
        if self.optimizer is None:
            return
        for state in self.optimizer.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    yield v

    def bound(self) -> dict[str, int]:
        """The components of the memory bound (module doc)."""
        managed = self._managed_param_ids()
        persistent = 0
        managed_grads = 0
        for p in self.model.parameters():
            n = p.numel() * p.element_size()
            if id(p) in managed:
                managed_grads += n if p.requires_grad else 0
            elif p.is_cuda:
                persistent += n * (2 if p.requires_grad else 1)  # the parameter and its gradient
        persistent += sum(b.numel() * b.element_size() for b in self.model.buffers() if b.is_cuda)
        persistent += sum(t.numel() * t.element_size() for t in self._optimizer_tensors() if t.is_cuda)
        st = self.store
        small_acts = sum(n for k, n, m in zip(st.kind, st.nb, st.managed) if k == Kind.ACTIVATION and not m)
        working = small_acts + WORKING_SET_LARGEST * st.largest_managed_bytes() + ROUNDING_SLACK
        budget = st.budget_bytes or 0
        return {"budget_bytes": budget, "persistent_bytes": persistent, "managed_grad_bytes": managed_grads,
                "working_set_bytes": working, "total": budget + persistent + managed_grads + working}

    def report(self) -> dict[str, Any]:
        """The report keys: stalls still pending are read (a sync) and added first."""
        self.store.stall_ns += self.device.collect_stall_ns(block=True)
        bound = self.bound()
        measured = self.steps_measured > 0
        return {
            "cuda_max_memory_allocated": self.peak_bytes if measured else None,
            "cuda_memory_bound_bytes": bound["total"],
            "cuda_memory_bound": bound,
            "peak_memory_within_bound": (self.peak_bytes <= bound["total"]) if measured else None,
            "cuda_timed_waits": self.device.stall_waits,
        }

"""The all-resident reference for a prefetched job on a GPU: the optimizer on host masters.

    ref = workload.build(seed, device="cuda")
    hs = host_stepping(ref.model, ref.optimizer)   # everything resident, managed params step on the host
    ref_losses = [ref.step(i) for i in range(n)]

`prefetching(...)` runs the optimizer on the host copies of the managed parameters
(ZeRO-Offload style, runtime/store.py `before_optimizer_step`). On the simulated device
host and device are the same memory, so a plain all-resident run is the reference. On
CUDA it is not: the same AdamW update computed by the CPU kernels and by the GPU kernels
differs in the last bits (the GPU kernels contract multiply-adds into FMAs, CPU vector
code does not), so a bit-for-bit check against a job stepped on the GPU would fail for
a reason that has nothing to do with prefetching.

`host_stepping(model, optimizer)` keeps every parameter on the device for forward and
backward and steps the parameters `prefetching` manages (`is_managed`) on host masters,
as the store does: before the step, each managed parameter is bound to its host master
and its gradient copied to the host; after it, the updated master is copied back. So
it computes exactly what a correct prefetched run computes, with nothing offloaded. It
is the reference for bit-identity on CUDA; slowdowns are still measured against the
plain all-resident job (everything, optimizer included, on the GPU).
On a CPU model it does nothing.
"""

from __future__ import annotations

import torch

from runtime.closure_step import ClosureFirst
from runtime.trace_format import Kind, is_managed


class HostStepping:
    """Optimizer pre/post hooks that step the managed parameters on host masters."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        params = list(dict.fromkeys(model.parameters()))  # tied weights once, in model order
        self.params = [p for p in params if p.is_cuda and is_managed(Kind.PARAMETER, p.numel() * p.element_size())]
        # note: CPU-GPU sync point (one copy per parameter, once, before training)
        self.masters = {id(p): p.detach().to("cpu") for p in self.params}
        self.devices = {id(p): p.device for p in self.params}
        self._handles = [optimizer.register_step_pre_hook(ClosureFirst()),  # a closure's forward on the device copies
                         optimizer.register_step_pre_hook(self._before), optimizer.register_step_post_hook(self._after)]

    def _before(self, *args) -> None:
        for p in self.params:
            p.data = self.masters[id(p)]  # the master is the truth, as in the store
            if p.grad is not None and p.grad.is_cuda:
                p.grad = p.grad.to("cpu")  # note: CPU-GPU sync point (the store does the same)

    def _after(self, *args) -> None:
        for p in self.params:
            p.data = self.masters[id(p)].to(self.devices[id(p)])

    def remove(self) -> None:
        """Stop stepping on the host; parameters stay on the device."""
        for h in self._handles:
            h.remove()


def host_stepping(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> HostStepping:
    """Install host stepping on an all-resident job (module doc); returns the handle."""
    return HostStepping(model, optimizer)

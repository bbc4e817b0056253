"""Gradients of managed parameters leave the device as backward produces them.

The device tier (runtime.tier.DeviceTier: `grad_write`, `grad_backward_end`, `grads_finish`)
decides, per gradient, whether it is held on the device (autograd accumulates the next
micro-step's into it) or moved now; this module is the torch side, installed by the
prefetcher when there is an optimizer:

    hook        a post-accumulate-grad hook per managed parameter (wrapped like every hook,
                runtime.overhead.HookTimer): the tier's `grad_write`. MOVE: the store's
                engine starts `device.copy_out(p.grad)` and sets `p.grad = None`; HOLD:
                `p.grad` stays. The first hook of a backward queues `_backward_end` on
                autograd's engine (`queue_callback`: it runs once the backward is done).
    landed      a copy complete (the tier releases them lazily, oldest first): the host
                accumulator of its parameter is the first result, then `acc.add_(next)`, in
                micro-step order: bit for bit autograd's own g1 + g2 + g3 on the device.
    backward end  the tier waits for the copies in flight (`grad_wait_ns`). At the expected
                last micro-step it also moves what it held and drops the parameters' device
                copies; then every managed parameter's `p.grad` is its host accumulator, so
                user code between backward and `optimizer.step()` (clip_grad_norm_, a
                grad-norm log, GradScaler.unscale_) reads the full gradient. `p` is on its
                host master by then: on CUDA a parameter's grad must be on its device type.
    take back   a root forward after that, before the optimizer step (the guess was wrong: a
                longer accumulation, or an evaluation pass before the step; TensorStore.access
                sees it): each `p.grad` becomes its accumulator again (the user's tensor: a
                `zero_grad()` meanwhile empties or zeroes it) and `p.grad = None`, so the next
                hook does not add it twice.
    optimizer   the pre-hook (TensorStore.before_optimizer_step) finishes what is left (held
                gradients moved, copies waited) and publishes every accumulator as `p.grad`;
                the post-hook forgets the accumulators: `p.grad` is the user's from then on
                (`zero_grad()`). A gradient kept into the next step (no `zero_grad`, or
                `set_to_none=False`) is a host tensor autograd adds into: right on the
                simulated device; on CUDA autograd refuses it (devices differ), as before.

A job whose accumulation count shrinks from one optimizer step to the next (4 micro-steps,
then 3) is guessed wrong the other way: the step's last backward is not known as the last,
so user code between it and `optimizer.step()` sees the held gradients on the device and
None for moved ones. The optimizer itself still gets the exact sums (its pre-hook), so a job
that does not read gradients there (no clipping) stays bit-identical.

Small (non-managed) parameters are untouched: their gradients stay where autograd puts them.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


class GradOffload:
    """The gradient hooks of one store: host accumulators and the backward-end callback."""

    def __init__(self, store: Any, tracker: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]],
                 *, emit_events: bool = False):
        self.store = store
        self.tracker = tracker
        self.acc: dict[int, torch.Tensor] = {}
        """Parameter id -> its gradient summed on the host in this optimizer step."""
        self.published = False
        """Every accumulator is its parameter's `p.grad` (until taken back)."""
        self._queued = False  # a backward-end callback is queued for the backward under way
        self._emit = emit_events
        """Log each gradient as an event through the tracker (the run's own trace keeps it)."""
        self._tid: dict[int, int] = {}
        self._params: dict[int, torch.nn.Parameter] = {}
        self._handles: list[Any] = []
        hook = wrap(self._hook)
        self._end = wrap(self._backward_end)
        for tid, p in tracker.params_by_tid.items():
            if store.managed[tid] and p.requires_grad:
                self._tid[id(p)] = tid
                self._params[tid] = p
                self._handles.append(p.register_post_accumulate_grad_hook(hook))
        store.grads = self

    # -- hooks -----------------------------------------------------------------------------------
    def _hook(self, p: torch.Tensor) -> None:
        if self._emit:
            self.tracker._grad_hook(p)  # the gradient's WRITE event (BACKWARD), as a recording logs it
        if not self._queued:
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end)
        g = p.grad
        self.store.grad_write(self._tid[id(p)], g.numel() * g.element_size())

    def _backward_end(self) -> None:
        self._queued = False
        if self.store.grad_backward_end():
            self.publish()

    # -- the store's engine -----------------------------------------------------------------------
    def copy_out(self, tid: int) -> Any:
        """Start the gradient's copy to the host; the parameter lets go of it."""
        p = self._params[tid]
        copy = self.store.device.copy_out(p.grad)
        p.grad = None
        return copy

    def landed(self, tid: int, host: torch.Tensor) -> None:
        """A copy of `tid`'s gradient is on the host: summed into its accumulator, in order."""
        acc = self.acc.get(tid)
        if acc is None:
            self.acc[tid] = host
        else:
            acc.add_(host)

    # -- publishing -------------------------------------------------------------------------------
    def publish(self) -> None:
        """Every accumulator becomes its parameter's `p.grad` (parameters on their masters)."""
        for tid, acc in self.acc.items():
            self._params[tid].grad = acc
        self.published = True

    def take_back(self) -> None:
        """A root forward begins after publishing: gradients go back to their accumulators."""
        if not self.published:
            return
        self.published = False
        for tid, p in self._params.items():
            g = p.grad
            if g is None:  # the user discarded it (zero_grad)
                self.acc.pop(tid, None)
                continue
            self.acc[tid] = g
            p.grad = None
            self.store.grad_on_host(tid)

    def step_done(self) -> None:
        """After the optimizer step: the accumulators are forgotten; `p.grad` is the user's."""
        self.acc.clear()
        self.published = False

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self.published:  # leave the gradients where the user sees them
            self.published = False

"""Gradients leave the device as backward produces them (runtime.tier's gradient rules, runtime.grad_offload).

The tier holds a gradient on the device across micro-steps or moves it to the host at once;
either way training computes exactly what it computes all resident, user code between
backward and `optimizer.step()` (clip_grad_norm_) sees the whole gradient, the gradient
bytes are on the link and in the budget, and the peak stays within it.
"""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.residual_job import Net as _ResidualNet

from predictor.interface import NO_PREDICTION, BasePolicy
from runtime.link import LinkModel
from runtime.prefetcher import prefetching
from runtime.state_compare import compare, snapshot
from runtime.tier import GRAD_HOLD_SHARE, DeviceTier
from runtime.trace_format import Kind

P = int(Kind.PARAMETER)
W = 128 * 512 * 4  # a Linear(128, 512)'s weight: managed (>= 64 KiB)


def Net() -> torch.nn.Module:
    """Four residual blocks (managed weights) and a small head (not managed): tests.fixtures.residual_job."""
    return _ResidualNet(blocks=4, head=8)


def _train(budget, accum: list[int], *, clip: bool = True, device: str = "simulated", placement: str = "host"):
    """AdamW, `accum[i]` micro-steps in step i, clip_grad_norm_ between the last backward and
    the step. Returns (losses, grad norms, state snapshot, report or None when all resident).
    The optimizer on host masters unless `placement` says otherwise: what gradient offload serves."""
    torch.manual_seed(0)
    on = "cuda" if device.startswith("cuda") else "cpu"
    model = Net().to(on)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses, norms = [], []

    def loop() -> None:
        for n in accum:
            opt.zero_grad()
            for _ in range(n):
                loss = model(torch.randn(64, 128, generator=g).to(on)).pow(2).mean() / n
                loss.backward()
                losses.append(loss.item())
            if clip:
                norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05).item())
            opt.step()

    if budget is None:
        loop()
        return losses, norms, snapshot(model, opt), None
    with prefetching(model, opt, policy="replay", budget=budget, device=device, optimizer_placement=placement,
                     link=LinkModel(bandwidth_bytes_per_s=2e9) if device == "simulated" else None) as pf:
        loop()
    return losses, norms, snapshot(model, opt), pf.report()


def _identical(a, b) -> None:
    la, na, sa, _ = a
    lb, nb, sb, _ = b
    assert la == lb and na == nb
    c = compare(sa, sb)
    assert c.params_identical and c.optimizer_state_identical, c.state_mismatches


ACCUM = [3, 3, 3, 4, 4, 5, 5]
"""Accumulation that grows: the expected last micro-step is guessed too early (publish, take back, publish)."""
SHRINKING = [3, 3, 2, 4, 1, 3]
"""Accumulation that also shrinks: the step after a longer one publishes only at its optimizer step."""


@pytest.fixture(scope="module")
def resident():
    return _train(None, ACCUM)


@pytest.mark.parametrize("budget", [1.0, 0.4, 3 * W])
def test_bit_identical_with_accumulation_and_clipping(resident, budget):
    """Losses, clipped gradient norms, parameters and AdamW state are bit-identical to all resident, gradients held or moved."""
    got = _train(budget, ACCUM)
    _identical(resident, got)
    r = got[3]
    assert r["bytes_d2h"]["gradient"] > 0 and r["grad_moves"] > 0


@pytest.mark.parametrize("budget", [1.0, 3 * W])
def test_bit_identical_when_the_accumulation_shrinks_without_clipping(budget):
    """A shorter accumulation than the step before (guessed too late): the optimizer still gets the exact sums."""
    _identical(_train(None, SHRINKING, clip=False), _train(budget, SHRINKING, clip=False))


def test_everything_fits_is_bit_identical_with_accumulation_and_clipping(resident):
    """Budget 1 with the placement left to auto: everything stays on the device after the first
    step (runtime.placement), gradients accumulate there as autograd leaves them, clipping and the
    optimizer run on the device copies; bit-identical, and nothing crosses the link but the
    write-back of the parameters when the model is handed back."""
    got = _train(1.0, ACCUM, placement="auto")
    _identical(resident, got)
    r = got[3]
    assert r["optimizer"]["resident"] is True and r["grad_moves"] == 0
    assert sum(r["bytes_h2d"].values()) == 0 and r["bytes_d2h"]["gradient"] == 0
    assert r["peak_device_bytes"] <= r["budget_bytes"]


def test_hold_when_the_budget_allows_move_when_not(resident):
    """With room (a quarter of a large budget holds every weight's gradient) accumulation stays on the device
    until the expected last micro-step; with a quarter of the budget below one gradient, every gradient moves at once."""
    big = _train(64 * W, ACCUM)
    small = _train(3 * W, ACCUM)  # GRAD_HOLD_SHARE * 3W < W
    assert GRAD_HOLD_SHARE * 3 * W < W <= GRAD_HOLD_SHARE * 64 * W / 8
    assert big[3]["grad_holds"] > 0
    assert small[3]["grad_holds"] == 0
    # holding saves copies: one move per weight per step (measured steps 1..6), not one per micro-step
    steps, micro = len(ACCUM) - 1, sum(ACCUM[1:])
    assert small[3]["grad_moves"] == 8 * micro
    assert big[3]["grad_moves"] < small[3]["grad_moves"]
    assert big[3]["bytes_d2h"]["gradient"] < small[3]["bytes_d2h"]["gradient"] == 8 * micro * W
    assert big[3]["grad_moves"] >= 8 * steps
    _identical(resident, big)
    _identical(resident, small)


def test_gradient_bytes_counted_in_both_directions_and_the_budget():
    """Each measured step moves every managed weight's gradient once (no accumulation); the byte counters by kind add
    up to the totals, and the peak, gradients included, stays within the budget."""
    _, _, _, r = _train(3 * W, [1] * 5, clip=False)
    assert r["bytes_d2h"]["gradient"] == r["steps"] * 8 * W
    assert r["bytes_h2d"]["gradient"] == 0  # host stepping: gradients never come back
    assert r["bytes_h2d"]["parameter"] + r["bytes_h2d"]["activation"] == r["bytes_copied"]
    assert r["bytes_d2h"]["activation"] + r["bytes_d2h"]["parameter"] == r["bytes_written_back"]
    assert r["budget_overflows"] == 0 and 0 < r["peak_device_bytes"] <= r["budget_bytes"]
    # the overhead split's stall is the time the job lost waiting: reads' stalls and gradient waits
    assert r["overhead"]["stall_s"] * r["steps"] == pytest.approx(r["stall_s"] + r["grad_wait_s"], abs=1e-6)


def test_user_code_sees_host_gradients_after_the_last_backward():
    """After a backward that may be the last (the expected last; every one while the count is unknown, in the first
    step), every managed parameter's grad is its host sum and its data the host master; the next forward takes them back."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    with prefetching(model, opt, policy="replay", budget=0.4, device="simulated",
                     link=LinkModel(bandwidth_bytes_per_s=2e9)) as pf:
        store = pf.store
        managed = {tid: p for tid, p in pf.tracker.params_by_tid.items() if store.managed[tid]}
        for step in range(3):
            opt.zero_grad()
            for _ in range(2):
                model(torch.randn(8, 128)).sum().backward()
                seen.append((step, store.grads.published))
                if store.grads.published:
                    assert all(p.grad is store.grads.acc[tid] and p.data.data_ptr() == store._host[tid].data_ptr()
                               for tid, p in managed.items())
            opt.step()
    assert seen == [(0, True), (0, True), (1, False), (1, True), (2, False), (2, True)]


# -- the tier's rules, on a small engine ----------------------------------------------------------
class Tiny(DeviceTier):
    """Gradient copies of `copy_ns` on one FIFO link; time moves when the test says."""

    def __init__(self, budget, copy_ns=10):
        super().__init__(Quiet(), budget)
        self.now, self.copy_ns, self.free_at = 0, copy_ns, 0

    def _start_copy(self, tid):
        self.free_at = max(self.free_at, self.now) + self.copy_ns
        return self.free_at

    def _finish(self, tid, ready):
        waited = max(0, ready - self.now)
        self.now += waited
        return waited

    _land = _fetch = None  # no reads in these tests

    def _grad_out(self, key, nbytes):
        return self._start_copy(key)

    def _grad_done(self, key, ready):
        return ready <= self.now

    def _grad_wait(self, key, ready):
        return self._finish(key, ready)


class Quiet(BasePolicy):
    def observe(self, step, micro_step, phase, access, tensor_id):
        return ()

    def predicted_next_use(self, tensor_id):
        return NO_PREDICTION


def _backward(tier, keys, nbytes=100):
    moved = [tier.grad_write(k, nbytes) for k in keys]
    tier.grad_backward_end()
    return moved


def test_tier_moves_every_micro_step_until_the_count_is_known_then_holds_until_the_last():
    """Unknown count (first step): move. Then: hold while room, move at the expected last micro-step."""
    tier = Tiny(budget=10_000)
    assert _backward(tier, [0, 1]) == [True, True] and _backward(tier, [0, 1]) == [True, True]
    tier.optimizer_begin()
    tier.optimizer_end()
    assert tier.grad_expected == 2
    assert _backward(tier, [0, 1]) == [False, False]
    assert tier.grad_held_bytes == 200 and tier.used == 200
    # the last: held ones (accumulated on the device) move once; one first produced now moves at once
    assert _backward(tier, [0, 1, 2]) == [True, True, True]
    assert tier.grad_held == {} and tier.used == 0 and not tier.grad_out


def test_tier_holds_no_more_than_its_share_and_never_after_a_move():
    """Holding stops at GRAD_HOLD_SHARE of the budget; a gradient moved in this optimizer step is not held again."""
    tier = Tiny(budget=800)  # share: 200 bytes, two gradients
    for _ in range(3):
        _backward(tier, [0, 1, 2, 3])
    tier.optimizer_begin()
    tier.optimizer_end()
    assert _backward(tier, [0, 1, 2, 3]) == [False, False, True, True]
    assert tier.grad_held_bytes == 200 <= GRAD_HOLD_SHARE * 800
    for _ in range(2):
        _backward(tier, [0, 1, 2, 3])
    tier.optimizer_begin()
    tier.optimizer_end()
    tier.grad_on_host(0)  # its host sum was taken back (zero_grad(set_to_none=False)): summed in order from here
    assert _backward(tier, [0, 1, 2, 3]) == [True, False, False, True]


def test_tier_counts_gradients_in_flight_in_the_budget_and_waits_at_backward_end():
    """A gradient's bytes stay in `used` until its copy lands; make-room releases landed ones and waits for
    one in flight before going over budget; the backward's end waits for the rest (grad_wait_ns)."""
    tier = Tiny(budget=250, copy_ns=10)
    tier.grad_write(0, 100)
    tier.grad_write(1, 100)
    assert tier.used == tier.peak == 200
    tier.grad_write(2, 100)  # over: waits for gradient 0's copy (done at 10), not an overcommit
    assert tier.used == 200 and tier.overcommits == 0 and tier.now == 10 and tier.peak <= 250
    tier.grad_backward_end()
    assert tier.used == 0 and tier.now == 30 and tier.grad_wait_ns == 30
    assert tier.d2h[int(Kind.GRADIENT)] == 300


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bit_identical_and_gradients_on_the_host():
    """On CUDA: the same bit identity, gradients copied on the side stream and summed in pinned host memory."""
    a = _train(None, ACCUM, device="cuda")
    b = _train(0.4, ACCUM, device="cuda")
    _identical(a, b)
    assert b[3]["bytes_d2h"]["gradient"] > 0

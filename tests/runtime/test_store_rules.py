"""The store's counting rules and its budget, on the real simulated device (no mocks).

A read is a *hit* when its tensor is resident with the copy complete, *late* when its
copy is still in flight (it waits), a *miss* when it is absent (evicted, or never
fetched). Every hit rate in the reports rests on these rules; the budget bound rests on
eviction making room before anything lands on the device.
"""

from __future__ import annotations

import time

import pytest
import torch

from predictor.interface import NO_PREDICTION, BasePolicy, TensorInfo
from runtime.link import LinkModel
from runtime.prefetcher import prefetching
from runtime.trace_format import MIN_MANAGED_BYTES, Kind

WEIGHT_BYTES = 256 * 256 * 4  # each layer's weight: managed (>= 64 KiB); activations (8 x 256) are not
FORWARD_READS, BACKWARD_READS = 4, 3  # layer 0's input needs no grad: its weight is not saved for backward
ALL_FIT = 8 * WEIGHT_BYTES
"""Room for the four weights and their four gradients (gradients are in the budget until their copies land)."""


class AllParameters(BasePolicy):
    """A policy that asks for every managed parameter at every access (it knows the loop)."""

    name = "all-parameters"

    def start(self, tensors: TensorInfo) -> None:
        self.ids = [i for i, (k, n) in enumerate(zip(tensors.kinds, tensors.nbytes))
                    if k == Kind.PARAMETER and n >= MIN_MANAGED_BYTES]

    def observe(self, step, micro_step, phase, access, tensor_id):
        return self.ids

    def predicted_next_use(self, tensor_id: int) -> float:
        return NO_PREDICTION


def _run(policy, *, budget, bandwidth: float, pause_s: float = 0.0, steps: int = 3) -> tuple[dict, list[tuple[str, str]]]:
    """Four bias-free 256x256 layers, SGD, `steps` steps (the first is warm-up).
    Returns the report and the (late|miss, tensor key) stalls of the measured steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(256, 256, bias=False) for _ in range(4)])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    link = LinkModel(bandwidth_bytes_per_s=bandwidth, latency_s=0.0)
    # host stepping: every step fetches the parameters again (with room for all, auto keeps them resident)
    with prefetching(model, opt, policy=policy, budget=budget, device="simulated", link=link, timeline=True,
                     optimizer_placement="host") as pf:
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(8, 256, generator=g)).pow(2).mean().backward()
            opt.step()
            end = time.thread_time() + pause_s
            while time.thread_time() < end:  # the user's loop computing between steps: time for copies to
                pass  # land (CPU work: the simulated device's clock counts compute, not sleep)
    keys = pf.tracker.tensor_keys
    steps_seen, stalls = 0, []
    for what, _, _, tid in pf.store.timeline:
        if what == "step":
            steps_seen += 1
        elif steps_seen >= 1:  # after the warm-up step
            stalls.append((what, keys[tid]))
    return pf.report(), stalls


def test_read_of_a_copy_in_flight_is_late_never_a_hit():
    """On a slow link (65 ms per weight, one FIFO engine) prefetched forward reads find their copies in flight: late, and they stall."""
    bandwidth = 4e6
    r, stalls = _run(AllParameters(), budget=ALL_FIT, bandwidth=bandwidth)
    steps = r["steps"]
    assert steps == 2 and r["accesses"] == steps * (FORWARD_READS + BACKWARD_READS)
    # the copies are issued after each optimizer step; w1..w3 land 130..260 ms later, so at
    # least they are late (w0 too, unless the loop itself took 65 ms to reach its read)
    assert r["late"] >= steps * (FORWARD_READS - 1)
    assert r["hits"] + r["late"] == steps * (FORWARD_READS + BACKWARD_READS) and r["misses"] == 0
    assert [w for w, _ in stalls] == ["late"] * r["late"]  # each late read waited, none was a miss
    assert r["stall_s"] >= 0.5 * steps * (FORWARD_READS - 1) * WEIGHT_BYTES / bandwidth  # the waits were real


def test_read_of_a_completed_prefetch_is_a_hit():
    """With a fast link and a pause between steps, every prefetch has landed before its read: all hits, no stall."""
    r, stalls = _run(AllParameters(), budget=ALL_FIT, bandwidth=1e9, pause_s=0.05)
    assert r["hits"] == r["accesses"] == 2 * (FORWARD_READS + BACKWARD_READS)
    assert r["late"] == 0 and r["misses"] == 0 and stalls == []
    # a prefetch is credited to the period that issued it: those issued after the warm-up
    # step's optimizer were used in warm-up's column, those after the last step never read
    assert r["prefetch_issued"] == 2 * FORWARD_READS and r["prefetch_used"] == FORWARD_READS
    assert r["warmup"]["prefetch_used"] == r["warmup"]["prefetch_issued"] >= FORWARD_READS


def test_read_after_eviction_is_a_miss():
    """With room for two weights and no prefetching, a read of an evicted weight is a miss; a resident one is a hit.

    Per step: forward w0..w3 all miss (the optimizer dropped every copy; w2 and w3 evict w0
    and w1); backward reads w3 (a hit), then its gradient takes w2's room (LRU; w3 is in use),
    so w2 misses (after g3's copy left), g2 takes w3's room, w1 misses, g1 takes w2's room:
    whatever the copies' timing (a gradient copy in flight is waited for before an overcommit)."""
    r, stalls = _run("none", budget=2 * WEIGHT_BYTES, bandwidth=1e9)
    assert r["hits"] == 2 * 1 and r["misses"] == 2 * 6 and r["late"] == 0
    assert r["evictions"] == 2 * 5
    assert [k for _, k in stalls[:6]] == [f"param:{i}.weight" for i in (0, 1, 2, 3, 2, 1)]
    assert r["peak_device_bytes"] <= r["budget_bytes"] and r["budget_overflows"] == 0
    assert r["bytes_d2h"]["gradient"] == 2 * 4 * WEIGHT_BYTES


@pytest.mark.parametrize("policy", ["none", "replay", "markov"])
def test_peak_device_bytes_within_budget(policy):
    """On a reference workload (dynamic: generate-train) the device tier never holds more than its budget, whatever the policy."""
    from prefetch.workloads import get_workload

    job = get_workload("generate-train").build(0)
    with prefetching(job.model, job.optimizer, policy=policy, budget=0.3, device="simulated") as pf:
        for i in range(3):
            job.step(i)
    r = pf.report()
    assert r["managed_bytes"] > r["budget_bytes"] > 0
    assert r["evictions"] > 0  # the budget binds: this is not a vacuous bound
    assert r["budget_overflows"] == 0
    assert 0 < r["peak_device_bytes"] <= r["budget_bytes"]

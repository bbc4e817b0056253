"""A prefetched run's own trace (runtime.live_trace) and the compute clock it is timed by."""

from __future__ import annotations

import time

import numpy as np
import torch

from runtime.link import ComputeClock, LinkModel
from runtime.live_trace import CLOCK_COMPUTE, CLOCK_WALL
from runtime.prefetcher import PrefetchConfig, Prefetcher
from runtime.trace_format import load_trace


class Counter:
    """A clock (ns) the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1_000

    def __call__(self) -> int:
        return self.t


def test_compute_ns_is_the_clock_less_its_waits():
    """compute_ns leaves out every wait on the clock: what the trace must carry so the
    simulator, adding its own stalls, is not charged them twice."""
    work, wall = Counter(), Counter()
    clock = ComputeClock(work, wall)
    c0, n0 = clock.compute_ns(), clock.now_ns()
    work.t += 300
    with clock.running():
        wall.t += 50
    work.t += 20
    assert clock.now_ns() - n0 == 370
    assert clock.compute_ns() - c0 == 320 and clock.waited_ns == 50


def test_a_stall_advances_the_clock_by_the_copy_time_left_not_the_oversleep():
    """running(advance_ns=) puts exactly that on the clock, however long the wall wait."""
    work, wall = Counter(), Counter()
    clock = ComputeClock(work, wall)
    n0 = clock.now_ns()
    with clock.running(advance_ns=40):
        wall.t += 900  # woke up late: a busy machine
    assert clock.now_ns() - n0 == 40 and clock.waited_ns == 40


def test_descheduled_inside_a_hook_does_not_eat_the_next_stall():
    """Wall time in a hook beyond its work (the job descheduled) never runs the clock
    backwards, and a stall after it still advances the clock by its full length."""
    work, wall = Counter(), Counter()
    clock = ComputeClock(work, wall)
    n0 = clock.now_ns()
    clock.hot_enter()
    wall.t += 1_000  # descheduled: wall without work
    assert clock.now_ns() == n0
    c = clock.compute_ns()
    with clock.running():
        wall.t += 50
    wall.t += 2_000  # descheduled again after the stall, before the next read
    assert clock.now_ns() == n0 + 50 and clock.compute_ns() == c
    clock.hot_leave()
    work.t += 10
    assert clock.now_ns() == n0 + 60 and clock.compute_ns() == c + 10


def test_the_clock_stands_inside_a_hook_but_for_its_stalls():
    """The tracker's time stamp and the store's decisions in the same hook read one time, so
    the simulator replaying the trace decides the same: CPU that other threads burn during
    the hook does not move the clock between them; a stall does, by its length."""
    work, wall = Counter(), Counter()
    clock = ComputeClock(work, wall)
    clock.hot_enter()
    stamp = clock.now_ns()
    work.t += 500  # other threads' CPU while the hook runs
    wall.t += 100
    assert clock.now_ns() == stamp
    with clock.running(advance_ns=40):
        wall.t += 40
    assert clock.now_ns() == stamp + 40
    clock.hot_leave()
    work.t += 10
    assert clock.now_ns() >= stamp + 50  # compute after the hook counts again


def _run(tmp_path, device: str = "simulated", keep: bool = True):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(128, 128) for _ in range(4)))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    cfg = PrefetchConfig(policy="replay", budget=0.5, device=device, trace_out=tmp_path if keep else None,
                         link=LinkModel(bandwidth_bytes_per_s=1e9))
    pf = Prefetcher(model, opt, cfg)
    try:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 128)).sum().backward()
            opt.step()
    finally:
        pf.close()
    return pf


def test_trace_out_keeps_the_managed_events_the_store_saw(tmp_path):
    """The run's trace holds every managed access the store counted and the managed parameters'
    gradient writes (the simulator moves them too), timed by the compute clock on the simulated
    device, with the tensor table the ids refer to."""
    pf = _run(tmp_path)
    trace = load_trace(pf.trace_stem)
    assert trace.manifest["time_ns_clock"] == CLOCK_COMPUTE and trace.manifest["complete"]
    tids = np.asarray(trace.column("tensor_id"))
    managed = trace.managed_tensors()[tids]
    assert managed.sum() == pf.store.managed_events
    assert (trace.tensor_kinds()[tids[~managed]] == 2).all() and (~managed).any()  # Kind.GRADIENT
    assert (np.asarray(trace.column("access")) == 0).sum() == pf.store.totals().accesses
    assert trace.keys == pf.tracker.tensor_keys[: trace.num_tensors]


def test_the_tracker_keeps_wall_time_unless_a_trace_is_kept(tmp_path):
    """Without trace_out the tracker's clock is wall time (no extra clock read per event)."""
    pf = _run(tmp_path, keep=False)
    assert pf.tracker.clock is time.monotonic_ns and pf.trace_stem is None
    assert CLOCK_WALL.startswith("wall")

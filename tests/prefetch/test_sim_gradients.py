"""The simulator moves managed parameters' gradients on the link and counts them in the budget, off the policy's stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from predictor.interface import BasePolicy
from prefetch.simulate import simulate
from runtime.run_report import RunReport
from runtime.trace_format import MIN_MANAGED_BYTES, Kind, load_trace

STEPS = 4


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """gpt2 (one micro-step per step) and accum-eval (four), recorded for 4 steps."""
    from prefetch.recording import record_workload

    root = tmp_path_factory.mktemp("grad-traces")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for w in ("gpt2", "accum-eval"):
            record_workload(w, STEPS, root / w, seed=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    return {w: load_trace(next((root / w).glob("*.events.arrow"))) for w in ("gpt2", "accum-eval")}


def _grad_bytes(trace) -> int:
    """Bytes of the managed parameters' gradients (one of each per backward)."""
    kinds, sizes = trace.tensor_kinds(), trace.tensor_nbytes()
    return int(sizes[(kinds == int(Kind.GRADIENT)) & (sizes >= MIN_MANAGED_BYTES)].sum())


class Counting(BasePolicy):
    """Asks for nothing; counts what it is shown (and of which kinds)."""

    name = "counting"

    def __init__(self) -> None:
        self.seen: list[int] = []

    def start(self, tensors) -> None:
        pass

    def observe(self, step, micro_step, phase, access, tensor_id):
        self.seen.append(tensor_id)
        return ()


def test_gradient_traffic_and_memory_counted(traces):
    """Without accumulation every measured step moves each managed gradient once (d2h), none comes back; the peak,
    gradients included, stays within the budget; the JSON report reads back with the same counters."""
    trace = traces["gpt2"]
    r = simulate([trace], "replay", budget=0.4)
    assert r.bytes_d2h["gradient"] == r.steps * _grad_bytes(trace) > 0
    assert r.bytes_h2d["gradient"] == 0
    assert r.bytes_h2d["parameter"] + r.bytes_h2d["activation"] == r.stats.bytes_copied
    assert r.bytes_d2h["activation"] == r.stats.bytes_written_back
    assert 0 < r.peak_device_bytes <= r.budget_bytes and r.overcommits == 0
    assert r.grad_wait_ns >= 0 and r.grad_holds == 0
    back = RunReport.from_dict(r.as_dict(), source="test")
    assert (back.bytes_h2d, back.bytes_d2h, back.grad_wait_ns, back.grad_moves) == \
        (r.bytes_h2d, r.bytes_d2h, r.grad_wait_ns, r.grad_moves)
    assert back.as_dict() == r.as_dict()


def test_accumulation_holds_gradients_within_the_budget(traces):
    """With four micro-steps per step, gradients are held on the device (within GRAD_HOLD_SHARE) and moved fewer
    times than once per micro-step; the peak stays within the budget."""
    trace = traces["accum-eval"]
    r = simulate([trace], "replay", budget=0.4)
    assert r.grad_holds > 0
    assert r.steps * _grad_bytes(trace) <= r.bytes_d2h["gradient"] < 4 * r.steps * _grad_bytes(trace)
    assert 0 < r.peak_device_bytes <= r.budget_bytes and r.overcommits == 0


def test_policy_sees_only_the_managed_stream(traces):
    """Gradients are off the policy's stream: it observes exactly the managed events, in order."""
    trace = traces["accum-eval"]
    pol = Counting()
    r = simulate([trace], pol, budget=0.4)
    managed = trace.managed()
    assert r.events == managed.num_events
    assert pol.seen == [t for t, a in zip(np.asarray(managed.column("tensor_id")).tolist(),
                                          np.asarray(managed.column("access")).tolist())]
    assert r.bytes_d2h["gradient"] > 0


def test_live_run_and_its_simulation_move_the_same_gradients(tmp_path):
    """A live run on the simulated device and the simulation of its own trace move the same gradient bytes."""
    from prefetch.live_vs_sim import live_and_simulated
    from prefetch.simulate import simulate_like_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (row,) = live_and_simulated("gpt2", ["none"], seed=2, steps=STEPS, out=tmp_path, keep_outcomes=True)
    finally:
        torch.set_num_threads(threads)
    live = row["live_report"]
    sim = simulate_like_run(live, row["trace"]).as_dict()
    assert live["bytes_d2h"]["gradient"] == sim["bytes_d2h"]["gradient"] > 0
    assert live["grad_moves"] == sim["grad_moves"]
    assert live["peak_device_bytes"] <= live["budget_bytes"] and sim["peak_device_bytes"] <= sim["budget_bytes"]

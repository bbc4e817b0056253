"""prefetch.live_vs_sim: a live run on the simulated device and the simulation of its own trace agree.

Issue 10's check: same workload, same seed, live (runtime.prefetching with `trace_out`)
and `simulate_like_run(report, trace)` on the trace that very run wrote, whose times are
the compute the live copy engine saw (runtime.link.ComputeClock.compute_ns). Hit rates
must agree within 1 pt; the device clock's slowdown within 5 %.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prefetch.live_vs_sim import live_and_simulated
from runtime.live_trace import CLOCK_COMPUTE
from runtime.trace_format import load_trace

WORKLOADS = ("gpt2", "llama")
POLICIES = (
    "none",
    "replay",
    "markov",
    # TODO(issue 10): learned through the daemon joins once the simulator models the daemon
    # path (a predictor/ wrapper the simulator uses for `learned:`): drop the skip mark and
    # give it a model trained on seeds other than 2 (tests/fixtures' way: record + train).
    pytest.param("learned", marks=pytest.mark.skip(
        reason="the simulator runs learned: in process, live runs it through the daemon (batched, a batch "
               "late, replay beside it): no like-for-like figure until the daemon path is simulated")),
)
STEPS = 4


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """One live run and its simulation per workload and (unskipped) policy, seed 2."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for w in WORKLOADS:
            folder = tmp_path_factory.mktemp(w)
            for r in live_and_simulated(w, ["none", "replay", "markov"], seed=2, steps=STEPS, out=folder):
                out[w, r["policy"]] = r
        return out
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_hit_rates_agree_within_one_point(rows, workload, policy):
    """|live hit rate - simulated hit rate| <= 1 pt, over the same managed reads."""
    r = rows[workload, policy]
    assert r["accesses_live"] == r["accesses_sim"] > 0
    assert abs(r["hit_pt"]) <= 1.0, r


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_slowdowns_agree(rows, workload, policy):
    """The device clock's slowdown (compute + waits over compute) is the simulator's within 5 %:
    the trace's deltas are compute only, so the simulator's own stalls are not counted twice."""
    r = rows[workload, policy]
    assert r["slowdown_sim"] == pytest.approx(r["slowdown_live"], rel=0.05), r


def test_live_trace_is_timed_by_the_compute_clock(rows):
    """The run's own trace says its clock, holds only managed events, in time order."""
    r = rows["gpt2", "none"]
    trace = load_trace(r["trace"])
    assert trace.manifest["time_ns_clock"] == CLOCK_COMPUTE
    assert trace.managed_tensors()[np.asarray(trace.column("tensor_id"))].all()
    t = np.asarray(trace.column("time_ns"))
    assert (t[1:] >= t[:-1]).all()

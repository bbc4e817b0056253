"""The scan policy: a loop bigger than the budget keeps a resident prefix and streams the rest; elsewhere it is replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from predictor.interface import NO_PREDICTION, PolicyError, TensorInfo
from predictor.policies import make_policy
from predictor.scan import KEEP, Scan
from prefetch.oracle import managed_stream
from prefetch.sim_trace import _TraceTier
from prefetch.simulate import simulate
from runtime.defaults import LIVE_LOOKAHEAD
from runtime.tier import HIT
from runtime.trace_format import Access, Kind, Phase, load_traces

SAMPLES = Path(__file__).resolve().parents[2] / "datasets" / "samples"
R = int(Access.READ)
EVAL, P = int(Phase.EVAL), int(Kind.PARAMETER)


class _Tier(_TraceTier):
    """The simulator's engine over a synthetic stream: no module is ever running."""

    def _busy(self):
        return frozenset()


def _scan_stream(policy, *, n=10, size=100, budget=600, iters=12, per_step=4, copy_ns=20, compute_ns=10):
    """Read tensors 0..n-1 in order, `iters` times (one micro-step each, eval phase, `per_step` per
    step) through the simulator's tier with a link slower than compute; measure from iteration 2."""
    tier = _Tier(policy, budget, [copy_ns] * n)
    tier.declare_all([P] * n, [size] * n, [True] * n)
    policy.start(TensorInfo(keys=tuple(f"p{i}" for i in range(n)), kinds=np.full(n, P, np.int8),
                            nbytes=np.full(n, size, np.int64), layers=np.full(n, -1, np.int16), modules=("m",) * n))
    tier.set_policy(policy)
    clock = 0
    for it in range(iters):
        if it == 2:
            tier.begin_measurement()
        for t in range(n):
            clock += compute_ns
            tier.comp = clock
            tier.event(it // per_step, it, EVAL, R, t)
    return tier


def test_an_oversized_cyclic_scan_is_detected_and_a_fitting_one_is_not():
    """10 x 100 B read in a cycle under 600 B is the regime (a pinned prefix); 5 x 100 B under 600 B is not."""
    big, small = Scan(lookahead=16), Scan(lookahead=16)
    _scan_stream(big)
    _scan_stream(small, n=5)
    assert big.oversized and big.loop_ == list(range(10))
    assert big.pinned_ids() == [0, 1, 2, 3]  # the prefix, within 600 - 2 x 100 bytes
    assert not small.oversized and small.pinned_ids() == []


def test_the_scan_hits_where_lru_and_replay_do_not():
    """On an oversized cyclic scan none (LRU) hits nothing and replay (even inside the tier's
    prefetch window, which lifts it from 2 hits to 35 here) much less than scan, which hits
    every pinned read and stalls half as long (440 against 860)."""
    tiers = {p: _scan_stream(make_policy(p, lookahead=16)) for p in ("none", "replay", "scan")}
    stats = {p: t.measured() for p, t in tiers.items()}
    assert stats["none"].hits == 0
    assert stats["scan"].hits >= 4 * 10  # 4 pinned tensors x 10 measured iterations, at least
    assert stats["scan"].hits > 1.5 * max(stats["replay"].hits, 1)
    assert 1.5 * stats["scan"].stall_ns < stats["replay"].stall_ns
    assert stats["scan"].bytes_copied < stats["replay"].bytes_copied  # only the tail crosses the link
    assert all(t.peak <= 600 and t.overcommits == 0 for t in tiers.values())


def test_the_loop_starts_at_a_micro_steps_first_read():
    """Found mid-lap (the stream opens with the loop's tail), the loop is still rotated to the lap's first read, so the prefix is pinned."""
    policy = Scan(lookahead=16)
    tier = _Tier(policy, 600, [20] * 10)
    tier.declare_all([P] * 10, [100] * 10, [True] * 10)
    policy.start(TensorInfo(keys=tuple(f"p{i}" for i in range(10)), kinds=np.full(10, P, np.int8),
                            nbytes=np.full(10, 100, np.int64), layers=np.full(10, -1, np.int16), modules=("m",) * 10))
    tier.set_policy(policy)
    for t in range(5, 10):  # a preamble: the tail alone
        tier.event(0, 0, EVAL, R, t)
    for it in range(1, 3):
        for t in range(10):
            tier.event(0, it, EVAL, R, t)
    assert policy.oversized and policy.loop_ == list(range(10)) and policy.pinned_ids() == [0, 1, 2, 3]


def test_predictions_keep_the_prefix_and_stream_the_tail():
    """In scan mode: a held pinned tensor is KEEP, a streamed one just read is NO_PREDICTION, the window is its distance."""
    policy = Scan(lookahead=16)
    _scan_stream(policy, iters=5)  # ends having read tensor 9 (the last of the loop)
    assert [policy.predicted_next_use(t) for t in (0, 1, 2, 3)] == [KEEP] * 4
    assert policy.predicted_next_use(9) == NO_PREDICTION  # just read: evicted first, not queued again
    assert [policy.predicted_next_use(t) for t in (4, 5, 8)] == [5.0, 6.0, 9.0]  # the next lap's tail, in order
    assert policy.upcoming(3) == [0, 1, 2]
    assert policy.observe(1, 5, EVAL, R, 0) == [9]  # the next lap: the window slides by one
    assert policy.observe(1, 5, EVAL, R, 6) == [7, 8, 9, 4, 5]  # skipped ahead: the window enters whole, held pins aside


def test_the_optimizer_releases_the_prefix():
    """After an optimizer event the pinned tensors are no longer held (the update dropped their device copies): they are asked for again."""
    policy = Scan(lookahead=16)
    tier = _scan_stream(policy, iters=5)
    policy.observe(9, 0, int(Phase.OPTIMIZER), int(Access.WRITE), 0)
    assert not any(policy.held_) and policy.held_ids_ == []
    got = policy.observe(10, 0, EVAL, R, 0)  # the loop resumes: its window enters whole, pinned ones included
    assert got[:3] == [1, 2, 3] and policy.predicted_next_use(1) == 1.0
    assert tier.budget_bytes == 600


def test_no_budget_no_regime_until_the_tier_fixes_one():
    """A live store fixes its budget after warm-up: with none known nothing is pinned; once set, the next lap finds the loop; once it holds the loop, the regime ends."""
    policy = Scan(lookahead=16)
    tier = _Tier(policy, None, [20] * 10)
    tier.declare_all([P] * 10, [100] * 10, [True] * 10)
    policy.start(TensorInfo(keys=tuple(f"p{i}" for i in range(10)), kinds=np.full(10, P, np.int8),
                            nbytes=np.full(10, 100, np.int64), layers=np.full(10, -1, np.int16), modules=("m",) * 10))
    tier.set_policy(policy)
    for it in range(3):
        for t in range(10):
            tier.event(0, it, EVAL, R, t)
    assert not policy.oversized
    tier.set_budget(600)
    for t in range(10):
        tier.event(0, 3, EVAL, R, t)
    assert policy.oversized and policy.pinned_bytes_ == 400
    tier.set_budget(1000)  # grown: the loop fits, replay decides from the next read on
    tier.event(0, 4, EVAL, R, 0)
    assert not policy.oversized and policy.pinned_ids() == []
    assert all(policy.predicted_next_use(t) == NO_PREDICTION for t in range(10))  # replay, with no previous step yet


def test_generate_train_streams_and_beats_the_oracles_slowdown():
    """generate-train at 40%: the regime is found, the pinned prefix starts at the token's first read (the embedding)
    and fits the budget, and the slowdown is under replay's and within 1.1 x the oracle's (issue 11)."""
    traces = load_traces([SAMPLES / "generate-train" / "train"])
    policy = Scan(lookahead=LIVE_LOOKAHEAD)
    scan = simulate(traces, policy, budget=0.4)
    replay, oracle = simulate(traces, "replay", budget=0.4), simulate(traces, "oracle", budget=0.4)
    keys = traces[0].keys
    assert policy.oversized and keys[policy.loop_[0]] == "param:model.embed_tokens.weight"
    assert keys[policy.pinned_ids()[0]] == "param:model.embed_tokens.weight"
    largest = max(policy.nb_[t] for t in policy.loop_)
    assert 0 < policy.pinned_bytes_ <= scan.budget_bytes - 2 * largest
    assert scan.stats.hit_rate > replay.stats.hit_rate + 0.4
    assert scan.slowdown < replay.slowdown and scan.slowdown <= 1.1 * oracle.slowdown
    assert scan.overcommits == 0 and scan.peak_device_bytes <= scan.budget_bytes
    # around the loop (training forward and backward) the inner replay sees the same reads every step
    stream = managed_stream(traces[0])["index"]
    phase, access = np.asarray(traces[0].column("phase"))[stream], np.asarray(traces[0].column("access"))[stream]
    training = np.isin(phase, (int(Phase.FORWARD), int(Phase.BACKWARD))) & (access == R)
    assert (scan.outcomes[training] == HIT).mean() > 0.75


@pytest.mark.parametrize("workload,budget", [(w, b) for w in ("gpt2", "llama", "vit", "moe", "accum-eval", "layerdrop")
                                             for b in (0.4, 0.7)] + [("generate-train", 0.7)])
def test_without_an_oversized_loop_it_is_replay(workload, budget):
    """Where no loop re-reads more than the budget (every other sample, and generate-train at 70%) it decides as replay, event for event."""
    traces = load_traces([SAMPLES / workload / "train"])
    policy = Scan(lookahead=LIVE_LOOKAHEAD)
    scan, replay = simulate(traces, policy, budget=budget), simulate(traces, "replay", budget=budget)
    assert not policy.oversized
    assert scan.stats == replay.stats and np.array_equal(scan.outcomes, replay.outcomes)


def test_bad_parameters_are_one_line_errors():
    """scan:room=-1 and scan:max_period=1 are refused with the constructor's reason."""
    with pytest.raises(PolicyError, match="policy 'scan:room=-1': room must be >= 0, got -1.0"):
        make_policy("scan:room=-1")
    with pytest.raises(PolicyError, match="max_period must be >= 2, got 1"):
        make_policy("scan:max_period=1")

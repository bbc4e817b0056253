"""The baselines: none, replay (ZeRO-3 semantics), markov (bounded successor table)."""

from __future__ import annotations

import numpy as np

from predictor.baselines import Markov, NoPrefetch, Replay
from predictor.evaluate import per_read_scores, run_policy
from predictor.interface import NO_PREDICTION, TensorInfo
from runtime.trace_format import Access, Phase

R, W = int(Access.READ), int(Access.WRITE)
FWD = int(Phase.FORWARD)


def _info(n: int) -> TensorInfo:
    return TensorInfo(keys=tuple(f"param:t{i}" for i in range(n)), kinds=np.zeros(n, np.int8),
                      nbytes=np.ones(n, np.int64), layers=np.full(n, -1, np.int16), modules=("",) * n)  # fmt: skip


def _drive(policy, steps: list[list[int]]) -> list[list]:
    """Observe each step's reads (with a write between reads); return the requests per read."""
    policy.start(_info(10))
    out = []
    for step, reads in enumerate(steps):
        for tid in reads:
            out.append(list(policy.observe(step, 0, FWD, R, tid)))
            assert policy.observe(step, 0, FWD, W, 9) == ()  # writes never cause requests
    return out


def test_replay_is_perfect_on_a_static_trace(static_train):
    """Replay predicts every read of a static trace from step 3 on (step 0 creates the optimizer state, so step 1 diverges)."""
    run = run_policy(Replay(lookahead=8), static_train, lookahead=8)
    scores = per_read_scores(run, topk=1)
    later = run.step >= 3
    assert later.sum() > 100
    assert scores["top1"][later].all()
    assert scores["recall"][later].min() == 1.0


def test_replay_stops_for_the_rest_of_a_step_on_divergence():
    """A mismatch invalidates the trace until the step ends; the diverged step is the next step's trace."""
    p = Replay(lookahead=2)
    req = _drive(p, [[0, 1, 2, 3], [0, 1, 2, 3], [0, 2, 1, 3], [0, 2, 1, 3]])
    assert req[:4] == [[], [], [], []]  # step 0: recording, nothing to replay
    assert req[4] == [1, 2] and req[5] == [3] and req[6] == [0]  # step 1 follows step 0, across the boundary
    assert req[9] == req[10] == req[11] == []  # step 2 diverged at its second read: silent to its end
    assert p.invalidations_ == 1
    assert req[12] == [2, 1] and req[13] == [3]  # step 3 replays step 2's order
    assert p.predicted_next_use(2) == 2.0 and p.predicted_next_use(7) == NO_PREDICTION  # window [0, 2]


def test_markov_follows_most_frequent_successors_and_stays_bounded():
    """Markov chains the most frequent successors up to the lookahead and keeps at most num_successors per tensor."""
    p = Markov(lookahead=3, num_successors=2)
    _drive(p, [[0, 1, 2, 3], [0, 1, 2, 3], [0, 4, 2, 3], [0, 5], [0, 6]])
    assert all(len(s) <= 2 for s in p.counts_.values())
    p.observe(9, 0, FWD, R, 0)
    assert p.counts_[0] == {1: 2, 6: 1}  # 4 and then 5 were dropped as the rarest
    assert p.upcoming(3) == [1, 2, 3]
    p.start(_info(10))
    _drive(p, [[0, 1, 2, 3], [0, 1, 2, 3]])
    p.observe(2, 0, FWD, R, 0)
    assert p.upcoming(3) == [1, 2, 3]
    assert p.predicted_next_use(2) == 2.0


def test_no_prefetch_never_requests(moe_run):
    """none returns no requests and no predictions."""
    run = run_policy(NoPrefetch(), moe_run)
    assert run.requests == 0 and (run.pred == -1).all()

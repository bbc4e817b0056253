"""Mirror: a micro-step's backward is predicted from its own forward, reversed; the forward follows the last one, found again after a divergence."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from predictor.interface import TensorInfo
from predictor.mirror import Mirror
from predictor.policies import make_policy
from prefetch.simulate import simulate
from runtime.trace_format import load_traces

R, W = 0, 1
FWD, BWD = 0, 1
SAMPLES = Path(__file__).resolve().parents[2] / "datasets" / "samples"


def _info(kinds: list[int]) -> TensorInfo:
    n = len(kinds)
    return TensorInfo(keys=tuple(f"t{i}" for i in range(n)), kinds=np.asarray(kinds, np.int8),
                      nbytes=np.full(n, 1 << 17, np.int64), layers=np.full(n, -1, np.int16), modules=("m",) * n)


def _run(policy, events):
    """(step, phase, access, id) events; returns the ids requested before each read, as sets."""
    asked: set[int] = set()
    before = []
    for step, phase, access, t in events:
        if access == R:
            before.append(t in asked)
        asked.update(policy.observe(step, 0, phase, access, t))
    return before


def test_backward_reads_are_asked_for_from_this_forward_reversed():
    """The first step's backward, never seen before, is predicted from its forward: every
    backward read after the first is requested before it comes (params 0-2, activations 3-5)."""
    p = Mirror(lookahead=8)
    p.start(_info([0, 0, 0, 1, 1, 1]))
    fwd = [(0, FWD, R, 0), (0, FWD, W, 3), (0, FWD, R, 1), (0, FWD, W, 4), (0, FWD, R, 2), (0, FWD, W, 5)]
    bwd = [(0, BWD, R, 5), (0, BWD, R, 2), (0, BWD, R, 4), (0, BWD, R, 1), (0, BWD, R, 3), (0, BWD, R, 0)]
    hits = _run(p, fwd + bwd)
    assert hits[3:] == [False, True, True, True, True, True]


def test_the_forward_is_found_again_after_a_divergence():
    """Step 1 skips tensor 1 (a skipped layer, another expert): replay stops for the step,
    mirror finds tensor 2 in the last forward and goes on asking for 3 and 4."""
    steps = [[0, 1, 2, 3, 4], [0, 2, 3, 4]]
    events = [(s, FWD, R, t) for s, ids in enumerate(steps) for t in ids]
    mirror = Mirror(lookahead=2)
    mirror.start(_info([0] * 5))
    replay = make_policy("replay", lookahead=2, tensors=_info([0] * 5))
    assert _run(mirror, events)[-2:] == [True, True]  # 3 and 4, after the skip
    assert _run(replay, events)[-2:] == [False, False]


def test_a_parameter_the_backward_never_reads_is_not_mirrored_again():
    """Tensor 0 (an embedding's weight) is read in the forward, not in the backward; after
    one backward has shown it, the next backward's window leaves it out."""
    p = Mirror(lookahead=8)
    p.start(_info([0, 0, 0]))
    step = lambda s: [(s, FWD, R, 0), (s, FWD, R, 1), (s, FWD, R, 2), (s, BWD, R, 2), (s, BWD, R, 1)]  # noqa: E731
    mirrored = []
    for s in (0, 1):
        for step_, phase, access, t in step(s):
            p.observe(step_, 0, phase, access, t)
            if phase == BWD and t == 2:  # the backward's first read: what it expects from here
                mirrored.append(p.follow.seq[:-3])  # less the next forward (0, 1, 2) it runs on into
    assert mirrored == [[2, 1, 0], [2, 1]]


def test_on_the_moe_sample_mirror_hits_far_more_than_replay():
    """Routed experts change from step to step: replay gives up at the first change, mirror
    follows the forward and mirrors every backward (budget 0.4, the simulator)."""
    moe = load_traces([SAMPLES / "moe" / "heldout"])[0]
    replay = simulate(moe, "replay", budget=0.4)
    mirror = simulate(moe, "mirror", budget=0.4)
    assert mirror.policy == "mirror"
    assert mirror.stats.hit_rate > replay.stats.hit_rate + 0.2
    assert mirror.stats.stall_ns < replay.stats.stall_ns

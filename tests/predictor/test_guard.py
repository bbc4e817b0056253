"""The guard (predictor.guard): a learned policy that stalls more than a simple one gives way to it; one that does not keeps serving."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from predictor.baselines import Markov, NoPrefetch, Replay
from predictor.guard import GuardConfig, GuardedPolicy, guarded
from predictor.interface import BasePolicy
from prefetch.simulate import simulate
from runtime.link import LinkModel
from runtime.trace_format import Access, Kind, load_trace

SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "samples" / "gpt2" / "heldout"
LINK = LinkModel(bandwidth_bytes_per_s=1e9, latency_s=5e-6)
BUDGET = 0.4


@pytest.fixture(scope="module")
def trace():
    return load_trace(next(SAMPLE.glob("*.events.arrow")))


class Thrash(BasePolicy):
    """A harmful "learned" policy: at every read it asks for random parameters and claims
    each is needed next, so the link is busy with copies nobody reads and they push out
    what the step needs."""

    name = "learned"

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def start(self, tensors):
        self.params = [i for i, k in enumerate(tensors.kinds) if k == int(Kind.PARAMETER)]
        self.want: set[int] = set()

    def observe(self, step, micro_step, phase, access, tensor_id):
        self.want.discard(tensor_id)
        if access != int(Access.READ):
            return ()
        picks = self.rng.sample(self.params, min(8, len(self.params)))
        self.want.update(picks)
        return picks

    def predicted_next_use(self, tensor_id):
        return 1.0 if tensor_id in self.want else float("inf")


def run(trace, policy):
    return simulate(trace, policy, budget=BUDGET, link=LINK)


def guard(primary, alternates, **cfg):
    return GuardedPolicy(primary, alternates, GuardConfig(**cfg), link=lambda: LINK)


def test_a_policy_that_beats_its_rivals_keeps_serving_unchanged(trace):
    """Replay standing in for the learned policy on a static model (where it is best): the
    guard never switches, and every event's outcome is the unguarded policy's."""
    alone = run(trace, Replay(lookahead=64))
    g = guard(Replay(lookahead=64), [Markov(lookahead=64), NoPrefetch()])
    r = run(trace, g)
    assert [i for _, i in g.history] == [0], g.describe()
    assert np.array_equal(r.outcomes, alone.outcomes)
    assert r.stats.stall_ns == alone.stats.stall_ns


def test_a_harmful_policy_gives_way_to_the_rival_with_the_least_stall(trace):
    """Thrash stalls far more than replay, markov or none; under the guard the run ends
    served by the rival whose shadow stalled least, and stalls much less than Thrash alone."""
    alone = run(trace, Thrash())
    rivals = {"replay": run(trace, Replay(lookahead=64)), "markov": run(trace, Markov(lookahead=64)),
              "none": run(trace, NoPrefetch())}
    g = guard(Thrash(), [Replay(lookahead=64), Markov(lookahead=64), NoPrefetch()])
    r = run(trace, g)
    served_last = g.candidates[g.history[-1][1]].name
    assert served_last != "learned", g.describe()
    best = min(rivals, key=lambda k: rivals[k].stats.stall_ns)
    assert served_last == best, (g.describe(), {k: v.stats.stall_ns for k, v in rivals.items()})
    switched = g.history[1][0]
    assert switched <= 1 + g.config.min_steps, g.describe()  # as soon as allowed
    assert r.stats.stall_ns < alone.stats.stall_ns
    # the measured steps Thrash served cost what they cost alone; the rest what the best costs
    thrash_steps = switched - 1
    per_step = alone.stats.stall_ns / alone.steps
    assert r.stats.stall_ns <= thrash_steps * per_step * 1.2 + 1.5 * rivals[best].stats.stall_ns
    assert "guard: learned from step 0, " in g.note


def test_a_shadow_stalls_as_the_executor_does_with_the_same_policy(trace, monkeypatch):
    """A shadow running the same policy as the executor, on the same events, counts the
    same stall and hits step by step (the same tier rules, the same optimizer steps; the first
    scored step may differ by a write placed one event later)."""
    per_step = []
    score = GuardedPolicy._score
    monkeypatch.setattr(GuardedPolicy, "_score", lambda self, stalls: per_step.append(stalls) or score(self, stalls))
    g = guard(Replay(lookahead=64), [Replay(lookahead=64)], min_steps=10**6, decide_steps=0)
    run(trace, g)
    assert len(per_step) >= 4
    later = per_step[1:]
    assert sum(ex[0] for ex, _ in later) > 0
    for (waited, hits), (shadow_waited, shadow_hits) in later:
        assert shadow_waited == pytest.approx(waited, rel=0.01, abs=1e5), per_step
        assert abs(shadow_hits - hits) <= 1, per_step


def test_the_serving_candidate_stays_while_near_else_the_most_hits_of_the_near_serve():
    """Stalls within `margin` of the least (or under `noise` of the compute) are near: the
    serving candidate stays while it is near (switching costs); otherwise the near one with
    the most hits serves (the learned one on a tie); one beyond the margin never does."""
    g = guard(Replay(lookahead=8), [NoPrefetch(), Markov(lookahead=8)], margin=0.05, noise=0.01)
    g.active, g.compute_scored, g._slot = 0, 0, {1: 0, 2: 1}
    g.stall, g.hits = {0: 100, 1: 97, 2: 200}, {0: 40, 1: 50, 2: 90}
    assert g._best() == 0  # serving and near: stays, though 1 has more hits
    g.active, g._slot = 2, {0: 0, 1: 1}  # serving, not near
    assert g._best() == 1  # the near one with the most hits
    g.hits = {0: 50, 1: 50, 2: 90}
    assert g._best() == 0  # a tie: the learned one
    g.active, g._slot, g.stall, g.hits = 0, {1: 0, 2: 1}, {0: 110, 1: 97, 2: 200}, {0: 60, 1: 50, 2: 90}
    assert g._best() == 1  # the learned one beyond the margin
    g.compute_scored = 1000  # 1% of it is 10: 110 is near 97 + 4.85 + 10
    assert g._best() == 0
    g.compute_scored, g._slot = 0, {2: 1}  # 1 was dropped: its frozen sum no longer counts
    assert g._best() == 0


def test_the_learned_candidate_is_never_dropped(trace):
    """Served by a rival and stalling far more, the learned candidate keeps its shadow while
    the guard is deciding: it observes every access and may return."""
    g = guard(Thrash(), [Replay(lookahead=64), NoPrefetch()], drop_over=1.1, margin=0.0, decide_steps=0)
    run(trace, g)
    assert g.active != 0 and 0 in g._slot and 0 not in g.dropped, g.describe()


def test_a_hopeless_rival_stops_being_shadowed(trace):
    """On the static sample markov stalls far more than replay: after the first scored
    steps its shadow goes (no more observing, no more scoring), the others stay."""
    g = guard(Replay(lookahead=64), [Markov(lookahead=64), Replay(lookahead=64)], drop_over=2.0, decide_steps=0)
    run(trace, g)
    assert [g.candidates[i].name for i in g.dropped] == ["markov"], g.describe()
    assert len(g.shadows) == 1 and set(g._slot) == {2}
    assert "no longer shadowed: markov" in g.describe()
    assert g.stall[1] > 2 * min(g.stall.values())


def test_after_deciding_for_a_rival_the_shadows_stop_and_the_learned_one_is_not_asked(trace):
    """After `decide_steps` scored steps the rivals' shadows go (no tier events, no followers);
    the learned candidate, not serving, is no longer shown the stream (a daemon is not paid
    for when a rival serves); the one serving serves on."""
    seen = []

    class Counting(Thrash):
        def observe(self, step, micro_step, phase, access, tensor_id):
            seen.append(step)
            return super().observe(step, micro_step, phase, access, tensor_id)

    g = guard(Counting(), [Replay(lookahead=64), NoPrefetch()], decide_steps=2)
    r = run(trace, g)
    assert g.decided and not g.shadows and not g._tier.followers, g.describe()
    assert g.active != 0 and 0 < len(seen) < r.events  # up to the decision, not after
    assert max(seen) == g.decided_step - 1  # `decided_step`: the first step served without it (prefetch run's steady state)
    assert "decided, shadows stopped" in g.describe()


@pytest.mark.parametrize("within, serves", [(0.05, "replay-rival"), (0.0, "learned")])
def test_at_the_decision_a_rival_as_good_serves_instead_of_the_learned_one(trace, within, serves):
    """The learned candidate costs bookkeeping on every access (a daemon round trip): at the
    decision, a rival whose stall is near and whose hits are within `cheaper_within` of its
    hits serves on instead (here the same policy, so as good); with 0 the learned one stays."""
    rival = Replay(lookahead=64)
    rival.name = "replay-rival"
    g = guard(Replay(lookahead=64), [rival, NoPrefetch()], decide_steps=2, cheaper_within=within, margin=0.2)
    run(trace, g)
    assert g.decided and g.candidates[g.active].name == serves.replace("learned", "replay"), g.describe()
    assert (g.active != 0) == (serves != "learned")


def test_a_rival_with_fewer_hits_than_the_share_does_not_take_over():
    """Near in stall but more than `cheaper_within` short of the learned one's hits: it stays."""
    g = guard(Replay(lookahead=8), [NoPrefetch(), Markov(lookahead=8)], cheaper_within=0.01)
    g.active, g.compute_scored, g._slot = 0, 0, {1: 0, 2: 1}
    g.stall, g.hits = {0: 100, 1: 100, 2: 300}, {0: 1000, 1: 989, 2: 1000}
    assert g._cheaper() is None  # 1 is 1.1% short, 2 is far off in stall
    g.hits[1] = 991
    assert g._cheaper() == 1


@pytest.mark.parametrize("bad", [dict(margin=1.0), dict(margin=-0.1), dict(min_steps=0), dict(drop_over=1.0),
                                 dict(noise=-0.01), dict(noise=1.0), dict(decide_steps=1),
                                 dict(cheaper_within=-0.1), dict(cheaper_within=1.0)])
def test_config_refuses_values_out_of_range(bad):
    """GuardConfig validates its fields at construction."""
    with pytest.raises(ValueError):
        GuardConfig(**bad)


def test_guarded_builds_the_named_rivals_only_with_a_link():
    """guarded(): rivals from the registry by name when a link is given."""
    with_link = guarded(Replay(lookahead=8), lookahead=8, alternates=("markov", "none"), link=lambda: LINK)
    assert [c.name for c in with_link.candidates] == ["replay", "markov", "none"]
    assert [c.name for c in guarded(Replay(lookahead=8), lookahead=8).candidates] == ["replay"]

"""The guard's prior: its cells, its rule (the guard's own), its file, and what it changes in a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from predictor.artifact import CorruptModelError
from predictor.baselines import Markov, NoPrefetch, Replay
from predictor.guard import GuardConfig, GuardedPolicy
from predictor.guard_prior import META_KEY, GuardPrior, PriorCell, load_prior, pick_best
from prefetch.simulate import simulate
from runtime.link import LinkModel
from runtime.trace_format import load_trace

from tests.predictor.test_guard import Thrash

SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "samples" / "gpt2" / "heldout"
LINK = LinkModel(bandwidth_bytes_per_s=1e9, latency_s=5e-6, ratio=0.5)  # a link the run knows the ratio of
BUDGET = 0.4


@pytest.fixture(scope="module")
def trace():
    return load_trace(next(SAMPLE.glob("*.events.arrow")))


def cell(budget=0.4, ratio=0.5, **figures):
    """A prior cell from name=(stall_ns, hits)."""
    return PriorCell(budget, ratio, {k: v[0] for k, v in figures.items()}, {k: v[1] for k, v in figures.items()}, 0)


def guard(primary, alternates, prior, **cfg):
    return GuardedPolicy(primary, alternates, GuardConfig(**cfg), link=lambda: LINK, prior=prior)


def test_the_cell_nearest_the_run_answers():
    prior = GuardPrior((cell(0.25, 0.5, learned=(1, 1)), cell(0.4, 0.5, learned=(2, 2)), cell(0.4, 2.0, learned=(3, 3))),
                       "test")
    assert prior.nearest(0.42, 0.6).stall_ns["learned"] == 2
    assert prior.nearest(0.2, 0.5).stall_ns["learned"] == 1
    assert prior.nearest(0.4, 5.0).stall_ns["learned"] == 3  # outside the grid: the nearest edge
    with pytest.raises(ValueError, match="must be > 0"):
        prior.nearest(0.0, 0.5)


def test_the_rule_is_the_guards_keep_while_near_else_most_hits_of_the_near():
    slack = lambda least: 0.05 * least  # noqa: E731
    stall, hits = {0: 100, 1: 97, 2: 200}, {0: 40, 1: 50, 2: 90}
    assert pick_best(stall, hits, slack, keep=0, prefer=0) == 0  # near and serving: stays
    assert pick_best(stall, hits, slack, prefer=0) == 1  # nothing serving: the near one with the most hits
    assert pick_best(stall, {0: 50, 1: 50}, slack, prefer=0) == 0  # a tie: the preferred one
    assert pick_best({0: 110, 1: 97, 2: 200}, hits, slack, keep=0, prefer=0) == 1  # beyond the margin
    assert pick_best({0: 110, 1: 97}, hits, lambda least: 20, keep=0) == 0  # a larger slack (noise): near


def test_a_prior_for_a_rival_serves_it_from_the_warm_ups_backward(trace):
    """The prior's cell says none stalls least: none serves from the warm-up's backward (whose
    end asks for the next step's first reads), where without a prior the model serves until
    the guard has scored `min_steps` steps."""
    prior = GuardPrior((cell(learned=(900, 10), replay=(150, 20), none=(100, 5)),), "test")
    g = guard(Thrash(), [Replay(lookahead=64), NoPrefetch()], prior)
    r = simulate(trace, g, budget=BUDGET, link=LINK)
    first = g.history[0][0]
    assert g.history[:2] == [(first, 0), (first, 2)], g.describe()
    assert f"none from step {first}'s backward" in g.note, g.note
    assert "prior none (budget 0.4, link ratio 0.5)" in g.note
    plain = guard(Thrash(), [Replay(lookahead=64), NoPrefetch()], None)
    r0 = simulate(trace, plain, budget=BUDGET, link=LINK)
    assert plain.history[1][0] > first + 1, plain.describe()  # without it, the model serves the scored steps first
    assert r.stats.stall_ns < r0.stats.stall_ns


def test_a_prior_for_the_model_changes_nothing(trace):
    """Where the prior's winner is the model, the run is the run without a prior, event for event."""
    prior = GuardPrior((cell(learned=(100, 50), markov=(300, 60), none=(400, 5)),), "test")
    with_prior = guard(Replay(lookahead=64), [Markov(lookahead=64), NoPrefetch()], prior)
    without = guard(Replay(lookahead=64), [Markov(lookahead=64), NoPrefetch()], None)
    a = simulate(trace, with_prior, budget=BUDGET, link=LINK)
    b = simulate(trace, without, budget=BUDGET, link=LINK)
    assert np.array_equal(a.outcomes, b.outcomes)
    assert with_prior.history == without.history
    assert "prior learned" in with_prior.note


def test_a_prior_that_never_scored_the_model_is_not_used(trace):
    """A cell without the model's figures cannot say to leave it: the guard starts as without a prior."""
    prior = GuardPrior((cell(replay=(1, 1), none=(100, 5)),), "test")
    g = guard(Thrash(), [Replay(lookahead=64), NoPrefetch()], prior)
    simulate(trace, g, budget=BUDGET, link=LINK)
    assert g.prior_note is None and g.history[1][0] > g.history[0][0] + 1


def test_the_prior_round_trips_and_a_bad_one_is_named(tmp_path):
    prior = GuardPrior((cell(learned=(5, 6), none=(7, 8)),), "held-out steps of x steps 6-7")
    assert GuardPrior.from_json(json.loads(json.dumps(prior.as_json())), "meta.json") == prior
    for bad in ({}, {"cells": []}, {"cells": [{"budget": 0, "link_ratio": 1, "stall_ns": {"a": 1}, "hits": {"a": 1},
                                               "compute_ns": 0}]},
                {"cells": [{"budget": 0.4, "link_ratio": 1, "stall_ns": {"a": 1}, "hits": {"b": 1}, "compute_ns": 0}]},
                {"cells": [{"budget": 0.4, "link_ratio": 1, "stall_ns": {"a": -1}, "hits": {"a": 1}, "compute_ns": 0}]}):
        with pytest.raises(ValueError, match=f"where.json: '{META_KEY}'"):
            GuardPrior.from_json(bad, "where.json")


def test_load_prior_reads_the_artifact_and_names_a_bad_one(model_dir, tmp_path):
    assert load_prior(str(tmp_path / "absent"), None) is None  # a remote daemon's folder: no prior here
    folder = next(p for p in Path(model_dir).iterdir() if (p / "meta.json").exists())
    meta = json.loads((folder / "meta.json").read_text())
    copy = tmp_path / folder.name
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    meta.pop(META_KEY, None)
    (copy / "meta.json").write_text(json.dumps(meta))
    assert load_prior(str(copy), meta["architecture"]) is None  # trained before priors
    meta[META_KEY] = GuardPrior((cell(learned=(1, 2)),), "s").as_json()
    (copy / "meta.json").write_text(json.dumps(meta))
    assert load_prior(str(copy), meta["architecture"]).cells[0].hits == {"learned": 2}
    meta[META_KEY]["cells"][0]["hits"] = {"learned": "many"}
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptModelError, match=r"meta\.json: 'guard_prior': cell 0 must hold"):
        load_prior(str(copy), meta["architecture"])


def test_rivals_are_named_by_their_spec_and_the_prior_drops_the_hopeless(trace):
    """Mirror at two lookaheads are two candidates, told apart by spec in the prior and the note;
    a rival whose stall in the prior's cell is over `drop_over` times the least is not shadowed."""
    from predictor.guard import guarded

    prior = GuardPrior((cell(**{"learned": (500, 10), "mirror": (300, 30), "mirror:lookahead=4": (200, 40),
                                "none": (450, 5)}),), "test")
    g = guarded(Thrash(), lookahead=64, alternates=("mirror", "mirror:lookahead=4", "none"), link=lambda: LINK,
                prior=prior)
    simulate(trace, g, budget=BUDGET, link=LINK)
    first = g.history[0][0]
    assert g.history[1] == (first, 2), g.describe()
    assert "mirror:lookahead=4 from step" in g.note and "no longer shadowed: none" in g.note, g.note
    assert g.candidates[2].lookahead == 4
    assert 3 in g.dropped and 3 not in g.stall  # dropped before any step was scored

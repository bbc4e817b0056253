"""Measuring the guard's prior after training: on the held-out steps, every candidate, every cell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from predictor.guard import DEFAULT_ALTERNATES
from predictor.guard_prior import load_prior
from predictor.train import TrainConfig, train
from prefetch.guard_prior_fit import fit_priors, tail_trace
from prefetch.simulate import simulate
from runtime import hint_schedule
from runtime.trace_format import Trace, load_trace
from tests.fixtures.synthetic_traces import SyntheticConfig, write_synthetic_trace

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior")
    for seed in (0, 1):
        write_synthetic_trace(root / f"seed{seed}", SyntheticConfig.of_kind("moe"), steps=8, seed=seed, name="moe")
    dirs = [root / "seed0", root / "seed1"]
    folders = train(dirs, root / "models", TrainConfig(num_threads=1), progress=False, log=lambda *a: None)
    return root, dirs, folders


def test_the_prior_scores_every_candidate_at_every_cell_on_held_out_steps_only(trained):
    root, dirs, folders = trained
    lines: list[str] = []
    fit_priors(folders, dirs, budgets=(0.3, 0.6), link_ratios=(0.5, 1.0), progress=False, log=lines.append)
    meta = json.loads((folders[0] / "meta.json").read_text())
    prior = load_prior(str(root / "models"), meta["architecture"])
    assert prior is not None and len(prior.cells) == 4, lines
    assert {(c.budget, c.link_ratio) for c in prior.cells} == {(0.3, 0.5), (0.3, 1.0), (0.6, 0.5), (0.6, 1.0)}
    for c in prior.cells:
        assert set(c.stall_ns) == {"learned", *DEFAULT_ALTERNATES} and c.compute_ns > 0
        assert sum(c.hits.values()) > 0
    held = [t["holdout_steps"] for t in meta["training"]["traces"]]
    assert all(h == [6, 7] for h in held)  # 8 steps, a quarter held out
    assert prior.source.count("steps 6-7") == 2, prior.source  # the held-out steps, and only they
    # the cell is the simulation of those steps: none's hits at (0.3, 0.5), recomputed
    tails = [tail_trace(load_trace(next(d.glob("*.events.arrow"))), 5) for d in dirs]
    none = sum(simulate(t, "none", budget=0.3, link_ratio=0.5, warmup_steps=1).stats.hits for t in tails)
    assert next(c for c in prior.cells if (c.budget, c.link_ratio) == (0.3, 0.5)).hits["none"] == none


def test_a_trace_cut_at_a_step_keeps_its_router_hints_at_the_same_events(trained):
    _, dirs, _ = trained
    t = load_trace(next(dirs[0].glob("*.events.arrow")))
    steps = t.column("step")
    ats = [int(np.flatnonzero(steps == s)[0]) + k for s in (2, 4, 6) for k in (3, 9)]
    manifest = dict(t.manifest, **{hint_schedule.MANIFEST_KEY: {
        "at": ats, "time_ns": [int(t.column("time_ns")[a]) for a in ats],
        "want": [[1]] * len(ats), "skip": [[2]] * len(ats)}})  # fmt: skip
    hinted = Trace(stem=t.stem, events=t.events, tensors=t.tensors, manifest=manifest)
    tail = tail_trace(hinted, 4)
    first = int(np.flatnonzero(steps >= 4)[0])
    assert tail.num_events == t.num_events - first and int(tail.column("step")[0]) == 4
    kept = hint_schedule.from_manifest(tail.manifest[hint_schedule.MANIFEST_KEY], "tail", tail.num_events,
                                       tail.num_tensors)
    assert [e[0] + first for e in kept] == ats[2:]
    for (at, *_), old in zip(kept, ats[2:]):
        assert tail.column("tensor_id")[at] == t.column("tensor_id")[old]


def test_prefetch_train_writes_the_prior_unless_asked_not_to(trained, tmp_path):
    _, dirs, _ = trained
    for flag, expect in (([], True), (["--no-guard-prior"], False)):
        out = tmp_path / f"models{len(flag)}"
        subprocess.run([sys.executable, "-m", "prefetch", "train", *map(str, dirs), "--out", str(out), "--no-progress",
                        "--threads", "1", *flag], check=True, cwd=ROOT, capture_output=True, text=True)
        meta = json.loads(next(out.glob("*/meta.json")).read_text())
        assert (load_prior(str(out), meta["architecture"]) is not None) is expect

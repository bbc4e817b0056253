"""In-sample flagging: a learned model evaluated on a run it was trained on says so, everywhere."""

from __future__ import annotations

import json

import pytest

from predictor.evaluate import HELD_OUT_RUN, HELD_OUT_STEPS, evaluate, format_report
from predictor import provenance
from predictor.provenance import REPORT_KEYS, assess, training_data
from tests.fixtures.synthetic_traces import SyntheticConfig, write_synthetic_trace
from prefetch.simulate import simulate
from runtime.trace_format import MANIFEST_SUFFIX, load_trace
from runtime.trace_identity import IDENTITY_KEY, step_order_hashes, trace_identity


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """Each test sees its own warnings (the module prints each message once per process)."""
    provenance._warned.clear()


def _entry(seed, hashes, workload="w", trace="t"):
    return {"trace": f"{trace}{seed}", "workload": workload, "seed": seed, "steps": list(range(len(hashes))),
            "step_order_hashes": list(hashes)}


DYN0 = ["a0", "b0", "c0", "d0", "e0", "f0"]  # a dynamic workload, seed 0: every step its own order
DYN1 = ["a1", "b1", "c1", "d1", "e1", "f1"]
STATIC = ["s"] * 6  # gpt2, llama, vit: every step of every seed alike
PERIODIC = ["p", "p", "q", "p", "p", "q"]  # accum-eval: the order follows the step index, not the seed


def _load(folder):
    return load_trace(next(folder.glob("*.events.arrow")))


def _strip_seed(stem):
    """A copy of a trace's manifest with no seed (and no stored identity): an old or anonymous recording."""
    path = stem.with_name(stem.name + MANIFEST_SUFFIX)
    m = json.loads(path.read_text())
    m.pop("seed"), m.pop(IDENTITY_KEY)
    path.write_text(json.dumps(m))


@pytest.fixture(scope="module")
def rerecorded(traces, tmp_path_factory):
    """moe seed 0 recorded again, with more steps (so another file and another event count)."""
    root = tmp_path_factory.mktemp("again")
    write_synthetic_trace(root / "moe-again", SyntheticConfig.of_kind("moe"), steps=10, seed=0, name="moe")
    write_synthetic_trace(root / "moe-anon", SyntheticConfig.of_kind("moe"), steps=8, seed=0, name="moe")
    write_synthetic_trace(root / "moe-anon2", SyntheticConfig.of_kind("moe"), steps=8, seed=2, name="moe")
    write_synthetic_trace(root / "static-s1", SyntheticConfig.of_kind("static"), steps=6, seed=1, name="static")
    for name in ("moe-anon", "moe-anon2"):
        _strip_seed(_load(root / name).stem)
    return root


# -- the rule ---------------------------------------------------------------------------------
def test_same_seed_is_in_sample_and_another_is_not():
    """Known seeds decide: the training seed is in sample, any other seed is not."""
    training = [_entry(0, DYN0), _entry(1, DYN1)]
    assert assess(training, {"workload": "w", "seed": 1, "step_order_hashes": []}).in_sample is True
    prov = assess(training, {"workload": "w", "seed": 2, "step_order_hashes": DYN0})
    assert prov.in_sample is False and prov.train_seeds == (0, 1) and prov.eval_seeds == (2,)


def test_static_workload_on_another_seed_is_not_flagged():
    """gpt2-like: every seed has one order; another seed is not in sample, an unknown seed cannot tell."""
    assert assess([_entry(0, STATIC)], {"workload": "w", "seed": 3, "step_order_hashes": STATIC}).in_sample is False
    prov = assess([_entry(0, STATIC)], {"workload": "w", "seed": None, "step_order_hashes": STATIC})
    assert prov.in_sample is None and "same access order" in prov.reason


def test_unknown_seed_falls_back_to_step_order_hashes():
    """Seed unknown: the same order step for step is in sample; another seed's orders are not."""
    training = [_entry(0, DYN0)]
    assert assess(training, {"seed": None, "step_order_hashes": DYN0[:4]}).in_sample is True
    assert assess(training, {"seed": None, "step_order_hashes": DYN1}).in_sample is False
    # the same orders shuffled over the steps (layerdrop: few layer subsets recur across seeds) are no match
    assert assess(training, {"seed": None, "step_order_hashes": DYN0[::-1]}).in_sample is False
    # one chance collision in six steps is not a match either
    assert assess(training, {"seed": None, "step_order_hashes": ["a0"] + DYN1[1:]}).in_sample is False


def test_order_shared_by_training_seeds_cannot_tell():
    """accum-eval-like: two training seeds with the same orders step for step: an unknown seed is unknown."""
    training = [_entry(0, PERIODIC), _entry(1, PERIODIC)]
    prov = assess(training, {"seed": None, "step_order_hashes": PERIODIC})
    assert prov.in_sample is None and prov.reason


def test_another_workload_with_the_same_seed_is_not_in_sample():
    """The seed matches only within a workload."""
    assert assess([_entry(0, DYN0, workload="moe")], {"workload": "layerdrop", "seed": 0}).in_sample is False


def test_old_artifact_meta_still_gives_seeds():
    """An artifact trained before training_data existed: seeds come from training.traces."""
    meta = {"training": {"traces": [{"stem": "moe-train", "workload": "moe", "seed": 0, "train_steps": [0, 1]}]}}
    assert assess(training_data(meta), {"workload": "moe", "seed": 0}).in_sample is True
    assert assess(training_data(meta), {"workload": "moe", "seed": None, "step_order_hashes": DYN0}).in_sample is None


# -- identities in traces and artifacts -----------------------------------------------------
def test_writer_stores_the_identity_loaders_compute(traces):
    """The manifest's step-order hashes equal those computed from the events (old traces get them so)."""
    trace = _load(traces / "moe-train")
    stored = trace.manifest[IDENTITY_KEY]
    assert stored["seed"] == 0 and len(stored["step_order_hashes"]) == 8
    assert stored["step_order_hashes"] == step_order_hashes(trace) == step_order_hashes(trace.managed())
    assert len(set(stored["step_order_hashes"])) == 8  # dynamic: every step its own order


def test_old_sample_traces_work():
    """datasets/samples traces predate identities: computed from the events, static ones alike across seeds."""
    moe = trace_identity(load_trace("datasets/samples/moe/train/moe-train"))
    assert IDENTITY_KEY not in load_trace("datasets/samples/moe/train/moe-train").manifest
    assert moe["seed"] == 0 and len(moe["step_order_hashes"]) == 16 and len(set(moe["step_order_hashes"])) == 16
    g0 = trace_identity(load_trace("datasets/samples/gpt2/train/gpt2-train"))["step_order_hashes"]
    g1 = trace_identity(load_trace("datasets/samples/gpt2/heldout/gpt2-heldout"))["step_order_hashes"]
    assert set(g0) == set(g1) and len(set(g0)) == 1


def test_artifact_records_training_seeds_and_hashes(model_dir, moe_train):
    """meta.json names its training runs: trace, workload, seed, trained steps and step-order hashes."""
    meta = json.loads(next(p for p in model_dir.glob("*/meta.json") if "moe" in p.read_text()).read_text())
    (entry,) = [d for d in meta["training_data"] if d["workload"] == "synthetic-moe"]
    assert meta["train_seeds"] == [0]
    assert entry["seed"] == 0 and entry["steps"] == [0, 1, 2, 3, 4, 5]
    assert entry["step_order_hashes"] == step_order_hashes(moe_train)


# -- prefetch eval ------------------------------------------------------------------------------
def test_eval_flags_a_rerecording_of_the_training_seed(model_dir, rerecorded, moe_run, capsys):
    """A fresh recording of seed 0 (another file, another event count) is scored on held-out steps, in sample."""
    again = _load(rerecorded / "moe-again").managed()
    report = evaluate(str(model_dir), [again, moe_run], lookahead=8)
    by_seed = {r["seed"]: r for r in report["traces"]}
    assert by_seed[0]["scope"] == HELD_OUT_STEPS and by_seed[0]["steps"] == [6, 7, 8, 9]
    assert by_seed[0]["in_sample"] is True and by_seed[0]["train_seeds"] == [0]
    assert by_seed[1]["scope"] == HELD_OUT_RUN and by_seed[1]["in_sample"] is False
    assert report["in_sample"] is True and report["eval_seeds"] == [0, 1]
    assert all(k in report for k in REPORT_KEYS) and all(k in by_seed[1] for k in REPORT_KEYS)
    assert "IN SAMPLE" in format_report(report)
    assert "WARNING: IN-SAMPLE" in capsys.readouterr().err


def test_eval_by_hashes_when_the_seed_is_unknown(model_dir, rerecorded):
    """No seed in the manifest: seed 0's order is in sample, seed 2's is not."""
    anon = [_load(rerecorded / n).managed() for n in ("moe-anon", "moe-anon2")]
    r0, r2 = evaluate(str(model_dir), anon, lookahead=8)["traces"]
    assert r0["eval_seeds"] == [None] and r0["in_sample"] is True and r0["scope"] == HELD_OUT_STEPS
    assert r2["in_sample"] is False and r2["scope"] == HELD_OUT_RUN


def test_eval_of_a_static_workload_on_another_seed_is_not_flagged(model_dir, rerecorded, capsys):
    """static seed 1 against a model trained on static seed 0: not in sample, no warning."""
    (r,) = evaluate(str(model_dir), [_load(rerecorded / "static-s1").managed()], lookahead=8)["traces"]
    assert r["in_sample"] is False and r["scope"] == HELD_OUT_RUN
    assert "WARNING" not in capsys.readouterr().err


# -- prefetch simulate ------------------------------------------------------------------------
def test_simulate_flags_the_training_run(model_dir, traces, rerecorded, capsys):
    """simulate's learned report carries the provenance keys and warns on its own training run."""
    policy = f"learned:{model_dir}"
    d = simulate(_load(rerecorded / "moe-again"), policy, budget=0.5, lookahead=8).as_dict()
    assert d["in_sample"] is True and d["train_seeds"] == [0] and d["eval_seeds"] == [0]
    assert "WARNING: IN-SAMPLE" in capsys.readouterr().err
    d = simulate([_load(traces / "moe-run"), _load(rerecorded / "moe-anon2")], policy, budget=0.5, lookahead=8).as_dict()
    assert d["in_sample"] is False and d["eval_seeds"] == [1, None]
    assert [t["in_sample"] for t in d["traces"]] == [False, False]
    assert "WARNING" not in capsys.readouterr().err
    assert "in_sample" not in simulate(_load(traces / "moe-train"), "replay", budget=0.5).as_dict()


def test_step_orders_follow_keys_not_ids(moe_train):
    """The same accesses under other tensor ids (another first-seen order) hash alike; another order does not."""
    import numpy as np
    import pyarrow as pa

    from runtime.trace_format import Trace

    n = moe_train.num_tensors
    perm = np.random.default_rng(0).permutation(n).astype(np.int32)  # old id -> new id
    events = moe_train.events.set_column(moe_train.events.schema.get_field_index("tensor_id"), "tensor_id",
                                         pa.array(perm[moe_train.column("tensor_id")]))
    order = np.argsort(perm)  # new id -> old row
    tensors = moe_train.tensors.take(pa.array(order))
    tensors = tensors.set_column(0, "tensor_id", pa.array(np.arange(n, dtype=np.int32)))
    renumbered = Trace(stem=moe_train.stem, events=events, tensors=tensors, manifest={})
    assert step_order_hashes(renumbered) == step_order_hashes(moe_train)
    swapped = Trace(stem=moe_train.stem, events=moe_train.events.take(pa.array(np.r_[1, 0, 2:moe_train.num_events])),
                    tensors=moe_train.tensors, manifest={})
    assert step_order_hashes(swapped)[0] != step_order_hashes(moe_train)[0]
    assert step_order_hashes(swapped)[1:] == step_order_hashes(moe_train)[1:]

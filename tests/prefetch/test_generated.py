"""prefetch.workloads.generated: the generalisation suite's architectures are deterministic, varied and trainable."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from prefetch.workloads import WORKLOADS
from prefetch.workloads.generated import (
    REPORT_SEEDS,
    TUNING_SEEDS,
    GeneratedArch,
    build_generated,
    generate,
    generated_workload,
)
from runtime.link import LinkModel
from runtime.prefetcher import prefetching

TINY = GeneratedArch(seed=7, depth=3, width=64, ffn_mult=4, num_experts=4, top_k=2, shared_expert=True, moe_every=1,
                     drop_prob=0.3, accum_steps=2, eval_every=2, num_heads=3, num_classes=16, exit_after=1,
                     batch_size=1, tokens=4)
"""Every dynamic feature at once, small enough for seconds (64 x 256 matrices: managed, 64 KiB)."""


def test_generate_is_deterministic_per_seed():
    """The same generator seed gives the same architecture, every time."""
    assert [generate(s) for s in range(20)] == [generate(s) for s in range(20)]


def test_generate_varies_and_covers_every_feature():
    """Across the 20 report seeds architectures differ, and each dynamic feature appears and is absent somewhere."""
    archs = [generate(s) for s in REPORT_SEEDS]
    assert len(REPORT_SEEDS) >= 20 and len({dataclasses.astuple(a)[1:] for a in archs}) == len(archs)
    checks = {
        "moe": lambda a: a.num_experts > 0, "top2": lambda a: a.top_k == 2, "top1": lambda a: a.top_k == 1,
        "shared": lambda a: a.shared_expert, "drop": lambda a: a.drop_prob > 0, "accum": lambda a: a.accum_steps > 1,
        "eval": lambda a: a.eval_every > 0, "heads": lambda a: a.num_heads > 1, "exit": lambda a: a.exit_after > 0,
    }
    for name, has in checks.items():
        assert any(has(a) for a in archs), f"no report architecture has {name}"
        if name not in ("top2", "top1"):
            assert not all(has(a) for a in archs), f"every report architecture has {name}"
    assert len({a.depth for a in archs}) >= 3 and len({a.width for a in archs}) >= 2


def test_tuning_and_report_seeds_are_disjoint():
    """What the suite reports was never a tuning seed."""
    assert not set(TUNING_SEEDS) & set(REPORT_SEEDS)


def test_generated_workloads_stay_out_of_the_reference_registry():
    """The reference suites stay seven; a generated workload is named gen-<seed>."""
    assert len(WORKLOADS) == 7 and not any(n.startswith("gen-") for n in WORKLOADS)
    assert generated_workload(1003).name == "gen-1003"


@pytest.mark.parametrize("field,value", [("top_k", 5), ("exit_after", 3), ("drop_prob", 1.0), ("width", 60),
                                         ("shared_expert", None)])
def test_arch_validation_rejects(field, value):
    """An inconsistent architecture is refused with a message naming what is wrong."""
    bad = {"shared_expert": dict(num_experts=0, top_k=0, shared_expert=True)}.get(field, {field: value})
    with pytest.raises(ValueError, match="GeneratedArch"):
        dataclasses.replace(TINY, **bad)


def test_run_is_deterministic_per_run_seed():
    """Same (architecture, run seed): identical losses; another run seed: other losses."""
    def losses(seed):
        job = build_generated(TINY, seed)
        return [job.step(i) for i in range(4)]

    assert losses(0) == losses(0)
    assert losses(0) != losses(1)


def test_access_pattern_is_dynamic():
    """Routing, skips, heads and exits change which parameters get a gradient from step to step."""
    job = build_generated(TINY, 0)
    seen = []
    for i in range(6):
        job.step(i)
        seen.append(frozenset(n for n, p in job.model.named_parameters() if p.grad is not None))
    assert len(set(seen)) > 1


def _train(arch, policy):
    job = build_generated(arch, 0)
    if policy is None:
        return [job.step(i) for i in range(5)], job.model
    with prefetching(job.model, job.optimizer, policy=policy, budget=0.4, device="simulated",
                     link=LinkModel(bandwidth_bytes_per_s=2e9)):
        losses = [job.step(i) for i in range(5)]
    return losses, job.model


@pytest.mark.parametrize("policy", ["replay", "markov"])
def test_prefetching_is_bit_identical(policy):
    """A generated job trains bit-identically with and without prefetching (losses and final parameters)."""
    base, m0 = _train(TINY, None)
    got, m1 = _train(TINY, policy)
    assert got == base
    for (n, a), (_, b) in zip(m0.named_parameters(), m1.named_parameters()):
        assert torch.equal(a, b), n


def test_record_train_simulate(tmp_path: Path):
    """Record two run seeds, train, simulate the learned policy on a third: it runs, out of sample."""
    from predictor.train import TrainConfig, train
    from prefetch.simulate import simulate
    from prefetch.workloads.generated import workload_for
    from runtime.recorder import Recorder

    workload = workload_for(TINY)
    stems = []
    for seed in (0, 1, 2):
        job = workload.build(seed)
        rec = Recorder(job.model, job.optimizer, tmp_path / f"s{seed}", workload=workload.name, seed=seed,
                       config=job.config).start()
        for i in range(4):
            job.step(i)
        rec.close()
        stems.append(rec.stem)
    models = tmp_path / "models"
    assert train([tmp_path / "s0", tmp_path / "s1"], models, TrainConfig(num_threads=1, min_data_in_leaf=5),
                 progress=False, log=lambda *a: None)
    learned = simulate(stems[2], f"learned:{models}", budget=0.4)
    oracle = simulate(stems[2], "oracle", budget=0.4)
    assert learned.as_dict()["in_sample"] is False
    assert 0.0 <= learned.hit_rate <= oracle.hit_rate <= 1.0 and learned.stats.accesses > 0


def test_benchmark_refuses_tuning_seeds(capsys, tmp_path):
    """benchmarks/generalisation.py refuses a tuning seed without --tuning, in one line."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import generalisation

    assert generalisation.main(["--seeds", "5,1000", "--out", str(tmp_path)]) == 2
    assert "tuning seed" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--seeds"):
        generalisation.parse_seeds("10-x")


def test_user_path_benchmark_refuses_the_other_suites_seeds(capsys, tmp_path):
    """benchmarks/user_path.py runs only generator seeds neither tuned on nor reported elsewhere."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import user_path

    for seeds in ("5", "1000-1001", "1999,2000"):
        with pytest.raises(SystemExit) as exc:
            user_path.main(["--seeds", seeds, "--out", str(tmp_path)])
        assert exc.value.code == 2 and "2000 and up" in capsys.readouterr().err


def test_each_micro_batch_trains_one_head():
    """A step gives gradients to at most accum_steps task heads, and over steps several heads are trained."""
    job = build_generated(dataclasses.replace(TINY, exit_after=0), 0)  # an exit would train no head
    used = set()
    for i in range(8):
        job.step(i)
        heads = {n.split(".")[1] for n, p in job.model.named_parameters() if n.startswith("heads.") and p.grad is not None}
        assert 1 <= len(heads) <= TINY.accum_steps
        used |= heads
    assert len(used) > 1


def test_early_exit_happens_sometimes():
    """With an exit after block 1, some steps stop there (later blocks get no gradient) and some run through."""
    arch = dataclasses.replace(TINY, accum_steps=1, drop_prob=0.0, eval_every=0)
    job = build_generated(arch, 0)
    exited = []
    for i in range(10):
        job.step(i)
        exited.append(job.model.blocks[2].norm.weight.grad is None)
    assert any(exited) and not all(exited)

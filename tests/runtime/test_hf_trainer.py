"""A real `transformers.Trainer` run under `runtime.hf.PrefetchCallback` is bit-identical to
the same run all resident, with the Trainer's own features on: gradient accumulation,
evaluation, checkpoint saving and resuming, gradient clipping. `RecordCallback` writes a
trace. Tiny GPT-2 built from a config (no downloads), CPU, simulated device.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
ROOT = Path(__file__).resolve().parents[2]


def _hide_repo_datasets_folder() -> None:
    """Under pytest the repository root is on sys.path (pyproject's `pythonpath`), so its
    `datasets/` folder of sample traces is importable as a namespace package named
    `datasets`; transformers takes that for Hugging Face `datasets` (`find_spec` finds
    it) and the Trainer crashes on `datasets.Dataset`. Hide it (only it: a real install
    is left alone) so `is_datasets_available()` says False, as it does outside pytest."""
    spec = importlib.util.find_spec("datasets")
    if spec is None or spec.origin not in (None, "namespace"):
        return  # not there, or the real package
    if all(Path(p).resolve().is_relative_to(ROOT) for p in spec.submodule_search_locations or ()):
        sys.modules["datasets"] = None  # type: ignore[assignment]  # find_spec -> None, import -> ImportError
        from transformers.utils import import_utils

        import_utils.is_datasets_available.cache_clear()


_hide_repo_datasets_folder()

from runtime import state_compare  # noqa: E402
from runtime.hf import PrefetchCallback, RecordCallback, torch_optimizer  # noqa: E402
from runtime.trace_format import load_trace  # noqa: E402

V, T, N = 256, 32, 24  # vocab, sequence length, examples; hidden states (4, 32, 128) fp32 = 64 KiB: managed
LOGGED = ("loss", "grad_norm", "eval_loss")


def _dataset() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (N, T), generator=g)
    return [{"input_ids": row, "labels": row} for row in ids]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=128, n_head=2, vocab_size=V, n_positions=T)
    return transformers.GPT2LMHeadModel(cfg)  # c_fc/c_proj/c_attn/wte weights 128-256 KiB: managed


def _train(out: Path, callback: Any = None, *, resume: str | None = None, model: torch.nn.Module | None = None,
           **args: Any) -> tuple[Any, dict[str, list[float]], state_compare.StateSnapshot]:
    """One Trainer run; its logged values by name, and its final state."""
    kw: dict[str, Any] = dict(output_dir=str(out), max_steps=4, per_device_train_batch_size=4, logging_steps=1,
                              learning_rate=1e-3, report_to=[], use_cpu=True, dataloader_num_workers=0,
                              save_strategy="no", seed=0, disable_tqdm=True, max_grad_norm=0.0)
    kw.update(args)
    ds = _dataset()
    trainer = transformers.Trainer(model=model or _model(), args=transformers.TrainingArguments(**kw),
                                   train_dataset=ds, eval_dataset=ds[:8] if kw.get("eval_strategy") else None,
                                   callbacks=[callback] if callback is not None else None)
    trainer.train(resume_from_checkpoint=resume)
    logged = {k: [h[k] for h in trainer.state.log_history if k in h] for k in LOGGED}
    return trainer, logged, state_compare.snapshot(trainer.model, torch_optimizer(trainer.optimizer))


def _assert_identical(ref: tuple, run: tuple) -> None:
    _, ref_logged, ref_state = ref
    _, logged, state = run
    for k in LOGGED:
        assert state_compare.losses_identical(logged[k], ref_logged[k]), (k, logged[k], ref_logged[k])
    cmp = state_compare.compare(ref_state, state)
    assert cmp.params_identical and cmp.optimizer_state_identical, cmp.state_mismatches


def _prefetched(policy: str = "replay", **kw: Any) -> PrefetchCallback:
    return PrefetchCallback(policy=policy, budget=0.4, **kw)


def _check_report(cb: PrefetchCallback, steps: int) -> dict[str, Any]:
    """The run was really prefetched: tensors managed, under a budget, with evictions."""
    r = cb.report
    assert r is not None and cb.prefetcher is None
    assert r["managed_bytes"] > r["budget_bytes"] > 0 and r["accesses"] > 0
    assert r["steps"] == steps - r["warmup_steps"]
    assert r["evictions"] > 0 and r["hits"] > 0
    return r


def test_plain_run_identical_and_report_written(tmp_path):
    """A plain Trainer run prefetched (replay, 40% budget) equals the resident run bit for
    bit, and the report lands in the JSON file at on_train_end."""
    ref = _train(tmp_path / "a")
    cb = _prefetched(json=tmp_path / "rep" / "run.json")
    _assert_identical(ref, _train(tmp_path / "b", cb))
    r = _check_report(cb, 4)
    assert json.loads((tmp_path / "rep" / "run.json").read_text())["hits"] == r["hits"]


def test_gradient_accumulation_identical(tmp_path):
    """gradient_accumulation_steps=2: two forwards/backwards per optimizer step, the
    gradients accumulated across them, same result as resident."""
    ref = _train(tmp_path / "a", gradient_accumulation_steps=2, max_steps=3)
    cb = _prefetched(policy="markov")
    run = _train(tmp_path / "b", cb, gradient_accumulation_steps=2, max_steps=3)
    _assert_identical(ref, run)
    _check_report(cb, 3)


def test_evaluation_identical(tmp_path):
    """eval_strategy="steps": evaluation forwards between optimizer steps read the
    parameters under prefetching; eval losses and training equal the resident run's."""
    ref = _train(tmp_path / "a", eval_strategy="steps", eval_steps=2)
    assert len(ref[1]["eval_loss"]) == 2
    cb = _prefetched()
    _assert_identical(ref, _train(tmp_path / "b", cb, eval_strategy="steps", eval_steps=2))
    _check_report(cb, 4)


def test_gradient_clipping_identical(tmp_path):
    """max_grad_norm=1.0 clips (the logged norms exceed 1): clipping reads and rewrites
    the gradients in place before optimizer.step, same result as resident."""
    ref = _train(tmp_path / "a", max_grad_norm=1.0, learning_rate=5e-3)
    assert max(ref[1]["grad_norm"]) > 1.0  # clipping really acted
    unclipped = _train(tmp_path / "c", learning_rate=5e-3)
    assert unclipped[1]["loss"][-1] != ref[1]["loss"][-1]  # and changed the run
    cb = _prefetched()
    _assert_identical(ref, _train(tmp_path / "b", cb, max_grad_norm=1.0, learning_rate=5e-3))
    _check_report(cb, 4)


def test_checkpoint_save_and_resume_identical(tmp_path):
    """save_steps=2: the checkpoint a prefetched run saves holds the same bytes as the
    resident run's (the parameters saved are the real values); resuming from it under
    prefetching (weights and optimizer state loaded into the managed tensors) ends where
    the resident resumed run ends."""
    save = dict(save_strategy="steps", save_steps=2)
    _train(tmp_path / "a", **save)
    cb = _prefetched()
    _train(tmp_path / "b", cb, **save)
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt"):
        a, b = (tmp_path / d / "checkpoint-2" / name for d in "ab")
        assert a.read_bytes() == b.read_bytes(), name
    a = (tmp_path / "a" / "checkpoint-4" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "checkpoint-4" / "model.safetensors").read_bytes()

    more = dict(max_steps=6, **save)
    ref = _train(tmp_path / "a", resume=str(tmp_path / "a" / "checkpoint-2"), **more)
    cb2 = _prefetched()
    run = _train(tmp_path / "b", cb2, resume=str(tmp_path / "b" / "checkpoint-2"), **more)
    assert ref[0].state.global_step == run[0].state.global_step == 6
    _assert_identical(ref, run)
    assert cb2.report["steps"] == 4 - cb2.report["warmup_steps"]  # steps 3..6 of the resumed run


def test_everything_fits_identical_with_the_trainers_features(tmp_path):
    """Budget 1 (the whole footprint) with the placement left to auto: after the first step
    everything stays on the device and the Trainer's fused AdamW steps the device copies in
    place; with accumulation, clipping, evaluation, a checkpoint saved and resumed, the run,
    the checkpoint's bytes and the resumed run equal the resident ones."""
    feats = dict(gradient_accumulation_steps=2, max_grad_norm=1.0, eval_strategy="steps", eval_steps=2,
                 save_strategy="steps", save_steps=2)
    ref = _train(tmp_path / "a", **feats)
    cb = PrefetchCallback(policy="replay", budget=1.0)
    _assert_identical(ref, _train(tmp_path / "b", cb, **feats))
    assert cb.report["optimizer"]["resident"] is True and cb.report["hit_rate"] == 1.0
    for name in ("model.safetensors", "optimizer.pt"):
        a, b = (tmp_path / d / "checkpoint-2" / name for d in "ab")
        assert a.read_bytes() == b.read_bytes(), name
    more = dict(feats, max_steps=6)
    ref = _train(tmp_path / "a", resume=str(tmp_path / "a" / "checkpoint-2"), **more)
    run = _train(tmp_path / "b", PrefetchCallback(policy="replay", budget=1.0),
                 resume=str(tmp_path / "b" / "checkpoint-2"), **more)
    _assert_identical(ref, run)


def test_load_best_model_at_end_identical(tmp_path):
    """load_best_model_at_end: after the last step, while prefetching is still on, the
    Trainer loads the best checkpoint into the managed parameters (a write outside the
    optimizer); the model it ends with is the resident run's, bit for bit."""
    best = dict(eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=True,
                learning_rate=1e-2)
    ref = _train(tmp_path / "a", **best)
    assert ref[0].state.best_global_step != 4  # "best" (the highest loss) is not the last step: a real load
    cb = _prefetched()
    _assert_identical(ref, _train(tmp_path / "b", cb, **best))
    _check_report(cb, 4)


@pytest.mark.parametrize("feature", [dict(gradient_checkpointing=True), dict(bf16=True)], ids=["grad-ckpt", "bf16"])
def test_recompute_and_autocast_identical(tmp_path, feature):
    """Gradient checkpointing (the forward recomputed inside backward: saved tensors
    packed twice) and bf16 autocast (CPU) under prefetching equal the resident run."""
    ref = _train(tmp_path / "a", **feature)
    cb = _prefetched()
    _assert_identical(ref, _train(tmp_path / "b", cb, **feature))
    _check_report(cb, 4)


def test_one_callback_two_train_calls(tmp_path):
    """The same callback instance serves a second train() with a fresh prefetcher and report."""
    cb = _prefetched()
    trainer, _, _ = _train(tmp_path / "b", cb, max_steps=2)
    first = cb.report
    trainer.train()
    assert cb.report is not first and cb.prefetcher is None and cb.report["accesses"] > 0


def test_record_callback_writes_a_trace(tmp_path):
    """RecordCallback: a trace of the run with one step per optimizer step, the model's
    architecture and the Trainer's seed in the manifest; training unchanged."""
    ref = _train(tmp_path / "a")
    cb = RecordCallback(out=tmp_path / "traces", workload="gpt2-tiny")
    run = _train(tmp_path / "b", cb)
    _assert_identical(ref, run)
    trace = load_trace(cb.stem)
    assert trace.manifest["steps"] == 4 and trace.manifest["seed"] == 0
    assert trace.manifest["workload"] == "gpt2-tiny"
    assert trace.manifest["model_class"].endswith("GPT2LMHeadModel")
    assert cb.stem.name.startswith("gpt2-tiny-")


def test_record_train_then_learned_prefetch(tmp_path):
    """The whole loop on a Trainer: RecordCallback on seed 1, a predictor trained on that
    trace, then PrefetchCallback(learned) on seed 0 served by a local daemon: the learned
    policy serves (not a fallback), the run is out of sample, and bit-identical."""
    from predictor.train import TrainConfig, train
    from runtime.daemon_launch import start_local_daemon

    _train(tmp_path / "r", RecordCallback(out=tmp_path / "traces", workload="gpt2-tiny"), seed=1, max_steps=5)
    train([tmp_path / "traces"], tmp_path / "models", TrainConfig(num_threads=1, num_trees=5), progress=False,
          log=lambda *a: None)
    endpoint, daemon = start_local_daemon(tmp_path / "models", endpoint=f"ipc://{tmp_path}/d.sock")
    try:
        ref = _train(tmp_path / "a")
        cb = PrefetchCallback(policy=f"learned:{tmp_path / 'models'}", budget=0.4, daemon=endpoint,
                              workload="gpt2-tiny")
        _assert_identical(ref, _train(tmp_path / "b", cb))
    finally:
        daemon.stop()
    r = _check_report(cb, 4)
    assert r["policy_served_by"].startswith("learned"), r["policy_served_by"]
    assert r["in_sample"] is False and r["train_seeds"] == [1] and r["eval_seeds"] == [0], r["in_sample_reason"]


def test_bad_input_refused_before_training(tmp_path):
    """An unknown policy, a learned policy without a model folder, a bad budget or a report
    path that is a folder are refused at construction; a budget below the largest managed
    tensor at on_train_begin, before any step."""
    with pytest.raises(ValueError, match="nope"):
        PrefetchCallback(policy="nope")
    with pytest.raises(ValueError, match="not found"):
        PrefetchCallback(policy=f"learned:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="PrefetchCallback: budget"):
        PrefetchCallback(budget="lots")
    with pytest.raises(ValueError, match="lookahed"):
        PrefetchCallback(lookahed=3)
    with pytest.raises(ValueError, match="directory"):
        PrefetchCallback(json=tmp_path)
    model = _model()
    with pytest.raises(ValueError, match="budget"):
        _train(tmp_path / "b", PrefetchCallback(budget=1000), model=model)
    first = next(model.parameters())
    assert torch.equal(first, _model().get_parameter("transformer.wte.weight"))  # untrained


@pytest.mark.slow  # a subprocess importing transformers: ~10-30 s on a loaded 2-core machine
def test_example_runs(tmp_path):
    """examples/hf_trainer.py runs from the checkout and reports bit-identity."""
    out = tmp_path / "run.json"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "hf_trainer.py"), "--steps", "3",
                           "--out", str(tmp_path / "trainer"), "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["losses_identical"] and r["params_identical"] and r["optimizer_state_identical"]
    assert "identical" in proc.stdout

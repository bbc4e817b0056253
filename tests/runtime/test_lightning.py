"""A real Lightning `Trainer.fit` under `runtime.lightning.PrefetchCallback` is bit-identical to
the same fit all resident, with the Trainer's own features on: automatic optimization (a
closure inside `optimizer.step`), gradient accumulation, clipping, validation, checkpoint
saving and resuming. `RecordCallback` writes a trace. CPU, simulated device.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

L = pytest.importorskip("lightning")

from runtime import state_compare  # noqa: E402
from runtime.lightning import PrefetchCallback, RecordCallback  # noqa: E402
from runtime.trace_format import Phase, load_trace  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WIDTH, BATCH, BATCHES = 256, 256, 6  # 256 KiB weights and activations: managed; an epoch of 6 batches


class Net(L.LightningModule):
    """Four Linear(256, 256) layers; logs every training loss it computes. Its steps call
    `self.layers`, never its own forward (a common habit: runtime.tracker starts the passes)."""

    def __init__(self, fail_at: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH) for _ in range(4)))
        self.losses: list[float] = []
        self.val_losses: list[float] = []
        self.fail_at = fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise RuntimeError("a failing step")
        loss = self.layers(batch[0]).pow(2).mean()
        self.losses.append(loss.item())
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.val_losses.append(self.layers(batch[0]).pow(2).mean().item())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def _loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(1)
    ds = torch.utils.data.TensorDataset(torch.randn(BATCH * BATCHES, WIDTH, generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=False, num_workers=0)


def _fit(callback: Any = None, *, ckpt_dir: Path | None = None, resume: Path | None = None, epochs: int = 2,
         net: Net | None = None) -> tuple[Net, L.Trainer]:
    """One fit: 2 micro-batches per step (3 steps an epoch), clipping, a validation pass every
    epoch, and, with `ckpt_dir`, a checkpoint at the end of every epoch."""
    net = net or Net()
    callbacks = [callback] if callback is not None else []
    if ckpt_dir is not None:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, accumulate_grad_batches=2,
                        gradient_clip_val=0.05, limit_val_batches=2, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=ckpt_dir is not None, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks, deterministic=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on num_workers and the like
        trainer.fit(net, _loader(), _loader(), ckpt_path=str(resume) if resume else None)
    return net, trainer


def _state(net: Net, trainer: L.Trainer) -> state_compare.StateSnapshot:
    return state_compare.snapshot(net, trainer.optimizers[0])


def _assert_identical(ref: tuple[Net, L.Trainer], run: tuple[Net, L.Trainer]) -> None:
    assert run[0].losses == ref[0].losses and run[0].val_losses == ref[0].val_losses
    cmp = state_compare.compare(_state(*ref), _state(*run))
    assert cmp.params_identical and cmp.optimizer_state_identical, cmp.state_mismatches


def test_fit_is_bit_identical_and_prefetched(tmp_path):
    """Accumulation, clipping and validation on: the training and validation losses, the final
    parameters and the optimizer state equal the all-resident fit's bit for bit; the run was
    offloaded for real, its closures ran before the store's pre-step work, the report was written."""
    ref = _fit()
    cb = PrefetchCallback(policy="replay", budget=0.4, json=tmp_path / "run.json")
    run = _fit(cb)
    _assert_identical(ref, run)
    r = json.loads((tmp_path / "run.json").read_text())
    assert r == json.loads(json.dumps(cb.report, default=str)) and cb.prefetcher is None
    assert r["budget_bytes"] < r["managed_bytes"] and r["accesses"] > 0 and r["hits"] + r["late"] > 0
    assert r["closures_run_first"] == run[1].global_step == 6  # 2 epochs x 3 optimizer steps


def test_checkpoint_and_resume_are_bit_identical(tmp_path):
    """A fit under the callback saves checkpoints equal to the all-resident fit's, and a fit resumed
    from one under the callback ends as the resumed all-resident fit does."""
    ref_first, _ = _fit(ckpt_dir=tmp_path / "ref", epochs=1)
    got_first, _ = _fit(PrefetchCallback(budget=0.4), ckpt_dir=tmp_path / "got", epochs=1)
    (ref_ckpt,), (got_ckpt,) = sorted((tmp_path / "ref").glob("*.ckpt")), sorted((tmp_path / "got").glob("*.ckpt"))
    ref_sd, got_sd = (torch.load(p, weights_only=True) for p in (ref_ckpt, got_ckpt))
    for k, v in ref_sd["state_dict"].items():
        assert torch.equal(v, got_sd["state_dict"][k]), k
    ref = _fit(resume=ref_ckpt)
    cb = PrefetchCallback(budget=0.4)
    run = _fit(cb, resume=got_ckpt)
    _assert_identical(ref, run)
    assert run[1].global_step == 6 and cb.report["closures_run_first"] == 3  # the second epoch's steps


def test_a_failing_fit_still_writes_its_report(tmp_path):
    """Lightning calls on_exception when fit raises: the callback closes and writes the report of
    the steps that ran, and the error reaches the caller."""
    cb = PrefetchCallback(budget=0.4, json=tmp_path / "run.json")
    with pytest.raises(RuntimeError, match="a failing step"):
        _fit(cb, net=Net(fail_at=4))
    r = json.loads((tmp_path / "run.json").read_text())
    assert cb.prefetcher is None and r["accesses"] > 0


def test_record_callback_writes_a_trace(tmp_path):
    """RecordCallback records the fit: forward, backward and optimizer accesses, one step per optimizer step
    (the epoch's closing validation pass is an evaluation pass after the last one)."""
    cb = RecordCallback(out=tmp_path / "traces", workload="lightning-net")
    _fit(cb, epochs=1)
    trace = load_trace(cb.stem)
    phases = set(trace.column("phase").tolist())
    assert {int(Phase.FORWARD), int(Phase.BACKWARD), int(Phase.OPTIMIZER)} <= phases
    assert cb.stem.name.startswith("lightning-net-") and trace.manifest["steps"] == 3
    assert int(Phase.EVAL) in phases


def test_bad_arguments_are_refused_at_construction(tmp_path):
    """An unknown policy, a bad budget, a report path that is a folder: one-line errors naming the callback."""
    with pytest.raises(ValueError, match="PrefetchCallback: .*nope"):
        PrefetchCallback(policy="nope")
    with pytest.raises(ValueError, match="PrefetchCallback: "):
        PrefetchCallback(budget=-1)
    with pytest.raises(ValueError, match="PrefetchCallback: json=.* is a directory"):
        PrefetchCallback(json=tmp_path)


@pytest.mark.slow  # a subprocess importing lightning and fitting twice: ~10 s on a loaded 2-core machine
def test_example_runs(tmp_path):
    """examples/lightning_trainer.py runs from the checkout and reports bit-identity."""
    out = tmp_path / "run.json"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "lightning_trainer.py"), "--epochs", "1",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["losses_identical"] and r["params_identical"] and r["optimizer_state_identical"]
    assert r["closures_run_first"] == 4 and "bit-identical" in proc.stdout


@pytest.mark.slow  # two launches of a Lightning script: ~15 s on a loaded 2-core machine
def test_an_unmodified_lightning_script_runs_prefetched(tmp_path):
    """`prefetch run --compare -- python script.py` on a Lightning fit: the layers its steps call
    and its optimizer are adopted, every closure runs first, and it is bit-identical to all resident."""
    script = tmp_path / "fit.py"
    script.write_text(
        "import argparse, sys, torch\n"
        f"sys.path.insert(0, {str(ROOT / 'examples')!r})\n"
        "import lightning_trainer as E\n"
        "torch.set_num_threads(1)\n"
        "E.fit(argparse.Namespace(epochs=1, seed=0))\n")
    out = tmp_path / "run.json"
    proc = subprocess.run([sys.executable, "-m", "prefetch", "run", "--compare", "--json", str(out), "--",
                           "python", str(script)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["managed_optimizer"] == "AdamW" and r["optimizer_steps"] == 4 and r["closures_run_first"] == 4
    assert r["losses_identical"] and r["params_identical"] and r["optimizer_state_identical"], r["state_mismatches"]


class TwoOptimizers(L.LightningModule):
    """Manual optimization with two optimizers over two halves of the module (a GAN's shape)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.GELU(), torch.nn.Linear(WIDTH, WIDTH))
        self.b = torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.GELU(), torch.nn.Linear(WIDTH, WIDTH))
        self.automatic_optimization = False
        self.losses: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_a, opt_b = self.optimizers()
        loss = self.b(self.a(batch[0])).pow(2).mean()
        opt_a.zero_grad()
        opt_b.zero_grad()
        self.manual_backward(loss)
        opt_b.step()  # the unmanaged one first: it reads the gradients before the managed one's pre-hook
        opt_a.step()
        self.losses.append(loss.item())

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return torch.optim.AdamW(self.a.parameters(), lr=1e-2), torch.optim.SGD(self.b.parameters(), lr=1e-2)


def test_two_optimizers_the_first_is_managed_and_the_report_names_the_other():
    """Manual optimization with two optimizers: the first is managed, the report names the other,
    and the fit is bit-identical (the second steps parameters the store also holds)."""
    def fit(callback: Any) -> TwoOptimizers:
        net = TwoOptimizers()
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[callback] if callback is not None else [])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(net, _loader())
        return net

    ref = fit(None)
    cb = PrefetchCallback(budget=0.4)
    run = fit(cb)
    assert run.losses == ref.losses
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), run.parameters()))
    assert cb.report["unmanaged_optimizers"] == ["SGD"] and cb.report["accesses"] > 0

"""`prefetch run` with a learned policy says whether the model was trained on the seed it runs."""

from __future__ import annotations

import pytest

from predictor import provenance
from predictor.train import TrainConfig, train
from prefetch.run import run_workload
from prefetch.workloads import get_workload
from runtime.recorder import Recorder


@pytest.mark.slow
def test_run_flags_the_training_seed(tmp_path, capsys):
    """Trained on a recording of gpt2 seed 0, `prefetch run --seed 0` is in sample and warns
    (gpt2's order is static: only the seed that run.py passes can tell)."""
    provenance._warned.clear()
    job = get_workload("gpt2").build(0)
    rec = Recorder(job.model, job.optimizer, tmp_path / "traces", workload="gpt2", seed=0, config=job.config).start()
    for i in range(3):
        job.step(i)
    rec.close()
    train([tmp_path / "traces"], tmp_path / "models", TrainConfig(num_threads=1, num_trees=3), progress=False,
          log=lambda *a: None)
    report = run_workload("gpt2", policy=f"learned:{tmp_path / 'models'}", steps=2, seed=0, progress=False)
    assert report["in_sample"] is True and report["train_seeds"] == [0] and report["eval_seeds"] == [0]
    assert "WARNING: IN-SAMPLE" in capsys.readouterr().err

"""The fault suite's shared fixture: a trained predictor for its job (tests/faults/fault_job.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import runtime
from fault_job import make_job
from predictor.train import TrainConfig, train


@pytest.fixture(scope="session")
def fault_models(tmp_path_factory) -> Path:
    """A learned predictor for Net, trained on a short recording of seed 1."""
    root = tmp_path_factory.mktemp("fault_models")
    model, opt, step = make_job(1)
    with runtime.record(model, opt, out=root / "traces"):
        for _ in range(6):
            step()
    train([root / "traces"], root / "models", TrainConfig(num_threads=1), progress=False, log=lambda *a: None)
    return root / "models"

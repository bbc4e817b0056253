"""The fault suite's shared fixture: a trained predictor for its job (tests/fixtures/residual_job.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.residual_job import train_models


@pytest.fixture(scope="session")
def fault_models(tmp_path_factory) -> Path:
    """A learned predictor for Net, trained on a short recording of seed 1."""
    return train_models(tmp_path_factory.mktemp("fault_models"))

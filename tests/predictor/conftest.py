"""Synthetic traces and one trained model, shared by the predictor tests (built once)."""

from __future__ import annotations

import pytest

from tests.fixtures.synthetic_traces import SyntheticConfig, write_synthetic_trace
from predictor.train import TrainConfig, train
from runtime.trace_format import load_trace


@pytest.fixture(scope="session")
def traces(tmp_path_factory):
    """Folders of synthetic traces: moe (train seed 0, held-out run seed 1) and static."""
    root = tmp_path_factory.mktemp("traces")
    moe, static = SyntheticConfig.of_kind("moe"), SyntheticConfig.of_kind("static")
    write_synthetic_trace(root / "moe-train", moe, steps=8, seed=0, name="moe")
    write_synthetic_trace(root / "moe-run", moe, steps=5, seed=1, name="moe")
    write_synthetic_trace(root / "static-train", static, steps=6, seed=0, name="static")
    return root


@pytest.fixture(scope="session")
def model_dir(traces, tmp_path_factory):
    """A MODEL_DIR trained on the moe and static training traces (two architectures)."""
    out = tmp_path_factory.mktemp("models")
    train([traces / "moe-train", traces / "static-train"], out, TrainConfig(num_threads=1), progress=False,
          log=lambda *a: None)  # fmt: skip
    return out


@pytest.fixture(scope="session")
def moe_run(traces):
    return load_trace(next((traces / "moe-run").glob("*.events.arrow"))).managed()  # the stream policies see


@pytest.fixture(scope="session")
def moe_train(traces):
    return load_trace(next((traces / "moe-train").glob("*.events.arrow"))).managed()  # the stream policies see


@pytest.fixture(scope="session")
def static_train(traces):
    return load_trace(next((traces / "static-train").glob("*.events.arrow"))).managed()  # the stream policies see

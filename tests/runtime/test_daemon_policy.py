"""The learned policy through the daemon, as the store sees it."""

from __future__ import annotations

import math

import pytest
import torch

import runtime
from predictor.train import TrainConfig, train
from runtime.link import LinkModel
from tests.runtime.test_daemon_failover import _job


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A predictor trained on a short recording of the failover test's model."""
    root = tmp_path_factory.mktemp("daemon-policy")
    model, opt, step = _job(1)
    with runtime.record(model, opt, out=root / "traces"):
        for _ in range(6):
            step()
    train([root / "traces"], root / "models", TrainConfig(num_threads=1), progress=False, log=lambda *a: None)
    return root / "models"


def test_without_a_daemon_prediction_the_local_replay_answers(models):
    """For a tensor the daemon has no fresh prediction for (after the optimizer step, before
    the new step's commands), predicted_next_use is the local replay's, so the store
    fetches the updated parameters again at once rather than when the commands arrive."""
    model, opt, step = _job(2)
    with runtime.prefetching(model, opt, policy=f"learned:{models}", budget=1.0, device="simulated",
                             link=LinkModel(bandwidth_bytes_per_s=5e9)) as pf:
        for _ in range(3):
            step()
        pol = pf.store.policy
        assert pol.client.connected
        params = [t for t in pf.tracker.params_by_tid if pf.store._managed[t]]
        pol._due.clear()  # the daemon has predicted nothing yet
        local = [pol.fallback.predicted_next_use(t) for t in params]
        assert any(math.isfinite(x) for x in local)  # replay knows the next step's order
        assert [pol.predicted_next_use(t) for t in params] == local
        pol._due[params[0]] = pol._reads + 7  # a fresh daemon prediction wins
        assert pol.predicted_next_use(params[0]) == 7.0
        pol._due[params[0]] = pol._reads - pol.lookahead - 1  # long overdue: replay's again
        assert pol.predicted_next_use(params[0]) == local[0]

"""A learned run through its daemon: it survives the daemon (killed mid-run, training goes on;
back, it reconnects), and the local replay answers where the daemon has not predicted."""

from __future__ import annotations

import math
import time
import warnings

import pytest

import runtime
from runtime.daemon_client import DaemonUnavailableWarning
from runtime.daemon_launch import start_local_daemon
from runtime.link import LinkModel
from tests.fixtures.residual_job import make_job, train_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A predictor trained on a short recording of the job."""
    return train_models(tmp_path_factory.mktemp("failover"))


def test_daemon_killed_mid_run_then_back(models, tmp_path):
    """Kill the daemon mid-run: losses stay bit-identical, one warning, local fallback; it reconnects."""
    _, _, plain = make_job()
    baseline = [plain() for _ in range(12)]

    endpoint = f"ipc://{tmp_path}/d.sock"
    endpoint, daemon = start_local_daemon(models, endpoint=endpoint)
    model, opt, step = make_job()
    losses: list[float] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # The model alone (guard=False) asks its daemon on every access. Under the guard, a
            # rival may serve from the decision on (predictor.guard: a stall or a `cheaper_within`
            # switch), and then the daemon is no longer asked: its death would go unnoticed.
            with runtime.prefetching(model, opt, policy=f"learned:{models}", daemon=endpoint, budget=0.5,
                                     device="simulated", link=LinkModel(bandwidth_bytes_per_s=5e9),
                                     guard=False) as pf:
                client = pf.store.policy.client
                for _ in range(3):
                    losses.append(step())
                assert client.connected and client.served_policy.startswith("learned")
                daemon.process.kill()  # no BYE: the client must notice the silence
                daemon.process.wait(10)
                deadline = time.monotonic() + 10
                while client.connected and time.monotonic() < deadline:
                    losses.append(step())
                    time.sleep(0.1)
                assert not client.connected
                losses.append(step())  # training goes on, on the local fallback
                _, daemon = start_local_daemon(models, endpoint=endpoint)
                deadline = time.monotonic() + 15
                while not client.connected and time.monotonic() < deadline:
                    time.sleep(0.2)
                    losses.append(step())
                assert client.connected, "did not reconnect to the restarted daemon"
                assert client.stats.reconnects >= 1
                while len(losses) < 12:
                    losses.append(step())
        assert len([w for w in caught if issubclass(w.category, DaemonUnavailableWarning)]) == 1
    finally:
        daemon.stop()
    assert losses[:12] == baseline
    report = pf.report()
    assert "local replay" in report["policy_served_by"]


def test_without_a_daemon_prediction_the_local_replay_answers(models):
    """For a tensor the daemon has no fresh prediction for (after the optimizer step, before
    the new step's commands), predicted_next_use is the local replay's, so the store
    fetches the updated parameters again at once rather than when the commands arrive."""
    model, opt, step = make_job(2)
    with runtime.prefetching(model, opt, policy=f"learned:{models}", budget=1.0, device="simulated",
                             optimizer_placement="host",  # host stepping re-fetches parameters each step
                             link=LinkModel(bandwidth_bytes_per_s=5e9)) as pf:
        for _ in range(3):
            step()
        pol = pf.store.policy.primary  # the learned policy under its guard (predictor.guard)
        assert pol.client.connected
        params = [t for t in pf.tracker.params_by_tid if pf.store.managed[t]]
        pol._due.clear()  # the daemon has predicted nothing yet
        local = [pol.fallback.predicted_next_use(t) for t in params]
        assert any(math.isfinite(x) for x in local)  # replay knows the next step's order
        assert [pol.predicted_next_use(t) for t in params] == local
        pol._due[params[0]] = pol._reads + 7  # a fresh daemon prediction wins
        assert pol.predicted_next_use(params[0]) == 7.0
        pol._due[params[0]] = pol._reads - pol.lookahead - 1  # long overdue: replay's again
        assert pol.predicted_next_use(params[0]) == local[0]

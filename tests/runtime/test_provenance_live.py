"""Live runs of a learned policy flag their own training run: by seed when given, else by access order."""

from __future__ import annotations

import pytest
import torch

from predictor import provenance
from predictor.train import TrainConfig, train
from runtime.daemon_launch import start_local_daemon
from runtime.link import LinkModel
from runtime.prefetcher import prefetching
from runtime.recorder import record
from runtime.trace_format import load_trace
from runtime.trace_identity import IDENTITY_KEY, step_order_hashes

STEPS = 5


class DropNet(torch.nn.Module):
    """Blocks skipped at random per step (layerdrop): the access order follows the data seed."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 128)) for _ in range(6)
        )

    def forward(self, x: torch.Tensor, keep: list[bool]) -> torch.Tensor:
        for b, k in zip(self.blocks, keep):
            if k:
                x = x + b(x)
        return x


def _job(data_seed: int):
    torch.manual_seed(0)  # same weights for every run: only the data seed differs
    model = DropNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(data_seed)

    def loop() -> None:
        for _ in range(STEPS):
            keep = (torch.rand(6, generator=g) < 0.5).tolist()
            opt.zero_grad()
            model(torch.randn(128, 128, generator=g), keep).pow(2).mean().backward()
            opt.step()

    return model, opt, loop


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A model trained on a recording of data seed 0, served by a local daemon; and that trace."""
    root = tmp_path_factory.mktemp("provenance-live")
    model, opt, loop = _job(0)
    with record(model, opt, out=root / "traces", workload="drop", seed=0) as rec:
        loop()
    train([root / "traces"], root / "models", TrainConfig(num_threads=1, num_trees=5), progress=False,
          log=lambda *a: None)
    endpoint, daemon = start_local_daemon(root / "models", endpoint=f"ipc://{root}/d.sock")
    yield {"policy": f"learned:{root / 'models'}", "daemon": endpoint, "trace": load_trace(rec.stem)}
    daemon.stop()


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """Each test sees its own warnings (the module prints each message once per process)."""
    provenance._warned.clear()


def _live(learned, data_seed: int, **kwargs):
    model, opt, loop = _job(data_seed)
    with prefetching(model, opt, policy=learned["policy"], daemon=learned["daemon"], budget=0.5, device="simulated",
                     link=LinkModel(bandwidth_bytes_per_s=2e9), **kwargs) as pf:
        loop()
    return pf


def test_live_step_orders_equal_the_recorded_ones(learned):
    """The live hashes of data seed 0 are the recorded trace's, step for step (one hashing rule)."""
    pf = _live(learned, 0)
    trace = learned["trace"]
    assert trace.manifest[IDENTITY_KEY]["step_order_hashes"] == step_order_hashes(trace)
    assert pf._step_orders.hashes() == step_order_hashes(trace)
    assert len(set(step_order_hashes(trace))) > 2  # the model really is dynamic


def test_unknown_seed_rerun_of_the_training_data_is_flagged(learned, capsys):
    """No seed given: the run on the training data is in sample (and warns), another data seed is not."""
    r = _live(learned, 0).report()
    assert r["in_sample"] is True and r["train_seeds"] == [0] and r["eval_seeds"] == [None]
    assert "WARNING: IN-SAMPLE" in capsys.readouterr().err
    r = _live(learned, 2).report()
    assert r["in_sample"] is False and r["in_sample_reason"]
    assert "WARNING" not in capsys.readouterr().err


def test_known_seed_decides(learned):
    """PrefetchConfig.seed (what `prefetch run` passes): the training seed is in sample, another is not."""
    assert _live(learned, 0, seed=0, workload="drop").report()["in_sample"] is True
    r = _live(learned, 3, seed=3, workload="drop").report()
    assert r["in_sample"] is False and r["eval_seeds"] == [3]

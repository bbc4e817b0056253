"""The guard in a user's run: `runtime.prefetching(..., policy="learned:DIR")` with a
fractional budget, which only the warm-up step fixes (no sized tensor table up front)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from predictor.guard_prior import GuardPrior, PriorCell, write_prior
from predictor.train import TrainConfig, train
from runtime import record
from runtime.prefetcher import prefetching

WIDTH = 256  # 256 KiB weights: managed


def _job(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH) for _ in range(6)))
    return model, torch.optim.SGD(model.parameters(), lr=1e-3)


def _steps(model, optimizer, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        optimizer.zero_grad()
        model(torch.randn(16, WIDTH, generator=gen)).pow(2).mean().backward()
        optimizer.step()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A learned artifact for the job, recorded on seeds 0 and 1, whose prior (written here)
    says `none` stalls least at budget 0.4: the guard must hand it the run from the warm-up's backward."""
    root = tmp_path_factory.mktemp("guard-live")
    for seed in (0, 1):
        model, opt = _job(seed)
        with record(model, opt, out=root / "traces" / f"s{seed}", seed=seed):
            _steps(model, opt, 4, seed)
    folders = train([root / "traces"], root / "models", TrainConfig(num_threads=1, num_trees=5), progress=False,
                    log=lambda *a: None)
    cell = PriorCell(0.4, 0.5, {"learned": 900_000_000, "none": 100_000_000}, {"learned": 10, "none": 5}, 10**9)
    for folder in folders:
        write_prior(folder, GuardPrior((cell,), "test"))
    return root / "models"


def test_the_prior_picks_who_serves_when_the_warm_up_fixes_the_budget(models):
    """Budget and link are known once the warm-up ends, so the shadows start a step late;
    the prior still picks the candidate serving from the warm-up's backward (from the budget
    fraction the warm-up will fix), and the step after the warm-up, the shadows' own warm-up,
    is not scored."""
    model, opt = _job(2)
    with prefetching(model, opt, policy=f"learned:{models}", budget=0.4, device="simulated", seed=2) as pf:
        _steps(model, opt, 5, 2)
    g = pf.store.policy
    assert g.prior_note is not None and g.prior_note.startswith("prior none"), g.describe()
    assert [(s, g._names[i]) for s, i in g.history[:2]] == [(0, "learned"), (0, "none")], g.describe()
    assert "none from step 0's backward" in g.describe()
    assert g.scored == 2, g.describe()  # steps 2 and 3 (scored as the next begins); step 1 was the shadows' warm-up

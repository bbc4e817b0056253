"""Micro-steps and evaluation passes when the loop calls the model's submodules, not the model.

A LightningModule's `training_step` (or any loop) may call `model.layers(x)` and never the
model's own forward, where the tracker starts a micro-step. Then a forward from outside the
model after a backward or a step, or one that trains after an evaluation pass (or evaluates
after training), begins a new pass (runtime.tracker `_need_root`). Before this rule, such a
loop's micro-steps ran together and, with gradient accumulation, the gradients moved to the
host were summed with the ones published back: the losses differed from the second step on.
"""

from __future__ import annotations

import pytest
import torch

from runtime.prefetcher import prefetching
from runtime.recorder import record
from runtime.state_compare import compare, snapshot
from runtime.trace_format import load_trace

WIDTH, ACCUM, STEPS = 256, 2, 4


class Wrapper(torch.nn.Module):
    """A model whose own forward the loop below may never call (a LightningModule's habit)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.Sequential(*(torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.GELU())
                                            for _ in range(4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _loop(model: Wrapper, optimizer: torch.optim.Optimizer, direct: bool) -> list[float]:
    """STEPS steps of ACCUM micro-steps, an evaluation pass after each step; `direct` calls
    `model.layers` instead of `model`."""
    call = model.layers if direct else model
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        for _ in range(ACCUM):
            loss = call(torch.randn(512, WIDTH, generator=gen)).pow(2).mean()
            loss.backward()
            losses.append(loss.item())
        optimizer.step()
        model.eval()
        with torch.no_grad():
            losses.append(call(torch.randn(64, WIDTH, generator=gen)).pow(2).mean().item())
        model.train()
    return losses


def _job() -> tuple[Wrapper, torch.optim.Optimizer]:
    model = Wrapper()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def test_direct_submodule_calls_with_accumulation_are_bit_identical():
    """Prefetched with gradients moved to the host (budget 0.4), a loop that never calls the
    model's forward gives the losses, parameters and optimizer state of the same loop unprefetched."""
    model, optimizer = _job()
    ref_losses = _loop(model, optimizer, direct=True)
    ref = snapshot(model, optimizer)
    model, optimizer = _job()
    with prefetching(model, optimizer, policy="replay", budget=0.4) as pf:
        losses = _loop(model, optimizer, direct=True)
    cmp = compare(ref, snapshot(model, optimizer))
    assert losses == ref_losses and cmp.params_identical and cmp.optimizer_state_identical, cmp.state_mismatches
    assert pf.report()["grad_moves"] > 0  # the host-summing path ran


@pytest.mark.parametrize("direct", [False, True], ids=["model", "model.layers"])
def test_passes_are_the_same_whether_the_loop_calls_the_model_or_its_layers(tmp_path, direct):
    """A recorded trace's (step, micro-step, phase, key, access) sequence is the same whichever the
    loop calls: ACCUM training micro-steps, then an evaluation pass, every step."""
    traces = []
    for d in (False, direct):
        model, optimizer = _job()
        with record(model, optimizer, out=tmp_path / str(len(traces))) as rec:
            _loop(model, optimizer, direct=d)
        t = load_trace(rec.stem)
        keys = t.keys
        traces.append([(s, m, ph, keys[i], a) for s, m, ph, i, a in zip(
            t.column("step"), t.column("micro_step"), t.column("phase"), t.column("tensor_id"), t.column("access"))])
    assert traces[1] == traces[0]
    assert {m for _, m, *_ in traces[0]} == set(range(ACCUM + 1))  # ACCUM micro-steps and the evaluation pass

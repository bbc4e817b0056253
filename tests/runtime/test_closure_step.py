"""optimizer.step(closure) under prefetching (runtime.closure_step): the closure runs before the store's pre-step work."""

from __future__ import annotations

import pytest
import torch

from runtime.closure_step import ClosureError, calls_closure_once
from runtime.prefetcher import prefetching
from runtime.state_compare import compare, snapshot
from runtime.store import TensorStore
from runtime.trace_format import Phase

STEPS = 5


def _job():
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(256, 256) for _ in range(5)))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _loop(model, optimizer, closure_style: bool) -> list[float]:
    """STEPS steps, written as backward() then step(), or as step(closure); the losses."""
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        x = torch.randn(16, 256, generator=gen)

        def closure():
            optimizer.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            return loss

        if closure_style:
            losses.append(optimizer.step(closure).item())
        else:
            losses.append(closure().item())
            optimizer.step()
    return losses


def _prefetched(closure_style: bool):
    model, optimizer = _job()
    with prefetching(model, optimizer, policy="replay", budget=0.4) as pf:
        losses = _loop(model, optimizer, closure_style)
    return losses, snapshot(model, optimizer), pf


@pytest.mark.parametrize("closure_style", [False, True], ids=["backward-then-step", "step-closure"])
def test_forward_and_backward_run_outside_the_optimizer_phase(monkeypatch, closure_style):
    """Every managed forward and backward access of a step(closure) loop reaches the store outside
    its optimizer phase, as in the same loop written backward(); step(): the store's pre-step work
    (device copies dropped, requests held until the step is done) comes after the closure ran."""
    seen: list[bool] = []
    inner = TensorStore.access

    def access(self, step, micro_step, seq, phase, *rest):
        if self.managed[rest[2]] is not False and phase in (int(Phase.FORWARD), int(Phase.BACKWARD)):
            seen.append(self.in_optimizer)
        return inner(self, step, micro_step, seq, phase, *rest)

    monkeypatch.setattr(TensorStore, "access", access)
    _prefetched(closure_style)
    assert len(seen) > STEPS and not any(seen)


def test_a_closure_loop_is_bit_identical_and_steps_return_the_closures_loss():
    """Prefetched, a step(closure) loop gives the losses (what step returns), parameters and
    optimizer state of the same loop unprefetched, and the report counts the closures run first."""
    model, optimizer = _job()
    ref_losses = _loop(model, optimizer, True)
    ref = snapshot(model, optimizer)
    losses, got, pf = _prefetched(True)
    cmp = compare(ref, got)
    assert losses == ref_losses and cmp.params_identical and cmp.optimizer_state_identical, cmp.state_mismatches
    assert pf.report()["closures_run_first"] == STEPS


def test_lbfgs_is_refused_before_training():
    """LBFGS evaluates its closure again inside the step, writing the parameters in between: refused
    when the prefetcher is built, naming the optimizer and what to do instead."""
    model = torch.nn.Linear(256, 256)
    with pytest.raises(ClosureError, match=r"LBFGS.step\(closure\) may evaluate its closure more than once"):
        with prefetching(model, torch.optim.LBFGS(model.parameters()), policy="replay"):
            pass


class _TwiceSGD(torch.optim.SGD):
    """A SAM-like step: the closure is evaluated twice."""

    def step(self, closure=None):
        with torch.enable_grad():
            closure()
        return super().step(closure)


def test_an_optimizer_that_overrides_step_is_refused_at_its_first_closure_step():
    """An optimizer whose own step may call the closure again is refused at its first step(closure),
    before that step ran anything: the closure was not called and the parameters are unchanged."""
    model, _ = _job()
    optimizer = _TwiceSGD(model.parameters(), lr=0.1)
    calls = []

    def closure():
        calls.append(1)
        optimizer.zero_grad()
        loss = model(torch.ones(4, 256)).sum()
        loss.backward()
        return loss

    with prefetching(model, optimizer, policy="replay", budget=0.4):
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(ClosureError, match="_TwiceSGD"):
            optimizer.step(closure)
        assert calls == [] and all(torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("make, once", [
    (lambda ps: torch.optim.AdamW(ps), True),
    (lambda ps: torch.optim.SGD(ps, lr=0.1), True),
    (lambda ps: torch.optim.Adagrad(ps), True),
    (lambda ps: torch.optim.LBFGS(ps), False),
    (lambda ps: _TwiceSGD(ps, lr=0.1), False),
    (lambda ps: type("PlainAdam", (torch.optim.Adam,), {})(ps), True),  # a subclass that keeps Adam's step
], ids=["adamw", "sgd", "adagrad", "lbfgs", "overrides-step", "subclass"])
def test_which_optimizers_call_their_closure_once(make, once):
    """torch.optim's optimizers and subclasses that keep their step call it once; LBFGS and a
    subclass with its own step may not."""
    assert calls_closure_once(make(torch.nn.Linear(2, 2).parameters())) is once

"""runtime.state_compare: the whole training state, bit for bit, and pf.compare_state in report()."""

from __future__ import annotations

import pytest
import torch

from runtime.link import LinkModel
from runtime.prefetcher import prefetching
from runtime.state_compare import compare, identity_report, losses_identical, snapshot


def _job(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.BatchNorm1d(256), torch.nn.ReLU(),
                                *[torch.nn.Linear(256, 256) for _ in range(3)], torch.nn.Linear(256, 4))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int = 3) -> list[float]:
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(torch.randn(16, 256, generator=g)).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _nudge(t: torch.Tensor) -> None:
    """Change one element by one ulp."""
    with torch.no_grad():
        flat = t.view(-1)
        flat[0] = torch.nextafter(flat[0], torch.tensor(float("inf"), dtype=t.dtype))


def test_same_run_is_identical():
    """Two runs of the same seeded job compare identical in every part."""
    a, b = _job(), _job()
    la, lb = _train(*a), _train(*b)
    c = compare(snapshot(*a), snapshot(*b))
    assert c.params_identical and c.optimizer_state_identical and c.state_mismatches == ()
    assert losses_identical(la, lb)


def test_one_ulp_in_a_parameter_is_caught_and_named():
    """A parameter one ulp off makes params_identical False and names it; the optimizer state still matches."""
    a, b = _job(), _job()
    _train(*a), _train(*b)
    _nudge(b[0][6].weight)
    c = compare(snapshot(*a), snapshot(*b))
    assert not c.params_identical and c.optimizer_state_identical
    assert c.state_mismatches == ("model:6.weight",)


def test_optimizer_moment_step_and_lr_are_compared():
    """A moment one ulp off, a different step count or learning rate makes optimizer_state_identical False, by parameter name."""
    a, b = _job(), _job()
    _train(*a), _train(*b)
    ref = snapshot(*a)
    _nudge(b[1].state[b[0][0].weight]["exp_avg_sq"])
    b[1].state[b[0][0].bias]["step"] += 1
    b[1].param_groups[0]["lr"] = 1e-2 + 1e-12
    c = compare(ref, snapshot(*b))
    assert c.params_identical and not c.optimizer_state_identical
    assert set(c.state_mismatches) == {"optimizer:state.exp_avg_sq[0.weight]", "optimizer:state.step[0.bias]",
                                       "optimizer:param_groups.0.lr"}


def test_buffers_are_part_of_the_model_state():
    """BatchNorm running statistics count as model state."""
    a, b = _job(), _job()
    _train(*a), _train(*b)
    _nudge(b[0][1].running_mean)
    assert compare(snapshot(*a), snapshot(*b)).state_mismatches == ("model:1.running_mean",)


def test_bitwise_not_numeric_equality():
    """0.0 and -0.0 differ, NaN equals the same NaN: bytes are compared, not values."""
    assert not losses_identical([0.0], [-0.0]) and losses_identical([float("nan")], [float("nan")])
    assert not losses_identical([1.0, 2.0], [1.0])
    m1, m2 = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        m1.weight.zero_(), m2.weight.zero_().neg_(), m2.bias.copy_(m1.bias)
    assert compare(snapshot(m1), snapshot(m2)).state_mismatches == ("model:weight",)


def test_snapshot_is_a_copy_unless_asked():
    """A snapshot does not follow later training; copy=False holds the live tensors."""
    model, opt = _job()
    _train(model, opt, steps=1)
    copied, live = snapshot(model, opt), snapshot(model, opt, copy=False)
    _train(model, opt, steps=1)
    assert not compare(copied, snapshot(model, opt)).params_identical
    assert compare(live, snapshot(model, opt)).params_identical


@pytest.mark.parametrize("policy", ["none", "replay"])
def test_prefetching_report_carries_the_comparison(policy):
    """pf.compare_state(reference, losses=...) puts losses/params/optimizer flags into pf.report(): all True for a correct run."""
    ref_model, ref_opt = _job()
    ref_losses = _train(ref_model, ref_opt)
    model, opt = _job()
    with prefetching(model, opt, policy=policy, budget=0.5, device="simulated",
                     link=LinkModel(bandwidth_bytes_per_s=2e9)) as pf:
        losses = _train(model, opt)
    pf.compare_state(snapshot(ref_model, ref_opt), losses=losses, reference_losses=ref_losses)
    r = pf.report()
    assert r["losses_identical"] and r["params_identical"] and r["optimizer_state_identical"]
    assert r["state_mismatches"] == [] and r["accesses"] > 0 and r["budget_overflows"] == 0


def test_identity_report_without_losses_has_no_loss_flag():
    """identity_report gives losses_identical only when both loss lists are given."""
    model, opt = _job()
    d = identity_report(snapshot(model, opt), snapshot(model, opt))
    assert d == {"params_identical": True, "optimizer_state_identical": True, "state_mismatches": []}

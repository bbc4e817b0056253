"""Host stepping steps first what the next step reads first (DeviceTier.early_params).

Those parameters are stepped on their own in the optimizer's pre-hook and their copies start
while the optimizer steps the rest: the first forward reads of the next step no longer wait
for copies issued after the whole step. It must compute exactly what one step computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prefetch.simulate import simulate, simulate_like_run
from runtime.prefetcher import PrefetchConfig, Prefetcher
from runtime.state_compare import compare
from runtime.trace_format import load_trace
from tests.runtime.test_device_stepping import _job, _train
from tests.runtime.test_device_stepping import _run as run_job

SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "samples" / "gpt2" / "heldout"


def _run(early: bool | None, opt: str = "adamw", **kw):
    """(losses, snapshot, report) of six steps on a 600 KiB budget, host stepping; all resident when `early` is None."""
    return run_job(None if early is None else "host", opt, budget="600KiB", steps=6, early_step=bool(early), **kw)


@pytest.mark.parametrize("kw", [{}, {"clamp": True}, {"pre_step_write": True}, {"accumulate": 2}],
                         ids=["plain", "user-writes-after-step", "user-writes-before-step", "accumulation"])
@pytest.mark.parametrize("opt", ["adamw", "adamw-fused", "sgd-momentum"])
def test_stepping_some_parameters_first_is_bit_identical(opt, kw):
    """Losses, parameters and optimizer state equal the all-resident run's bit for bit, with
    parameters stepped early in every step after the first, also when user code writes every
    parameter between steps or before the step."""
    ref_losses, ref, _ = _run(None, opt, **kw)
    losses, got, r = _run(True, opt, **kw)
    assert losses == ref_losses
    cmp = compare(ref, got)
    assert cmp.params_identical and cmp.optimizer_state_identical, cmp.state_mismatches
    assert r["early_stepped"] > 0, r  # the rule ran


def test_off_it_steps_nothing_early():
    _, _, r = _run(False)
    assert r["early_stepped"] == 0


def test_in_the_simulator_the_step_boundary_waits_less():
    """gpt2's sample: with early stepping the first reads after each optimizer step find their
    copies under way since the middle of the step, so replay stalls less and misses no more."""
    trace = load_trace(next(SAMPLE.glob("*.events.arrow")))
    on = simulate(trace, "replay", budget=0.4, early_step=True)
    off = simulate(trace, "replay", budget=0.4, early_step=False)
    assert on.early_stepped > 0 and off.early_stepped == 0
    assert on.stats.stall_ns < off.stats.stall_ns, (on.stats.stall_ns, off.stats.stall_ns)
    assert on.stats.hits >= off.stats.hits


@pytest.mark.parametrize("early", [True, False], ids=["on", "off"])
def test_a_run_is_simulated_with_its_own_setting(tmp_path, early):
    """The report says whether the run stepped early, and the simulation of its own trace
    (simulate_like_run) does as it did: the same parameters stepped early, the same hits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, optimizer = _job("adamw")
    pf = Prefetcher(model, optimizer, PrefetchConfig(policy="replay", budget="600KiB", optimizer_placement="host",
                                                     device="simulated", early_step=early, trace_out=tmp_path / "t"))
    try:
        _train(model, optimizer, 6)
    finally:
        pf.close()
        torch.set_num_threads(threads)
    r = pf.report()
    sim = simulate_like_run(r, pf.trace_stem)
    assert r["early_step"] is early and sim.early_step is early
    assert sim.early_stepped == r["early_stepped"] and (r["early_stepped"] > 0) is early
    # a live copy landing just before or just after its read moves one access between hit and
    # late (seen once in a loaded full run: 9/25 simulated against 8/26 live, of 55)
    assert abs(sim.stats.hits - r["hits"]) <= 1 and abs(sim.stats.late - r["late"]) <= 1, (sim.stats, r["hits"], r["late"])
    assert sim.stats.misses == r["misses"], (sim.stats, r["misses"])

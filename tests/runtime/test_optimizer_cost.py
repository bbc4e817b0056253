"""runtime.optimizer_cost: the host optimizer step's measured cost per parameter byte, and its line."""

from __future__ import annotations

import pytest
import torch

from runtime.optimizer_cost import VARIANTS, HostOptimizerCost, fit_line, measure_host_optimizer

SMALL = 1 << 20
"""Largest size the tests measure: 1 MiB of parameters (sizes 64 KiB, 256 KiB, 1 MiB)."""
QUICK = dict(repeats=3, warmup=1, flush_bytes=8 << 20)


@pytest.fixture(scope="module")
def fused() -> HostOptimizerCost:
    return measure_host_optimizer(SMALL, variant="fused", **QUICK)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_measures_a_positive_cost_per_byte(variant):
    """Every variant this torch runs gives a positive ns per byte, median within its spread, a
    non-negative line. Sizes up to 4 MiB: at 16-256 KiB a step is a few microseconds and, on a
    loaded machine, the per-byte slope was within noise of the fixed cost (once negative)."""
    c = measure_host_optimizer(4 << 20, variant=variant, **QUICK)
    assert c.supported and c.error is None
    assert c.variant == variant and c.torch_version == torch.__version__
    assert c.torch_threads == torch.get_num_threads()
    assert c.sizes_bytes == (256 << 10, 1 << 20, 4 << 20)
    assert all(t > 0 for t in c.median_step_ns)
    assert 0 < c.ns_per_byte_min <= c.ns_per_byte <= c.ns_per_byte_max
    assert c.fixed_ns >= 0 and c.per_byte_ns > 0
    assert c.gb_per_s == pytest.approx(1 / c.ns_per_byte)
    assert c.page_faults_per_step is not None and c.page_faults_per_step >= 0  # Linux has getrusage


def test_ns_per_byte_is_the_largest_size_step_over_its_bytes(fused):
    """ns_per_byte is a step at params_bytes divided by params_bytes (not by the smallest size, not per element)."""
    assert fused.sizes_bytes[-1] == SMALL
    assert fused.ns_per_byte == pytest.approx(fused.median_step_ns[-1] / SMALL, rel=1e-9)


def test_the_line_predicts_an_unmeasured_size_within_a_sane_factor(fused):
    """step_ns at a size between the measured ones is within 3x of that size's measured median step."""
    mid = 512 << 10
    between = measure_host_optimizer(mid, variant="fused", **QUICK)  # its largest size is `mid`
    measured = between.median_step_ns[-1]
    predicted = fused.step_ns(mid)
    assert fused.step_ns(fused.sizes_bytes[0]) < predicted < fused.step_ns(SMALL)
    assert measured / 3 < predicted < measured * 3, (predicted, measured)


def test_the_line_is_the_one_its_error_describes(fused):
    """step_ns at each measured size is fixed + slope x bytes, and fit_max_rel_error is its worst miss there."""
    misses = [abs(fused.step_ns(n) - t) / t for n, t in zip(fused.sizes_bytes, fused.median_step_ns)]
    assert max(misses) == pytest.approx(fused.fit_max_rel_error)
    assert fused.step_ns(SMALL) == pytest.approx(fused.fixed_ns + fused.per_byte_ns * SMALL)
    assert fused.fit_max_rel_error < 1.0


def test_the_line_passes_near_the_points_it_was_fitted_on():
    """fit_line recovers an exact line, reports its error, and refits through zero rather than go negative."""
    a, b, err = fit_line([1000, 4000, 16000], [5000.0 + 2 * n for n in (1000, 4000, 16000)])
    assert a == pytest.approx(5000.0) and b == pytest.approx(2.0) and err == pytest.approx(0.0, abs=1e-9)
    a, b, err = fit_line([1000, 4000, 16000], [1000.0, 8000.0, 32000.0])  # would need a negative intercept
    assert a == 0.0 and b > 0 and err > 0.1


def test_an_unsupported_variant_is_reported_not_raised():
    """A variant this torch build cannot run comes back supported=False with torch's error, one line."""
    c = measure_host_optimizer(SMALL, variant="fused", dtype=torch.complex64, **QUICK)  # fused: real floats only
    assert not c.supported
    assert c.error.startswith("RuntimeError: ") and "fused" in c.error and "\n" not in c.error
    assert c.ns_per_byte is None and c.sizes_bytes == ()
    with pytest.raises(ValueError, match="unsupported"):
        c.step_ns(SMALL)


@pytest.mark.parametrize("kwargs, match", [
    (dict(params_bytes=0), "params_bytes must be"),
    (dict(params_bytes=-5), "params_bytes must be"),
    (dict(params_bytes=1.5), "params_bytes must be"),
    (dict(variant="sgd"), "variant"),
    (dict(optimizer="lamb"), "optimizer"),
    (dict(repeats=0), "repeats"),
    (dict(num_sizes=2), "num_sizes"),
    (dict(dtype=torch.int32), "dtype"),
    (dict(params_bytes=100), "too small"),
    (dict(flush_bytes=-1), "flush_bytes"),
])
def test_bad_arguments_are_a_one_line_value_error(kwargs, match):
    """A non-positive size, an unknown variant or optimizer, too few sizes: ValueError naming it, one line."""
    args = dict(params_bytes=SMALL, variant="single", **QUICK) | kwargs
    with pytest.raises(ValueError, match=match) as info:
        measure_host_optimizer(args.pop("params_bytes"), **args)
    assert "\n" not in str(info.value)


def test_step_ns_refuses_a_non_positive_size(fused):
    """The model of a step takes a positive byte count only."""
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="nbytes"):
            fused.step_ns(bad)


def test_the_callers_threads_are_measured_and_kept():
    """The measurement runs on the caller's torch threads, reports them, and leaves them as they were."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        c = measure_host_optimizer(256 << 10, variant="single", **QUICK)
        assert c.torch_threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("variant, flags", [("single", {"foreach": False, "fused": False}),
                                           ("foreach", {"foreach": True, "fused": False}),
                                           ("fused", {"foreach": None, "fused": True})])
def test_each_variant_runs_torchs_implementation_of_that_name(variant, flags):
    """The optimizer that ran holds the variant's foreach/fused flags (read back from torch, not from our table)."""
    c = measure_host_optimizer(256 << 10, variant=variant, **QUICK)
    assert {k: bool(v) for k, v in c.torch_flags.items()} == {k: bool(v) for k, v in flags.items()}


def test_the_fused_kernel_beats_the_single_tensor_loop():
    """fused steps a byte at least 1.5x faster than the single-tensor loop (3-6x measured on this CPU)."""
    single = measure_host_optimizer(4 << 20, variant="single", **QUICK)
    fused = measure_host_optimizer(4 << 20, variant="fused", **QUICK)
    assert 1.5 * fused.ns_per_byte < single.ns_per_byte, (fused.ns_per_byte, single.ns_per_byte)


def test_the_to_dict_is_json_ready(fused):
    """to_dict holds every field plus GB/s, with plain values only."""
    import json

    d = json.loads(json.dumps(fused.to_dict()))
    assert d["variant"] == "fused" and d["gb_per_s"] == pytest.approx(fused.gb_per_s)
    assert d["sizes_bytes"] == list(fused.sizes_bytes)

"""runtime.budget: --budget as a fraction or a size, and clear errors."""

from __future__ import annotations

import pytest

from runtime.budget import Budget, format_bytes, parse_budget, resolve_budget


@pytest.mark.parametrize(
    "text, fraction",
    [("0.4", 0.4), (".25", 0.25), ("1", 1.0), ("40%", 0.4), ("100%", 1.0), (0.4, 0.4), (1, 1.0), (" 0.5 ", 0.5)],
)
def test_fractions(text, fraction):
    """Numbers in (0, 1] and percentages are fractions of the managed bytes."""
    b = parse_budget(text)
    assert b.fraction == pytest.approx(fraction) and b.nbytes is None


@pytest.mark.parametrize(
    "text, nbytes",
    [
        ("2GiB", 2 * 1024**3), ("512MiB", 512 * 1024**2), ("64KiB", 65536), ("1TiB", 1024**4),
        ("1.5GB", 1_500_000_000), ("300MB", 300_000_000), ("4kb", 4000), ("1.5e9", 1_500_000_000),
        ("4096", 4096), ("2 gib", 2 * 1024**3), ("100B", 100), (4096, 4096), ("2e9", 2_000_000_000),
        ("1.5e9B", 1_500_000_000),
    ],
)
def test_sizes(text, nbytes):
    """Binary and decimal units, whole numbers above 1 (ints, digits) and scientific notation are bytes."""
    b = parse_budget(text)
    assert b.nbytes == nbytes and b.fraction is None


@pytest.mark.parametrize(
    "bad", ["", "abc", "0", "-0.4", "0%", "150%", "1.5", "2.5e0", "3XB", "2 GiBs", "nan", "1e400", True, None, -3, 0.0]
)
def test_bad_input_is_a_clear_value_error(bad):
    """Malformed, zero, negative, over-100% or fractional-byte budgets raise ValueError naming the input."""
    with pytest.raises(ValueError) as exc:
        parse_budget(bad)
    assert "budget" in str(exc.value)


@pytest.mark.parametrize("bad", ["2.0", "1.5", "40.0", 2.0, 2e9, 1.5])
def test_decimal_above_one_without_unit_is_refused(bad):
    """2.0 is neither a fraction nor, without a unit, a size: the error says what to write instead."""
    with pytest.raises(ValueError) as exc:
        parse_budget(bad)
    msg = str(exc.value)
    assert repr(bad) in msg and "(0, 1]" in msg and "2GiB" in msg


def test_resolve_fraction_and_size():
    """A fraction scales the managed bytes (floored); a size is taken as is."""
    assert resolve_budget("0.4", 1000, 100) == 400
    assert resolve_budget("1KiB", 10_000, 100) == 1024
    assert parse_budget(Budget(fraction=0.5)).resolve(300) == 150


def test_budget_below_largest_tensor_names_both_sizes():
    """A budget that cannot hold the largest tensor is an error naming the budget, the tensor and its size."""
    with pytest.raises(ValueError) as exc:
        resolve_budget("0.01", 100 * 2**20, 2 * 2**20, "param:wte.weight")
    msg = str(exc.value)
    assert format_bytes(int(0.01 * 100 * 2**20)) in msg and "2.00 MiB" in msg and "param:wte.weight" in msg
    with pytest.raises(ValueError, match="1000 B is below the largest managed tensor"):
        resolve_budget("1000", 10**6, 4096)


def test_budget_equal_to_largest_tensor_is_allowed():
    """The largest tensor alone may fill the budget."""
    assert resolve_budget("4096", 10**6, 4096) == 4096


def test_format_bytes():
    """Sizes print with binary units."""
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(3 * 2**30) == "3.00 GiB"

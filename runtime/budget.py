"""The device budget: a fraction of the managed bytes, or an absolute size.

    prefetch simulate traces/gpt2 --policy replay --budget 0.4     # 40% of the managed bytes
    prefetch simulate traces/gpt2 --policy replay --budget 2GiB    # an absolute size

Accepted forms (case-insensitive units, optional space before the unit):
    0.4, .25, 1          a fraction in (0, 1] of the managed bytes; 1 = everything fits: the
                         job's whole device footprint, the managed parameters' gradients and
                         optimizer state included (`footprint_extra`), so the optimizer can step
                         on the device with nothing offloaded (runtime.placement)
    40%                  a percentage in (0, 100]
    2GiB, 512MiB, 64KiB  binary units (KiB, MiB, GiB, TiB = 1024**k bytes)
    1.5GB, 300MB         decimal units (KB, MB, GB, TB = 1000**k bytes), B for bytes
    4096, 1.5e9          a whole number above 1 written without a decimal point, or in
                         scientific notation, is a number of bytes
A decimal above 1 without a unit (2.0, 1.5; a Python float above 1) is an error, not a
byte count: `--budget 2.0` is more likely a typo for a fraction or for 2GB than 2 bytes.
A budget below the largest managed tensor is an error: that tensor could never be placed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_NUMBER_UNIT = re.compile(r"^([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z%]*)$")


@dataclass(frozen=True, slots=True)
class Budget:
    """A parsed budget: exactly one of `fraction` and `nbytes` is set."""

    fraction: float | None = None
    """Share of the managed bytes, in (0, 1]."""
    nbytes: int | None = None
    """Absolute device bytes, >= 1."""

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.nbytes is None):
            raise ValueError("a Budget has exactly one of fraction and nbytes")
        if self.fraction is not None and not (0.0 < self.fraction <= 1.0):
            raise ValueError(f"budget fraction must be in (0, 1], got {self.fraction}")
        if self.nbytes is not None and self.nbytes < 1:
            raise ValueError(f"budget must be at least 1 byte, got {self.nbytes}")

    def resolve(self, managed_bytes: int, largest_tensor_bytes: int = 0, largest_tensor: str = "",
                extra_bytes: int = 0) -> int:
        """Budget in bytes for a trace with these managed bytes; ValueError if the largest tensor
        cannot fit. `extra_bytes` (footprint_extra) counts only for the fraction 1."""
        budget = fraction_bytes(self.fraction, managed_bytes, extra_bytes) if self.fraction is not None else int(self.nbytes)
        if budget < largest_tensor_bytes:
            what = f" ({largest_tensor})" if largest_tensor else ""
            given = f"{self} = {format_bytes(budget)}" if self.fraction is not None else format_bytes(budget)
            raise ValueError(
                f"budget {given} is below the largest managed tensor{what} "
                f"of {format_bytes(largest_tensor_bytes)}: it could never be on the device; "
                f"use at least {format_bytes(largest_tensor_bytes)} "
                f"({largest_tensor_bytes / max(managed_bytes, 1):.1%} of the {format_bytes(managed_bytes)} managed)"
            )
        return budget

    def __str__(self) -> str:
        if self.fraction is not None:
            return f"{self.fraction:g} of managed bytes"
        return format_bytes(self.nbytes)


def parse_budget(value: str | float | int | Budget) -> Budget:
    """Parse `--budget`: a fraction (0.4), a percentage (40%) or a size (2GiB, 1.5e9). ValueError if malformed."""
    if isinstance(value, Budget):
        return value
    if isinstance(value, bool):
        raise ValueError(f"budget must be a fraction or a size, not {value!r}")
    if isinstance(value, (int, float)):
        x = float(value)
        if not math.isfinite(x) or x <= 0:
            raise ValueError(f"budget must be a positive fraction or size, got {value!r}")
        if x <= 1.0:
            return Budget(fraction=x)
        if isinstance(value, float):
            return _bad_plain(value)  # 2.0 is not "2 bytes": say what was meant
        return Budget(nbytes=int(x))
    if not isinstance(value, str):
        raise ValueError(f"budget must be a string, number or Budget, not {type(value).__name__}")
    text = value.strip()
    m = _NUMBER_UNIT.match(text)
    if not m:
        raise ValueError(
            f"budget {value!r} is not a fraction (0.4), a percentage (40%) or a size (2GiB, 512MiB, 1.5e9)"
        )
    x = float(m.group(1))
    unit = m.group(2).lower()
    if not math.isfinite(x) or x <= 0:
        raise ValueError(f"budget {value!r} must be positive")
    if unit == "":
        if x <= 1.0:
            return Budget(fraction=x)
        scientific = "e" in m.group(1).lower()
        if x != int(x) or ("." in m.group(1) and not scientific):
            return _bad_plain(value)  # 2.0 or 1.5: neither a fraction nor, without a unit, a size
        return Budget(nbytes=int(x))
    if unit == "%":
        if x > 100:
            raise ValueError(f"budget {value!r}: a percentage must be in (0, 100]")
        return Budget(fraction=x / 100.0)
    if unit not in _UNITS:
        raise ValueError(
            f"budget {value!r}: unknown unit {m.group(2)!r}; use one of "
            "B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
        )
    nbytes = int(round(x * _UNITS[unit]))
    if nbytes < 1:
        raise ValueError(f"budget {value!r} is less than one byte")
    return Budget(nbytes=nbytes)


def _bad_plain(value: str | float) -> Budget:
    raise ValueError(
        f"budget {value!r} is ambiguous: use a fraction of the managed bytes in (0, 1] (0.4), "
        "a percentage (40%), or a size with a unit (2GiB, 512MB, 1.5e9B)"
    )


def fraction_bytes(fraction: float, managed_bytes: int, extra_bytes: int = 0) -> int:
    """A fractional budget in bytes: the fraction of the managed bytes; the fraction 1 is
    everything, the footprint's `extra_bytes` (footprint_extra) too. The one rule for the
    simulator (Budget.resolve) and the live store (its first step, or a reference table)."""
    return int(fraction * managed_bytes) + (extra_bytes if fraction == 1.0 else 0)


def footprint_extra(kinds, nbytes) -> int:
    """Bytes of the managed parameters' gradients and optimizer state in a tensor table
    (kinds, nbytes as arrays or sequences): rows of those kinds at least MIN_MANAGED_BYTES
    large, the size a managed parameter's gradient and Adam moments have. What the fraction 1
    adds to the managed bytes, live (runtime.placement) and in the simulator alike."""
    from runtime.trace_format import MIN_MANAGED_BYTES, Kind

    grad_state = (int(Kind.GRADIENT), int(Kind.OPTIMIZER_STATE))
    return int(sum(int(n) for k, n in zip(kinds, nbytes) if int(k) in grad_state and int(n) >= MIN_MANAGED_BYTES))


def resolve_budget(
    value: str | float | int | Budget, managed_bytes: int, largest_tensor_bytes: int = 0, largest_tensor: str = ""
) -> int:
    """parse_budget(value).resolve(...): the budget in bytes for these managed bytes."""
    return parse_budget(value).resolve(managed_bytes, largest_tensor_bytes, largest_tensor)


def format_bytes(n: int | float) -> str:
    """A human size with binary units: 1536 -> '1.50 KiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover

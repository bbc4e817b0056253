"""What a host optimizer step costs per parameter byte, measured on this machine.

    torch.set_num_threads(1)                       # the caller's threads are the ones measured
    cost = measure_host_optimizer(64 << 20, variant="fused")
    cost.ns_per_byte, cost.fixed_ns, cost.per_byte_ns, cost.step_ns(300 << 20)

A prefetched job steps its optimizer on the host masters (runtime/store.py,
`before_optimizer_step`); an all-resident job on a GPU steps on the device. On this CPU
machine both run the same CPU optimizer, so its time cancels out of every slowdown we
measure; on a GPU it does not. This module measures the missing term: real
`torch.optim.AdamW` (or `Adam`) steps on CPU tensors with gradients set, timed after a
warm-up that creates the optimizer state, in one of torch's three CPU implementations:

    single   foreach=False, fused=False   one tensor at a time (torch's for-loop reference)
    foreach  foreach=True                 multi-tensor ops over the parameter list
    fused    fused=True                   one fused kernel per tensor (CPU support: torch >= 2.4)

A variant this torch build cannot run is reported (`supported=False`, `error`), never
raised: the cost model that uses this (issue 15) picks among the variants it has.

The parameters of one size are split into `num_tensors` tensors of equal size, as a layer's
weights are; steps are timed at `num_sizes` sizes, each 4x the one before and the largest
`params_bytes`, interleaved repeat by repeat so that load on the machine spreads over all
sizes alike. A line `step_ns(n) = fixed_ns + per_byte_ns * n` is fitted to the sizes'
median step times, weighted by relative error (the sizes span a factor of 4^(num_sizes-1));
`fit_max_rel_error` is the worst size's distance from the line. `fixed_ns` is the cost of a
step over `num_tensors` tensors that does not scale with their bytes (Python dispatch per
tensor and per step): a model with many more tensors pays more of it.

Caches are cold, as in training: before each timed step a buffer larger than the
last-level cache (`flush_bytes`, default twice the LLC sysfs reports, at least 64 MiB) is
rewritten, because a real step follows a backward that touched far more than the cache
holds. Without it, sizes whose state fits the cache (here 32 MiB of L3 holds parameters,
gradients and moments of up to ~8 MiB) step several times faster per byte than larger
ones, and no line fits.

Page faults are counted (`page_faults_per_step`, minor faults of the process during the
timed steps at the largest size), because they can double a step: the single-tensor and
foreach variants allocate temporaries the size of each tensor every step, and glibc
returns large freed blocks to the OS (its mmap and trim thresholds), so each step faults
them in again (16 MiB of float32 in 8 tensors, single: ~5000 faults and 16 ms a step; the
same with MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ raised past the tensors, 0
faults and 7 ms). Which happens depends on the process's allocation history; the fused
kernel allocates nothing per step.

Threads: the measurement runs on torch's intra-op threads as the caller set them
(`torch.set_num_threads`); it never changes them, and reports the count it ran with.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

try:
    import resource  # Unix only: the page-fault count
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

Variant = Literal["single", "foreach", "fused"]
VARIANTS: dict[str, dict[str, bool]] = {
    "single": {"foreach": False, "fused": False},
    "foreach": {"foreach": True, "fused": False},
    "fused": {"fused": True},
}
"""Variant name -> the torch optimizer's keyword arguments that select it."""
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
SIZE_STEP = 4
"""Each measured size is this many times the one before."""
MIN_FLUSH_BYTES = 64 << 20


def llc_bytes() -> int | None:
    """The largest CPU cache sysfs reports for cpu0 (Linux), or None."""
    best = None
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip().upper()
            n = int(text.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        except (OSError, ValueError):
            continue
        best = n if best is None else max(best, n)
    return best


def default_flush_bytes() -> int:
    """Bytes rewritten before each timed step: twice the last-level cache, at least 64 MiB."""
    return max(MIN_FLUSH_BYTES, 2 * (llc_bytes() or 0))


@dataclass(frozen=True, slots=True, kw_only=True)
class HostOptimizerCost:
    """One variant's measured host step cost, and the line fitted through it."""

    variant: str
    optimizer: str
    dtype: str
    torch_version: str
    torch_threads: int
    """Intra-op threads during the measurement (the caller's setting)."""
    num_tensors: int
    """Tensors the parameters of each size were split into."""
    repeats: int
    warmup: int
    flush_bytes: int
    """Bytes rewritten before each timed step to leave the caches cold (0: not flushed)."""
    torch_flags: dict[str, bool | None] = field(default_factory=dict)
    """`foreach` and `fused` as the torch optimizer holds them after construction (what ran)."""
    supported: bool
    error: str | None = None
    """Why an unsupported variant failed (the optimizer's own message, one line)."""
    sizes_bytes: tuple[int, ...] = ()
    """Parameter bytes stepped at each measured size, smallest first."""
    median_step_ns: tuple[float, ...] = ()
    """Median step time at each size."""
    ns_per_byte: float | None = None
    """Median over repeats of step time / bytes at the largest size (params_bytes)."""
    ns_per_byte_min: float | None = None
    ns_per_byte_max: float | None = None
    fixed_ns: float | None = None
    """The line's intercept: per-step cost independent of bytes (>= 0)."""
    per_byte_ns: float | None = None
    """The line's slope: ns per parameter byte once the fixed cost is paid."""
    fit_max_rel_error: float | None = None
    """Largest |line - median| / median over the measured sizes."""
    page_faults_per_step: float | None = None
    """Minor page faults of the process per timed step at the largest size (None: no getrusage)."""

    @property
    def gb_per_s(self) -> float | None:
        """Parameter bytes stepped per second at the largest size, in GB/s (1e9 bytes)."""
        return None if not self.ns_per_byte else 1.0 / self.ns_per_byte

    def step_ns(self, nbytes: int) -> float:
        """Modelled time of one host step over `nbytes` of parameters (split like the measured ones)."""
        if not self.supported or self.fixed_ns is None or self.per_byte_ns is None:
            raise ValueError(f"host optimizer variant {self.variant!r} is unsupported here: {self.error}")
        if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes <= 0:
            raise ValueError(f"step_ns: nbytes must be a positive int, got {nbytes!r}")
        return self.fixed_ns + self.per_byte_ns * nbytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gb_per_s"] = self.gb_per_s
        return d


def fit_line(sizes: list[int], times_ns: list[float]) -> tuple[float, float, float]:
    """(fixed_ns, per_byte_ns, max relative error) of t = a + b * n, least squares on relative error.

    Weighting each point by 1/t keeps the small sizes (where the fixed cost shows) from
    being drowned by the largest. A negative intercept (noise) is refitted through zero."""
    if len(sizes) < 2 or len(sizes) != len(times_ns):
        raise ValueError(f"fit_line: need at least 2 (size, time) points, got {len(sizes)} and {len(times_ns)}")
    w = [1.0 / t for t in times_ns]
    sw = sum(x * x for x in w)
    sx = sum(x * x * n for x, n in zip(w, sizes))
    sxx = sum(x * x * n * n for x, n in zip(w, sizes))
    sy = sum(x * x * t for x, t in zip(w, times_ns))
    sxy = sum(x * x * n * t for x, n, t in zip(w, sizes, times_ns))
    det = sw * sxx - sx * sx
    a = (sxx * sy - sx * sxy) / det if det else 0.0
    b = (sw * sxy - sx * sy) / det if det else sy / sx
    if a < 0.0:
        a, b = 0.0, sxy / sxx
    err = max(abs(a + b * n - t) / t for n, t in zip(sizes, times_ns))
    return a, b, err


def _minor_faults() -> int:
    """The process's minor page faults so far (0 where getrusage is missing)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _params(nbytes: int, num_tensors: int, dtype: torch.dtype, seed: int) -> list[torch.nn.Parameter]:
    """`num_tensors` CPU parameters of `nbytes` in all, gradients set (the step reads them)."""
    numel = nbytes // torch.empty((), dtype=dtype).element_size()
    g = torch.Generator().manual_seed(seed)
    sizes = [numel // num_tensors] * num_tensors
    sizes[-1] += numel - sum(sizes)
    params = []
    for n in sizes:
        p = torch.nn.Parameter(torch.randn(n, generator=g).to(dtype))
        p.grad = torch.randn(n, generator=g).to(dtype) * 1e-2
        params.append(p)
    return params


def measure_host_optimizer(params_bytes: int, *, variant: Variant, optimizer: str = "adamw", repeats: int = 5,
                           warmup: int = 2, num_sizes: int = 3, num_tensors: int = 8,
                           dtype: torch.dtype = torch.float32, flush_bytes: int | None = None) -> HostOptimizerCost:
    """Time real host optimizer steps of `variant` at `num_sizes` sizes up to `params_bytes`; fit a line.

    The smallest size is params_bytes / 4^(num_sizes-1); each size must hold at least one
    element per tensor. Memory: four copies (parameter, gradient, two Adam moments) of
    every size at once, ~5.3 x params_bytes for 3 sizes, and the flush buffer
    (`flush_bytes`, default `default_flush_bytes()`; 0 measures with warm caches).
    ValueError on bad arguments (one line); an unsupported variant comes back with
    supported=False and the error."""
    if variant not in VARIANTS:
        raise ValueError(f"measure_host_optimizer: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"measure_host_optimizer: optimizer must be one of {', '.join(OPTIMIZERS)}, "
                         f"got {optimizer!r}")
    for name, value, least in (("params_bytes", params_bytes, 1), ("repeats", repeats, 1), ("warmup", warmup, 1),
                               ("num_sizes", num_sizes, 3), ("num_tensors", num_tensors, 1),
                               ("flush_bytes", default_flush_bytes() if flush_bytes is None else flush_bytes, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"measure_host_optimizer: {name} must be an int >= {least}, got {value!r}")
    if not isinstance(dtype, torch.dtype) or not (dtype.is_floating_point or dtype.is_complex):
        raise ValueError(f"measure_host_optimizer: dtype must be a floating-point torch dtype, got {dtype!r}")
    elem = torch.empty((), dtype=dtype).element_size()
    sizes = [params_bytes // SIZE_STEP ** (num_sizes - 1 - i) for i in range(num_sizes)]
    if sizes[0] < num_tensors * elem:
        raise ValueError(f"measure_host_optimizer: params_bytes {params_bytes} is too small for {num_sizes} sizes "
                         f"(each 1/{SIZE_STEP} of the next) of {num_tensors} tensors of {dtype}: need >= "
                         f"{num_tensors * elem * SIZE_STEP ** (num_sizes - 1)}")
    sizes = [(s // elem) * elem for s in sizes]  # whole elements: the bytes actually stepped
    flush_bytes = default_flush_bytes() if flush_bytes is None else flush_bytes
    flush = torch.zeros(flush_bytes // 4, dtype=torch.float32) if flush_bytes else None
    base = dict(variant=variant, optimizer=optimizer, dtype=str(dtype).removeprefix("torch."),
                torch_version=torch.__version__, torch_threads=torch.get_num_threads(), num_tensors=num_tensors,
                repeats=repeats, warmup=warmup, flush_bytes=flush_bytes)
    opts = []
    try:
        for i, nbytes in enumerate(sizes):
            params = _params(nbytes, num_tensors, dtype, seed=i)
            opt = OPTIMIZERS[optimizer](params, lr=1e-3, **VARIANTS[variant])
            for _ in range(warmup):  # the first step creates the moments; later ones warm the caches
                opt.step()
            opts.append(opt)
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:  # the variant, not our arguments
        return HostOptimizerCost(**base, supported=False, error=_one_line(exc))
    times: list[list[int]] = [[] for _ in sizes]
    clock = time.perf_counter_ns
    faults = 0
    for _ in range(repeats):  # interleaved: a burst of load hits every size, not one
        for i, opt in enumerate(opts):
            if flush is not None:
                flush.add_(1.0)  # read and write every line: the caches hold none of the optimizer's tensors
            f0 = _minor_faults() if i == len(opts) - 1 else None
            t0 = clock()
            opt.step()
            times[i].append(clock() - t0)
            if f0 is not None:
                faults += _minor_faults() - f0
    flags = {k: opts[0].defaults.get(k) for k in ("foreach", "fused")}
    medians = [float(statistics.median(t)) for t in times]
    per_byte = [t / sizes[-1] for t in times[-1]]
    fixed, slope, err = fit_line(sizes, medians)
    return HostOptimizerCost(**base, supported=True, torch_flags=flags, sizes_bytes=tuple(sizes),
                             median_step_ns=tuple(medians),
                             ns_per_byte=statistics.median(per_byte), ns_per_byte_min=min(per_byte),
                             ns_per_byte_max=max(per_byte), fixed_ns=fixed, per_byte_ns=slope,
                             fit_max_rel_error=err,
                             page_faults_per_step=faults / repeats if resource is not None else None)

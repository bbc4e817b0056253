"""Where a prefetched step's extra time goes: stall, bookkeeping, emulation.

A prefetched step is slower than the same step all resident for three reasons, and a
user deciding whether prefetching pays needs them apart (docs/overhead.md):

    stall        the training thread waited for copies (late prefetches, demand fetches);
    bookkeeping  the training thread ran our code: the tracker's hooks, the store, the
                 policy (wall time inside the hooks, less the stalls and emulation in them);
    emulation    simulated device only: the cost of pretending to have a GPU, which a
                 real one does not have: reads of the CPU clocks the link model runs on,
                 and waits for real clones running behind the model (`copy_lag`).

What is left of (step - all-resident step) is `unattributed`: torch's own hook dispatch
(a module with hooks takes the slow call path), and the copy engine's real copies
competing for memory bandwidth and cores (its CPU time is reported beside the split).
Per step means over the measured steps (warm-up excluded).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any, Callable

from runtime.link import ComputeClock

_perf_ns = time.perf_counter_ns


class HookGuard:
    """Interrupts held while the prefetcher's hooks run. A SIGINT or SIGTERM raised inside a
    hook could leave the store, the clock or a lock half updated (a copy queued but not
    recorded, a queue mutex held), and closing the run then hangs; the launcher's signal
    handler (runtime.launch) asks `interrupt`, which defers the KeyboardInterrupt to the
    moment the outermost hook returns."""

    depth = 0
    pending: BaseException | None = None

    @classmethod
    def interrupt(cls, exc: BaseException) -> None:
        """Raise `exc` now, or when the outermost hook returns if one is running."""
        if cls.depth > 0:
            cls.pending = exc
            return
        raise exc

    @classmethod
    def raise_pending(cls) -> None:
        """The outermost hook has returned (depth 0): raise the interrupt held meanwhile."""
        exc, cls.pending = cls.pending, None
        raise exc


class HookTimer:
    """Times every hook the tracker installs (`wrap` each before registering it).

    With the simulated device's clock, entering a hook also takes the clock off compute
    (ComputeClock.hot_enter): one pair of wall reads serves both. Without (CUDA), two
    `perf_counter_ns` reads per hook call."""

    def __init__(self, clock: ComputeClock | None = None):
        self.clock = clock
        self.ns = 0
        """Wall ns inside hooks (simulated: stalls and clock pauses already left out)."""
        self.calls = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        clock, guard = self.clock, HookGuard
        if clock is not None:
            enter, leave = clock.hot_enter, clock.hot_leave

            def timed(*args: Any, **kwargs: Any) -> Any:
                guard.depth += 1
                enter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.ns += leave()
                    self.calls += 1
                    guard.depth -= 1
                    if guard.pending is not None and not guard.depth:
                        guard.raise_pending()
        else:
            def timed(*args: Any, **kwargs: Any) -> Any:
                guard.depth += 1
                t0 = _perf_ns()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.ns += _perf_ns() - t0
                    self.calls += 1
                    guard.depth -= 1
                    if guard.pending is not None and not guard.depth:
                        guard.raise_pending()

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed


def clock_read_cost_ns(read: Callable[[], int], n: int = 500) -> float:
    """Median-free mean cost of one work-counter read (a CPU-clock syscall here)."""
    t0 = _perf_ns()
    for _ in range(n):
        read()
    return (_perf_ns() - t0) / n


@dataclass(frozen=True, slots=True)
class OverheadCounters:
    """Cumulative counters; the split is the difference of two snapshots."""

    hook_ns: int = 0
    hook_calls: int = 0
    stall_ns: int = 0
    managed_accesses: int = 0
    clock_reads: int = 0
    copy_lag_ns: int = 0
    engine_cpu_ns: int = 0

    def __sub__(self, other: "OverheadCounters") -> "OverheadCounters":
        return OverheadCounters(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})


@dataclass(frozen=True, slots=True)
class OverheadSplit:
    """Per measured step, in seconds; `unattributed` is what the parts do not explain."""

    steps: int
    step_s: float | None
    baseline_step_s: float | None
    stall_s: float
    bookkeeping_s: float
    emulation_s: float
    copy_engine_cpu_s: float | None
    managed_accesses: float
    hook_calls: float

    @property
    def extra_s(self) -> float | None:
        if self.step_s is None or self.baseline_step_s is None:
            return None
        return self.step_s - self.baseline_step_s

    @property
    def unattributed_s(self) -> float | None:
        extra = self.extra_s
        return None if extra is None else extra - self.stall_s - self.bookkeeping_s - self.emulation_s

    @property
    def bookkeeping_us_per_access(self) -> float | None:
        """Bookkeeping per managed access (the policy's stream: managed reads and writes)."""
        return 1e6 * self.bookkeeping_s / self.managed_accesses if self.managed_accesses else None

    def as_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(extra_s=self.extra_s, unattributed_s=self.unattributed_s,
                 bookkeeping_us_per_access=self.bookkeeping_us_per_access,
                 note="per measured step: extra_s = step_s - baseline_step_s = stall_s + bookkeeping_s + "
                      "emulation_s + unattributed_s (docs/overhead.md)")
        return d


def split(delta: OverheadCounters, steps: int, *, read_cost_ns: float, step_s: float | None,
          baseline_step_s: float | None, simulated: bool) -> OverheadSplit:
    """The split of `delta` (counters over `steps` measured steps)."""
    n = max(steps, 1)
    reads_ns = delta.clock_reads * read_cost_ns if simulated else 0.0
    emulation_ns = reads_ns + delta.copy_lag_ns
    # hook time already excludes stalls and lag on the simulated device; on CUDA waits do not block the host
    bookkeeping_ns = max(0.0, delta.hook_ns - reads_ns)
    return OverheadSplit(
        steps=steps, step_s=step_s, baseline_step_s=baseline_step_s,
        stall_s=delta.stall_ns / n / 1e9, bookkeeping_s=bookkeeping_ns / n / 1e9, emulation_s=emulation_ns / n / 1e9,
        copy_engine_cpu_s=delta.engine_cpu_ns / n / 1e9 if simulated else None,
        managed_accesses=delta.managed_accesses / n, hook_calls=delta.hook_calls / n,
    )

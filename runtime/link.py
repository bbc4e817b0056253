"""The host-to-device link model shared by the simulator and the simulated device.

A copy of n bytes takes `latency_s + n / bandwidth_bytes_per_s`. The link can be given
explicitly or derived from a *link ratio*: the time to copy every managed byte once
divided by the step's compute time. 0.5 is the default: a 7B model's bf16 weights over
PCIe 5 against an H100 step on 16k tokens is about 0.35.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from typing import Any

DEFAULT_LINK_RATIO = 0.5
DEFAULT_LATENCY_S = 5e-6


@dataclass(kw_only=True, slots=True, frozen=True)
class LinkModel:
    """Bandwidth and per-copy latency of the host<->device link."""

    bandwidth_bytes_per_s: float
    """Sustained copy bandwidth, both directions alike."""
    latency_s: float = DEFAULT_LATENCY_S
    """Fixed cost of each copy (launch, DMA setup)."""
    ratio: float | None = None
    """The link ratio this model was derived from, if any (for reports)."""

    def __post_init__(self) -> None:
        if not self.bandwidth_bytes_per_s > 0:
            raise ValueError(f"bandwidth_bytes_per_s must be > 0, got {self.bandwidth_bytes_per_s}")
        if self.latency_s < 0:
            raise ValueError(f"latency_s must be >= 0, got {self.latency_s}")

    def copy_ns(self, nbytes: int) -> int:
        return int((self.latency_s + nbytes / self.bandwidth_bytes_per_s) * 1e9)

    @classmethod
    def from_ratio(
        cls, ratio: float, *, managed_bytes: int, step_compute_s: float, latency_s: float = DEFAULT_LATENCY_S
    ) -> "LinkModel":
        """Bandwidth such that copying `managed_bytes` once takes `ratio` x the step time."""
        if not ratio > 0:
            raise ValueError(f"link ratio must be > 0, got {ratio}")
        if managed_bytes <= 0 or step_compute_s <= 0:
            raise ValueError("link ratio needs managed_bytes > 0 and step_compute_s > 0")
        return cls(
            bandwidth_bytes_per_s=managed_bytes / (ratio * step_compute_s), latency_s=latency_s, ratio=ratio
        )

    def describe(self) -> dict[str, float | None]:
        return {
            "bandwidth_GBps": self.bandwidth_bytes_per_s / 1e9,
            "latency_us": self.latency_s * 1e6,
            "ratio": self.ratio,
        }


class ComputeClock:
    """The simulated device's time base: the job's compute, not wall time.

    The link is fixed in bytes per second of the *all-resident* job's step time. When
    copies progressed in wall time, everything else the process and the machine did
    handed the copy engine free time: the prefetcher's own Python, a twin job stepped in
    between (`prefetch run`), other jobs holding the cores (a slice lost to them is
    wall time without compute). Hit rates moved with the machine's load. So copies
    progress on this clock instead:

        now = rate x (work spent computing) + wall time spent stalled

    `work_ns` is CPU time (SimulatedDevice: the training thread's, runtime.device.work_clock_ns),
    so time the job spends descheduled is no compute. Off the clock entirely: the
    prefetcher's hooks (`hot_enter`/`hot_leave`, timed in wall time: the tracker, the
    store and the policy inside them; on a GPU that host work overlaps device compute),
    and work inside `excluding` / `pause` (a twin's steps; a wait for a real clone behind
    the model), timed exactly in CPU time. `rate` (wall seconds per CPU second of the all-resident step, set with the
    link) keeps the clock in the link's units. A stall is on the clock at wall speed:
    while a read waits the copy engine runs (`running()`), so a late read stalls the step
    in wall time for exactly the copy time left. Rule: a copy submitted at clock time t
    is done at max(t, end of the copy before it) + latency + nbytes / bandwidth on this
    clock; a read finding it done is a hit, else it is late and waits. Training thread only.
    """

    def __init__(self, work_ns: Callable[[], int] = time.monotonic_ns, wall_ns: Callable[[], int] = time.monotonic_ns):
        self._work = work_ns
        self._wall = wall_ns
        self.rate = 1.0
        """Clock ns per ns of work (set_rate)."""
        self._base_ns = 0.0  # clock value when work was at _mark
        self._mark = work_ns()  # work reading the clock counts from (moved past excluded work)
        self._depth = 0  # nesting of excluding(); > 0: the clock stands still
        self._since = 0  # work reading the outermost excluding() began at
        self._off_work_ns = 0  # work left off the clock so far
        self._hot = 0  # nesting of hot_enter(); > 0: in the prefetcher's hooks, off the clock
        self._hot_t0 = 0  # wall reading the outermost hot_enter() began at
        self._hot_ext = 0  # wall inside the current hot interval that is not bookkeeping (stalls, pauses)
        self._hot_read = False  # the clock was read in the current hot interval: it stands at last_ns
        self._pause_wall = -1  # wall at an outermost pause() begun inside a hot interval, else -1
        self.last_ns = 0
        """The latest now_ns() returned: the clock is at least this (now_ns never runs backwards)."""
        self.work_reads = 0
        """Reads of the work counter so far (each a CPU-clock syscall on the simulated device)."""
        self.waited_ns = 0
        """Wall time spent inside `running()` so far (stalls, the optimizer's waits): on the clock."""

    def work_ns(self) -> int:
        """The work counter itself (CPU ns), for timing a step in the clock's units."""
        self.work_reads += 1
        return self._work()

    def _work_now(self) -> int:
        if self._depth:
            return self._since
        self.work_reads += 1
        w = self._work()
        if self._hot:  # the hooks' own time so far is not compute
            w -= max(0, self._wall() - self._hot_t0 - self._hot_ext)
        return w

    def now_ns(self) -> int:
        if self._hot_read:
            # Inside a hook the clock moves only by its stalls (`running` adds them to last_ns):
            # the tracker's time stamp and every decision the store makes in the same hook read
            # one time, so the trace replays them exactly. Recomputing here let CPU burnt by
            # other threads during the hook move the clock between stamp and decision.
            return self.last_ns
        self._hot_read = self._hot > 0
        now = int(self._base_ns + self.rate * (self._work_now() - self._mark))
        if now < self.last_ns:
            # Wall time taken off as bookkeeping in a hot interval the job was descheduled in
            # (or the two CPU clocks read a moment apart): not work, but not to be taken off
            # the compute that follows either. Without this the clock stood still until the
            # work caught up, and a stall meanwhile advanced it by nothing (stalled twice).
            self._base_ns += self.last_ns - now
            return self.last_ns
        self.last_ns = now
        return now

    def compute_ns(self) -> int:
        """The clock less every wait on it (`waited_ns`): the compute the copy engine has
        seen so far. A live run on the simulated device stamps its trace with it, so the
        simulator, adding the stalls it computes itself to the trace's deltas, runs on the
        clock the live copies ran on (docs/simulated-device.md)."""
        return self.now_ns() - self.waited_ns

    def set_rate(self, rate: float) -> None:
        """From now on one ns of work advances the clock `rate` ns (no jump at the change)."""
        if not rate > 0:
            raise ValueError(f"clock rate must be > 0, got {rate}")
        self._base_ns += self.rate * (self._work_now() - self._mark)
        self._mark = self._work_now()
        self.rate = rate

    @property
    def off_clock_ns(self) -> int:
        """Work left off the clock so far (bookkeeping, twin steps, clone lag), for reports."""
        return self._off_work_ns + (self._work() - self._since if self._depth else 0)

    def pause(self) -> None:
        """Off the clock, exactly (two CPU-clock reads): for long or rare intervals."""
        if self._depth == 0:
            self.work_reads += 1
            self._since = self._work()
            self._pause_wall = self._wall() if self._hot else -1
        self._depth += 1

    def resume(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.work_reads += 1
            off = self._work() - self._since
            self._off_work_ns += off
            self._mark += off
            if self._pause_wall >= 0:  # inside a hot interval: this wall was not bookkeeping
                self._hot_ext += self._wall() - self._pause_wall
                self._pause_wall = -1

    def hot_enter(self) -> None:
        """The training thread enters the prefetcher's hooks. Off the clock until the
        matching `hot_leave`, timed in wall time: two vDSO reads per hook instead of the
        four CPU-clock syscalls (~2 us) `pause`/`resume` cost. Bookkeeping runs on the CPU
        it is timed on; only a job descheduled inside a hook is over-counted, and `now_ns`
        never runs backwards for it."""
        if self._hot == 0:
            self._hot_t0 = self._wall()
            self._hot_ext = 0
            self._hot_read = False
        self._hot += 1

    def hot_leave(self) -> int:
        """Leave the hooks. Returns the wall ns of bookkeeping in the interval just closed
        (its stalls and pauses left out), or 0 while nested or inside a `pause` (a twin's
        step, already off the clock)."""
        self._hot -= 1
        if self._hot:
            return 0
        read, self._hot_read = self._hot_read, False
        off = self._wall() - self._hot_t0 - self._hot_ext
        if self._depth:
            return 0
        self._mark += off
        self._off_work_ns += off
        if read:
            # The clock stood at last_ns since its first read in the hook: settle the work
            # counter against it now (a descheduled hook took off more than its work), so
            # the compute that follows the hook counts from here.
            self.now_ns()
        return off

    def hot_so_far(self) -> int:
        """Wall ns of bookkeeping in the hook interval still open (0 outside hooks): what
        `hot_leave` will return for it, read before it closes (a step ends inside a hook)."""
        return max(0, self._wall() - self._hot_t0 - self._hot_ext) if self._hot else 0

    def excluding(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` wrapped so that the time spent in it does not advance the clock."""

        @wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.pause()
            try:
                return fn(*args, **kwargs)
            finally:
                self.resume()

        return wrapped

    @contextmanager
    def running(self, advance_ns: int | None = None) -> Iterator[None]:
        """A stall: inside, the clock advances by wall time (even within `excluding`).
        With `advance_ns` it advances by exactly that however long the wait took in wall
        time (the simulated device: the copy time left; a late wake-up is not link time)."""
        depth = self._depth
        if depth:
            self._depth = 1
            self.resume()
        w0, k0 = self._wall(), self._work()
        try:
            yield
        finally:
            waited = self._wall() - w0
            on_clock = waited if advance_ns is None else advance_ns
            self._base_ns += on_clock
            self.waited_ns += on_clock
            self.last_ns += on_clock  # the clock is past the stall, whatever a descheduled hook takes off later
            self._mark += self._work() - k0  # work done while waiting is not compute
            if self._hot:
                self._hot_ext += waited  # a stall, not bookkeeping
            if depth:
                self.pause()
                self._depth = depth

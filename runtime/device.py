"""Device backends: where managed tensors go when they are on "the device".

Both backends have one interface, so the store above them does not know which runs:

    copy = dev.copy_in(host)        # start a host-to-device copy (prefetch)
    copy.done()                     # finished? (no waiting)
    tensor, waited_ns = dev.wait(copy)   # make it usable on the compute stream
    copy = dev.copy_out(device_t)   # start a device-to-host copy (a write-back, a gradient)

CUDA: pinned host memory, copies on a dedicated stream per direction (in and out
overlap), an event per copy; the compute stream waits on the event (no host sync) and
`record_stream` tells the caching allocator the tensor is used there.

Simulated (no CUDA): real copies (`clone`) on a copy-engine thread, each *finishing*
at the time the link model gives: one FIFO engine per direction (PCIe is full duplex and
a GPU has a copy engine each way), whose next copy starts when the last one ends. Times
are on the device's ComputeClock (runtime.link: the job's CPU time less
the prefetcher's own bookkeeping, plus stalls), so neither overhead nor a busy machine
buys copies time. A consumer that needs a copy early sleeps (in wall time) until
then, so a late prefetch really stalls the step and hit rates mean what they mean on a
GPU. docs/simulated-device.md has the rules and their measured effect.

Those real clones are the emulation's largest cost on a small machine: the copy-engine
thread takes a core and memory bandwidth from the job, which a GPU's DMA engines do not.
`SimulatedDevice(copies="alias")` (device spec `simulated:alias`) keeps every rule and
time of the link model but makes no real copy: a copy's result is its source tensor. It is
a measurement mode, for telling that cost apart (benchmarks/overhead.py runs both); the
default `clone` is what the correctness tests run, since only distinct copies can show a
stale or lost write.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from runtime.link import ComputeClock, LinkModel
from runtime.overhead import clock_read_cost_ns

_SPIN_BELOW_NS = 200_000  # time.sleep overshoots by ~60 µs here; spin for short waits


def sleep_until(t_ns: int) -> int:
    """Block until monotonic time t_ns; returns how long it waited."""
    start = time.monotonic_ns()
    while True:
        left = t_ns - time.monotonic_ns()
        if left <= 0:
            return time.monotonic_ns() - start
        if left > _SPIN_BELOW_NS:
            time.sleep((left - _SPIN_BELOW_NS / 2) / 1e9)


class Copy(Protocol):
    nbytes: int

    def done(self) -> bool: ...


class Device(Protocol):
    name: str

    def host_copy(self, t: torch.Tensor) -> torch.Tensor: ...
    def copy_in(self, host: torch.Tensor) -> Copy: ...
    def copy_out(self, dev: torch.Tensor) -> Copy: ...
    def pending_host(self, copy: Copy) -> object: ...
    def ready(self, dev: torch.Tensor) -> Copy: ...
    def wait(self, copy: Copy) -> tuple[torch.Tensor, int]: ...
    def settle(self, copy: Copy) -> None:
        """Wait until the copy no longer touches its source (its result is not needed):
        no clock, no stall. For a run closing, interrupted or not."""
    def close(self) -> None: ...
    def describe(self) -> dict: ...


# -- simulated ----------------------------------------------------------------------------
def _thread_cpu_clock(thread: threading.Thread) -> Callable[[], int] | None:
    """A reader of `thread`'s CPU time in ns that keeps the last value once the thread has
    exited (its CPU time is final then); None where a thread's CPU clock cannot be read."""
    try:
        clock_id = time.pthread_getcpuclockid(thread.ident)  # type: ignore[arg-type]
        time.clock_gettime_ns(clock_id)
    except (AttributeError, OSError, TypeError):
        return None
    read, last = time.clock_gettime_ns, [0]

    def cpu_ns() -> int:
        try:
            last[0] = read(clock_id)
        except OSError:  # the thread has exited
            pass
        return last[0]

    return cpu_ns


work_clock_ns: Callable[[], int] = time.thread_time_ns
"""The job's work, the simulated device's compute clock (runtime.link.ComputeClock): CPU
time of the calling thread, which is the training thread (the clock is read on it only).
Not the process's CPU time less the copy engine's, as before: that counted every other
thread as compute (a learned run's ZeroMQ I/O threads, a data loader's threads), so the
same job's clock ran faster beside a daemon; and it took two CPU-clock syscalls per read
where this takes one (right after a torch op one cost 2-10 us on this 2-core VM, against
~1 us in a tight loop). CPU backward runs on the thread that calls it; torch's intra-op
threads are not counted, which the clock's rate (wall / this clock over an all-resident
step) absorbs. `prefetch run` times its all-resident step on the same clock."""


SIMULATED = {"simulated": "clone", "simulated:alias": "alias"}
"""Device spec of the simulated device -> how it copies: real clones on its copy-engine
thread, or none (a measurement mode; SimulatedDevice's `copies`)."""


def check_copies(copies: str) -> None:
    if copies not in SIMULATED.values():
        raise ValueError(f"simulated device copies must be one of {', '.join(SIMULATED.values())}, got {copies!r}")


class SimCopy:
    """One copy on the simulated device: done on the clock at `done_at_ns`; its real clone
    is `result` once the engine has made it (None before)."""

    __slots__ = ("src", "nbytes", "clock", "done_at_ns", "result")

    def __init__(self, src: "torch.Tensor | SimCopy", nbytes: int, clock: ComputeClock, done_at_ns: int):
        self.src = src
        self.nbytes = nbytes
        self.clock = clock
        self.done_at_ns = done_at_ns
        """On `clock`: when the link model says the copy has finished."""
        self.result: torch.Tensor | None = None

    def done(self) -> bool:
        """Finished on the link model's clock (the real clone may still be running: `wait` waits).
        No clock read when the clock has already been seen past it."""
        return self.done_at_ns <= self.clock.last_ns or self.clock.now_ns() >= self.done_at_ns

    def copied(self) -> bool:
        """The real clone exists (the engine has made it)."""
        return self.result is not None


class SimulatedDevice:
    """The simulated device: a copy-engine thread, a link model and a compute clock.

    A copy submitted at clock time t starts at max(t, end of the copy queued before it in
    the same direction) and is done at start + link.copy_ns(nbytes), both on `clock`. The
    two directions overlap, as a GPU's two copy engines do; a copy back of a tensor still
    being written back starts once that write-back is done.
    """

    name = "simulated"

    def __init__(self, link: LinkModel, clock: ComputeClock | None = None, copies: str = "clone"):
        check_copies(copies)
        self.link = link
        self.copies = copies
        """clone: real copies on the copy-engine thread; alias: none (a copy's result is its source)."""
        self._free_at_ns = {"H2D": 0, "D2H": 0}  # clock time each direction's FIFO finishes its last queued copy
        self.copy_lag_ns = 0
        """Wall time waits spent on real clones running behind the model (a busy CPU)."""
        self._copied = threading.Condition()  # the engine made a clone (for `wait_copied`)
        self._waiting = 0  # training-thread waits on `_copied` under way
        self._jobs: queue.SimpleQueue[SimCopy | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._engine, name="prefetch-copy-engine", daemon=True)
        self._thread.start()
        self._engine_cpu = _thread_cpu_clock(self._thread)
        self.clock = clock or ComputeClock(work_clock_ns)
        self.clock_read_ns = clock_read_cost_ns(self.clock._work)
        """What one read of the clock's work counter costs here (emulation overhead, runtime.overhead)."""
        self._closed = False
        self._alias = copies == "alias"
        self.timeline: list[tuple[int, int, int, str]] | None = None
        """When a list: (start_ns, end_ns, nbytes, direction) of every copy, for timelines
        (monotonic ns, placed as if no bookkeeping followed the submit)."""

    def set_link(self, link: LinkModel) -> None:
        self.link = link

    def _submit(self, src: "torch.Tensor | SimCopy", direction: str) -> SimCopy:
        # Training thread only (as the clock), so no lock; one FIFO per direction.
        now = self.clock.now_ns()
        start = max(now, self._free_at_ns[direction])
        if isinstance(src, SimCopy):  # fetching back a write-back: not before it is on the host
            nbytes = src.nbytes
            start = max(start, src.done_at_ns)
        else:
            nbytes = src.numel() * src.element_size()
        end = self._free_at_ns[direction] = start + self.link.copy_ns(nbytes)
        c = SimCopy(src, nbytes, self.clock, end)
        if self.timeline is not None:
            wall = time.monotonic_ns() - now
            self.timeline.append((start + wall, end + wall, nbytes, direction))
        if self._alias:
            c.result = src.result if isinstance(src, SimCopy) else src.detach()
            c.src = None  # type: ignore[assignment]
        else:
            self._jobs.put(c)
        return c

    def host_copy(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().clone()

    def copy_in(self, host: torch.Tensor) -> SimCopy:
        return self._submit(host, "H2D")

    def copy_out(self, dev: torch.Tensor) -> SimCopy:
        return self._submit(dev, "D2H")

    def ready(self, dev: torch.Tensor) -> SimCopy:
        """A copy already on the device (a parameter the optimizer stepped there): done, no link time."""
        c = SimCopy(dev, dev.numel() * dev.element_size(), self.clock, 0)
        c.result = dev
        return c

    def pending_host(self, copy: SimCopy) -> SimCopy:
        """What a later copy_in may read while a write-back is still queued."""
        return copy

    def wait(self, copy: SimCopy) -> tuple[torch.Tensor, int]:
        """Block (wall time) until the copy is done on the clock, which runs meanwhile;
        returns the tensor and that stall: exactly the copy time left, which is what the
        clock advances by (sleeping longer is not link time). Waiting for a real clone that
        runs behind the model first, and oversleeping, are the simulator's cost, not the
        link's: off the clock, not a stall (counted in `copy_lag_ns`)."""
        if copy.result is None:
            t0 = time.monotonic_ns()
            self.clock.pause()
            try:
                self.wait_copied(copy)
            finally:
                self.clock.resume()
            self.copy_lag_ns += time.monotonic_ns() - t0
        if copy.done():  # a hit: nothing to wait for, no stall to time
            return copy.result, 0  # type: ignore[return-value]
        t0 = time.monotonic_ns()
        left = max(0, copy.done_at_ns - self.clock.now_ns())
        with self.clock.running(advance_ns=left):
            sleep_until(t0 + left)
        assert copy.result is not None
        # The stall is the copy time left, on the clock and in the report; waking later than
        # asked (a busy machine) is the emulation's cost, like a clone behind the model.
        self.copy_lag_ns += max(0, time.monotonic_ns() - t0 - left)
        return copy.result, left

    def settle(self, copy: SimCopy) -> None:
        self.wait_copied(copy)

    def wait_copied(self, copy: SimCopy) -> None:
        """Block until the engine has made the copy's real clone (no clock accounting)."""
        with self._copied:
            self._waiting += 1
            try:
                while copy.result is None:
                    self._copied.wait()
            finally:
                self._waiting -= 1

    def _engine(self) -> None:
        while True:
            c = self._jobs.get()
            if c is None:
                return
            src = c.src
            if isinstance(src, SimCopy):  # fetching back a write-back queued before it (FIFO)
                src = src.result
            result = src.detach().clone()  # the real copy
            c.src = None  # type: ignore[assignment]
            with self._copied:  # under the lock: a waiter cannot miss it
                c.result = result
                if self._waiting:
                    self._copied.notify_all()

    def engine_cpu_ns(self) -> int:
        """CPU time of the copy-engine thread so far (its real clones), 0 where unreadable."""
        return self._engine_cpu() if self._engine_cpu is not None else 0

    def close(self) -> None:
        if not self._closed:
            self.engine_cpu_ns()  # read while the engine runs: the reader keeps it once it has exited
            self._closed = True
            self._jobs.put(None)
            self._thread.join(timeout=5)
            if self._engine_cpu is not None:  # the OS thread may still be exiting: its clock moves a
                final = self._engine_cpu()  # little after join(), so reports read twice would differ
                self._engine_cpu = lambda: final

    def describe_link(self) -> dict:
        """The link and the clock its copies run on (the report's `link`)."""
        return {**self.link.describe(), "copies": self.copies,
                "clock": "compute: the training thread's CPU time less the prefetcher's bookkeeping, plus stalls (runtime.link.ComputeClock)",
                "clock_rate": self.clock.rate, "off_clock_cpu_s": self.clock.off_clock_ns / 1e9,
                "copy_lag_s": self.copy_lag_ns / 1e9}

    def describe(self) -> dict:
        return {"device": self.name, "link": self.describe_link()}


# -- CUDA ---------------------------------------------------------------------------------
@dataclass(eq=False)
class CudaCopy:
    result: torch.Tensor
    event: "torch.cuda.Event"
    nbytes: int

    def done(self) -> bool:
        return self.event.query()


class CudaDevice:
    """Pinned host memory, a side stream for copies, events for completion.

    Stalls are measured on the GPU, not the host: `wait` makes the compute stream wait
    on the copy's event without blocking the host, so the time lost is the compute
    stream's, known only once it has run. Each wait on a copy still in flight is
    bracketed by two timing events on the compute stream (before and after
    `wait_event`); `collect_stall_ns` turns the finished pairs into nanoseconds later
    (at step ends and in the report), so the hot path has no host sync.
    """

    def __init__(self, device: torch.device | str | int = 0):
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA device requested but torch.cuda.is_available() is False")
        self.device = torch.device("cuda", torch.device("cuda", device).index if not isinstance(device, int) else device)
        self.name = f"cuda:{self.device.index}"
        self.copy_stream = torch.cuda.Stream(self.device)  # host to device
        self.out_stream = torch.cuda.Stream(self.device)  # device to host: overlaps the copies in (full duplex)
        self._stall_events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        """(before, after) timing events around each compute-stream wait, not yet read."""
        self.stall_waits = 0
        """Waits on a copy that was still in flight when the host issued them (timed)."""

    def host_copy(self, t: torch.Tensor) -> torch.Tensor:
        host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
        host.copy_(t)  # note: CPU-GPU sync point when t is on the device (done once, at wrap time)
        return host

    def copy_in(self, host: "torch.Tensor | CudaCopy") -> CudaCopy:
        if isinstance(host, CudaCopy):  # a write-back (pending_host): read it once it is written
            self.copy_stream.wait_event(host.event)
            host = host.result
        with torch.cuda.stream(self.copy_stream):
            dev = host.to(self.device, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(self.copy_stream)
        return CudaCopy(result=dev, event=ev, nbytes=host.numel() * host.element_size())

    def copy_out(self, dev: torch.Tensor) -> CudaCopy:
        # the write-back must see everything the compute stream did to `dev`
        self.out_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.out_stream):
            host = torch.empty(dev.shape, dtype=dev.dtype, device="cpu", pin_memory=True)
            host.copy_(dev, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(self.out_stream)
        dev.record_stream(self.out_stream)  # keep dev's memory until the copy has read it
        return CudaCopy(result=host, event=ev, nbytes=dev.numel() * dev.element_size())

    def ready(self, dev: torch.Tensor) -> CudaCopy:
        """A copy already on the device (a parameter the optimizer stepped there): done once
        the compute stream's work so far is."""
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(self.device))
        return CudaCopy(result=dev, event=ev, nbytes=dev.numel() * dev.element_size())

    def pending_host(self, copy: CudaCopy) -> CudaCopy:
        return copy  # copy_in waits for its event: the copy back is on the other stream

    def settle(self, copy: CudaCopy) -> None:
        copy.event.synchronize()  # note: CPU-GPU sync point, at close only

    def wait(self, copy: CudaCopy) -> tuple[torch.Tensor, int]:
        """The copy's tensor, usable on the compute stream. Returns 0 ns for a copy to the
        device: the stall is on the GPU and is added to the stall time by `collect_stall_ns`
        once known. A copy to the host (a gradient) blocks the host: the ns it waited."""
        stream = torch.cuda.current_stream(self.device)
        if not copy.result.is_cuda:  # a copy to the host: the host waits for it (timed here)
            t0 = time.monotonic_ns()
            copy.event.synchronize()  # note: CPU-GPU sync point: the CPU reads a written-back tensor or gradient
            return copy.result, time.monotonic_ns() - t0
        if copy.event.query():  # complete already: the compute stream cannot stall on it
            stream.wait_event(copy.event)
        else:  # in flight: time the compute stream's wait (no host sync)
            before, after = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            before.record(stream)
            stream.wait_event(copy.event)
            after.record(stream)
            self._stall_events.append((before, after))
            self.stall_waits += 1
        copy.result.record_stream(stream)
        return copy.result, 0

    def collect_stall_ns(self, block: bool = False) -> int:
        """Nanoseconds the compute stream spent in the timed waits that have finished
        since the last call. With `block`, waits for all of them first."""
        total_ms = 0.0
        keep = []
        for before, after in self._stall_events:
            if block:
                after.synchronize()  # note: CPU-GPU sync point (only at warm-up end and in the report)
            elif not after.query():
                keep.append((before, after))
                continue
            total_ms += before.elapsed_time(after)
        self._stall_events = keep
        return int(round(total_ms * 1e6))

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"device": self.name, "gpu": torch.cuda.get_device_name(self.device)}

"""The simulated device's copy timing: copies progress on the compute clock, not the wall."""

from __future__ import annotations

import time

import pytest
import torch

from predictor.interface import BasePolicy
from predictor.policies import make_policy
from runtime.device import SimulatedDevice
from runtime.link import ComputeClock, LinkModel
from runtime.prefetcher import prefetching

MB = 1_000_000


class Counter:
    """A clock (ns) the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1_000

    def __call__(self) -> int:
        return self.t


def spin(seconds: float) -> None:
    """Burn `seconds` of this thread's CPU time (work, unlike a sleep; however busy the machine)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_clock_counts_work_at_its_rate_not_wall_time():
    """Wall time without work (the job descheduled) is not compute; work advances the clock
    `rate` ns per ns, and changing the rate never makes the clock jump."""
    work, wall = Counter(), Counter()
    clock = ComputeClock(work, wall)
    t0 = clock.now_ns()
    wall.t += 1_000_000  # other jobs hold the cores
    assert clock.now_ns() == t0
    work.t += 300
    assert clock.now_ns() == t0 + 300
    clock.set_rate(4.0)
    assert clock.now_ns() == t0 + 300
    work.t += 100
    assert clock.now_ns() == t0 + 700


def test_clock_stands_still_during_bookkeeping():
    """Work inside `excluding(...)` does not advance the clock; work outside does."""
    work = Counter()
    clock = ComputeClock(work, work)
    t0 = clock.now_ns()

    def bookkeeping() -> int:
        work.t += 700  # Python overhead of the prefetcher
        return clock.now_ns()

    assert clock.excluding(bookkeeping)() == t0
    assert clock.now_ns() == t0 and clock.off_clock_ns == 700
    work.t += 300  # compute
    assert clock.now_ns() == t0 + 300


def test_clock_runs_at_wall_speed_during_a_stall_inside_bookkeeping():
    """A stall advances the clock by its wall time (not by the work done meanwhile), even
    inside an entry point; the bookkeeping around it does not."""
    work, wall = Counter(), Counter()
    clock = ComputeClock(work, wall)
    clock.set_rate(2.0)
    t0 = clock.now_ns()
    clock.pause()
    work.t += 100
    with clock.running():
        wall.t += 50  # waiting for a copy: the copy engine runs
        work.t += 7  # a little CPU while waiting
    work.t += 100
    clock.resume()
    assert clock.now_ns() == t0 + 50 and clock.off_clock_ns == 200


def test_copy_done_at_start_plus_link_time_on_the_clock():
    """A copy submitted at clock time t is done exactly at t + latency + nbytes/bandwidth;
    the next one starts when it ends (FIFO); bookkeeping does not bring either closer."""
    work = Counter()
    dev = SimulatedDevice(LinkModel(bandwidth_bytes_per_s=1e9, latency_s=1e-6), clock=ComputeClock(work, work))
    try:
        t = dev.clock.now_ns()
        a = dev.copy_in(torch.zeros(MB // 4))  # 1 MB: 1 ms + 1 µs
        b = dev.copy_in(torch.zeros(MB // 4))
        dev.wait_copied(a), dev.wait_copied(b)  # the real clones are done; the modelled copies are not
        d = a.done_at_ns - t
        assert abs(d - 1_001_000) <= 1 and b.done_at_ns == a.done_at_ns + d  # int ns of a float
        dev.clock.excluding(lambda: setattr(work, "t", work.t + 10_000_000))()  # 10 ms of bookkeeping
        assert not a.done()
        work.t += d - 1
        assert not a.done()
        work.t += 1
        assert a.done() and not b.done()
        work.t += d
        assert b.done()
    finally:
        dev.close()


def test_alias_copies_keep_the_link_times_and_make_no_copy():
    """copies="alias" (benchmarks/overhead.py's measure of the copy engine's cost): each copy
    is done when the link model says, as with real clones, but its result is the source
    itself and the copy-engine thread does no work; an unknown mode is refused."""
    work = Counter()
    link = LinkModel(bandwidth_bytes_per_s=1e9, latency_s=1e-6)
    devs = [SimulatedDevice(link, clock=ComputeClock(work, work), copies=c) for c in ("clone", "alias")]
    try:
        src = torch.randn(MB // 4)
        (c_clone, c_alias) = (d.copy_in(src) for d in devs)
        assert c_alias.done_at_ns == c_clone.done_at_ns
        devs[0].wait_copied(c_clone)
        assert c_clone.result.data_ptr() != src.data_ptr()
        assert c_alias.copied() and c_alias.result.data_ptr() == src.data_ptr()
        back = devs[1].copy_in(devs[1].pending_host(devs[1].copy_out(c_alias.result)))  # a write-back, fetched again
        assert back.result.data_ptr() == src.data_ptr()
        assert devs[1].describe_link()["copies"] == "alias" and devs[0].describe_link()["copies"] == "clone"
    finally:
        for d in devs:
            d.close()
    with pytest.raises(ValueError, match="copies"):
        SimulatedDevice(link, copies="dma")


def test_late_read_stalls_wall_time_for_the_copy_time_left():
    """Bookkeeping after a prefetch leaves its copy in flight (late, not a hit); the wait
    then blocks in wall time for the whole copy and the copy is done after it."""
    dev = SimulatedDevice(LinkModel(bandwidth_bytes_per_s=50 * MB, latency_s=0.0))  # 4 MB: 80 ms
    try:
        src = torch.arange(MB, dtype=torch.float32)

        def prefetch_then_bookkeeping():
            c = dev.copy_in(src)
            dev.wait_copied(c)
            spin(0.12)  # 120 ms of bookkeeping: on the wall clock or as compute the copy would be done
            return c

        copy = dev.clock.excluding(prefetch_then_bookkeeping)()
        assert not copy.done()
        t0 = time.monotonic_ns()
        out, waited = dev.clock.excluding(dev.wait)(copy)  # as the store waits: inside an entry point
        assert 70e6 <= waited <= time.monotonic_ns() - t0
        assert copy.done() and torch.equal(out, src)
    finally:
        dev.close()


def test_a_clone_behind_the_model_is_neither_clock_time_nor_stall():
    """When the real clone runs behind the link model (a starved copy thread), the read
    waits for it off the clock: the copy counts as done on time (a hit), the wait is
    reported as copy lag, not as stall. (Wall time as the work counter: the rule holds
    whatever the counter.)"""
    dev = SimulatedDevice(LinkModel(bandwidth_bytes_per_s=1e13, latency_s=0.0), clock=ComputeClock(time.monotonic_ns))
    try:
        big = torch.ones(50 * MB)  # 200 MB: its real clone takes far longer than the model's ~20 µs
        copy = dev.copy_in(big)
        time.sleep(0.001)
        assert copy.done() and not copy.copied()
        c0 = dev.clock.now_ns()
        out, waited = dev.wait(copy)
        lag = dev.copy_lag_ns
        assert lag > 5e6 and waited < lag / 2  # the lag is not stall
        assert dev.clock.now_ns() - c0 < waited + lag / 2  # nor clock time
        assert out.data_ptr() != big.data_ptr() and bool(out[-1] == 1)
    finally:
        dev.close()


class SlowReplay(BasePolicy):
    """Replay whose `observe` burns `cpu_s` per event: Python overhead in the policy."""

    def __init__(self, cpu_s: float) -> None:
        self.inner = make_policy("replay", lookahead=64)
        self.name = "replay"
        self.cpu_s = cpu_s
        self.calls = 0

    def start(self, tensors):
        self.inner.start(tensors)

    def observe(self, *event):
        self.calls += 1
        spin(self.cpu_s)
        return self.inner.observe(*event)

    def predicted_next_use(self, tensor_id: int) -> float:
        return self.inner.predicted_next_use(tensor_id)


def _hit_rate(cpu_s: float) -> tuple[float, float, int]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(256, 256) for _ in range(6)))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    pol = SlowReplay(cpu_s)
    # 256 KiB per weight at 25 MB/s: ~10 ms a copy, far longer than the compute between reads
    link = LinkModel(bandwidth_bytes_per_s=25 * MB, latency_s=0.0)
    with prefetching(model, opt, policy=pol, budget=1.0, device="simulated", link=link) as pf:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(8, 256)).sum().backward()
            opt.step()
    return pf.report()["hit_rate"], pf.device.clock.off_clock_ns / 1e9, pol.calls


def test_policy_overhead_buys_copies_no_time():
    """A policy that burns 8 ms of CPU per event gets no more hits than a fast one: that
    work is off the copy clock (counted, it would turn late reads into hits)."""
    fast, _, _ = _hit_rate(0.0)
    slow, off_s, calls = _hit_rate(0.008)
    assert off_s >= 0.008 * calls
    assert slow <= fast + 0.15


def _one_step(pf_kwargs: dict) -> tuple:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with prefetching(model, opt, policy="none", budget=1.0, device="simulated", **pf_kwargs) as pf:
        model(torch.randn(4, 256)).sum().backward()
        opt.step()  # step 0 ends: the link and the clock's rate are fixed
    return pf, pf.store.managed_bytes()


def test_link_and_clock_rate_from_the_all_resident_step():
    """The link: all managed bytes in link_ratio x the all-resident step's wall time; the
    clock's rate: that step's wall time per CPU second, so CPU work is counted in it."""
    pf, managed = _one_step(dict(baseline_step_time_s=0.02, baseline_step_cpu_s=0.01, link_ratio=0.5))
    assert pf.device.link.bandwidth_bytes_per_s == pytest.approx(managed / (0.5 * 0.02))
    assert pf.device.clock.rate == pytest.approx(2.0)


def test_twin_steps_outside_compute_give_copies_no_time():
    """prefetch run's all-resident twin, stepped between the job's steps, is off the clock."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256))
    with prefetching(model, None, policy="none", budget=1.0, device="simulated") as pf:
        c0, t0 = pf.device.clock.now_ns(), time.monotonic_ns()
        pf.outside_compute(spin)(0.05)
        assert time.monotonic_ns() - t0 >= 50e6 and pf.device.clock.now_ns() - c0 < 20e6


def test_default_clock_counts_neither_idle_time_nor_the_copy_engine():
    """The simulated device's own clock: a sleeping job (or one descheduled) does no
    compute, and the copy-engine thread's CPU (the real clones) is not the job's."""
    dev = SimulatedDevice(LinkModel(bandwidth_bytes_per_s=1e13, latency_s=0.0))
    try:
        big = torch.ones(50 * MB)
        c0, t0 = dev.clock.now_ns(), time.monotonic_ns()
        copy = dev.copy_in(big)  # a 200 MB clone on the engine thread
        time.sleep(0.05)
        dev.wait_copied(copy)
        assert time.monotonic_ns() - t0 >= 50e6 and dev.clock.now_ns() - c0 < 10e6
    finally:
        dev.close()


def test_default_clock_counts_only_the_training_threads_work():
    """Another thread's CPU (a learned run's ZeroMQ I/O threads, a data loader's threads) is
    not the job's compute: the clock stands while one burns a core and this thread waits."""
    import threading

    dev = SimulatedDevice(LinkModel(bandwidth_bytes_per_s=1e13, latency_s=0.0))
    stop = threading.Event()

    def burn() -> None:
        a = torch.ones(256, 256)
        while not stop.is_set():
            a @ a  # torch releases the GIL: this thread computes while the other one waits
    other = threading.Thread(target=burn, daemon=True)
    try:
        c0 = dev.clock.now_ns()
        other.start()
        stop.wait(0.2)
        stop.set()
        other.join()
        assert dev.clock.now_ns() - c0 < 20e6  # ~200 ms of the other thread's CPU before
    finally:
        stop.set()
        dev.close()

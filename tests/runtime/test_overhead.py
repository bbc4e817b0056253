"""The overhead split: what it charges to bookkeeping, stall and the copy clock."""

from __future__ import annotations

import pytest
import torch

from predictor.interface import BasePolicy
from predictor.policies import make_policy
from runtime.link import ComputeClock, LinkModel
from runtime.prefetcher import prefetching
from runtime.recorder import Recorder
from runtime.trace_format import load_trace
from tests.runtime.test_simulated_device import Counter, SlowReplay

MB = 1_000_000


def test_hook_time_is_off_the_clock_and_its_stall_is_not_bookkeeping():
    """Inside a hook the clock stands still, except during a stall, which advances it at
    wall speed; hot_leave returns the hook's wall time less that stall."""
    work, wall = Counter(), Counter()
    clock = ComputeClock(work, wall)
    t0 = clock.now_ns()
    clock.hot_enter()
    work.t += 100
    wall.t += 100  # bookkeeping
    assert clock.now_ns() == t0
    with clock.running():
        wall.t += 50  # waiting for a copy
    assert clock.now_ns() == t0 + 50
    work.t += 30
    wall.t += 30
    assert clock.hot_leave() == 130
    assert clock.now_ns() == t0 + 50
    work.t += 20  # compute
    assert clock.now_ns() == t0 + 70


def test_hook_inside_an_excluded_twin_step_is_not_bookkeeping():
    """A saved-tensor hook firing in the twin's step (already off the clock) is not ours to charge."""
    work, wall = Counter(), Counter()
    clock = ComputeClock(work, wall)
    clock.pause()
    clock.hot_enter()
    wall.t += 100
    work.t += 100
    assert clock.hot_leave() == 0
    clock.resume()


def _split(policy, link: LinkModel | None = None, steps: int = 3) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(256, 256) for _ in range(4)))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    kwargs = {"link": link} if link is not None else {}
    # host stepping: every step re-fetches the parameters (at budget 1 auto keeps them all resident)
    with prefetching(model, opt, policy=policy, budget=1.0, device="simulated", optimizer_placement="host",
                     **kwargs) as pf:
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(8, 256)).sum().backward()
            opt.step()
    return pf.report()


def test_policy_cpu_is_counted_as_bookkeeping():
    """1 ms of policy CPU per managed access shows up as >= 1 ms of bookkeeping per access."""
    o = _split(SlowReplay(0.001))["overhead"]
    assert o["managed_accesses"] > 0
    assert o["bookkeeping_us_per_access"] >= 1000
    fast = _split(make_policy("replay", lookahead=64))["overhead"]
    assert fast["bookkeeping_us_per_access"] < 500


def test_stalls_are_not_counted_as_bookkeeping():
    """A link so slow every read waits: the wait is stall, not bookkeeping."""
    r = _split("none", link=LinkModel(bandwidth_bytes_per_s=20 * MB, latency_s=0.0))
    o = r["overhead"]
    assert o["stall_s"] > 0.01  # 256 KiB at 20 MB/s: ~13 ms per weight read
    assert o["bookkeeping_s"] < 0.25 * o["stall_s"]


def test_store_sees_the_managed_stream_the_recorder_logs():
    """The store's sink gets only managed events, and exactly the managed events a
    recording of the same job logs, in the same order (the policy's stream is unchanged)."""

    class Logging(BasePolicy):
        def __init__(self) -> None:
            self.inner = make_policy("replay", lookahead=64)
            self.name = "replay"
            self.events: list[tuple[int, int, int]] = []

        def start(self, tensors):
            self.keys = tensors.keys
            self.inner.start(tensors)

        def observe(self, step, micro_step, phase, access, tensor_id):
            self.events.append((phase, access, tensor_id))
            return self.inner.observe(step, micro_step, phase, access, tensor_id)

        def predicted_next_use(self, tensor_id):
            return self.inner.predicted_next_use(tensor_id)

    def job():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 256),
                                    torch.nn.LayerNorm(256))
        return model, torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(model, opt):
        opt.zero_grad()
        model(torch.randn(64, 256)).square().mean().backward()
        opt.step()

    import tempfile

    model, opt = job()
    with tempfile.TemporaryDirectory() as tmp:
        rec = Recorder(model, opt, tmp, workload="tiny", seed=0).start()
        for _ in range(2):
            step(model, opt)
        rec.close()
        trace = load_trace(rec.stem).managed()
        keys = trace.tensors.column("key").to_pylist()
        ev = trace.events
        recorded = [(keys[t], p, a) for t, p, a in zip(ev.column("tensor_id").to_pylist(),
                                                       ev.column("phase").to_pylist(), ev.column("access").to_pylist())]
    pol = Logging()
    model, opt = job()
    with prefetching(model, opt, policy=pol, budget=1.0, device="simulated",
                     optimizer_placement="host") as pf:  # the policy sees every step (not going resident)
        for _ in range(2):
            step(model, opt)
        live_keys = pf.tracker.tensor_keys
    live = [(live_keys[t], p, a) for p, a, t in pol.events]
    assert live and live == recorded


def test_an_interrupt_inside_a_hook_is_raised_when_the_outermost_hook_returns():
    """HookGuard: a SIGINT/SIGTERM arriving inside nested hooks is held until the outermost returns, then raised."""
    from runtime.overhead import HookGuard, HookTimer

    timer, seen = HookTimer(), []

    def inner():
        HookGuard.interrupt(KeyboardInterrupt("signal 2"))  # what the launcher's handler does
        seen.append("inner finished")

    wrapped_inner = timer.wrap(inner)

    def outer():
        wrapped_inner()
        seen.append("outer finished")

    with pytest.raises(KeyboardInterrupt, match="signal 2"):
        timer.wrap(outer)()
    assert seen == ["inner finished", "outer finished"] and HookGuard.depth == 0 and HookGuard.pending is None
    with pytest.raises(KeyboardInterrupt):  # outside any hook: at once
        HookGuard.interrupt(KeyboardInterrupt("signal 15"))

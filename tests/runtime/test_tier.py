"""runtime.tier: one device tier; the live store and the simulator are engines over it, not copies of it."""

from __future__ import annotations

import pytest

from predictor.interface import NO_PREDICTION, BasePolicy
from prefetch.sim_trace import _TraceTier
from runtime.store import TensorStore
from runtime.tier import HIT, LATE, MISS, WRITE, DeviceTier
from runtime.trace_format import Access, Kind

RULES = ("event", "request", "write", "free", "optimizer_begin", "optimizer_end", "want", "drain", "make_room",
         "_room_from_heap", "_rekey", "_place", "evict", "begin_measurement", "measured", "totals",
         "drop_params", "grad_write", "grad_release", "grad_backward_end", "grads_finish", "grad_on_host",
         "grad_last_micro", "measured_traffic", "go_resident", "_hold", "_params_for_step", "hint", "take_hint")
"""The tier's rules: written once, in DeviceTier."""
ENGINE = ("_start_copy", "_land", "_fetch", "_finish", "_write_back", "_drop", "_busy", "_eta", "describe",
          "_grad_out", "_grad_done", "_grad_wait", "_keep_ready", "_kept", "_park")

R, W = int(Access.READ), int(Access.WRITE)
P, A = int(Kind.PARAMETER), int(Kind.ACTIVATION)


@pytest.mark.parametrize("engine", [TensorStore, _TraceTier])
def test_engines_override_time_not_rules(engine):
    """The live store and the simulator's engine subclass the tier and define none of its rules, only the engine hooks."""
    assert issubclass(engine, DeviceTier)
    for name in RULES:
        assert name in DeviceTier.__dict__, name
        assert engine.__dict__.get(name) is None, f"{engine.__name__} redefines the tier's rule {name}"
    assert {n for n in ENGINE if n in engine.__dict__} >= {"_start_copy", "_land", "_fetch", "_finish",
                                                          "_grad_out", "_grad_done", "_grad_wait"}


class Clock(DeviceTier):
    """The smallest engine: every copy takes `copy_ns`, time moves only when the test says."""

    def __init__(self, policy, budget, copy_ns=10):
        super().__init__(policy, budget)
        self.now, self.copy_ns, self.free_at = 0, copy_ns, 0

    def _start_copy(self, tid):
        self.free_at = max(self.free_at, self.now) + self.copy_ns
        return self.free_at

    def _land(self, tid, ready):
        if ready <= self.now:
            return None
        waited, self.now = ready - self.now, ready
        return waited

    def _fetch(self, tid):
        return self._finish(tid, self._start_copy(tid))

    def _finish(self, tid, ready):
        waited = max(0, ready - self.now)
        self.now += waited
        return waited


class Next(BasePolicy):
    """Asks for tensor t + 1 after each read of t; predicts nothing (LRU eviction)."""

    def observe(self, step, micro_step, phase, access, tensor_id):
        return [tensor_id + 1] if access == R else []

    def predicted_next_use(self, tensor_id):
        return NO_PREDICTION


class Nothing(Next):
    """Asks for nothing: every absent read is a miss."""

    def observe(self, step, micro_step, phase, access, tensor_id):
        return []


def _tier(budget=300, copy_ns=10):
    tier = Clock(Next(), budget, copy_ns)
    tier.declare_all([P, P, P, A], [100, 100, 100, 100], [True, True, True, True])
    return tier


def test_a_prefetch_is_a_hit_once_landed_late_before():
    """Read 0 (miss) prefetches 1; read 1 after the copy's time is a hit, read 2 right away is late, then stalls."""
    tier = _tier()
    assert tier.event(0, 0, 0, R, 0) == MISS and tier.stall_ns == 10
    tier.now += 10  # compute: tensor 1's copy (issued at 10, done at 20) lands
    assert tier.event(0, 0, 0, R, 1) == HIT  # and prefetches 2, done at 30
    assert tier.event(0, 0, 0, R, 2) == LATE and tier.stall_ns == 20
    assert (tier.hits, tier.late, tier.misses, tier.prefetch_used) == (1, 1, 1, 2)


@pytest.mark.parametrize("policy", [Next(), Nothing()], ids=["prefetching", "none"])
def test_budget_holds_and_lru_gives_way(policy):
    """Two tensors fit; the third read (a prefetch or a miss) evicts the least recently used; the peak never passes the budget."""
    tier = _tier(budget=200)
    tier.policy = policy
    for t in (0, 1, 2):
        tier.event(0, 0, 0, R, t)
        tier.now += 100
    assert tier.used <= 200 and tier.peak <= 200 and tier.evictions >= 1
    assert 0 not in tier.resident and 2 in tier.resident


def test_an_activation_is_written_freed_and_never_read_unwritten():
    """A write places an activation, its read frees it; a read of one never written is an error naming it."""
    tier = _tier()
    assert tier.event(0, 0, 0, W, 3) == WRITE
    tier.write(3, 100)
    assert 3 in tier.resident and tier.used == 100
    assert tier.event(0, 0, 1, R, 3) == HIT
    tier.free(3)
    assert 3 not in tier.resident and tier.used == 0
    with pytest.raises(ValueError, match="tensor #3 read before any write"):
        tier.event(1, 0, 0, R, 3)


def test_optimizer_drops_parameter_copies_not_as_evictions():
    """The optimizer step drops every parameter's device copy (waiting for one in flight) and counts no eviction."""
    tier = _tier()
    tier.event(0, 0, 0, R, 0)  # prefetches 1, in flight
    tier.optimizer_begin()
    assert not tier.resident and tier.used == 0 and tier.evictions == 0 and tier.optimizer_wait_ns == 10
    tier.optimizer_end()
    assert tier.step_start == tier.reads == 1


class Ahead(BasePolicy):
    """After each read, asks for `ids` due at `due` (absolute read counts), soonest first."""

    def __init__(self, ids, due):
        self.ids, self.due, self.now = list(ids), dict(zip(ids, due)), 0

    def observe(self, step, micro_step, phase, access, tensor_id):
        if access == R:
            self.now += 1
        return self.ids

    def predicted_next_use(self, tensor_id):
        d = self.due.get(tensor_id)
        return NO_PREDICTION if d is None else float(max(1, d - self.now))


def _in_flight(tier):
    return [t for t in tier.resident if tier.inflight[t] is not None]


def _window_tier(policy, share, n=6):
    tier = Clock(policy, 1000, copy_ns=10)
    tier.ahead_share = share
    tier.declare_all([P] * n, [100] * n, [True] * n)
    return tier


def test_the_window_bounds_unread_prefetches_and_a_read_opens_it():
    """Budget 1000, window 0.3: at most 300 bytes of prefetches issued and not yet read. The
    rest wait in the queue, soonest first, and each read of a prefetch lets the next one go."""
    tier = _window_tier(Ahead([1, 2, 3, 4, 5], [2, 3, 4, 5, 6]), 0.3)
    tier.event(0, 0, 0, R, 0)
    assert set(_in_flight(tier)) == {1, 2, 3} and tier.ahead == 300 and tier.held_ahead >= 1
    tier.now += 100
    assert tier.event(0, 0, 0, R, 1) == HIT
    assert set(_in_flight(tier)) == {2, 3, 4} and tier.ahead == 300
    off = _window_tier(Ahead([1, 2, 3, 4, 5], [2, 3, 4, 5, 6]), 0.0)  # no window: all at once
    off.event(0, 0, 0, R, 0)
    assert set(_in_flight(off)) == {1, 2, 3, 4, 5} and off.held_ahead == 0


def test_an_overdue_prefetch_leaves_the_window():
    """A prefetch whose predicted read has passed (a wrong guess) no longer holds the window shut:
    it stays resident, the requests behind it go."""
    tier = _window_tier(Ahead([5, 1, 2], [2, 3, 4]), 0.1)  # room for one unread prefetch
    tier.event(0, 0, 0, R, 0)  # 5 is issued (due at read 2); 1 and 2 wait
    assert _in_flight(tier) == [5] and tier.ahead == 100
    tier.now += 100
    tier.event(0, 0, 0, R, 3)  # read 2 is not 5: at read 3, 5 is overdue
    tier.event(0, 0, 0, R, 4)
    assert 5 in tier.resident and tier.pref[5] and not tier.inwin[5]
    assert 1 in tier.resident and tier.pref[1]  # went once 5 left the window


def test_a_paced_policy_is_exempt():
    """The oracle sets its own window (`paced`): the tier's does not hold its requests."""
    policy = Ahead([1, 2, 3, 4, 5], [2, 3, 4, 5, 6])
    policy.paced = True
    tier = _window_tier(policy, 0.3)
    tier.event(0, 0, 0, R, 0)
    assert set(_in_flight(tier)) == {1, 2, 3, 4, 5} and tier.held_ahead == 0


class Hinted(Ahead):
    """Ahead, and takes router hints: requests what will run."""

    def hint(self, want, skip):
        return list(want)


def test_a_router_hint_requests_what_runs_and_drops_what_will_not():
    """A policy that takes hints: the experts the router chose are requested, the queued
    requests for those it did not choose are dropped; a policy that takes none changes nothing."""
    tier = _window_tier(Hinted([1, 2], [5, 6]), 0.1)  # the window lets one prefetch go: 2 waits in the queue
    tier.event(0, 0, 0, R, 0)
    assert _in_flight(tier) == [1] and 2 in tier.queued
    tier.hint([3], [2, 4])  # 3 runs, 2 and 4 do not
    assert 2 not in tier.queued and 3 in tier.queued and tier.hint_cancelled == 1 and tier.hints_taken == 1
    tier.now += 100
    tier.event(0, 0, 0, R, 1)  # 1 read: the window opens for 3, not 2
    assert 3 in tier.resident and 2 not in tier.resident

    plain = _window_tier(Ahead([1, 2], [5, 6]), 0.1)  # BasePolicy.hint: None, hints ignored
    plain.event(0, 0, 0, R, 0)
    plain.hint([3], [2, 4])
    assert 2 in plain.queued and 3 not in plain.queued and plain.hints_taken == plain.hint_cancelled == 0

"""prefetch.simulate: hand-computed traces for the live store's rules, warm-up, budgets, determinism, the CLI.

Hand-computed cases count bytes and nanoseconds in units of K = 1000 (a managed tensor
has at least 64 KiB): tensor sizes are given in kB, a link of 1 byte/ns with no latency
copies a 100 kB tensor in 100 us, and there are 1000 us of compute between consecutive
events of a step, of any kind (0 before a step's first event). Docstrings use these
units. Outcome codes per managed event: HIT 0, LATE 1, MISS 2, WRITE 3. Predictions and
dues count managed reads.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from predictor.interface import NO_PREDICTION, BasePolicy
from prefetch.cli import main as cli_main
from prefetch.oracle import OraclePolicy
from prefetch.simulate import HIT, LATE, MISS, WRITE, simulate, simulate_like_run
from runtime.link import LinkModel
from runtime.trace_format import MIN_MANAGED_BYTES, Access, Kind, Phase, load_trace
from runtime.trace_writer import TraceWriter

R, W = int(Access.READ), int(Access.WRITE)
P, A, G = Kind.PARAMETER, Kind.ACTIVATION, Kind.GRADIENT
OPT, BWD = Phase.OPTIMIZER, Phase.BACKWARD
K = 1000
LINK = LinkModel(bandwidth_bytes_per_s=1e9, latency_s=0.0)  # 100 kB -> 100 us


def write_trace(stem, tensors, steps, dt=1000, gap=0, modules=None):
    """tensors: [(key, Kind, kB[, module path])]; steps: per step [(access, tensor id[, phase[, module
    path]])], dt us apart, the next step `gap` us after a step's last event; `modules`: the manifest's
    module paths (an event's module defaults to its tensor's)."""
    modules = modules or []
    w = TraceWriter(stem, {"architecture": "hand", "model_class": "Hand", "modules": modules})
    for i, (key, kind, nb, *mod) in enumerate(tensors):
        w.add_tensor(dict(tensor_id=i, key=key, kind=int(kind), shape=[nb * K], dtype="uint8", nbytes=nb * K,
                          module=mod[0] if mod else "", layer=-1))
    start = 0
    for s, events in enumerate(steps):
        for j, ev in enumerate(events):
            access, tid = ev[0], ev[1]
            phase = ev[2] if len(ev) > 2 else Phase.FORWARD
            mod = ev[3] if len(ev) > 3 else (tensors[tid][3] if len(tensors[tid]) > 3 else None)
            w.add_event((s, 0, j, int(phase), int(tensors[tid][1]), int(access), tid, tensors[tid][2] * K,
                         start + j * dt * K, modules.index(mod) if mod else -1, -1))
        start += ((len(events) - 1) * dt + gap) * K
    w.close()
    return load_trace(stem)


class Fixed(BasePolicy):
    """Test policy: asks for the same ids after every event, with fixed predictions; records what it saw."""

    name = "fixed"

    def __init__(self, requests=(), predictions=None):
        self.requests, self.predictions = list(requests), dict(predictions or {})
        self.seen = []

    def start(self, tensors):
        self.seen = []

    def observe(self, step, micro_step, phase, access, tensor_id):
        self.seen.append(tensor_id)
        return self.requests

    def predicted_next_use(self, tensor_id):
        return self.predictions.get(tensor_id, NO_PREDICTION)


def none():
    """Never prefetches, no predictions: LRU eviction."""
    return Fixed()


@pytest.fixture
def cycle(tmp_path):
    """Three 100 kB parameters read A, B, C in each of 3 steps (no optimizer events)."""
    return write_trace(tmp_path / "cycle", [("A", P, 100), ("B", P, 100), ("C", P, 100)], [[(R, 0), (R, 1), (R, 2)]] * 3)


def test_none_cycle_under_lru_misses_everything(cycle):
    """Budget 2 of 3, no prefetch: LRU evicts the next one needed (the last read is spared), so every read misses.

    Step 0: A, B miss (100 us each); C misses and evicts A. Each later step: A evicts B,
    B evicts C, C evicts A: 3 misses, 300 us of stall, 3 evictions; 2000 us of compute.
    """
    r = simulate(cycle, none(), budget=200 * K, link=LINK)
    assert r.outcomes.tolist() == [MISS] * 9
    s = r.stats
    assert (s.accesses, s.hits, s.late, s.misses, s.stall_ns) == (6, 0, 0, 6, 600 * K)
    assert (s.evictions, s.bytes_copied, s.bytes_written_back, s.prefetch_issued) == (6, 600 * K, 0, 0)
    assert (r.warmup.accesses, r.warmup.misses, r.warmup.stall_ns, r.warmup.evictions) == (3, 3, 300 * K, 1)
    assert (r.steps, r.measured_ns, r.baseline_ns) == (2, 4600 * K, 4000 * K)
    assert r.step_time_s == pytest.approx(2300e-6) and r.baseline_step_time_s == pytest.approx(2000e-6)
    assert r.slowdown == pytest.approx(1.15)
    assert r.peak_device_bytes == 200 * K and r.budget_bytes == 200 * K and r.managed_bytes == 300 * K


def test_unmanaged_tensors_are_invisible_but_keep_their_time(tmp_path):
    """Small tensors (a small parameter's gradient too) are dropped: policies never see them, they take
    no budget, their time stays. (A managed parameter's gradient is moved: tests/prefetch/test_sim_gradients.py.)

    Per step: P read at 0, the 1 kB bias b read at 1000, G written at 2000 and read by the
    optimizer at 3000, P updated at 4000 (managed events: P's read and P's write). Budget 1.0
    is P's 100 kB. The optimizer step (pre-hook at 2000) drops P; with a prediction it is
    queued again and fetched at the post-hook (3000), so the next step's read hits; without
    a prediction it misses.
    """
    assert 1 * K < MIN_MANAGED_BYTES <= 100 * K
    trace = write_trace(tmp_path / "grads", [("P", P, 100), ("G", G, 1), ("b", P, 1)],
                        [[(R, 0), (R, 2), (W, 1, BWD), (R, 1, OPT), (W, 0, OPT)]] * 3)
    pol = Fixed(predictions={0: 1.0})
    r = simulate(trace, pol, budget=1.0, link=LINK)
    assert pol.seen == [0, 0] * 3
    assert (r.managed_bytes, r.budget_bytes, r.events) == (100 * K, 100 * K, 6)
    assert r.outcomes.tolist() == [MISS, WRITE] + [HIT, WRITE] * 2
    s = r.stats
    assert (s.accesses, s.hits, s.stall_ns, s.evictions, s.prefetch_issued, s.prefetch_used) == (2, 2, 0, 0, 2, 1)
    assert (r.warmup.prefetch_issued, r.warmup.prefetch_used) == (1, 1)  # read after warm-up: credited to it
    assert (r.measured_ns, r.baseline_ns) == (8000 * K, 8000 * K)
    # copying the 100 kB managed takes 0.5 x the 4000 us step: 100 kB / 2000 us
    assert simulate(trace, none(), budget=1.0).link["bandwidth_GBps"] == pytest.approx(100 / 2000)
    lru = simulate(trace, none(), budget=1.0, link=LINK)
    assert lru.outcomes.tolist() == [MISS, WRITE] * 3
    assert (lru.stats.misses, lru.stats.stall_ns, lru.stats.evictions, lru.measured_ns) == (2, 200 * K, 0, 8200 * K)


def test_optimizer_drop_waits_for_copies_and_refetches_evicted_tensors_requeue(tmp_path):
    """Eviction re-queues a predicted tensor, refusal spares tensors predicted sooner, the optimizer
    step waits for a parameter copy in flight (step time, not stall) and refetches after the update.

    Parameters A, B, C (100 kB), budget 200 kB, predictions A 1, B 2, C 3 reads, no requests; per
    step reads A, B, C at 0/1000/2000, optimizer writes at 3000/4000/5000 (pre-hook at 2000,
    post-hook at 3000). Step 0: A, B, C miss; C's miss evicts A (B was read last), queued
    again due 3 and fetched at once (2300-2400) by evicting B (due 5; nothing evictable for
    it). The optimizer drops C, waits 100 us for A's copy and drops it; A, B are fetched
    after the update (3400-3600), C is refused (both in flight). Each later step: A, B hit;
    C misses (100 us) evicting A, which comes back evicting B; the optimizer waits 100 us
    for A and refetches A and B. Per measured step 3 prefetches, 1 used, 2 evictions.
    """
    trace = write_trace(tmp_path / "opt", [("A", P, 100), ("B", P, 100), ("C", P, 100)],
                        [[(R, 0), (R, 1), (R, 2), (W, 0, OPT), (W, 1, OPT), (W, 2, OPT)]] * 3)
    # no prefetch window (ahead_share=0): the hand count is of the rules above (the window: tests/runtime/test_tier.py)
    r = simulate(trace, Fixed(predictions={0: 1.0, 1: 2.0, 2: 3.0}), budget=200 * K, link=LINK, ahead_share=0)
    step = [HIT, HIT, MISS, WRITE, WRITE, WRITE]
    assert r.outcomes.tolist() == [MISS, MISS, MISS, WRITE, WRITE, WRITE] + step + step
    s = r.stats
    assert (s.accesses, s.hits, s.late, s.misses, s.stall_ns) == (6, 4, 0, 2, 200 * K)
    assert (s.prefetch_issued, s.prefetch_used, s.evictions, s.bytes_copied, s.bytes_written_back) == \
        (6, 2, 4, 800 * K, 0)
    assert r.optimizer_wait_ns == 200 * K and r.overcommits == 0 and r.peak_device_bytes == 200 * K
    assert (r.measured_ns, r.baseline_ns) == (10400 * K, 10000 * K)
    assert (r.warmup.prefetch_issued, r.warmup.prefetch_used, r.warmup.evictions) == (3, 2, 2)


def test_next_step_parameter_requests_wait_for_the_optimizer(tmp_path):
    """A parameter queued for a read beyond this step's share of reads is held until the optimizer
    step is done (a copy before it would be thrown away), then fetched.

    Parameters A, B, C (100 kB), budget 200 kB, A predicted 2 reads away, B and C not at all.
    Step 0 (no previous step to size it): C's miss evicts A, queued again and fetched at once
    (evicting B), only for the optimizer to wait for it and drop it; it is fetched again after
    the update. Each later step (3 reads): A hits; B and C miss; C's miss evicts A, due 2
    reads later, in the next step: held, and fetched once, after the update.
    """
    trace = write_trace(tmp_path / "defer", [("A", P, 100), ("B", P, 100), ("C", P, 100)],
                        [[(R, 0), (R, 1), (R, 2), (W, 0, OPT), (W, 1, OPT), (W, 2, OPT)]] * 3)
    r = simulate(trace, Fixed(predictions={0: 2.0}), budget=200 * K, link=LINK)
    step = [HIT, MISS, MISS, WRITE, WRITE, WRITE]
    assert r.outcomes.tolist() == [MISS, MISS, MISS, WRITE, WRITE, WRITE] + step + step
    s = r.stats
    assert (s.hits, s.misses, s.stall_ns, s.prefetch_issued, s.prefetch_used, s.evictions) == (2, 4, 400 * K, 2, 1, 2)
    assert r.optimizer_wait_ns == 0 and (r.measured_ns, r.baseline_ns) == (10400 * K, 10000 * K)
    assert (r.warmup.prefetch_issued, r.warmup.evictions) == (2, 2)


def test_time_between_steps_lets_copies_finish(tmp_path):
    """The loop's own time between two steps counts: copies go on meanwhile.

    Per step: P read, then updated by the optimizer 1000 us later; P (predicted 1 read away) is
    dropped and fetched again after the update (100 us). With no time before the next step's
    read it comes late; with 1000 us (data, loss, zero_grad) it hits, and the step takes 2000 us.
    """
    steps = [[(R, 0), (W, 0, OPT)]] * 3
    tight = simulate(write_trace(tmp_path / "tight", [("P", P, 100)], steps), Fixed(predictions={0: 1.0}),
                     budget=1.0, link=LINK)
    assert tight.outcomes.tolist() == [MISS, WRITE] + [LATE, WRITE] * 2
    assert (tight.stats.stall_ns, tight.measured_ns, tight.baseline_ns) == (200 * K, 2200 * K, 2000 * K)
    loose = simulate(write_trace(tmp_path / "loose", [("P", P, 100)], steps, gap=1000), Fixed(predictions={0: 1.0}),
                     budget=1.0, link=LINK)
    assert loose.outcomes.tolist() == [MISS, WRITE] + [HIT, WRITE] * 2
    assert (loose.stats.stall_ns, loose.measured_ns, loose.baseline_ns) == (0, 4000 * K, 4000 * K)


def test_parameters_of_a_running_module_are_spared(tmp_path):
    """In a forward pass the parameters of the modules still running (the event's module and its
    ancestors) are not evicted; in backward nothing is running.

    Module blk owns W and calls blk.x, blk.a, blk.b (parameters X, A, B), budget 300 kB, no
    prefetching. Forward: W, X, A, B miss; B's miss evicts X, not W (least recently used, but blk
    is still running). Backward: B, A hit; X misses and evicts W (nothing runs now); W misses.
    """
    modules = ["<root>", "blk", "blk.x", "blk.a", "blk.b"]
    tensors = [("W", P, 100, "blk"), ("X", P, 100, "blk.x"), ("A", P, 100, "blk.a"), ("B", P, 100, "blk.b")]
    step = [(R, 0), (R, 1), (R, 2), (R, 3), (R, 3, BWD), (R, 2, BWD), (R, 1, BWD), (R, 0, BWD)]
    r = simulate(write_trace(tmp_path / "mods", tensors, [step], modules=modules), none(), budget=300 * K, link=LINK,
                 warmup_steps=0)
    assert r.outcomes.tolist() == [MISS] * 4 + [HIT, HIT, MISS, MISS]
    assert (r.stats.evictions, r.overcommits) == (3, 0)


def test_refusal_spares_tensors_predicted_sooner(tmp_path):
    """A prefetch is refused while making room would evict a tensor predicted at or before its due read.

    Budget 2 of 3; reads A, B, A, B, C per step; the policy asks for C after every event,
    predicting A 1, B 2 and C 10 reads away. Step 0: C fits at once (100-200) but the
    miss of B must evict it (a prefetch not read yet is evicted only by waiting for it),
    and it stays refused while A and B are resident. C's miss evicts A, which comes back
    at once evicting B (due 2 reads later). Each later step: A is late (its copy queued
    behind C's miss), B is fetched evicting C (due long after), A, B hit, C misses.
    """
    trace = write_trace(tmp_path / "refuse", [("A", P, 100), ("B", P, 100), ("C", P, 100)],
                        [[(R, 0), (R, 1), (R, 0), (R, 1), (R, 2)]] * 3)
    r = simulate(trace, Fixed([2], {0: 1.0, 1: 2.0, 2: 10.0}), budget=200 * K, link=LINK)
    assert r.outcomes.tolist() == [MISS, MISS, HIT, HIT, MISS] + [LATE, HIT, HIT, HIT, MISS] * 2
    s = r.stats
    assert (s.prefetch_issued, s.prefetch_used, s.late, s.stall_ns) == (4, 3, 2, 400 * K)  # the last A: never read
    assert r.warmup.prefetch_issued == 2 and r.prefetch_refused > 0


def test_write_makes_room_and_a_fetch_back_waits_for_its_write_back(tmp_path):
    """Writes never wait for write-backs; write-backs queue on the device-to-host FIFO, and a
    fetch of a written-back activation starts once its write-back is done.

    P (param, 100 kB), activations X, Y (1500 kB), budget 1600 kB. Per step: P read, X and Y
    packed, X, Y, P read. Packing Y evicts X (P was read last): its 1500 us write-back runs
    2100-3600; the compute goes on. X's read misses at 3100: room evicts Y (write-back
    3600-5100, behind X's on its FIFO), X is fetched once on the host (3600-5100, the other
    direction): 2000 us of stall. X is freed once read; Y's read at 6100 fetches it (1500 us).
    P hits. Per measured step: 2 hits, 2 misses, 3500 us stall, 2 evictions, 3000 kB written
    back and 3000 kB fetched.
    """
    trace = write_trace(tmp_path / "acts", [("P", P, 100), ("X", A, 1500), ("Y", A, 1500)],
                        [[(R, 0), (W, 1), (W, 2), (R, 1, BWD), (R, 2, BWD), (R, 0, BWD)]] * 3)
    r = simulate(trace, none(), budget=1600 * K, link=LINK)
    assert r.outcomes.tolist() == [MISS, WRITE, WRITE, MISS, MISS, HIT] + [HIT, WRITE, WRITE, MISS, MISS, HIT] * 2
    s = r.stats
    assert (s.accesses, s.hits, s.misses, s.stall_ns, s.evictions) == (8, 4, 4, 7000 * K, 4)
    assert (s.bytes_written_back, s.bytes_copied) == (6000 * K, 6000 * K)
    assert r.write_stall_ns == 0 and r.overcommits == 0 and r.peak_device_bytes == 1600 * K
    assert (r.measured_ns, r.baseline_ns) == (17000 * K, 10000 * K)


def test_write_waits_for_unread_prefetches_to_land(tmp_path):
    """A write that finds only unread prefetches to evict waits for one to land (stall), then evicts it.

    One step, no warm-up. P (100 kB), Q (1500 kB), activation X (100 kB), budget 1600 kB; the policy
    asks for Q after every event, with no predictions. P misses (0-100) and Q is prefetched
    (100-1600). Packing X at 1100: P was read last, Q is in flight: wait 500 us, evict Q
    (a parameter: free). Q's read at 2600 misses: room evicts X (write-back 2600-2700, the
    other direction), Q is fetched at once (2600-4100). X's read at 5100 misses and evicts P:
    5100-5200.
    """
    trace = write_trace(tmp_path / "wait", [("P", P, 100), ("Q", P, 1500), ("X", A, 100)],
                        [[(R, 0), (W, 2), (R, 1), (R, 2, BWD)]])
    r = simulate(trace, Fixed([1]), budget=1600 * K, link=LINK, warmup_steps=0)
    assert r.outcomes.tolist() == [MISS, WRITE, MISS, MISS]
    s = r.stats
    assert (s.accesses, s.misses, s.stall_ns, s.evictions, s.bytes_written_back) == (3, 3, 2200 * K, 3, 100 * K)
    assert (s.prefetch_issued, s.prefetch_used, s.bytes_copied) == (1, 0, 3200 * K)
    assert r.write_stall_ns == 500 * K and r.overcommits == 0 and r.peak_device_bytes == 1600 * K
    assert (r.measured_ns, r.baseline_ns) == (5200 * K, 3000 * K)


def test_activation_freed_after_read_is_not_requested(tmp_path):
    """An activation read once is gone: a request for it before its next write is skipped."""
    trace = write_trace(tmp_path / "gone", [("P", P, 100), ("X", A, 100)],
                        [[(R, 0), (W, 1), (R, 1, BWD), (R, 0, BWD)]] * 3)
    r = simulate(trace, Fixed([1]), budget=200 * K, link=LINK)
    assert r.stats.prefetch_issued == 0 and r.prefetch_requested == 0
    assert r.outcomes.tolist()[4:] == [HIT, WRITE, HIT, HIT] * 2


def test_overcommit_when_nothing_can_be_evicted(tmp_path):
    """A write that cannot get room even after waiting goes over budget and is counted."""
    trace = write_trace(tmp_path / "over", [("P", P, 100), ("X", A, 100)], [[(R, 0), (W, 1), (R, 1, BWD)]] * 2)
    r = simulate(trace, none(), budget=100 * K, link=LINK)
    assert r.overcommits == 1 and r.peak_device_bytes == 200 * K


def test_full_budget_evicts_nothing_and_parameters_come_back_each_step(tmp_path):
    """With every managed byte (and every gradient) on the device nothing is evicted and nothing
    overcommits. Host stepping drops the parameters at each optimizer step: without prefetching
    each one misses once per step and every other read hits; the oracle refetches them, so at
    most the step's first read is not a hit."""
    static = _random_trace(tmp_path / "static", seed=3, num_experts=0)
    grads = lambda t: int(t.tensor_nbytes()[t.tensor_kinds() == G].sum())  # noqa: E731
    r = simulate(static, none(), budget=int(static.tensor_nbytes()[static.managed_tensors()].sum()) + grads(static),
                 optimizer_placement="host")
    assert (r.stats.misses, r.stats.late, r.stats.evictions, r.overcommits) == (8 * r.steps, 0, 0, 0)
    assert r.stats.hits == r.stats.accesses - 8 * r.steps
    dynamic = _random_trace(tmp_path / "full", seed=3)
    o = simulate(dynamic, "oracle", budget=int(dynamic.tensor_nbytes()[dynamic.managed_tensors()].sum()) + grads(dynamic),
                 optimizer_placement="host")
    assert o.stats.misses + o.stats.late <= o.steps and o.stats.evictions == 0 and o.overcommits == 0
    assert o.peak_device_bytes <= o.budget_bytes


def test_everything_fits_stays_resident_after_the_first_step(tmp_path):
    """A budget holding the whole footprint (managed bytes, gradients, optimizer state), the
    placement left to auto: after the first optimizer step the tier goes resident as a live run
    does: no misses, no gradient traffic, the peak is the footprint; budget 1 is that footprint.
    Host placement at the same budget drops and fetches the parameters every step."""
    static = _random_trace(tmp_path / "static", seed=3, num_experts=0)
    full = int(static.tensor_nbytes()[static.managed_tensors()].sum()) + int(
        static.tensor_nbytes()[static.tensor_kinds() == G].sum())
    r = simulate(static, none(), budget=1.0)
    assert r.budget_bytes == full
    assert r.stats.hits == r.stats.accesses > 0 and r.stats.misses == r.stats.late == 0
    assert r.bytes_d2h["gradient"] == 0 and r.peak_device_bytes == full
    host = simulate(static, none(), budget=1.0, optimizer_placement="host")
    assert host.stats.misses == 8 * host.steps and host.bytes_d2h["gradient"] > 0


def test_budget_below_largest_managed_tensor_is_a_clear_error(cycle, tmp_path):
    """A budget that cannot hold the largest managed tensor fails before simulating, naming both sizes;
    a larger unmanaged tensor (a gradient) does not count."""
    with pytest.raises(ValueError, match=r"budget 48.83 KiB is below the largest managed tensor \(A in cycle\) "
                                         r"of 97.66 KiB"):
        simulate(cycle, none(), budget="50kB", link=LINK)
    with pytest.raises(ValueError, match="below the largest managed tensor"):
        simulate(cycle, "oracle", budget=0.2, link=LINK)  # 20% of 300 kB = 60 kB
    trace = write_trace(tmp_path / "big-grad", [("P", P, 100), ("G", G, 10_000)],
                        [[(R, 0), (W, 1, BWD), (R, 1, OPT), (W, 0, OPT)]] * 2)
    assert simulate(trace, none(), budget="100kB", link=LINK).budget_bytes == 100 * K


def test_deterministic(tmp_path):
    """The same inputs give the same report, field for field."""
    trace = _random_trace(tmp_path / "det", seed=1)
    for policy in ("oracle", "none", "replay", "markov"):
        if policy != "oracle" and not _has_policies():
            continue
        a = simulate(trace, policy, budget=0.4)
        b = simulate(trace, policy, budget=0.4)
        assert a.as_dict() == b.as_dict() and a.outcomes.tolist() == b.outcomes.tolist()


def test_warmup_is_a_snapshot_difference(tmp_path):
    """Warm-up plus measured figures equal the figures of the same run measured from step 0."""
    trace = _random_trace(tmp_path / "warm", seed=2)
    link = LinkModel(bandwidth_bytes_per_s=2e9)
    budget = simulate(trace, none(), budget=0.5, link=link).budget_bytes
    whole = simulate(trace, OraclePolicy(trace, budget_bytes=budget), budget=budget, link=link, warmup_steps=0)
    split = simulate(trace, OraclePolicy(trace, budget_bytes=budget), budget=budget, link=link, warmup_steps=2)
    for f in ("accesses", "hits", "late", "misses", "stall_ns", "bytes_copied", "bytes_written_back",
              "prefetch_issued", "prefetch_used", "evictions"):
        assert getattr(split.stats, f) + getattr(split.warmup, f) == getattr(whole.stats, f), f
    assert split.steps + 2 == whole.steps
    assert split.stats.accuracy <= 1.0 and split.warmup.accuracy <= 1.0


def test_too_few_steps_for_warmup_is_an_error(cycle):
    """Warm-up that leaves no measured step is a clear error."""
    with pytest.raises(ValueError, match="leave none to measure"):
        simulate(cycle, none(), budget=200 * K, link=LINK, warmup_steps=3)


def test_link_ratio_sets_bandwidth_from_step_time(cycle):
    """By default copying all managed bytes once takes 0.5 x the mean measured step compute time."""
    r = simulate(cycle, none(), budget=200 * K)
    # 300 kB managed, 2000 us of compute per step: 300 kB / 1000 us
    assert r.link["ratio"] == 0.5 and r.link["bandwidth_GBps"] == pytest.approx(0.3)
    assert simulate(cycle, none(), budget=200 * K, link_ratio=1.0).link["bandwidth_GBps"] == pytest.approx(0.15)


def test_simulate_like_run_uses_the_runs_policy_budget_link_and_warmup(cycle):
    """A run report's policy, budget_bytes, link, warm-up and lookahead drive the simulation of its trace."""
    report = {"policy": "none", "budget_bytes": 200 * K, "warmup_steps": 1, "trace": str(cycle.stem),
              "link": {"bandwidth_GBps": 1.0, "latency_us": 0.0, "ratio": None}}
    r = simulate_like_run(report)
    assert r.as_dict() == simulate(cycle, "none", budget=200 * K, link=LINK).as_dict()
    assert r.budget_bytes == 200 * K and r.link["bandwidth_GBps"] == pytest.approx(1.0) and r.lookahead == 64
    assert simulate_like_run(dict(report, trace=None), cycle, warmup_steps=2).steps == 1
    with pytest.raises(ValueError, match="names no trace"):
        simulate_like_run(dict(report, trace=None))


def test_several_traces_sum_with_breakdown(tmp_path, cycle):
    """Several traces: counters are summed, each trace keeps its own report."""
    other = _random_trace(tmp_path / "other", seed=4)
    one = simulate(cycle, "oracle", budget=1.0, link=LINK)
    two = simulate(other, "oracle", budget=1.0, link=LINK)
    both = simulate([cycle, other], "oracle", budget=1.0, link=LINK)
    assert [t.trace for t in both.traces] == ["cycle", "other"]
    assert both.stats.accesses == one.stats.accesses + two.stats.accesses
    assert both.stats.hits == one.stats.hits + two.stats.hits
    assert both.measured_ns == one.measured_ns + two.measured_ns
    d = both.as_dict()
    assert len(d["traces"]) == 2 and d["traces"][0]["trace"] == "cycle"


def test_report_has_design_keys(cycle):
    """as_dict() carries every DESIGN.md report key, JSON-serialisable."""
    d = simulate(cycle, "oracle", budget=200 * K, link=LINK).as_dict()
    for key in REPORT_KEYS:
        assert key in d, key
    assert d["device"] == "simulated" and d["policy"] == "oracle"
    json.dumps(d)


def test_cli_json_writes_the_report_keys(cycle, tmp_path, capsys):
    """`prefetch simulate DIR --policy oracle --json F` prints a summary and writes the keys."""
    out = tmp_path / "report.json"
    rc = cli_main(["simulate", str(cycle.stem.parent), "--policy", "oracle", "--budget", "0.7",
                   "--bandwidth", "1", "--latency-us", "0", "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    for key in REPORT_KEYS:
        assert key in d, key
    assert d["link"]["bandwidth_GBps"] == pytest.approx(1.0) and d["budget_bytes"] == 210 * K
    assert "hit" in capsys.readouterr().out


def _replay_report(cycle, tmp_path, *flags: str) -> dict:
    """`prefetch simulate` of the cycle trace with replay and `flags`: its JSON report."""
    out = tmp_path / "r.json"
    assert cli_main(["simulate", str(cycle.stem.parent), "--policy", "replay", *flags, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_cli_lookahead_reaches_the_policy(cycle, tmp_path):
    """`--lookahead N` builds named policies with N (default 64, as `prefetch run`)."""
    pytest.importorskip("predictor.policies")
    assert _replay_report(cycle, tmp_path)["lookahead"] == 64
    assert _replay_report(cycle, tmp_path, "--lookahead", "4")["lookahead"] == 4


def test_the_prefetch_window_share_reaches_the_tier_and_the_report(cycle, tmp_path, capsys):
    """--ahead-share (and a run report's ahead_share, for simulate_like_run) sets the tier's window; out of [0, 1] is one line."""
    pytest.importorskip("predictor.policies")
    assert _replay_report(cycle, tmp_path)["ahead_share"] == 0.5
    assert _replay_report(cycle, tmp_path, "--ahead-share", "0")["ahead_share"] == 0
    report = {"policy": "replay", "budget_bytes": 200 * K, "warmup_steps": 1, "trace": str(cycle.stem),
              "link": {"bandwidth_GBps": 1.0, "latency_us": 0.0, "ratio": None}, "ahead_share": 0.25}
    assert simulate_like_run(report).ahead_share == 0.25
    assert simulate_like_run({k: v for k, v in report.items() if k != "ahead_share"}).ahead_share == 0.5
    assert cli_main(["simulate", str(cycle.stem.parent), "--policy", "replay", "--ahead-share", "1.5"]) == 2
    assert "ahead_share must be in [0, 1]" in capsys.readouterr().err


def test_cli_sweep_writes_a_png_and_table(cycle, tmp_path, capsys):
    """`--sweep` prints one row per policy x budget and writes the plot."""
    png = tmp_path / "sweep.png"
    out = tmp_path / "sweep.json"
    rc = cli_main(["simulate", str(cycle.stem.parent), "--sweep", "--sweep-policies", "oracle",
                   "--sweep-budgets", "0.4,0.7,1.0", "--plot", str(png), "--json", str(out)])
    assert rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(json.loads(out.read_text())["sweep"]) == 3
    table = capsys.readouterr().out
    assert table.count("oracle") >= 3 and "slowdown" in table


def test_cli_errors_are_one_line(cycle, capsys):
    """A bad budget or a missing --policy exits 2 with one clear line."""
    assert cli_main(["simulate", str(cycle.stem.parent), "--policy", "oracle", "--budget", "10kB"]) == 2
    assert "below the largest managed tensor" in capsys.readouterr().err
    assert cli_main(["simulate", str(cycle.stem.parent)]) == 2
    assert "--policy is required" in capsys.readouterr().err


REPORT_KEYS = (
    "policy", "device", "link", "managed_bytes", "budget_bytes", "peak_device_bytes", "steps", "warmup_steps",
    "accesses", "hits", "late", "misses", "hit_rate", "stall_s", "bytes_copied", "prefetch_issued",
    "prefetch_used", "accuracy", "step_time_s", "baseline_step_time_s", "slowdown", "warmup",
)


def _has_policies() -> bool:
    try:
        import predictor.policies  # noqa: F401
    except ImportError:
        return False
    return True


def _random_trace(stem, *, seed: int, steps: int = 5, num_params: int = 8, num_experts: int = 4):
    """A small dynamic training trace: every step reads a random subset of 'expert' parameters in
    a random order, packs and unpacks activations, produces and consumes gradients, updates parameters."""
    rng = np.random.default_rng(seed)
    tensors = [(f"p{i}", P, int(rng.integers(70, 400))) for i in range(num_params)]
    tensors += [(f"e{i}", P, int(rng.integers(70, 400))) for i in range(num_experts)]
    tensors += [(f"a{i}", A, int(rng.integers(70, 300))) for i in range(num_params)]
    tensors += [(f"g{i}", G, tensors[i][2]) for i in range(num_params)]
    a0, g0, e0 = num_params + num_experts, 2 * num_params + num_experts, num_params
    all_steps = []
    for _ in range(steps):
        experts = rng.permutation(num_experts)[: int(rng.integers(1, num_experts + 1))] if num_experts else []
        ev = []
        for i in range(num_params):
            ev.append((R, i))
            if i == num_params // 2:
                ev += [(R, e0 + int(e)) for e in experts]
            ev.append((W, a0 + i))
        for i in reversed(range(num_params)):
            ev += [(R, a0 + i, BWD), (R, i, BWD), (W, g0 + i, BWD)]
        for i in range(num_params):
            ev += [(R, g0 + i, OPT), (W, i, OPT)]
        all_steps.append(ev)
    return write_trace(stem, tensors, all_steps, dt=int(rng.integers(200, 2000)))

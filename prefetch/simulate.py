"""The trace-driven prefetch simulator: trace + policy + budget + link -> hit rate, stalls, slowdown.

    prefetch simulate datasets/samples/gpt2 --policy replay --budget 0.4 --json out.json
    prefetch simulate datasets/samples --sweep --sweep-policies none,replay,oracle --plot sweep.png

    from prefetch.simulate import simulate
    report = simulate(["datasets/samples/gpt2"], "replay", budget=0.4)
    print(report.summary()); report.as_dict()

Our ChampSim: a recorded trace is replayed, event by event, through a model of a device
tier and a copy engine, with a policy deciding what to prefetch. Each trace is simulated
on its own device (its own clock, budget and link); the report sums them and keeps a
per-trace breakdown.

The model
---------
Managed tensors are all the tensors of the trace's tensor table; the device starts
empty (everything on the host). Time is simulated: nothing here reads a clock, so the
same inputs give the same report.

* Compute time. Between two events of the same step the compute clock advances by
  the trace's `time_ns` delta (negative deltas count as 0); the first event of a step
  advances it by 0, so a step's compute time is its first-to-last access span. The
  baseline (everything resident) is that compute time alone.
* Reads (access == READ) are the accesses counted for the hit rate:
    HIT   the tensor is resident and its copy complete;
    LATE  its copy is in flight: the compute waits until it completes (stall);
    MISS  it is absent: a demand fetch copies it, and the compute waits (stall).
* Writes (activation packed, gradient produced, parameter or optimizer state updated)
  are not accesses. A write makes the tensor resident and *dirty* without a copy: it
  is an allocation and needs budget space. If space lacks, tensors are evicted first;
  evicting a dirty tensor costs a device-to-host write-back, and the compute waits for
  those write-backs before it can use the memory (stall, also reported as
  `write_stall_s`). A write to a tensor whose prefetch is still in flight supersedes it.
* Overcommit. When a demand fetch or a write cannot get its space even after evicting
  every evictable tensor (the rest are in flight or in use), it goes through anyway
  over budget and is counted in `overcommits`; `peak_device_bytes` then shows it.
* Dead values. An activation whose next access is not a read (the next step's write,
  or the end of the trace) is dropped right after its access, for free: autograd has
  released it. So is a gradient right after a read (the optimizer's) that no other read
  follows before its next write: zero_grad releases it. A gradient written twice
  (accumulation) is kept. Parameters and optimizer state are never dropped; evicting
  them when dirty costs a write-back.
* Copy engine: one link for both directions (LinkModel: latency + bytes / bandwidth per
  copy) and one FIFO queue. Prefetches, and the write-backs their evictions need, are
  queued. Demand operations (a miss's fetch, and the write-backs that make room for it
  or for a write) are synchronous: by default (`demand_fetch="fifo"`) they join the
  queue and the compute waits until they are done, behind every copy queued before
  them; this is what the simulated runtime device does. `demand_fetch="priority"` lets
  them jump the queue instead (they start when the copy in progress ends and the queued
  prefetches shift later), closer to a runtime with a separate demand stream. Either
  way hit rate is not monotone in prefetch quality once the link is the bottleneck: a
  stall lets queued copies finish, so the accesses after it hit (see prefetch.oracle
  for what that means for the bound).
* Link default: `LinkModel.from_ratio(link_ratio)` per trace: copying all managed bytes
  once takes `link_ratio` x the mean measured step compute time.

The policy, called exactly as the daemon calls it
-------------------------------------------------
`policy.start(TensorInfo)` once per trace, then for every event in order, after the
access has been served: `policy.observe(step, micro_step, phase, access, tensor_id)`.
The returned ids (soonest first) join a queue of pending requests; ids already
resident, in flight or pending are skipped. After each event the queue is drained in
order while the budget allows:

* a request that fits in free space is issued (a prefetch: FIFO copy);
* otherwise victims are chosen among resident tensors whose copy is complete and that
  are not the tensor just accessed: largest `policy.predicted_next_use(id)` first, ties
  (and NO_PREDICTION, +inf, for all) in least-recently-used order, so a policy without
  predictions gets LRU;
* refusal (ChampSim's `prefetch_line` returning false): if making room would evict a
  tensor predicted to be used sooner than the requested one, or no room can be made
  (everything else in flight), nothing is evicted, the request stays at the head of the
  queue and draining stops until the next event; requests behind it are expected later
  still. A request leaves the queue, unissued, when its tensor is accessed.
* Demand fetches and writes evict by the same ranking but are never refused.
* Optional hooks, used by the oracle, ignored when absent (a daemon policy needs none):
  `evicted(tensor_id)` on every eviction (to ask again for a tensor still needed);
  `admit_prefetch(tensor_id, end_ns, now_ns) -> bool`, the last word before a request is
  issued, knowing when its copy would complete (False drops the request);
  `next_read_key(tensor_id) -> int`, an absolute next-use key that changes only when the
  tensor itself is observed: residents are then kept in a heap and the victims (the same
  as the scan's) are found in O(log n) instead of asking every resident.

The oracle
----------
`policy="oracle"` is built here from each trace (prefetch.oracle). It is a portfolio of
a few offline strategies; each is simulated and the one with the best hit rate (then
the shortest time) is kept per trace and named in the report (`oracle_variant`).

`prefetch_used` counts prefetched tensors read (on time or late) before being evicted or
overwritten. Warm-up steps (the first `warmup_steps` steps of each trace) are excluded by
snapshot difference (AccessStats) and reported apart; a prefetch is credited as used to
the period that issued it, so accuracy stays <= 1 in both (a warm-up prefetch read after
warm-up still makes that read a hit).
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from heapq import heapify, heappop, heappush
from itertools import islice
from typing import Any, Iterable, Sequence

import numpy as np

from predictor.interface import NO_PREDICTION, Policy, PolicyError, TensorInfo
from prefetch.budget import Budget, format_bytes, parse_budget
from prefetch.oracle import VARIANTS as ORACLE_VARIANTS
from prefetch.oracle import OraclePolicy, next_in_group
from runtime.link import DEFAULT_LATENCY_S, DEFAULT_LINK_RATIO, LinkModel
from runtime.stats import AccessStats
from runtime.trace_format import Access, Kind, Trace, load_traces

DEMAND_MODES = ("fifo", "priority")
HIT, LATE, MISS, WRITE = 0, 1, 2, 3
"""Codes of SimReport.outcomes, one per event."""
_READ = int(Access.READ)
_INF = NO_PREDICTION


@dataclass(kw_only=True, slots=True)
class SimReport:
    """What one simulation found: the DESIGN.md report keys, per trace and summed."""

    policy: str
    device: str = "simulated"
    link: dict[str, Any]
    """LinkModel.describe(); bandwidth is None when per-trace links differ."""
    managed_bytes: int
    """Bytes of all managed tensors (the largest over traces when several)."""
    budget_bytes: int
    """Device budget in bytes (the largest over traces when several)."""
    budget: str
    """The budget as given (a fraction of managed bytes or a size)."""
    peak_device_bytes: int
    """Most bytes ever on the simulated device, warm-up included."""
    steps: int
    """Measured steps (all traces)."""
    warmup_steps: int
    """Steps dropped at the start of each trace."""
    events: int
    """Events replayed, warm-up included."""
    stats: AccessStats
    """Measured steps only."""
    warmup: AccessStats
    """Warm-up steps only."""
    measured_ns: int
    """Simulated time of the measured steps: compute plus stalls."""
    baseline_ns: int
    """Compute time of the measured steps with everything resident."""
    overcommits: int = 0
    """Demand fetches and writes let through over budget (measured steps)."""
    write_stall_ns: int = 0
    """Part of stall_ns spent waiting for write-backs before a write (measured steps)."""
    prefetch_requested: int = 0
    """Distinct requests queued by the policy (measured steps)."""
    demand_fetch: str = "fifo"
    trace: str | None = None
    """The trace's stem, for a single-trace report."""
    traces: list["SimReport"] = field(default_factory=list)
    """Per-trace reports when several traces were simulated."""
    variant: str | None = None
    """The oracle's strategy kept for this trace (see prefetch.oracle), else None."""
    outcomes: np.ndarray | None = field(default=None, repr=False, compare=False)
    """Single trace: per event HIT, LATE, MISS (reads) or WRITE, warm-up included (not in as_dict)."""

    @property
    def step_time_s(self) -> float:
        return self.measured_ns / 1e9 / self.steps if self.steps else 0.0

    @property
    def baseline_step_time_s(self) -> float:
        return self.baseline_ns / 1e9 / self.steps if self.steps else 0.0

    @property
    def slowdown(self) -> float | None:
        return self.measured_ns / self.baseline_ns if self.baseline_ns else None

    @property
    def hit_rate(self) -> float:
        return self.stats.hit_rate

    def as_dict(self) -> dict[str, Any]:
        """The JSON report: DESIGN.md's keys, stall and byte counters, warm-up apart, per trace."""
        d: dict[str, Any] = {
            "policy": self.policy,
            "device": self.device,
            "link": dict(self.link),
            "demand_fetch": self.demand_fetch,
            "managed_bytes": self.managed_bytes,
            "budget": self.budget,
            "budget_bytes": self.budget_bytes,
            "budget_fraction": self.budget_bytes / self.managed_bytes if self.managed_bytes else None,
            "peak_device_bytes": self.peak_device_bytes,
            "steps": self.steps,
            "warmup_steps": self.warmup_steps,
            "events": self.events,
        }
        s = self.stats.as_dict()
        for key in ("accesses", "hits", "late", "misses", "hit_rate", "coverage", "stall_s", "stall_ns",
                    "bytes_copied", "bytes_written_back", "prefetch_issued", "prefetch_used", "accuracy",
                    "evictions"):
            d[key] = s[key]
        d.update(
            prefetch_requested=self.prefetch_requested,
            overcommits=self.overcommits,
            write_stall_s=self.write_stall_ns / 1e9,
            step_time_s=self.step_time_s,
            baseline_step_time_s=self.baseline_step_time_s,
            slowdown=self.slowdown,
            warmup=self.warmup.as_dict(),
        )
        if self.variant is not None:
            d["oracle_variant"] = self.variant
        if self.trace is not None:
            d["trace"] = self.trace
        if self.traces:
            d["traces"] = [t.as_dict() for t in self.traces]
        return d

    def summary(self) -> str:
        """One line: policy, budget, hit/late/miss, stall, slowdown."""
        s = self.stats
        slow = f"{self.slowdown:.3f}x" if self.slowdown is not None else "n/a"
        where = f"{self.trace}: " if self.trace else ""
        variant = f" [{self.variant}]" if self.variant else ""
        return (
            f"{where}{self.policy:>8}{variant}  budget {format_bytes(self.budget_bytes)} "
            f"({self.budget_bytes / max(self.managed_bytes, 1):.0%})  "
            f"hit {s.hit_rate:6.2%}  late {s.late}  miss {s.misses}  of {s.accesses}  "
            f"stall {s.stall_ns / 1e9:.4f}s  copied {s.bytes_copied / 2**20:.1f} MiB  "
            f"accuracy {s.accuracy:.1%}  step {self.step_time_s * 1e3:.2f} ms "
            f"vs {self.baseline_step_time_s * 1e3:.2f} ms  slowdown {slow}"
        )


# -- public entry point ----------------------------------------------------------------------
def simulate(
    traces: Trace | str | os.PathLike[str] | Iterable[Trace | str | os.PathLike[str]],
    policy: str | Policy,
    *,
    budget: str | float | int | Budget = 0.4,
    link: LinkModel | None = None,
    link_ratio: float = DEFAULT_LINK_RATIO,
    latency_s: float = DEFAULT_LATENCY_S,
    warmup_steps: int = 1,
    demand_fetch: str = "fifo",
) -> SimReport:
    """Replay `traces` through the device/copy-engine model with `policy`; see the module docstring.

    policy: "oracle", a spec for predictor.policies.make_policy ("none", "replay",
    "markov", "learned:DIR"), or a Policy object (start() is called for each trace).
    budget: a fraction of each trace's managed bytes, or a size ("2GiB", 1.5e9).
    link: an explicit link for every trace; else one per trace from `link_ratio`.
    """
    loaded = _load(traces)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if demand_fetch not in DEMAND_MODES:
        raise ValueError(f"demand_fetch must be one of {DEMAND_MODES}, got {demand_fetch!r}")
    parsed = parse_budget(budget)
    name = policy if isinstance(policy, str) else str(getattr(policy, "name", type(policy).__name__))
    runs = []
    for trace in loaded:
        managed, largest, largest_key = _sizes(trace)
        budget_bytes = parsed.resolve(managed, largest, f"{largest_key} in {trace.stem.name}")
        trace_link = link or _link_from_ratio(trace, link_ratio, latency_s, warmup_steps, managed)
        best: SimReport | None = None
        for pol in _make_policies(policy, trace, budget_bytes):
            run = _simulate_trace(
                trace, pol, policy_name=name, budget=parsed, budget_bytes=budget_bytes, managed_bytes=managed,
                link=trace_link, warmup_steps=warmup_steps, demand_fetch=demand_fetch,
            )
            run.variant = getattr(pol, "variant", None)
            # the oracle's portfolio: the best hit rate, then the shortest time (first wins ties)
            if best is None or (run.stats.hit_rate, -run.measured_ns) > (best.stats.hit_rate, -best.measured_ns):
                best = run
        assert best is not None
        runs.append(best)
    return runs[0] if len(runs) == 1 else _combine(runs)


def _load(traces) -> list[Trace]:
    if isinstance(traces, (Trace, str, os.PathLike)):
        traces = [traces]
    out: list[Trace] = []
    paths: list[Any] = []
    for t in traces:
        if isinstance(t, Trace):
            out.append(t)
        else:
            paths.append(t)
    if paths:
        out.extend(load_traces(paths))
    if not out:
        raise ValueError("no traces to simulate")
    return out


def _sizes(trace: Trace) -> tuple[int, int, str]:
    nbytes = trace.tensor_nbytes()
    if not len(nbytes):
        raise ValueError(f"{trace.stem}: the tensor table is empty; nothing is managed")
    i = int(np.argmax(nbytes))
    return int(nbytes.sum()), int(nbytes[i]), trace.keys[i]


def _warmup_split(trace: Trace, warmup_steps: int) -> tuple[int, int]:
    """(index of the first measured event, number of measured steps): steps in order of appearance."""
    steps = np.asarray(trace.column("step"))
    if not len(steps):
        raise ValueError(f"{trace.stem}: the trace has no events")
    starts = np.flatnonzero(np.concatenate(([True], steps[1:] != steps[:-1])))
    if len(starts) <= warmup_steps:
        raise ValueError(
            f"{trace.stem}: {len(starts)} step(s) recorded and {warmup_steps} of warm-up leave none "
            "to measure; record more steps or lower --warmup"
        )
    return int(starts[warmup_steps]), len(starts) - warmup_steps


def _deltas(trace: Trace) -> np.ndarray:
    """Compute time before each event: the time_ns delta within a step, >= 0; 0 at a step's first event."""
    t = np.asarray(trace.column("time_ns"), dtype=np.int64)
    steps = np.asarray(trace.column("step"))
    d = np.zeros(len(t), dtype=np.int64)
    if len(t) > 1:
        d[1:] = np.where(steps[1:] == steps[:-1], np.maximum(t[1:] - t[:-1], 0), 0)
    return d


def _link_from_ratio(trace: Trace, ratio: float, latency_s: float, warmup_steps: int, managed: int) -> LinkModel:
    start, measured = _warmup_split(trace, warmup_steps)
    step_ns = float(_deltas(trace)[start:].sum()) / measured
    if step_ns <= 0:
        raise ValueError(
            f"{trace.stem}: the measured steps take no time (all time_ns equal), so a link ratio "
            "gives no bandwidth; pass an explicit link (--bandwidth/--latency-us)"
        )
    return LinkModel.from_ratio(ratio, managed_bytes=managed, step_compute_s=step_ns / 1e9, latency_s=latency_s)


def _make_policies(policy: str | Policy, trace: Trace, budget_bytes: int) -> list[Policy]:
    """The policy to simulate on `trace`; for "oracle", every strategy of its portfolio."""
    if not isinstance(policy, str):
        return [policy]
    if policy == "oracle":
        return [OraclePolicy(trace, budget_bytes=budget_bytes, window=w, drop_late=d) for w, d in ORACLE_VARIANTS]
    try:
        from predictor.policies import make_policy
    except ImportError as exc:
        raise PolicyError(
            f"policy {policy!r} needs predictor.policies.make_policy, which is not available ({exc}); "
            "only 'oracle' is built into the simulator"
        ) from None
    return [make_policy(policy, architecture=trace.architecture or None)]


def _combine(runs: list[SimReport]) -> SimReport:
    stats, warm = AccessStats(), AccessStats()
    for r in runs:
        stats = _add(stats, r.stats)
        warm = _add(warm, r.warmup)
    links = [r.link for r in runs]
    link = dict(links[0]) if all(lk == links[0] for lk in links) else {
        "bandwidth_GBps": None, "latency_us": links[0].get("latency_us"), "ratio": links[0].get("ratio"),
        "per_trace": True,
    }
    return SimReport(
        policy=runs[0].policy, link=link,
        managed_bytes=max(r.managed_bytes for r in runs),
        budget_bytes=max(r.budget_bytes for r in runs),
        budget=runs[0].budget,
        peak_device_bytes=max(r.peak_device_bytes for r in runs),
        steps=sum(r.steps for r in runs), warmup_steps=runs[0].warmup_steps,
        events=sum(r.events for r in runs), stats=stats, warmup=warm,
        measured_ns=sum(r.measured_ns for r in runs), baseline_ns=sum(r.baseline_ns for r in runs),
        overcommits=sum(r.overcommits for r in runs), write_stall_ns=sum(r.write_stall_ns for r in runs),
        prefetch_requested=sum(r.prefetch_requested for r in runs),
        demand_fetch=runs[0].demand_fetch, traces=runs,
        variant=runs[0].variant if all(r.variant == runs[0].variant for r in runs) else "per trace",
    )


def _add(a: AccessStats, b: AccessStats) -> AccessStats:
    return AccessStats(**{f.name: getattr(a, f.name) + getattr(b, f.name) for f in dataclasses.fields(AccessStats)})


# -- the simulation of one trace --------------------------------------------------------------
def _simulate_trace(
    trace: Trace,
    policy: Policy,
    *,
    policy_name: str,
    budget: Budget,
    budget_bytes: int,
    managed_bytes: int,
    link: LinkModel,
    warmup_steps: int,
    demand_fetch: str,
) -> SimReport:
    measure_start, measured_steps = _warmup_split(trace, warmup_steps)
    n = trace.num_events
    num_tensors = trace.num_tensors
    tids_np = np.asarray(trace.column("tensor_id"), dtype=np.int64)
    access_np = np.asarray(trace.column("access"), dtype=np.int64)
    nbytes_np = trace.tensor_nbytes()
    kinds_np = trace.tensor_kinds()
    # Dead values, dropped right after the access: an activation not read again before its
    # next write; a gradient read (by the optimizer) and not read again before its next write.
    _, next_pos = next_in_group(tids_np)
    nxt_is_read = np.zeros(n, dtype=bool)
    has_next = next_pos >= 0
    nxt_is_read[has_next] = access_np[next_pos[has_next]] == _READ
    ev_kind = kinds_np[tids_np]
    dead_np = ~nxt_is_read & (
        (ev_kind == int(Kind.ACTIVATION)) | ((ev_kind == int(Kind.GRADIENT)) & (access_np == _READ))
    )
    delta_np = _deltas(trace)

    # Plain Python lists for the hot loop (indexing numpy scalars per event is slow).
    steps_l = np.asarray(trace.column("step")).tolist()
    micro_l = np.asarray(trace.column("micro_step")).tolist()
    phase_l = np.asarray(trace.column("phase")).tolist()
    access_l = access_np.tolist()
    tids_l = tids_np.tolist()
    delta_l = delta_np.tolist()
    dead_l = dead_np.tolist()
    nb = nbytes_np.tolist()
    cpy = [link.copy_ns(b) for b in nb]  # copy time of each tensor, either direction

    policy.start(TensorInfo.from_table(trace.tensors))
    observe = policy.observe
    pnu = getattr(policy, "predicted_next_use", None)
    on_evict = getattr(policy, "evicted", None)
    key = getattr(policy, "next_read_key", None)
    admit = getattr(policy, "admit_prefetch", None)
    use_heap = key is not None  # the oracle: same victims as the scan, found in O(log n)
    priority = demand_fetch == "priority"

    # Device state. `res` holds resident and in-flight tensors in LRU order (oldest first).
    res: OrderedDict[int, None] = OrderedDict()
    move = res.move_to_end
    ready = [0] * num_tensors  # when the tensor's last copy completes (resident and ready <= now: usable)
    dirty = bytearray(num_tensors)  # changed on the device since its host copy
    pref = bytearray(num_tensors)  # brought by a prefetch and not yet read: the `mark` it was issued under
    mark = 1  # 1 in warm-up, 2 in the measured steps: a use is credited to the window that issued it
    pflag = bytearray(num_tensors)  # has a live request in `pending`
    pending: deque[int] = deque()
    pending_cap = 4 * num_tensors + 64
    queue: deque[list[int]] = deque()  # copy engine FIFO: [tensor id or -1 (write-back), duration, end]
    engine_free = 0  # when the FIFO finishes its last queued copy
    used = 0
    peak = 0
    evictions = bytes_copied = bytes_written_back = prefetch_issued = 0
    overcommits = write_stall = requested = 0
    # Heap mode only: residents keyed by (-next_read_key, LRU stamp); stale entries are skipped.
    heap: list[tuple[int, int, int]] = []
    stamp = [0] * num_tensors  # LRU order: the tick of the tensor's last access or arrival
    tick = 0

    def choose_heap(deficit: int, now: int, protect: int, want: int) -> tuple[list[int], bool]:
        """choose() for policies with next_read_key: pops the furthest next read first."""
        nonlocal heap
        victims: list[int] = []
        aside: list[tuple[int, int, int]] = []
        got = 0
        limit = key(want) if want >= 0 else -1
        ok = False
        while heap:
            e = heappop(heap)
            v = e[2]
            if v not in res or stamp[v] != e[1] or key(v) != -e[0]:
                continue  # stale: evicted, dropped, accessed again or re-keyed since pushed
            aside.append(e)
            if v == protect or ready[v] > now:
                continue
            if -e[0] < limit:
                break  # refused: this victim is needed sooner than the prefetch
            victims.append(v)
            got += nb[v]
            if got >= deficit:
                ok = True
                break
        for e in aside:  # victims too: the caller may not evict them after all (stale entries are skipped)
            heappush(heap, e)
        if ok:
            return victims, True
        if len(heap) > 4 * len(res) + 1024:  # compact
            heap = [(-key(v), stamp[v], v) for v in res]
            heapify(heap)
        return ([], False) if want >= 0 else (victims, False)

    def choose(deficit: int, now: int, protect: int, want: int) -> tuple[list[int], bool]:
        """Victims covering `deficit` bytes: largest predicted next use first, LRU among ties.
        want >= 0: a prefetch of `want`, refused ([], False) if a victim is needed sooner."""
        victims: list[int] = []
        got = 0
        if pnu is None:
            for v in res:
                if v == protect or ready[v] > now:
                    continue
                victims.append(v)
                got += nb[v]
                if got >= deficit:
                    return victims, True
            return ([], False) if want >= 0 else (victims, False)
        finite: list[tuple[float, int]] = []
        for v in res:  # LRU order: the first NO_PREDICTION ones are the top victims
            if v == protect or ready[v] > now:
                continue
            d = pnu(v)
            if d == _INF:
                victims.append(v)
                got += nb[v]
                if got >= deficit:
                    return victims, True
            else:
                finite.append((d, v))
        finite.sort(key=_first, reverse=True)  # stable: LRU order among equal predictions
        limit = -1.0 if want < 0 else pnu(want)
        for d, v in finite:  # (victims found so far all have NO_PREDICTION: never a refusal)
            if d < limit:
                return [], False  # refused: this victim is needed sooner than the prefetch
            victims.append(v)
            got += nb[v]
            if got >= deficit:
                return victims, True
        return ([], False) if want >= 0 else (victims, False)

    if use_heap:
        choose = choose_heap  # noqa: F811 - same contract, same victims

    def evict(victims: list[int], now: int, fifo: bool) -> int:
        """Evict `victims`; dirty ones are written back (FIFO entries, or returned as demand time)."""
        nonlocal used, evictions, bytes_written_back, engine_free
        wb_ns = 0
        for v in victims:
            del res[v]
            used -= nb[v]
            pref[v] = 0
            if dirty[v]:
                dirty[v] = 0
                bytes_written_back += nb[v]
                if fifo:
                    start = engine_free if engine_free > now else now
                    engine_free = start + cpy[v]
                    queue.append([-1, cpy[v], engine_free])
                else:
                    wb_ns += cpy[v]
            if on_evict is not None:
                on_evict(v)
        evictions += len(victims)
        return wb_ns

    def demand(dur: int, now: int) -> int:
        """A synchronous copy of `dur` ns issued at `now`; returns when it completes."""
        nonlocal engine_free
        if not priority:
            start = engine_free if engine_free > now else now
            engine_free = start + dur
            return engine_free
        while queue and queue[0][2] <= now:
            queue.popleft()
        if not queue:
            engine_free = now + dur
            return engine_free
        end = queue[0][2] + dur  # after the copy in progress; the queued ones shift behind it
        cursor = end
        for e in islice(queue, 1, None):
            new_end = cursor + e[1]
            t = e[0]
            if t >= 0 and ready[t] == e[2]:
                ready[t] = new_end
            e[2] = new_end
            cursor = new_end
        engine_free = cursor
        return end

    def place(t: int, now: int, fetch: bool) -> int:
        """Make room for `t` (never refused) and place it: a demand fetch, or a write's allocation.
        Returns the time the compute continues."""
        nonlocal used, peak, overcommits, bytes_copied, write_stall
        need = nb[t]
        wb_ns = 0
        if used + need > budget_bytes:
            victims, ok = choose(used + need - budget_bytes, now, t, -1)
            if not ok:
                overcommits += 1
            wb_ns = evict(victims, now, False)
        if fetch:
            now = demand(wb_ns + cpy[t], now)
            bytes_copied += need
            dirty[t] = 0
        else:
            if wb_ns:
                end = demand(wb_ns, now)
                write_stall += end - now
                now = end
            dirty[t] = 1
        res[t] = None
        ready[t] = now
        used += need
        if used > peak:
            peak = used
        return now

    def drain(now: int, protect: int) -> None:
        """Issue pending requests in order while the budget allows (see the module docstring)."""
        nonlocal used, peak, engine_free, bytes_copied, prefetch_issued, tick
        while pending:
            p = pending[0]
            if not pflag[p] or p in res:
                pending.popleft()
                pflag[p] = 0
                continue
            need = nb[p]
            victims = None
            if used + need > budget_bytes:
                victims, ok = choose(used + need - budget_bytes, now, protect, p)
                if not ok:
                    return  # refused or no room: retry at the next event
            if admit is not None:
                end = (engine_free if engine_free > now else now) + cpy[p]
                if victims:
                    end += sum(cpy[v] for v in victims if dirty[v])
                if not admit(p, end, now):
                    pending.popleft()
                    pflag[p] = 0
                    continue
            if victims:
                evict(victims, now, True)
            pending.popleft()
            pflag[p] = 0
            start = engine_free if engine_free > now else now
            engine_free = start + cpy[p]
            queue.append([p, cpy[p], engine_free])
            res[p] = None
            if use_heap:
                tick += 1
                stamp[p] = tick
                heappush(heap, (-key(p), tick, p))
            ready[p] = engine_free
            dirty[p] = 0
            pref[p] = mark
            used += need
            if used > peak:
                peak = used
            bytes_copied += need
            prefetch_issued += 1
        while queue and queue[0][2] <= now:  # keep the engine queue short
            queue.popleft()

    # -- the event loop: warm-up, snapshot, measured ------------------------------------
    outcome = bytearray(n)  # per event: HIT (0), LATE, MISS, WRITE
    now = 0
    accesses = hits = late = misses = stall = prefetch_used = carried = 0
    warm: AccessStats | None = None
    warm_extra = (0, 0, 0)
    t_measure = 0
    for lo, hi in ((0, measure_start), (measure_start, n)):
        if lo == measure_start:  # end of warm-up: snapshot (ChampSim's way of dropping it)
            warm = AccessStats(
                accesses=accesses, hits=hits, late=late, misses=misses, stall_ns=stall,
                bytes_copied=bytes_copied, bytes_written_back=bytes_written_back,
                prefetch_issued=prefetch_issued, prefetch_used=prefetch_used, evictions=evictions,
                steps=warmup_steps,
            )
            warm_extra = (overcommits, write_stall, requested)
            t_measure = now
            mark = 2
        for i, (s, m, ph, a, t, dt, dead) in enumerate(zip(
            islice(steps_l, lo, hi), islice(micro_l, lo, hi), islice(phase_l, lo, hi), islice(access_l, lo, hi),
            islice(tids_l, lo, hi), islice(delta_l, lo, hi), islice(dead_l, lo, hi),
        ), lo):
            now += dt
            if a == _READ:
                accesses += 1
                if t in res:
                    r = ready[t]
                    if r <= now:
                        hits += 1
                    else:
                        late += 1
                        outcome[i] = LATE
                        stall += r - now
                        now = r
                    move(t)
                else:
                    misses += 1
                    outcome[i] = MISS
                    end = place(t, now, True)
                    stall += end - now
                    now = end
                pv = pref[t]
                if pv:
                    if pv == mark:
                        prefetch_used += 1
                    else:
                        carried += 1  # issued in warm-up, used after it: credited to warm-up
                    pref[t] = 0
            else:  # a write: allocation, dirty, no copy
                outcome[i] = WRITE
                if t in res:
                    dirty[t] = 1
                    if ready[t] > now:
                        ready[t] = now  # supersedes the prefetch in flight
                    move(t)
                else:
                    ws = write_stall
                    now = place(t, now, False)
                    stall += write_stall - ws
                pref[t] = 0
            pflag[t] = 0  # any request for t was for this access
            if dead and t in res:
                del res[t]
                used -= nb[t]
                dirty[t] = 0
            reqs = observe(s, m, ph, a, t)
            if use_heap and t in res:  # t was just used (LRU) and re-keyed by observe
                tick += 1
                stamp[t] = tick
                heappush(heap, (-key(t), tick, t))
            if reqs:
                for p in reqs:
                    if not pflag[p] and p not in res:
                        pflag[p] = 1
                        pending.append(p)
                        requested += 1
                if len(pending) > pending_cap:
                    live = [p for p in dict.fromkeys(pending) if pflag[p]]
                    pending.clear()
                    pending.extend(live)
            if pending:
                drain(now, t)

    final = AccessStats(
        accesses=accesses, hits=hits, late=late, misses=misses, stall_ns=stall,
        bytes_copied=bytes_copied, bytes_written_back=bytes_written_back,
        prefetch_issued=prefetch_issued, prefetch_used=prefetch_used, evictions=evictions,
        steps=warmup_steps + measured_steps,
    )
    assert warm is not None
    return SimReport(
        policy=policy_name, link=link.describe(), managed_bytes=managed_bytes, budget_bytes=budget_bytes,
        budget=str(budget), peak_device_bytes=peak, steps=measured_steps, warmup_steps=warmup_steps,
        events=n, stats=final - warm, warmup=dataclasses.replace(warm, prefetch_used=warm.prefetch_used + carried),
        measured_ns=now - t_measure,
        baseline_ns=int(delta_np[measure_start:].sum()),
        overcommits=overcommits - warm_extra[0], write_stall_ns=write_stall - warm_extra[1],
        prefetch_requested=requested - warm_extra[2], demand_fetch=demand_fetch, trace=trace.stem.name,
        outcomes=np.frombuffer(bytes(outcome), dtype=np.int8),
    )


def _first(pair: tuple[float, int]) -> float:
    return pair[0]


def format_table(reports: Sequence[SimReport]) -> str:
    """A plain-text table: one row per report (policy x budget)."""
    head = f"{'policy':>10} {'budget':>8} {'hit rate':>9} {'late':>7} {'miss':>7} {'stall s':>9} " \
           f"{'accuracy':>9} {'step ms':>9} {'slowdown':>9}"
    rows = [head, "-" * len(head)]
    for r in reports:
        s = r.stats
        frac = r.budget_bytes / max(r.managed_bytes, 1)
        slow = f"{r.slowdown:.3f}" if r.slowdown is not None else "n/a"
        rows.append(
            f"{r.policy:>10} {frac:>8.0%} {s.hit_rate:>9.2%} {s.late:>7} {s.misses:>7} "
            f"{s.stall_ns / 1e9:>9.4f} {s.accuracy:>9.1%} {r.step_time_s * 1e3:>9.2f} {slow:>9}"
        )
    return "\n".join(rows)


__all__ = ["SimReport", "simulate", "format_table", "DEMAND_MODES"]

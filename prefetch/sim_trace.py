"""The simulation of one trace: the event loop over the device-tier model (see prefetch.simulate).

The policy sees the managed stream (prefetch.oracle.managed_stream) and nothing else. Two
things happen between its events, off that stream, each where the trace has it: the
optimizer step (the tier's optimizer_begin / optimizer_end) and the gradients of managed
parameters (a GRADIENT write of at least MIN_MANAGED_BYTES, logged by the tracker's
post-accumulate-grad hook: the tier's grad_write at its compute time, and grad_backward_end
after the last gradient of each micro-step), so the simulator moves gradients on the link
and counts them in the budget as a live run does (runtime.tier, runtime.grad_offload).
"""

from __future__ import annotations

from dataclasses import dataclass
from heapq import heappop, heappush
from itertools import islice
from typing import Any, Collection, Generator

import numpy as np

from predictor.interface import Policy, TensorInfo, overrides
from prefetch.oracle import managed_stream
from prefetch.sim_report import SimReport
from runtime import hint_schedule
from runtime.budget import Budget
from runtime.link import LinkModel
from runtime.defaults import AHEAD_SHARE
from runtime.tier import HIT, LATE, MISS, WRITE, DeviceTier
from runtime.trace_format import MIN_MANAGED_BYTES, Access, Kind, Phase, Trace

_READ, _WRITE = int(Access.READ), int(Access.WRITE)
_ACT, _GRAD, _PARAM = int(Kind.ACTIVATION), int(Kind.GRADIENT), int(Kind.PARAMETER)
_NOTHING: frozenset[int] = frozenset()
_CHUNK = 256  # measured events a run goes on by in a portfolio race


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


# -- the simulation of one trace --------------------------------------------------------------
class _TraceTier(DeviceTier):
    """The device tier over a virtual clock: a FIFO copy engine per direction (the link is
    full duplex, as runtime.device.SimulatedDevice's), each copy taking
    LinkModel.copy_ns(nbytes); an activation is copied back no earlier than its write-back ends. Time is `comp` (the trace's compute time so far,
    set by the event loop) plus `lag` (every wait so far: stalls and optimizer waits)."""

    def __init__(self, policy: Policy, budget_bytes: int, cpy: list[int]):
        super().__init__(policy, budget_bytes)
        self.cpy = cpy  # copy time of each tensor, either direction (its current size)
        self.resident_extra: int | None = None  # everything fits: go resident after the first optimizer step
        self.comp = 0
        self.lag = 0
        self.engine_free = 0  # when the host-to-device FIFO finishes its last queued copy
        self.out_free = 0  # when the device-to-host FIFO does (the link is full duplex)
        self.host_at = [0] * len(cpy)  # when an activation written back is on the host (a copy back starts then)
        self.running = -1  # the module whose forward is under way at this event (-1: none)
        self.modules: ModulesRunning | None = None
        self.trace: Trace | None = None
        self.param_bytes = 0  # managed parameter bytes: an early step's share of the optimizer's compute (_act)

    def now(self) -> int:
        return self.comp + self.lag

    def _start_copy(self, tid: int) -> int:
        now, free, ready = self.comp + self.lag, self.engine_free, self.host_at[tid]
        if ready > free:
            free = ready
        self.engine_free = (free if free > now else now) + self.cpy[tid]
        return self.engine_free

    def _land(self, tid: int, ready: int) -> int | None:
        waited = ready - self.comp - self.lag
        if waited <= 0:
            return None
        self.lag += waited
        return waited

    def _fetch(self, tid: int) -> int:
        now, free, ready = self.comp + self.lag, self.engine_free, self.host_at[tid]
        if ready > free:
            free = ready
        self.engine_free = end = (free if free > now else now) + self.cpy[tid]
        self.lag += end - now
        return end - now

    def _finish(self, tid: int, ready: int) -> int:
        return self._land(tid, ready) or 0

    def _copy_out(self, tid: int) -> int:
        """A device-to-host copy on its own FIFO; when it is done."""
        now, free = self.comp + self.lag, self.out_free
        self.out_free = (free if free > now else now) + self.cpy[tid]
        return self.out_free

    def _write_back(self, tid: int) -> None:
        self.host_at[tid] = self._copy_out(tid)

    def _grad_out(self, key: int, nbytes: int) -> int:
        return self._copy_out(key)  # a gradient to the host (key: the gradient's id)

    def _grad_done(self, key: int, ready: int) -> bool:
        return ready <= self.comp + self.lag

    def _grad_wait(self, key: int, ready: int) -> int:
        return self._land(key, ready) or 0

    def _busy(self) -> Collection[int]:
        return self.modules.params(self.running)

    def _eta(self, tid: int) -> tuple[int, int, int]:
        now, free = self.comp + self.lag, max(self.engine_free, self.host_at[tid])
        return (free if free > now else now) + self.cpy[tid], now, self.comp

    def describe(self, tid: int) -> str:
        return f"{self.trace.stem.name}: activation {self.trace.keys[tid]}" if self.trace else super().describe(tid)


@dataclass(frozen=True, slots=True)
class TraceStream:
    """What the event loop reads of a trace, prepared once per trace and warm-up (the
    oracle's portfolio simulates it once per strategy): plain Python lists, because
    indexing numpy scalars per event is slow."""

    measured_steps: int
    measure_start: int
    """Index of the first measured managed event."""
    nb: list[int]
    kinds: list[int]
    managed: list[bool]
    is_act: list[bool]
    steps: list[int]
    micro: list[int]
    phase: list[int]
    access: list[int]
    tids: list[int]
    nbytes: list[int]
    """An activation's size at its pack."""
    ctime: list[int]
    """Compute time up to each managed event (prefetch.oracle.managed_stream)."""
    running: list[int]
    """The module whose forward is under way at each event (-1: none)."""
    modules: "ModulesRunning"
    """Its parameters and its ancestors' (the live store spares them)."""
    opt: list[list[tuple[int, ...]] | None]
    """What happens before managed event j off the policy's stream, in trace order (n + 1
    entries: the last is after the last managed event): (0, pre, post) the optimizer step, the
    compute time of its pre- and post-hook; (1, ctime, gradient id, nbytes, ends_backward) a
    managed parameter's gradient produced at ctime, the last of its micro-step's backward or not."""
    baseline_ns: int
    """Compute time of the measured steps (everything resident)."""

    @classmethod
    def of(cls, trace: Trace, warmup_steps: int) -> "TraceStream":
        """The trace prepared for `warmup_steps`, built once per trace (Trace.derived)."""
        return trace.derived(("sim_stream", warmup_steps), lambda: cls._build(trace, warmup_steps))

    @classmethod
    def _build(cls, trace: Trace, warmup_steps: int) -> "TraceStream":
        full_start, measured_steps = _warmup_split(trace, warmup_steps)
        ms = managed_stream(trace)
        idx = ms["index"]
        n = len(idx)
        measure_start = int(np.searchsorted(idx, full_start))
        kinds = trace.tensor_kinds().tolist()
        ctime = ms["ctime"]
        phase_l = np.asarray(trace.column("phase"))[idx].tolist()
        opt_l = _off_stream(trace, ms, idx)
        before = int(ctime[measure_start - 1]) if measure_start else 0
        return cls(
            measured_steps=measured_steps, measure_start=measure_start,
            nb=trace.tensor_nbytes().tolist(), kinds=kinds, managed=trace.managed_tensors().tolist(),
            is_act=[k == _ACT for k in kinds],
            steps=np.asarray(trace.column("step"))[idx].tolist(),
            micro=np.asarray(trace.column("micro_step"))[idx].tolist(), phase=phase_l,
            access=np.asarray(trace.column("access"))[idx].tolist(),
            tids=np.asarray(trace.column("tensor_id"))[idx].tolist(),
            nbytes=np.asarray(trace.column("nbytes"))[idx].tolist(), ctime=ctime.tolist(),
            running=_running_module(trace, idx), modules=ModulesRunning(trace), opt=opt_l,
            baseline_ns=int(ctime[-1]) - before if n else 0,
        )


def simulate_portfolio(trace: Trace, policies: list[Policy], **kw: Any) -> SimReport:
    """Simulate `trace` with each policy and keep the best hit rate, then the shortest time
    (the first in `policies` wins ties): the oracle's portfolio (prefetch.oracle.VARIANTS).

    Best first, not one after the other: the run with the fewest missed reads so far goes on
    by a chunk of events; once one has finished, a run that has already missed more reads
    than it cannot win and is dropped. The pick is the same as simulating every policy to
    the end; the likely winner finishes first, so the others stop early."""
    chunk = _CHUNK if len(policies) > 1 else len(TraceStream.of(trace, kw["warmup_steps"]).tids) + 1
    runs = [_run_trace(trace, p, chunk=chunk, **kw) for p in policies]
    if len(runs) == 1:
        return _finish(runs[0])
    race = [(0, k) for k in range(len(runs))]
    best: tuple[tuple[float, int, int], SimReport] | None = None
    while race:
        missed, k = heappop(race)
        if best is not None and missed > best[1].stats.late + best[1].stats.misses:
            runs[k].close()  # cannot have the best hit rate any more
            continue
        try:
            heappush(race, (next(runs[k]), k))
        except StopIteration as done:
            r = done.value
            rank = (r.stats.hit_rate, -r.measured_ns, -k)
            if best is None or rank > best[0]:
                best = (rank, r)
    assert best is not None
    return best[1]


def _finish(run: Generator[int, None, SimReport]) -> SimReport:
    while True:
        try:
            next(run)
        except StopIteration as done:
            return done.value


def _run_trace(
    trace: Trace,
    policy: Policy,
    *,
    policy_name: str,
    budget: Budget,
    budget_bytes: int,
    managed_bytes: int,
    link: LinkModel,
    warmup_steps: int,
    chunk: int = _CHUNK,
    resident_extra: int | None = None,
    ahead_share: float = AHEAD_SHARE,
    early_step: bool = True,
) -> Generator[int, None, SimReport]:
    """Replay one trace through the device tier with `policy`, a chunk of events at a time:
    yields the measured reads missed (late or miss) so far after each chunk, returns the report.
    `resident_extra`: everything fits (prefetch.simulate): after the first optimizer step the
    tier goes resident (DeviceTier.go_resident) with these gradient and state bytes."""
    stream = TraceStream.of(trace, warmup_steps)  # built once per trace and warm-up
    measured_steps, measure_start = stream.measured_steps, stream.measure_start
    steps_l, micro_l, phase_l, access_l, tids_l = stream.steps, stream.micro, stream.phase, stream.access, stream.tids
    nbytes_l, ctime_l, run_l, opt_l, is_act = stream.nbytes, stream.ctime, stream.running, stream.opt, stream.is_act
    n = len(tids_l)
    copy_ns = link.copy_ns
    # copy time of each tensor, either direction (its current size: the run changes it for activations)
    cpy = list(trace.derived(("copy_ns", link.bandwidth_bytes_per_s, link.latency_s),
                             lambda: [copy_ns(b) for b in stream.nb]))

    tier = _TraceTier(policy, budget_bytes, cpy)
    tier.resident_extra = resident_extra
    tier.ahead_share = ahead_share
    tier.early_step = early_step
    tier.trace, tier.modules = trace, stream.modules
    tier.declare_all(stream.kinds, stream.nb, stream.managed)
    tier.param_bytes = sum(b for k, b, m in zip(stream.kinds, stream.nb, stream.managed) if k == _PARAM and m)
    if overrides(policy, "bind_clock"):
        policy.bind_clock(tier.now)
    policy.start(TensorInfo.from_table(trace.tensors))
    tier.set_policy(policy)  # after start(): its fast paths as started
    event, write, free, tier_nb = tier.event, tier.write, tier.free, tier.nb
    outcome = bytearray(n)  # per managed event: HIT (0), LATE, MISS, WRITE
    tier.steps = warmup_steps
    t_measure = 0
    hints = _hints(trace)  # router hints the run took, by the managed event they came before
    hint_at = iter(sorted(hints))
    nh = next(hint_at, -1)
    chunks = [(0, measure_start)] + [(lo, min(lo + chunk, n)) for lo in range(measure_start, n, chunk)]
    warm_missed = 0
    for lo, hi in chunks:
        if lo == measure_start:  # end of warm-up
            acts = opt_l[lo] if lo < n else None
            if acts and acts[0][0]:  # the warm-up step's last gradients are warm-up's (a live run's step ends after them)
                k = next((k for k, a in enumerate(acts) if not a[0]), len(acts))
                _act(tier, acts[:k])
                opt_l = list(opt_l)
                opt_l[lo] = acts[k:] or None
            tier.begin_measurement()
            t_measure = tier.now()
            warm_missed = tier.late + tier.misses
        elif lo > measure_start:
            yield tier.late + tier.misses - warm_missed
        for i, (s, m, ph, a, t, c, opt, run) in enumerate(zip(
            islice(steps_l, lo, hi), islice(micro_l, lo, hi), islice(phase_l, lo, hi), islice(access_l, lo, hi),
            islice(tids_l, lo, hi), islice(ctime_l, lo, hi), islice(opt_l, lo, hi), islice(run_l, lo, hi),
        ), lo):
            if opt is not None:  # the optimizer step, gradients: off the policy's stream
                _act(tier, opt)
            tier.comp = c
            tier.running = run
            if i == nh:  # the run's router hints before this event, in forward (the optimizer's steps came first)
                for when, want, skip in hints[i]:
                    tier.comp = when  # when it came: the copies it starts start then
                    tier.hint(want, skip)
                tier.comp = c
                nh = next(hint_at, -1)
            outcome[i] = event(s, m, ph, a, t)
            if is_act[t]:
                if a == _READ:
                    free(t)  # autograd releases a saved activation once unpacked
                else:  # packed: replaces the value, makes room first, then resident
                    b = nbytes_l[i]
                    if b != tier_nb[t]:  # this step's value has another size
                        cpy[t] = copy_ns(b)
                    write(t, b)
    if opt_l[n]:  # after the last managed event: the last backward's gradients
        _act(tier, opt_l[n])
    tier.steps = warmup_steps + measured_steps
    extra = tier.measured_extra()
    return SimReport(
        policy=policy_name, link=link.describe(), managed_bytes=managed_bytes, budget_bytes=budget_bytes,
        budget=str(budget), ahead_share=ahead_share, early_step=early_step, peak_device_bytes=tier.peak, steps=measured_steps, warmup_steps=warmup_steps,
        events=n, stats=tier.measured(), warmup=tier.warmup,
        measured_ns=tier.now() - t_measure,
        baseline_ns=stream.baseline_ns,
        overcommits=extra["overcommits"], write_stall_ns=extra["write_stall_ns"],
        prefetch_requested=extra["prefetch_requested"], prefetch_refused=extra["prefetch_refused"],
        prefetch_held=extra["prefetch_held"],
        optimizer_wait_ns=extra["optimizer_wait_ns"], trace=trace.stem.name, variant=policy.variant,
        outcomes=np.frombuffer(bytes(outcome), dtype=np.int8), **tier.traffic_fields(),
    )


def _hints(trace: Trace) -> dict[int, list[tuple[int, list[int], list[int]]]]:
    """The router hints the trace kept (runtime.hint_schedule) by the managed event they came
    before, each with its compute time: the time of the event before it plus the time since
    (never past the next event's). Hints after the last managed event are dropped."""
    obj = trace.manifest.get(hint_schedule.MANIFEST_KEY)
    if obj is None:
        return {}
    return trace.derived(("router_hints",), lambda: _place_hints(trace, hint_schedule.from_manifest(
        obj, str(trace.stem), trace.num_events, trace.num_tensors)))


def _place_hints(trace: Trace, entries: list[hint_schedule.Entry]) -> dict[int, list[tuple[int, list[int], list[int]]]]:
    ms = managed_stream(trace)
    idx, csum = ms["index"], ms["csum"]
    t = np.asarray(trace.column("time_ns"), dtype=np.int64)
    out: dict[int, list[tuple[int, list[int], list[int]]]] = {}
    for at, at_ns, want, skip in entries:
        pos = int(np.searchsorted(idx, at))  # the first managed event at or after it
        if pos >= len(idx):
            continue
        when = int(csum[at - 1]) + max(0, at_ns - int(t[at - 1])) if at else 0
        out.setdefault(pos, []).append((min(when, int(csum[idx[pos]])), want, skip))
    return out


def _act(tier: _TraceTier, acts: list[tuple[int, ...]]) -> None:
    """What happens between two managed events (TraceStream.opt): the optimizer step (its
    pre-hook, its compute, its post-hook) and gradients (produced; a backward ending)."""
    tier.running = -1
    for a in acts:
        if a[0]:
            if tier.resident_mode:
                continue  # everything resident: gradients stay on the device
            tier.comp = a[1]
            tier.grad_write(a[2], a[3])
            if a[4]:
                tier.grad_backward_end()
        else:
            tier.comp = a[1]
            tier.optimizer_begin()
            early = tier.early_params()  # stepped first: their copies start once their share of the step's compute is done
            nb = tier.nb
            tier.comp = a[1] + (a[2] - a[1]) * sum(nb[p] for p in early) // max(1, tier.param_bytes)
            tier.release_early(early)
            tier.comp = a[2]
            tier.optimizer_end()
            if tier.resident_extra is not None and not tier.resident_mode:  # the live store's step end
                tier.go_resident(tier.resident_extra)


def _off_stream(trace: Trace, ms: dict[str, np.ndarray], idx: np.ndarray) -> list[list[tuple[int, ...]] | None]:
    """TraceStream.opt: per managed position j (and one after the last), the optimizer steps
    and managed parameters' gradients of the full trace that come before it, in trace order."""
    n = len(idx)
    out: list[list[tuple[int, ...]] | None] = [None] * (n + 1)
    items: list[tuple[int, int, tuple[int, ...]]] = []  # (j, position in the full trace, action)
    for j, pre, post, pos in zip(ms["opt_at"].tolist(), ms["opt_pre"].tolist(), ms["opt_post"].tolist(),
                                 ms["opt_pos"].tolist()):
        items.append((j, pos, (0, pre, post)))
    tids = np.asarray(trace.column("tensor_id"))
    kinds, sizes = trace.tensor_kinds(), trace.tensor_nbytes()
    is_grad = (kinds == _GRAD) & (sizes >= MIN_MANAGED_BYTES)  # a managed parameter's gradient
    gpos = np.flatnonzero(is_grad[tids] & (np.asarray(trace.column("access")) == _WRITE))
    if len(gpos):
        step = np.asarray(trace.column("step"))[gpos]
        micro = np.asarray(trace.column("micro_step"))[gpos]
        ends = np.ones(len(gpos), dtype=bool)  # the last gradient of its (step, micro-step): the backward ends
        ends[:-1] = (step[1:] != step[:-1]) | (micro[1:] != micro[:-1])
        at = np.searchsorted(idx, gpos)
        for j, pos, c, g, b, e in zip(at.tolist(), gpos.tolist(), ms["csum"][gpos].tolist(), tids[gpos].tolist(),
                                      np.asarray(trace.column("nbytes"))[gpos].tolist(), ends.tolist()):
            items.append((j, pos, (1, c, g, b, int(e))))
    items.sort()
    for j, _, a in items:
        if out[j] is None:
            out[j] = [a]
        else:
            out[j].append(a)  # type: ignore[union-attr]
    return out


_FORWARD_PHASES = (int(Phase.FORWARD), int(Phase.EVAL), int(Phase.RECOMPUTE))


class ModulesRunning:
    """The parameters the live store spares because their module is running: in a forward
    phase (forward, eval, recompute) the event's module (the one whose pre-hook reads a
    parameter, or the innermost one packing an activation) and its ancestors by path, as the
    tracker's module stack holds them (runtime.tracker.AccessTracker.params_in_use); nothing
    in backward and optimizer phases. Built per module when make-room first asks."""

    def __init__(self, trace: Trace):
        self.paths = list(trace.manifest.get("modules") or [])
        self.index = {p: i for i, p in enumerate(self.paths)}
        kinds = trace.tensor_kinds()
        self.owned: dict[int, list[int]] = {}
        for t, mod in zip(trace.tensors.column("tensor_id").to_pylist(), trace.tensors.column("module").to_pylist()):
            if kinds[t] == int(Kind.PARAMETER) and (mod or "") in self.index:
                self.owned.setdefault(self.index[mod or ""], []).append(t)
        self.root = [self.index["<root>"]] if "<root>" in self.index else []  # runtime.tracker's name for the model
        self._params: dict[int, frozenset[int]] = {-1: _NOTHING}

    def params(self, m: int) -> frozenset[int]:
        """Parameters of module `m` (a per-event module id; -1: none running) and its ancestors."""
        c = self._params.get(m)
        if c is None:
            if 0 <= m < len(self.paths):
                parts = self.paths[m].split(".")
                up = [self.index[q] for q in (".".join(parts[:k]) for k in range(1, len(parts))) if q in self.index]
                c = frozenset(t for mm in {*up, *self.root, m} for t in self.owned.get(mm, ()))
            else:
                c = _NOTHING
            self._params[m] = c
        return c


def _running_module(trace: Trace, idx: np.ndarray) -> list[int]:
    """Per managed event, the module whose forward is under way (-1 outside forward phases)."""
    mods = np.asarray(trace.column("module_id"))[idx]
    forward = np.isin(np.asarray(trace.column("phase"))[idx], _FORWARD_PHASES)
    return np.where(forward, mods, -1).tolist()

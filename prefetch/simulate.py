"""The trace-driven prefetch simulator: trace + policy + budget + link -> hit rate, stalls, slowdown.

    prefetch simulate datasets/samples/gpt2 --policy replay --budget 0.4 --json out.json
    prefetch simulate datasets/samples --sweep --sweep-policies none,replay,oracle --plot sweep.png

    from prefetch.simulate import simulate, simulate_like_run
    report = simulate(["datasets/samples/gpt2"], "replay", budget=0.4)
    print(report.summary()); report.as_dict()
    simulate_like_run(run_report)   # a `prefetch run` report: its trace, policy, budget, link

Our ChampSim: a recorded trace is replayed, event by event, through a model of the live
tensor store (runtime.store.TensorStore) and its copy engine (runtime.device's simulated
device), with a policy deciding what to prefetch. The model is the live store's, rule for
rule, so a live run and the simulation of its own trace agree on the hit rate (within a
couple of points: the live run's compute is slower by the store's own overhead, so its
copies have more time). Each trace is simulated on its own device (its own clock, budget
and link); the report sums them and keeps a per-trace breakdown.

The model
---------
Managed tensors are those trace_format.is_managed accepts: parameters and saved
activations (MANAGED_KINDS) of at least MIN_MANAGED_BYTES (64 KiB) by the tensor table.
Events of other tensors (gradients, optimizer state, biases, norms, small saved values:
those stay where they are) are dropped before the simulation: policies never see them,
they are not accesses and take no budget; `managed_bytes` and a fractional budget are
over the managed tensors only. The device starts empty (parameters on their host
masters). Time is simulated: nothing here reads a clock, so the same inputs give the
same report.

* Compute time. The clock advances between two managed events by the trace's compute
  time between them: the sum of the full trace's `time_ns` deltas (negative ones count
  as 0), so dropped events keep their time; the time between one step's last event and
  the next one's first (the loop's own work: data, loss, zero_grad) counts too, as it
  does in a live run, where copies go on meanwhile. The baseline (everything resident)
  is that compute alone; a measured step's time runs from the end of the step before.
* Reads (access == READ) are the accesses counted for the hit rate:
    HIT   the tensor is resident and its copy complete;
    LATE  its prefetch is in flight: the compute waits until it completes (stall);
    MISS  it is absent: a demand fetch joins the copy engine's FIFO queue, behind every
          copy queued before it, and the compute waits for it (stall).
* Copy engine: one FIFO timeline for both directions (runtime.device.SimulatedDevice),
  each copy taking LinkModel.copy_ns(nbytes) = latency + bytes / bandwidth.
* Parameters: the host copy is the master and the optimizer runs on the host
  (ZeRO-Offload style), so device copies are never dirty: evicting one is free. At the
  optimizer step (before a step's first OPTIMIZER-phase event, at the time of the event
  before it: the live store's optimizer pre-hook) every parameter with device bytes is
  dropped; one still in flight is first waited for (step time, `optimizer_wait_ns`, not
  stall). Drops are not evictions. Those with a finite predicted_next_use are queued
  again and drained after the optimizer's compute (at the time of that first OPTIMIZER
  event: its post-hook). A parameter WRITE (the optimizer's update) allocates nothing.
* Activations: a WRITE (pack) first frees the key's previous value if any, then makes
  room for the event's nbytes (never refused; see "Room" below) and the activation is
  resident. Evicting an activation queues a device-to-host write-back on the copy
  engine (the compute does not wait for it; a later fetch of it queues behind it, FIFO).
  The live store writes an evicted activation back even when it was fetched from the
  host and is unchanged, and so does this model. An activation is freed, at no cost,
  right after its READ (autograd releases it).
* Room, for a prefetch, a demand fetch or a write (TensorStore._make_room): candidates
  are the tensors with device bytes except the one being placed, the tensor read last
  (handed to compute), the parameters of modules still running (in a forward pass: the
  event's module and its ancestors by path, as the tracker's module stack holds them)
  and prefetches not read yet (the live store's copy in flight: not evictable, even
  once complete). Pass 1 evicts, in LRU order, those with predicted_next_use ==
  NO_PREDICTION; pass 2 the rest, furthest predicted use first (ties: the larger
  tensor id), until the need fits. A prefetch is refused as soon as pass 2 would evict
  a tensor predicted at or before the request's due read (evictions already made stay
  made). A demand fetch or a write that still lacks room waits for unread prefetches to
  land, the one predicted last first (NO_PREDICTION before any; stall), and evicts
  them; if even that is not enough it goes over budget and counts an overcommit
  (`budget_overflows` live). An evicted tensor with a finite prediction is queued
  again (see below).
* Peak device bytes never exceed the budget except through counted overcommits;
  `peak_device_bytes` is over the measured steps.
* Link default: `LinkModel.from_ratio(link_ratio)` per trace: copying all managed bytes
  once takes `link_ratio` x the mean measured step compute time. `simulate_like_run`
  takes a run's own link instead.

The policy, called exactly as the live store calls it
-----------------------------------------------------
`policy.start(TensorInfo)` once per trace, then for every managed event in order, after
it has been served: `requests = policy.observe(step, micro_step, phase, access, id)`.
`reads` counts the managed reads so far (this one included). Each requested id is
skipped if it has device bytes (resident or in flight) or cannot be produced (an
activation with no value: not written yet in this step, or already read); otherwise it
is queued, due at `reads + policy.predicted_next_use(id)` (`reads + position + 1` for
NO_PREDICTION). The queue is a heap by due; a tensor has one live entry (an earlier due
replaces a later one); a read of a tensor removes its entry. A parameter due after this
optimizer step's share of reads (`due > reads at the last optimizer step + reads in the
step before it`; from the second step on) is held instead, the soonest due kept, until
the optimizer step is done: the update would make its copy stale. Queuing again after an
eviction follows the same rule; the optimizer's own refetches (see Parameters) do not.
After each event (after the read and before an activation is freed; before an
activation's write is placed) the queue is drained, soonest due first: a request is
issued (a prefetch: FIFO copy) if it fits or room can be made; a refused one stays at
the head of the queue and draining stops until the next event (ChampSim's
`prefetch_line` returning false).

Fast-path hooks (predictor.interface.Policy), used by the oracle and called only when a
policy overrides BasePolicy's default (checked once per trace, not per event):
`admit_prefetch(id, end_ns, now_ns, compute_ns) -> bool`, the last word before a request
is issued, knowing when its copy would complete (False drops the request);
`next_read_key(id) -> int`, the read count at the tensor's next read (reads +
predicted_next_use; INF_POS for NO_PREDICTION), changing only when the tensor itself is
observed or is listed by `rekeyed() -> list[int]` after an event: residents are then
kept in a heap and the victims (the same as the scan's) are found in O(log n).

The oracle
----------
`policy="oracle"` is built here from each trace (prefetch.oracle). It is a portfolio of
a few offline strategies; each is simulated and the one with the best hit rate (then
the shortest time) is kept per trace and named in the report (`oracle_variant`).

`prefetch_used` counts prefetched tensors read (on time or late) before being evicted,
dropped or freed. Warm-up steps (the first `warmup_steps` steps of each trace) are
excluded by snapshot difference (AccessStats) and reported apart; a prefetch is credited
as used to the period that issued it, so accuracy stays <= 1 in both (a warm-up prefetch
read after warm-up still makes that read a hit).
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from heapq import heapify, heappop, heappush
from itertools import islice
from typing import Any, Iterable, Sequence

import numpy as np

from predictor.interface import NO_PREDICTION, Policy, PolicyError, TensorInfo, check_policy, overrides
from runtime.budget import Budget, format_bytes, parse_budget
from prefetch.oracle import INF_POS as _INF_POS
from prefetch.oracle import VARIANTS as ORACLE_VARIANTS
from prefetch.oracle import OraclePolicy, compute_deltas, managed_stream
from runtime.defaults import LIVE_LOOKAHEAD
from runtime.link import DEFAULT_LATENCY_S, DEFAULT_LINK_RATIO, LinkModel
from runtime.stats import AccessStats
from runtime.trace_format import MIN_MANAGED_BYTES, Access, Kind, Phase, Trace, load_trace, load_traces

HIT, LATE, MISS, WRITE = 0, 1, 2, 3
"""Codes of SimReport.outcomes, one per managed event."""
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
    """Bytes of the managed tensors (trace_format.is_managed; the largest over traces when several)."""
    budget_bytes: int
    """Device budget in bytes (the largest over traces when several)."""
    budget: str
    """The budget as given (a fraction of managed bytes or a size)."""
    peak_device_bytes: int
    """Most bytes on the simulated device during the measured steps."""
    steps: int
    """Measured steps (all traces)."""
    warmup_steps: int
    """Steps dropped at the start of each trace."""
    events: int
    """Managed events replayed, warm-up included."""
    stats: AccessStats
    """Measured steps only."""
    warmup: AccessStats
    """Warm-up steps only."""
    measured_ns: int
    """Simulated time of the measured steps: compute plus stalls."""
    baseline_ns: int
    """Compute time of the measured steps with everything resident."""
    overcommits: int = 0
    """Demand fetches and writes let through over budget (measured steps; the live
    report's `budget_overflows`)."""
    write_stall_ns: int = 0
    """Part of stall_ns that writes spent waiting for copies in flight to land (measured steps)."""
    prefetch_requested: int = 0
    """Requests queued (a tensor with no live entry; measured steps)."""
    prefetch_refused: int = 0
    """Times draining stopped at a refused request (measured steps)."""
    optimizer_wait_ns: int = 0
    """Time the optimizer step waited for parameter copies in flight (step time, not stall)."""
    lookahead: int | None = None
    """The lookahead a named policy was built with."""
    trace: str | None = None
    """The trace's stem, for a single-trace report."""
    traces: list["SimReport"] = field(default_factory=list)
    """Per-trace reports when several traces were simulated."""
    variant: str | None = None
    """The oracle's strategy kept for this trace (see prefetch.oracle), else None."""
    outcomes: np.ndarray | None = field(default=None, repr=False, compare=False)
    provenance: dict[str, Any] | None = None
    """A learned policy: train_seeds, eval_seeds, in_sample, in_sample_reason (predictor.provenance)."""
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
            "lookahead": self.lookahead,
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
            prefetch_refused=self.prefetch_refused,
            overcommits=self.overcommits,
            budget_overflows=self.overcommits,
            write_stall_s=self.write_stall_ns / 1e9,
            optimizer_wait_s=self.optimizer_wait_ns / 1e9,
            step_time_s=self.step_time_s,
            baseline_step_time_s=self.baseline_step_time_s,
            slowdown=self.slowdown,
            warmup=self.warmup.as_dict(),
        )
        if self.variant is not None:
            d["oracle_variant"] = self.variant
        if self.trace is not None:
            d["trace"] = self.trace
        if self.provenance is not None:
            d.update(self.provenance)
        if self.traces:
            d["traces"] = [t.as_dict() for t in self.traces]
        return d

    def summary(self) -> str:
        """One line: policy, budget, hit/late/miss, stall, slowdown."""
        s = self.stats
        slow = f"{self.slowdown:.3f}x" if self.slowdown is not None else "n/a"
        where = f"{self.trace}: " if self.trace else ""
        variant = f" [{self.variant}]" if self.variant else ""
        if self.provenance is not None and self.provenance.get("in_sample"):
            variant += " [IN SAMPLE]"
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
    lookahead: int = LIVE_LOOKAHEAD,
) -> SimReport:
    """Replay `traces` through the device/copy-engine model with `policy`; see the module docstring.

    policy: "oracle", a spec for predictor.policies.make_policy ("none", "replay",
    "markov", "learned:DIR", built with `lookahead`), or a Policy object (start() is
    called for each trace).
    budget: a fraction of each trace's managed bytes, or a size ("2GiB", 1.5e9).
    link: an explicit link for every trace; else one per trace from `link_ratio`.
    """
    loaded = _load(traces)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if lookahead < 1:
        raise ValueError(f"lookahead must be >= 1, got {lookahead}")
    parsed = parse_budget(budget)
    name = policy if isinstance(policy, str) else check_policy(policy).name
    runs = []
    for trace in loaded:
        managed, largest, largest_key = _sizes(trace)
        budget_bytes = parsed.resolve(managed, largest, f"{largest_key} in {trace.stem.name}")
        trace_link = link or _link_from_ratio(trace, link_ratio, latency_s, warmup_steps, managed)
        best: SimReport | None = None
        for pol in _make_policies(policy, trace, budget_bytes, lookahead):
            run = _simulate_trace(
                trace, pol, policy_name=name, budget=parsed, budget_bytes=budget_bytes, managed_bytes=managed,
                link=trace_link, warmup_steps=warmup_steps,
            )
            run.variant = pol.variant
            run.lookahead = lookahead if isinstance(policy, str) and policy != "oracle" else None
            # the oracle's portfolio: the best hit rate, then the shortest time (first wins ties)
            if best is None or (run.stats.hit_rate, -run.measured_ns) > (best.stats.hit_rate, -best.measured_ns):
                best = run
        assert best is not None
        runs.append(best)
    report = runs[0] if len(runs) == 1 else _combine(runs)
    if isinstance(policy, str) and policy.startswith("learned:"):
        _add_provenance(report, runs, loaded, policy.partition(":")[2])
    return report


def _add_provenance(report: SimReport, runs: list[SimReport], traces: list[Trace], model_dir: str) -> None:
    """Whether the learned model was trained on the simulated traces' runs; warns when so."""
    from predictor.provenance import assess_model_dir, combine, warn_if_in_sample
    from runtime.trace_identity import trace_identity

    provs = [assess_model_dir(model_dir, t.architecture, trace_identity(t)) for t in traces]
    for run, prov in zip(runs, provs):
        run.provenance = prov.as_dict()
    report.provenance = combine(provs).as_dict()
    for t, prov in zip(traces, provs):
        warn_if_in_sample(prov, f"prefetch simulate {t.stem.name}")


def simulate_like_run(run_report: dict[str, Any], trace: Trace | str | os.PathLike[str] | None = None,
                      **overrides: Any) -> SimReport:
    """Simulate a `prefetch run` / `runtime.prefetching` run's own trace the way it ran.

    run_report: the run's JSON report (`policy`, `budget_bytes`, `link`, `warmup_steps`,
    and `lookahead` when present, else LIVE_LOOKAHEAD). trace: the trace it recorded (a stem, a file
    or a Trace; default: the report's `trace`). A report without a link (a CUDA run) is
    simulated with the default link ratio. `overrides` go to simulate() (e.g. policy=...).
    The hit rate is what the live one should be within a couple of points.
    """
    if trace is None:
        trace = run_report.get("trace")
        if not trace:
            raise ValueError("the run report names no trace (run with --trace-out) and none was given")
    if not isinstance(trace, Trace):
        trace = load_trace(trace)
    kwargs: dict[str, Any] = dict(
        budget=int(run_report["budget_bytes"]),
        warmup_steps=int(run_report.get("warmup_steps", 1)),
        lookahead=int(run_report.get("lookahead") or LIVE_LOOKAHEAD),
    )
    lk = run_report.get("link")
    if lk and lk.get("bandwidth_GBps"):
        kwargs["link"] = LinkModel(bandwidth_bytes_per_s=float(lk["bandwidth_GBps"]) * 1e9,
                                   latency_s=float(lk.get("latency_us", DEFAULT_LATENCY_S * 1e6)) / 1e6,
                                   ratio=lk.get("ratio"))
    kwargs.update(overrides)
    policy = kwargs.pop("policy", run_report["policy"])
    return simulate(trace, policy, **kwargs)


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
    """(managed bytes, largest managed tensor's bytes, its key): trace_format.is_managed tensors only."""
    nbytes = np.where(trace.managed_tensors(), trace.tensor_nbytes(), 0)
    if not nbytes.any():
        raise ValueError(
            f"{trace.stem}: the tensor table has no managed tensors (parameters and saved activations "
            f"of at least {MIN_MANAGED_BYTES:,} bytes)"
        )
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


def _link_from_ratio(trace: Trace, ratio: float, latency_s: float, warmup_steps: int, managed: int) -> LinkModel:
    start, measured = _warmup_split(trace, warmup_steps)
    step_ns = float(compute_deltas(trace)[start:].sum()) / measured
    if step_ns <= 0:
        raise ValueError(
            f"{trace.stem}: the measured steps take no time (all time_ns equal), so a link ratio "
            "gives no bandwidth; pass an explicit link (--bandwidth/--latency-us)"
        )
    return LinkModel.from_ratio(ratio, managed_bytes=managed, step_compute_s=step_ns / 1e9, latency_s=latency_s)


def _make_policies(policy: str | Policy, trace: Trace, budget_bytes: int, lookahead: int) -> list[Policy]:
    """The policy to simulate on `trace`; for "oracle", every strategy of its portfolio."""
    if not isinstance(policy, str):
        return [policy]
    if policy == "oracle":
        return [OraclePolicy(trace, budget_bytes=budget_bytes, **v) for v in ORACLE_VARIANTS]
    try:
        from predictor.policies import make_policy
    except ImportError as exc:
        raise PolicyError(
            f"policy {policy!r} needs predictor.policies.make_policy, which is not available ({exc}); "
            "only 'oracle' is built into the simulator"
        ) from None
    return [make_policy(policy, lookahead=lookahead, architecture=trace.architecture or None)]


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
        prefetch_refused=sum(r.prefetch_refused for r in runs),
        optimizer_wait_ns=sum(r.optimizer_wait_ns for r in runs), lookahead=runs[0].lookahead, traces=runs,
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
) -> SimReport:
    full_start, measured_steps = _warmup_split(trace, warmup_steps)
    ms = managed_stream(trace)
    idx = ms["index"]
    n = len(idx)
    measure_start = int(np.searchsorted(idx, full_start))
    num_tensors = trace.num_tensors
    nb = trace.tensor_nbytes().tolist()
    kinds_np = trace.tensor_kinds()
    managed_t = trace.managed_tensors().tolist()
    is_act = (kinds_np == int(Kind.ACTIVATION)).tolist()
    is_param = (kinds_np == int(Kind.PARAMETER)).tolist()
    cpy = [link.copy_ns(b) for b in nb]  # copy time of each tensor, either direction (its current size)
    copy_ns = link.copy_ns
    ctime = ms["ctime"]
    delta_np = np.diff(ctime, prepend=0) if n else np.zeros(0, np.int64)
    # Plain Python lists for the hot loop (indexing numpy scalars per event is slow).
    steps_l = np.asarray(trace.column("step"))[idx].tolist()
    micro_l = np.asarray(trace.column("micro_step"))[idx].tolist()
    phase_l = np.asarray(trace.column("phase"))[idx].tolist()
    access_l = np.asarray(trace.column("access"))[idx].tolist()
    tids_l = np.asarray(trace.column("tensor_id"))[idx].tolist()
    nbytes_l = np.asarray(trace.column("nbytes"))[idx].tolist()  # an activation's size at its pack
    delta_l = delta_np.tolist()
    ctime_l = ctime.tolist()
    # Modules running at each event (the live store spares their parameters): in a forward
    # pass, the event's module and its ancestors; none in backward and optimizer phases.
    owner, running_l = _modules_running(trace, idx, phase_l)
    running: frozenset[int] = _NOTHING
    # the optimizer step before managed event j: (compute to its pre-hook, to its post-hook, to j)
    opt_l: list[tuple[int, int, int] | None] = [None] * n
    for j, pre, post in zip(ms["opt_at"].tolist(), ms["opt_pre"].tolist(), ms["opt_post"].tolist()):
        before = int(ctime[j - 1]) if j else 0
        opt_l[j] = (pre - before, post - pre, int(ctime[j]) - post)

    policy.start(TensorInfo.from_table(trace.tensors))
    observe = policy.observe
    pnu = policy.predicted_next_use
    # Fast-path hooks, decided once here (not per event): called only when the policy overrides them.
    use_heap = overrides(policy, "next_read_key")  # the oracle: same victims as the scan, found in O(log n)
    key = policy.next_read_key
    rekeyed = policy.rekeyed if overrides(policy, "rekeyed") else None
    admit = policy.admit_prefetch if overrides(policy, "admit_prefetch") else None

    # Device state. `res` holds tensors with device bytes (resident or in flight), LRU first.
    res: OrderedDict[int, None] = OrderedDict()
    move = res.move_to_end
    ready = [0] * num_tensors  # when the tensor's last copy to the device completes
    infl = bytearray(num_tensors)  # prefetched and not read yet: not evictable (the live store's in-flight copy)
    exists = bytearray(1 if not is_act[t] else 0 for t in range(num_tensors))  # has a value (device or host)
    pref = bytearray(num_tensors)  # brought by a prefetch and not yet read: the `mark` it was issued under
    mark = 1  # 1 in warm-up, 2 in the measured steps: a use is credited to the window that issued it
    pending: list[tuple[float, int]] = []  # heap of (due read count, tensor id) not yet issued
    queued: dict[int, float] = {}  # tensor id -> its live entry's due
    deferred: dict[int, float] = {}  # parameter requests held until the optimizer step is done
    step_start = step_prev = 0  # reads when this optimizer step began; reads in the previous one
    in_opt = False  # between the optimizer's pre- and post-hook
    engine_free = 0  # when the FIFO copy engine finishes its last queued copy
    now = 0
    cnow = 0  # the compute clock: `now` without stalls and waits (for admit_prefetch)
    reads = 0  # managed reads so far: the clock predictions are relative to
    current = -1  # the tensor read last: handed to compute, not evictable
    used = peak = 0
    evictions = bytes_copied = bytes_written_back = prefetch_issued = 0
    overcommits = write_stall = requested = refused = opt_wait = stall = 0
    # Heap mode only: residents keyed by (-next_read_key, LRU stamp); stale entries are skipped.
    heap: list[tuple[int, int, int]] = []
    stamp = [0] * num_tensors  # LRU order: the tick of the tensor's insertion or last read
    tick = 0

    def want(t: int, due: float) -> None:
        nonlocal requested
        if is_param[t] and step_prev and due > step_start + step_prev and not in_opt:
            # expected in the next step: the optimizer will rewrite the host master first
            if deferred.get(t, _INF) > due:
                deferred[t] = due
            return
        old = queued.get(t)
        if old is None or due < old:
            if old is None:
                requested += 1
            queued[t] = due
            heappush(pending, (due, t))

    def evict(v: int, far: float) -> None:
        """Evict a resident `v` (predicted `far` reads away): an activation is written back;
        one still expected is queued again."""
        nonlocal used, evictions, bytes_written_back, engine_free
        del res[v]
        used -= nb[v]
        evictions += 1
        pref[v] = 0
        if is_act[v]:
            start = engine_free if engine_free > now else now
            engine_free = start + cpy[v]
            bytes_written_back += nb[v]
        if far != _INF:
            want(v, reads + far)

    def make_room(need: int, protect: int, refuse: bool, due: float) -> bool:
        """Evict until `need` more bytes fit (runtime.store.TensorStore._make_room). With `refuse`,
        never evict a tensor predicted at or before `due`; otherwise wait for copies in flight."""
        nonlocal now, stall, overcommits
        if used + need <= budget_bytes:
            return True
        if use_heap:
            aside = []
            ok = None
            while heap:
                e = heappop(heap)
                v = e[2]
                if v not in res or stamp[v] != e[1] or key(v) != -e[0]:
                    continue  # stale: evicted, freed, read again or re-keyed since pushed
                aside.append(e)
                if v == protect or v == current or infl[v] or owner[v] in running:
                    continue
                k = -e[0]
                if k >= _INF_POS:
                    evict(v, _INF)
                else:
                    if refuse and k <= due:
                        ok = False
                        break
                    evict(v, float(k - reads))
                if used + need <= budget_bytes:
                    ok = True
                    break
            for e in aside:  # stale ones (the evicted) are skipped later
                heappush(heap, e)
            if ok is not None:
                return ok
        else:
            finite: list[tuple[float, int]] = []
            for v in list(res):  # pass 1, LRU order: tensors outside the policy's horizon
                if v == protect or v == current or infl[v] or owner[v] in running:
                    continue
                d = pnu(v)
                if d == _INF:
                    evict(v, _INF)
                    if used + need <= budget_bytes:
                        return True
                else:
                    finite.append((d, v))
            finite.sort(reverse=True)  # pass 2: furthest predicted use first
            limit = due - reads
            for d, v in finite:
                if refuse and d <= limit:
                    return False
                evict(v, d)
                if used + need <= budget_bytes:
                    return True
        if refuse:
            return False
        # A demand fetch or a write must fit: wait for unread prefetches to land (a stall),
        # then evict them, the one needed last first. Only what is in use can overflow.
        for d, v in sorted([(pnu(v), v) for v in res if infl[v] and v != protect], reverse=True):
            r = ready[v]
            if r > now:
                stall += r - now
                now = r
            infl[v] = 0
            evict(v, d)
            if used + need <= budget_bytes:
                return True
        overcommits += 1
        return True

    def place(t: int) -> None:
        """`t` now has device bytes (a prefetch, a demand fetch, a write)."""
        nonlocal used, peak, tick
        res[t] = None
        used += nb[t]
        if used > peak:
            peak = used
        if use_heap:
            tick += 1
            stamp[t] = tick
            if not infl[t]:  # an unread prefetch is not evictable: it enters the heap once read
                heappush(heap, (-key(t), tick, t))

    def drain() -> None:
        """Issue queued requests, soonest due first, while room can be made (see the module docstring)."""
        nonlocal engine_free, bytes_copied, prefetch_issued, refused
        while pending:
            due, p = heappop(pending)
            if queued.get(p) != due:
                continue  # superseded by an earlier due, or already served
            if p in res or not exists[p]:
                del queued[p]
                continue
            if admit is not None:
                end = (engine_free if engine_free > now else now) + cpy[p]
                if not admit(p, end, now, cnow):
                    del queued[p]
                    continue
            if used + nb[p] > budget_bytes and not make_room(nb[p], p, True, due):
                heappush(pending, (due, p))
                refused += 1
                return  # later requests are due later still: wait for the next event
            del queued[p]
            start = engine_free if engine_free > now else now
            engine_free = start + cpy[p]
            ready[p] = engine_free
            infl[p] = 1
            pref[p] = mark
            place(p)
            bytes_copied += nb[p]
            prefetch_issued += 1

    def free(t: int) -> None:
        """An activation's value is gone (read by autograd, or replaced): no cost."""
        nonlocal used
        if t in res:
            del res[t]
            used -= nb[t]
        exists[t] = 0
        infl[t] = 0
        pref[t] = 0

    # -- the event loop: warm-up, snapshot, measured ------------------------------------
    outcome = bytearray(n)  # per managed event: HIT (0), LATE, MISS, WRITE
    accesses = hits = late = misses = prefetch_used = carried = 0
    warm: AccessStats | None = None
    warm_extra = (0, 0, 0, 0, 0)
    t_measure = 0
    for lo, hi in ((0, measure_start), (measure_start, n)):
        if lo == measure_start:  # end of warm-up: snapshot (ChampSim's way of dropping it)
            warm = AccessStats(
                accesses=accesses, hits=hits, late=late, misses=misses, stall_ns=stall,
                bytes_copied=bytes_copied, bytes_written_back=bytes_written_back,
                prefetch_issued=prefetch_issued, prefetch_used=prefetch_used, evictions=evictions,
                steps=warmup_steps,
            )
            warm_extra = (overcommits, write_stall, requested, refused, opt_wait)
            t_measure = now
            mark = 2
            peak = used  # the peak reported is over measured steps
        for i, (s, m, ph, a, t, dt, opt, run) in enumerate(zip(
            islice(steps_l, lo, hi), islice(micro_l, lo, hi), islice(phase_l, lo, hi), islice(access_l, lo, hi),
            islice(tids_l, lo, hi), islice(delta_l, lo, hi), islice(opt_l, lo, hi), islice(running_l, lo, hi),
        ), lo):
            if opt is None:
                now += dt
            else:  # the optimizer step: drop the (now stale) device copies of parameters
                now += opt[0]
                cnow += opt[0]
                in_opt = True
                running = _NOTHING
                for p in [p for p in res if not is_act[p]]:
                    if infl[p]:
                        if ready[p] > now:
                            opt_wait += ready[p] - now
                            now = ready[p]  # the copy still reads the host master
                        infl[p] = 0
                    del res[p]
                    used -= nb[p]
                    pref[p] = 0
                    d = pnu(p)
                    if d != _INF:
                        want(p, reads + d)  # wanted again once updated
                now += opt[1]
                cnow += opt[1]
                # the optimizer's post-hook: requests from here on belong to the next step
                in_opt = False
                step_prev, step_start = reads - step_start, reads
                held, deferred = deferred, {}
                for p, due in held.items():
                    want(p, due)
                if pending:
                    drain()  # fetch them, updated
                now += opt[2]
            cnow = ctime_l[i]
            running = run
            if a == _READ:
                accesses += 1
                if t in res:
                    if infl[t]:
                        r = ready[t]
                        if r <= now:
                            hits += 1
                        else:
                            late += 1
                            outcome[i] = LATE
                            stall += r - now
                            now = r
                        infl[t] = 0
                    else:
                        hits += 1
                    move(t)
                    if use_heap:
                        tick += 1
                        stamp[t] = tick
                else:
                    misses += 1
                    outcome[i] = MISS
                    if not exists[t]:
                        raise ValueError(
                            f"{trace.stem.name}: managed event {i} reads activation {trace.keys[t]} "
                            "before any write of it"
                        )
                    if used + nb[t] > budget_bytes:
                        make_room(nb[t], t, False, 0)
                    start = engine_free if engine_free > now else now
                    engine_free = start + cpy[t]
                    stall += engine_free - now
                    now = engine_free
                    bytes_copied += nb[t]
                    ready[t] = now
                    place(t)
                pv = pref[t]
                if pv:
                    if pv == mark:
                        prefetch_used += 1
                    else:
                        carried += 1  # issued in warm-up, used after it: credited to warm-up
                    pref[t] = 0
                current = t
                queued.pop(t, None)  # read: a pending request for it is moot
                reads += 1
            else:
                outcome[i] = WRITE
            reqs = observe(s, m, ph, a, t)
            if use_heap:
                if t in res and not infl[t]:  # re-keyed by observe (or read: evictable now)
                    heappush(heap, (-key(t), stamp[t], t))
                if rekeyed is not None:
                    for v in rekeyed():
                        if v in res and not infl[v]:
                            heappush(heap, (-key(v), stamp[v], v))
                if len(heap) > 4 * len(res) + 1024:  # compact: drop the stale entries
                    heap = [(-key(v), stamp[v], v) for v in res if not infl[v]]
                    heapify(heap)
            if reqs:
                for j, p in enumerate(reqs):
                    if p in res or not exists[p] or not managed_t[p]:
                        continue  # resident, in flight, not produced yet, or not managed
                    d = pnu(p)
                    want(p, reads + (d if d != _INF else j + 1))
            if pending:
                drain()
            if is_act[t]:
                if a == _READ:
                    free(t)  # autograd releases a saved activation once unpacked
                else:  # packed: replaces the value, makes room first, then resident and dirty
                    if exists[t]:
                        free(t)
                    b = nbytes_l[i]
                    if b != nb[t]:  # this step's value has another size
                        nb[t] = b
                        cpy[t] = copy_ns(b)
                    if used + b > budget_bytes:
                        st = stall
                        make_room(nb[t], t, False, 0)
                        write_stall += stall - st
                    exists[t] = 1
                    pref[t] = 0
                    ready[t] = now
                    place(t)

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
        prefetch_requested=requested - warm_extra[2], prefetch_refused=refused - warm_extra[3],
        optimizer_wait_ns=opt_wait - warm_extra[4], trace=trace.stem.name,
        outcomes=np.frombuffer(bytes(outcome), dtype=np.int8),
    )


_NOTHING: frozenset[int] = frozenset()
_FORWARD_PHASES = (int(Phase.FORWARD), int(Phase.EVAL), int(Phase.RECOMPUTE))


def _modules_running(trace: Trace, idx: np.ndarray, phase_l: list[int]) -> tuple[list[int], list[frozenset[int]]]:
    """(owner, running): the module index owning each parameter (-1 for other tensors), and per
    managed event the modules whose forward is under way: in a forward phase (forward, eval,
    recompute) the event's module (the one whose pre-hook reads a parameter, or the innermost
    one packing an activation) and its ancestors by path, as the tracker's module stack holds
    them; nothing in backward and optimizer phases. The live store does not evict a parameter
    whose module is running (runtime.tracker.AccessTracker.params_in_use)."""
    paths = list(trace.manifest.get("modules") or [])
    index = {p: i for i, p in enumerate(paths)}
    kinds = trace.tensor_kinds()
    modules = trace.tensors.column("module").to_pylist()
    tids = trace.tensors.column("tensor_id").to_pylist()
    owner = [-1] * trace.num_tensors
    for t, mod in zip(tids, modules):
        if kinds[t] == int(Kind.PARAMETER):
            owner[t] = index.get(mod or "", -1)
    chains: dict[int, frozenset[int]] = {}
    root = {index["<root>"]} if "<root>" in index else set()  # the model itself (runtime.tracker's name)

    def chain(m: int) -> frozenset[int]:
        c = chains.get(m)
        if c is None:
            if 0 <= m < len(paths):
                parts = paths[m].split(".")
                up = {index[q] for q in (".".join(parts[:k]) for k in range(1, len(parts))) if q in index}
                c = frozenset(up | root | {m})
            else:
                c = _NOTHING
            chains[m] = c
        return c

    mods = np.asarray(trace.column("module_id"))[idx].tolist()
    running = [chain(m) if ph in _FORWARD_PHASES else _NOTHING for m, ph in zip(mods, phase_l)]
    return owner, running


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


__all__ = ["SimReport", "simulate", "simulate_like_run", "format_table"]

"""The one report (RunReport) a live run and the simulator both produce, and its JSON keys.

`Prefetcher.run_report()` builds it from the store; the simulator's `SimReport` is this
type (prefetch.sim_report); `prefetch report` reads every input back with `from_dict` and
uses attributes only. `as_dict()` writes the JSON keys of DESIGN.md's report plus the
counters each producer has always written, so existing JSON files keep their meaning:
the common keys, then the live-only section (`live`, `identity`, `cuda`), or the
simulator-only keys (emitted when `events` is set), then what a caller added (`extra`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.budget import format_bytes
from runtime.stats import AccessStats

if TYPE_CHECKING:
    import numpy as np

DESIGN_KEYS: tuple[str, ...] = (
    "policy", "device", "link", "managed_bytes", "budget_bytes", "peak_device_bytes", "steps", "warmup_steps",
    "accesses", "hits", "late", "misses", "hit_rate", "stall_s", "bytes_copied", "prefetch_issued",
    "prefetch_used", "accuracy", "step_time_s", "baseline_step_time_s", "slowdown",
)
"""DESIGN.md's report keys: every report has them (from_dict requires them)."""

IDENTITY_KEYS: tuple[str, ...] = ("losses_identical", "params_identical", "optimizer_state_identical")
"""The bit-identity flags of `prefetch run` (against the same job all resident)."""

PROVENANCE_KEYS: tuple[str, ...] = ("train_seeds", "eval_seeds", "in_sample", "in_sample_reason")
"""A learned policy's provenance keys (predictor.provenance.Provenance.as_dict)."""

CUDA_KEYS: tuple[str, ...] = ("cuda_max_memory_allocated", "cuda_memory_bound_bytes", "cuda_memory_bound",
                              "peak_memory_within_bound", "cuda_timed_waits")
"""What runtime.cuda_monitor adds on CUDA."""

_STATS_KEYS = ("accesses", "hits", "late", "misses", "hit_rate", "stall_s", "bytes_copied", "bytes_written_back",
               "prefetch_issued", "prefetch_used", "accuracy", "evictions")
_SIM_STATS_KEYS = ("accesses", "hits", "late", "misses", "hit_rate", "coverage", "stall_s", "stall_ns",
                   "bytes_copied", "bytes_written_back", "prefetch_issued", "prefetch_used", "accuracy", "evictions")


class ReportFormatError(ValueError):
    """A report document that is not a RunReport: one line naming the source and the key."""


@dataclass(kw_only=True, slots=True)
class Identity:
    """Bit identity against the same job all resident (runtime.state_compare.identity_report)."""

    losses_identical: bool | None = None
    params_identical: bool | None = None
    optimizer_state_identical: bool | None = None
    state_mismatches: list[str] | None = None
    """The first names that differ (`model:` / `optimizer:` prefixed)."""

    def as_dict(self) -> dict[str, Any]:
        """Only the keys that were compared (a run without loss lists has no losses_identical)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclass(kw_only=True, slots=True)
class LiveCounters:
    """What only a live run has: the store's extra counters, the policy that served it, the overhead split."""

    policy_served_by: str
    """The policy that answered (a learned spec's fallback says so)."""
    managed_kinds: list[str]
    min_managed_bytes: int
    persistent_bytes: int
    """Bytes kept resident (small parameters and activations, not managed)."""
    stale_copies: int = 0
    """Parameter copies dropped because the parameter was written outside the optimizer."""
    dirty_writebacks: int = 0
    adopted_params: int = 0
    overhead: dict[str, Any] | None = None
    """runtime.overhead.OverheadSplit.as_dict(): stall, bookkeeping, emulation per step."""
    policy_note: str | None = None


@dataclass(kw_only=True, slots=True)
class RunReport:
    """What one run found, live or simulated: DESIGN.md's report keys and the counters behind them."""

    policy: str
    device: str
    """`cuda:N` or `simulated`."""
    link: dict[str, Any] | None
    """LinkModel.describe() on the simulated device, else None; bandwidth None when per-trace links differ."""
    managed_bytes: int
    """Bytes of the managed tensors (trace_format.is_managed; the largest over traces when several)."""
    budget_bytes: int | None
    """Device budget in bytes (None for a live run stopped before its first step fixed it)."""
    peak_device_bytes: int
    steps: int
    """Measured steps (all traces)."""
    warmup_steps: int
    stats: AccessStats
    """Measured steps only."""
    warmup: AccessStats | None
    """Warm-up steps only (None: a live run with no warm-up step done)."""
    step_time_s: float | None = None
    """Live: the median measured step; simulated: measured_ns per step (derived when not given)."""
    baseline_step_time_s: float | None = None
    """The same job with everything resident."""
    slowdown: float | None = None
    """step_time_s / baseline_step_time_s unless a producer measured it otherwise (prefetch run's paired steps)."""
    prefetch_refused: int = 0
    """Times draining stopped at a refused request (measured steps)."""
    prefetch_held: int = 0
    """Times draining stopped at a request the prefetch window held back (measured steps; runtime.tier)."""
    overcommits: int = 0
    """Demand fetches and writes let through over budget (JSON `budget_overflows`)."""
    bytes_h2d: dict[str, int] | None = None
    """Bytes copied to the device in the measured steps, by kind (parameter, activation, gradient)."""
    bytes_d2h: dict[str, int] | None = None
    """Bytes copied to the host in the measured steps, by kind (activation: write-backs; gradient:
    backward's gradients; parameter: a user's write to a device copy written back)."""
    grad_wait_ns: int = 0
    """Time backward ends (and the optimizer's pre-hook) waited for gradient copies to the host:
    time the job loses, apart from stall_s (JSON `grad_wait_s`)."""
    grad_moves: int = 0
    """Gradient copies to the host started (measured steps)."""
    grad_holds: int = 0
    """Gradients held on the device across micro-steps instead (measured steps)."""
    router_hints: int = 0
    """Router hints the policy took (measured steps; runtime.routers, DeviceTier.hint)."""
    hint_cancelled: int = 0
    """Queued prefetches those hints dropped: experts the router said would not run."""
    early_stepped: int = 0
    """Host stepping: parameters the optimizer stepped first, so that their copies for the next
    step ran during the rest of the step (measured steps; DeviceTier.early_params)."""
    ahead_share: float | None = None
    """The tier's prefetch window as a share of the budget (runtime.defaults.AHEAD_SHARE); None: not reported."""
    early_step: bool | None = None
    """Host stepping stepped first what the next step reads first (PrefetchConfig.early_step); None: not reported."""
    # -- context a caller knows (prefetch run, the demo, simulate) --------------------------------
    workload: str | None = None
    seed: int | None = None
    architecture: str | None = None
    trace: str | None = None
    """The trace's stem (simulated single trace) or path (a live run's recording)."""
    timeline: str | None = None
    """A Chrome-trace file of the run (prefetch run --timeline)."""
    provenance: dict[str, Any] | None = None
    """A learned policy: PROVENANCE_KEYS (predictor.provenance)."""
    simulated_hit_rate: float | None = None
    """Set by `prefetch demo` on a live run: the simulator on the trace recorded from its seed."""
    simulated_slowdown: float | None = None
    simulated_oracle_hit_rate: float | None = None
    demo_train_seeds: list[int] | None = None
    """Set by `prefetch demo`: the seeds its learned model was trained on."""
    gpu_model: dict[str, Any] | None = None
    """The simulator's model of a GPU run (prefetch.gpu_model.GpuFigures.as_dict: the optimizer on the
    host for the prefetched run, on the device for the baseline, and the host figure's source); None: off."""
    # -- live only ---------------------------------------------------------------------------------
    live: LiveCounters | None = None
    identity: Identity | None = None
    cuda: dict[str, Any] | None = None
    """CUDA_KEYS (runtime.cuda_monitor)."""
    optimizer: dict[str, Any] | None = None
    """Where the optimizer stepped the managed parameters and why (runtime.placement
    OptimizerPlacement.report): a job with an optimizer."""
    # -- simulated only (emitted when `events` is set) ---------------------------------------------
    events: int | None = None
    """Managed events replayed, warm-up included."""
    budget: str | None = None
    """The budget as given (a fraction of managed bytes or a size)."""
    lookahead: int | None = None
    """The lookahead a named policy was built with."""
    measured_ns: int | None = None
    """Simulated time of the measured steps: compute plus stalls."""
    baseline_ns: int | None = None
    """Compute time of the measured steps with everything resident."""
    write_stall_ns: int = 0
    """Part of stall_ns that writes spent waiting for copies in flight to land (measured steps)."""
    prefetch_requested: int = 0
    """Requests queued (a tensor with no live entry; measured steps)."""
    optimizer_wait_ns: int = 0
    """Time the optimizer step waited for parameter copies in flight (step time, not stall)."""
    variant: str | None = None
    """The oracle's strategy kept (prefetch.oracle), else None (JSON `oracle_variant`)."""
    traces: list["RunReport"] = field(default_factory=list)
    """Per-trace reports when several traces were simulated."""
    outcomes: "np.ndarray | None" = field(default=None, repr=False, compare=False)
    """Single trace: per event HIT, LATE, MISS (reads) or WRITE, warm-up included (not serialised)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys a caller added that this type does not know (losses, threads, ...): kept, written back."""

    def __post_init__(self) -> None:
        if self.measured_ns is not None and self.step_time_s is None:  # the simulator: times from its clock
            self.step_time_s = self.measured_ns / 1e9 / self.steps if self.steps else 0.0
        if self.baseline_ns is not None and self.baseline_step_time_s is None:
            self.baseline_step_time_s = self.baseline_ns / 1e9 / self.steps if self.steps else 0.0
        if self.measured_ns is not None and self.baseline_ns is not None and self.slowdown is None:
            self.slowdown = self.measured_ns / self.baseline_ns if self.baseline_ns else None

    @property
    def simulated(self) -> bool:
        """True for the simulator's report (it replayed events)."""
        return self.events is not None

    @property
    def hit_rate(self) -> float:
        """Strict: hits / accesses (late hits are not hits)."""
        return self.stats.hit_rate

    @property
    def budget_fraction(self) -> float | None:
        return self.budget_bytes / self.managed_bytes if (self.managed_bytes and self.budget_bytes is not None) else None

    @property
    def in_sample(self) -> bool | None:
        """A learned policy's model was trained on this run (None: not reported)."""
        v = (self.provenance or {}).get("in_sample")
        return v if isinstance(v, bool) else None

    def as_dict(self) -> dict[str, Any]:
        """The JSON report: DESIGN.md's keys, the counters, each producer's section, then `extra`."""
        sim, live = self.simulated, self.live
        d: dict[str, Any] = {"policy": self.policy}
        if live is not None:
            d["policy_served_by"] = live.policy_served_by
        d.update(device=self.device, link=dict(self.link) if self.link is not None else None)
        if sim:
            d["lookahead"] = self.lookahead
        d["managed_bytes"] = self.managed_bytes
        if live is not None:
            d.update(managed_kinds=list(live.managed_kinds), min_managed_bytes=live.min_managed_bytes,
                     persistent_bytes=live.persistent_bytes)
        if sim:
            d["budget"] = self.budget
        d["budget_bytes"] = self.budget_bytes
        if sim:
            d["budget_fraction"] = self.budget_fraction
        if self.ahead_share is not None:
            d["ahead_share"] = self.ahead_share
        if self.early_step is not None:
            d["early_step"] = self.early_step
        d.update(peak_device_bytes=self.peak_device_bytes, steps=self.steps, warmup_steps=self.warmup_steps)
        if sim:
            d["events"] = self.events
        s = self.stats.as_dict()
        d.update((k, s[k]) for k in (_SIM_STATS_KEYS if sim else _STATS_KEYS))
        if sim:
            d["prefetch_requested"] = self.prefetch_requested
        d["prefetch_refused"] = self.prefetch_refused
        d["prefetch_held"] = self.prefetch_held
        if sim:
            d["overcommits"] = self.overcommits
        d["budget_overflows"] = self.overcommits
        if live is not None:
            d.update(stale_copies=live.stale_copies, dirty_writebacks=live.dirty_writebacks,
                     adopted_params=live.adopted_params)
        if sim:
            d.update(write_stall_s=self.write_stall_ns / 1e9, optimizer_wait_s=self.optimizer_wait_ns / 1e9)
        elif live is not None:  # the optimizer step's copy waits (device stepping, going resident): step time, not stall
            d["optimizer_wait_s"] = self.optimizer_wait_ns / 1e9
        if self.bytes_h2d is not None:
            d.update(bytes_h2d=dict(self.bytes_h2d), bytes_d2h=dict(self.bytes_d2h or {}),
                     grad_wait_s=self.grad_wait_ns / 1e9, grad_moves=self.grad_moves, grad_holds=self.grad_holds,
                     router_hints=self.router_hints, hint_cancelled=self.hint_cancelled,
                     early_stepped=self.early_stepped)
        d.update(step_time_s=self.step_time_s, baseline_step_time_s=self.baseline_step_time_s, slowdown=self.slowdown,
                 warmup=self.warmup.as_dict() if self.warmup is not None else None)
        if live is not None:
            d["overhead"] = live.overhead
        if self.identity is not None:
            d.update(self.identity.as_dict())
        if self.cuda is not None:
            d.update(self.cuda)
        if self.optimizer is not None:
            d["optimizer"] = dict(self.optimizer)
        if self.variant is not None:
            d["oracle_variant"] = self.variant
        if self.gpu_model is not None:
            d["gpu_model"] = dict(self.gpu_model)
        for key in ("workload", "seed", "architecture", "trace", "timeline"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.provenance is not None:
            d.update(self.provenance)
        if live is not None and live.policy_note:
            d["policy_note"] = live.policy_note
        for key in ("simulated_hit_rate", "simulated_slowdown", "simulated_oracle_hit_rate", "demo_train_seeds"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.traces:
            d["traces"] = [t.as_dict() for t in self.traces]
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Any, *, source: str) -> "RunReport":
        """Read a report back (a JSON object); ReportFormatError naming `source` and the key when one
        is missing or of the wrong type. Keys it does not know go to `extra`; a known optional key
        whose value is null stays there too, so as_dict() gives the same keys back."""
        return _Reader(d, source).report(cls)

    def summary(self) -> str:
        """One line: policy, budget, hit/late/miss, stall, slowdown (and one about the GPU model when simulated with one)."""
        s = self.stats
        slow = f"{self.slowdown:.3f}x" if self.slowdown is not None else "n/a"
        where = f"{self.trace}: " if self.trace else ""
        variant = f" [{self.variant}]" if self.variant else ""
        if self.in_sample:
            variant += " [IN SAMPLE]"
        budget = self.budget_bytes or 0
        step, base = self.step_time_s or 0.0, self.baseline_step_time_s or 0.0
        return (
            f"{where}{self.policy:>8}{variant}  budget {format_bytes(budget)} "
            f"({budget / max(self.managed_bytes, 1):.0%})  "
            f"hit {s.hit_rate:6.2%}  late {s.late}  miss {s.misses}  of {s.accesses}  "
            f"stall {s.stall_ns / 1e9:.4f}s  copied {s.bytes_copied / 2**20:.1f} MiB  "
            f"accuracy {s.accuracy:.1%}  step {step * 1e3:.2f} ms "
            f"vs {base * 1e3:.2f} ms  slowdown {slow}"
        ) + (f"\n{where}  {gpu_model_line(self.gpu_model)}" if self.gpu_model is not None else "")


def gpu_model_line(g: dict[str, Any]) -> str:
    """summary()'s line about the simulator's GPU model (a report's `gpu_model`, prefetch.gpu_model)."""
    def ms(key: str) -> str:
        v = g.get(key)
        return f"{v * 1e3:.2f} ms" if isinstance(v, (int, float)) else "n/a"

    dev = g.get("device_ns_per_byte")
    device = f"{dev:g} ns/byte" if isinstance(dev, (int, float)) else "the trace's time"
    return (f"gpu model: optimizer on the host ({g.get('host_variant')}, {g.get('host_ns_per_byte', 0):.4f} ns/byte "
            f"+ {g.get('host_fixed_ns', 0) / 1e3:.0f} us/step, {g.get('host_source')}): "
            f"{ms('host_optimizer_step_s')}/step vs the trace's {ms('trace_optimizer_step_s')}; "
            f"baseline on the device ({device}): {ms('baseline_optimizer_step_s')}/step")


# -- reading back -------------------------------------------------------------------------------

_INT, _NUM, _STR, _BOOL, _DICT, _LIST = "an integer", "a number", "a string", "true or false", "an object", "a list"
_CHECK = {
    _INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
    _NUM: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    _STR: lambda v: isinstance(v, str),
    _BOOL: lambda v: isinstance(v, bool),
    _DICT: lambda v: isinstance(v, dict),
    _LIST: lambda v: isinstance(v, list),
}
_STATS_FIELDS = tuple(f.name for f in dataclasses.fields(AccessStats))


class _Reader:
    """Takes typed values out of one report document; what is left over is `extra`."""

    def __init__(self, d: Any, source: str) -> None:
        if not isinstance(d, dict):
            raise ReportFormatError(f"{source}: not a run report (a JSON object), got {type(d).__name__}")
        self.rest, self.source = dict(d), source

    def fail(self, key: str, what: str, value: Any = None, missing: bool = False) -> None:
        policy = self.rest.get("policy")
        where = f"{self.source}" + (f" ({policy})" if isinstance(policy, str) else "")
        if missing:
            raise ReportFormatError(f"{where}: report key '{key}' is missing")
        raise ReportFormatError(f"{where}: report key '{key}' must be {what}, got {value!r:.60}")

    def need(self, key: str, kind: str, *, nullable: bool = False) -> Any:
        if key not in self.rest:
            self.fail(key, kind, missing=True)
        v = self.rest.pop(key)
        if (v is None and nullable) or _CHECK[kind](v):
            return v
        return self.fail(key, kind + (" or null" if nullable else ""), v)

    def may(self, key: str, kind: str, default: Any = None) -> Any:
        """An optional key: absent or null gives `default` (a null stays in `extra`)."""
        v = self.rest.get(key)
        if v is None:
            return default
        if not _CHECK[kind](v):
            self.fail(key, kind + " or null", v)
        return self.rest.pop(key)

    def stats(self) -> AccessStats:
        counts = {k: self.need(k, _INT) for k in ("accesses", "hits", "late", "misses", "bytes_copied",
                                                   "prefetch_issued", "prefetch_used")}
        for k in ("hit_rate", "accuracy"):
            self.need(k, _NUM)  # derived from the counts: checked, not kept
        stall_s = self.need("stall_s", _NUM)
        stall_ns = self.may("stall_ns", _INT)
        self.may("coverage", _NUM)
        return AccessStats(**counts, stall_ns=stall_ns if stall_ns is not None else round(stall_s * 1e9),
                           bytes_written_back=self.may("bytes_written_back", _INT, 0),
                           evictions=self.may("evictions", _INT, 0), steps=self.rest.get("steps", 0))

    def counts(self, key: str) -> dict[str, int]:
        """A JSON object of byte counts by kind."""
        v = self.need(key, _DICT)
        bad = [k for k, n in v.items() if not _CHECK[_INT](n)]
        if bad:
            self.fail(f"{key}.{bad[0]}", _INT, v[bad[0]])
        return dict(v)

    def warmup(self) -> AccessStats | None:
        w = self.may("warmup", _DICT)
        if w is None:
            return None
        bad = [k for k in _STATS_FIELDS if not _CHECK[_INT](w.get(k, 0))]
        if bad:
            self.fail(f"warmup.{bad[0]}", _INT, w.get(bad[0]))
        return AccessStats(**{k: w.get(k, 0) for k in _STATS_FIELDS})

    def report(self, cls: type[RunReport]) -> RunReport:
        source = self.source
        policy = self.need("policy", _STR)
        self.rest["policy"] = policy  # for the messages below; popped at the end
        kw: dict[str, Any] = dict(
            device=self.need("device", _STR), link=self.need("link", _DICT, nullable=True),
            managed_bytes=self.need("managed_bytes", _INT),
            budget_bytes=self.need("budget_bytes", _INT, nullable=True),
            peak_device_bytes=self.need("peak_device_bytes", _INT), steps=self.need("steps", _INT),
            warmup_steps=self.need("warmup_steps", _INT), stats=self.stats(), warmup=self.warmup(),
            step_time_s=self.need("step_time_s", _NUM, nullable=True),
            baseline_step_time_s=self.need("baseline_step_time_s", _NUM, nullable=True),
            slowdown=self.need("slowdown", _NUM, nullable=True),
            prefetch_refused=self.may("prefetch_refused", _INT, 0),
            prefetch_held=self.may("prefetch_held", _INT, 0),
        )
        kw["stats"].steps = kw["steps"]
        if self.rest.get("bytes_h2d") is not None:  # the traffic by direction and kind (older reports: none)
            kw.update(bytes_h2d=self.counts("bytes_h2d"), bytes_d2h=self.counts("bytes_d2h"),
                      grad_wait_ns=round(self.need("grad_wait_s", _NUM) * 1e9),
                      grad_moves=self.may("grad_moves", _INT, 0), grad_holds=self.may("grad_holds", _INT, 0),
                      router_hints=self.may("router_hints", _INT, 0), hint_cancelled=self.may("hint_cancelled", _INT, 0),
                      early_stepped=self.may("early_stepped", _INT, 0))
        overflows = self.may("budget_overflows", _INT, 0)
        kw["overcommits"] = self.may("overcommits", _INT, overflows)
        for key, kind in (("workload", _STR), ("seed", _INT), ("architecture", _STR), ("trace", _STR),
                          ("timeline", _STR), ("simulated_hit_rate", _NUM), ("simulated_slowdown", _NUM),
                          ("simulated_oracle_hit_rate", _NUM), ("demo_train_seeds", _LIST)):
            kw[key] = self.may(key, kind)
        kw["gpu_model"] = self.may("gpu_model", _DICT)
        if any(k in self.rest for k in PROVENANCE_KEYS):
            kw["provenance"] = {k: self.rest.pop(k) for k in PROVENANCE_KEYS if k in self.rest}
        if "policy_served_by" in self.rest:  # a live run
            kw["live"] = LiveCounters(
                policy_served_by=self.need("policy_served_by", _STR), managed_kinds=self.need("managed_kinds", _LIST),
                min_managed_bytes=self.need("min_managed_bytes", _INT),
                persistent_bytes=self.need("persistent_bytes", _INT),
                stale_copies=self.may("stale_copies", _INT, 0), dirty_writebacks=self.may("dirty_writebacks", _INT, 0),
                adopted_params=self.may("adopted_params", _INT, 0), overhead=self.may("overhead", _DICT),
                policy_note=self.may("policy_note", _STR))
        if any(self.rest.get(k) is not None for k in (*IDENTITY_KEYS, "state_mismatches")):
            kw["identity"] = Identity(**{k: self.may(k, _BOOL) for k in IDENTITY_KEYS},
                                      state_mismatches=self.may("state_mismatches", _LIST))
        if any(k in self.rest for k in CUDA_KEYS):
            kw["cuda"] = {k: self.rest.pop(k) for k in CUDA_KEYS if k in self.rest}
        kw["optimizer"] = self.may("optimizer", _DICT)
        kw["ahead_share"] = self.may("ahead_share", _NUM)
        kw["early_step"] = self.may("early_step", _BOOL)
        if "events" not in self.rest and "optimizer_wait_s" in self.rest:  # a live report's
            kw["optimizer_wait_ns"] = round(self.need("optimizer_wait_s", _NUM) * 1e9)
        if "events" in self.rest:  # the simulator's report
            kw.update(events=self.need("events", _INT), budget=self.need("budget", _STR),
                      lookahead=self.need("lookahead", _INT, nullable=True), variant=self.may("oracle_variant", _STR),
                      write_stall_ns=round(self.need("write_stall_s", _NUM) * 1e9),
                      optimizer_wait_ns=round(self.need("optimizer_wait_s", _NUM) * 1e9),
                      prefetch_requested=self.may("prefetch_requested", _INT, 0))
            self.may("budget_fraction", _NUM)
            traces = self.may("traces", _LIST, [])
            kw["traces"] = [RunReport.from_dict(t, source=f"{source}: traces[{i}]") for i, t in enumerate(traces)]
        del self.rest["policy"]
        return cls(policy=policy, **kw, extra=self.rest)

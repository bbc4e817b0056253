"""The trace-driven prefetch simulator: trace + policy + budget + link -> hit rate, stalls, slowdown.

    prefetch simulate datasets/samples/gpt2 --policy replay --budget 0.4 --json out.json
    prefetch simulate datasets/samples --sweep --sweep-policies none,replay,oracle --plot sweep.png

    from prefetch.simulate import simulate, simulate_like_run
    report = simulate(["datasets/samples/gpt2"], "replay", budget=0.4)
    print(report.summary()); report.as_dict()
    simulate_like_run(run_report)   # a `prefetch run` report: its trace, policy, budget, link
    simulate(traces, "learned:models/", daemon=True)   # learned as live runs serve it (below)
    simulate(traces, "replay", gpu_model=GpuModel.measure())   # a GPU run: host optimizer (prefetch.gpu_model)

Our ChampSim: a recorded trace is replayed, event by event, through the device tier
(runtime.tier.DeviceTier, the live store's own rules) over a virtual-clock copy engine
(prefetch.sim_trace), with a policy deciding what to prefetch. Each trace is simulated on
its own device (its own clock, budget and link); the report sums them and keeps a per-trace breakdown.

The model, rule by rule, and the policy calling convention: docs/simulator.md.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable

import numpy as np

from predictor.daemon_path import DaemonPath, ReplySchedule, SimulatedDaemonPolicy
from predictor.interface import Policy, PolicyError, check_policy
from prefetch.gpu_model import GpuModel, combine as combine_gpu
from prefetch.oracle import VARIANTS as ORACLE_VARIANTS
from prefetch.oracle import OraclePolicy, compute_deltas
from prefetch.sim_report import SimReport, _combine, format_table
from prefetch.sim_trace import HIT, LATE, MISS, WRITE, _warmup_split, simulate_portfolio
from runtime.budget import Budget, footprint_extra, parse_budget
from runtime.placement import check_placement
from runtime.defaults import AHEAD_SHARE, LIVE_LOOKAHEAD
from runtime.link import DEFAULT_LATENCY_S, DEFAULT_LINK_RATIO, LinkModel
from runtime.tier import check_ahead_share
from runtime.trace_format import MIN_MANAGED_BYTES, Trace, load_trace, load_traces


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
    daemon: DaemonPath | bool = False,
    guard: bool = True,
    gpu_model: GpuModel | None = None,
    optimizer_placement: str = "auto",
    ahead_share: float = AHEAD_SHARE,
    early_step: bool = True,
) -> SimReport:
    """Replay `traces` through the device/copy-engine model with `policy`; see the module docstring.

    policy: "oracle", a spec for predictor.policies.make_policy ("none", "replay",
    "markov", "learned:DIR", built with `lookahead`), or a Policy object (start() is
    called for each trace).
    budget: a fraction of each trace's managed bytes, or a size ("2GiB", 1.5e9).
    link: an explicit link for every trace; else one per trace from `link_ratio`.
    daemon: False (default): the policy is called in process, with no latency ("learned:DIR"
    is the model itself). True or a predictor.daemon_path.DaemonPath: the policy is served as
    a live run's daemon serves it (batched events, replies a round trip late, the local
    fallback's next use between them); the report's policy reads "SPEC via daemon".
    guard: a learned policy runs under predictor.guard, as live runs run it (False: alone).
    gpu_model: a prefetch.gpu_model.GpuModel: the prefetched run's optimizer steps take the host
    optimizer's modelled time, the baseline's the device's (report key `gpu_model`); None: the
    trace's optimizer time for both, as recorded.
    optimizer_placement: as a live run's (runtime.placement). The simulator models host stepping,
    and, for auto and device, a budget that holds the whole footprint (managed bytes plus
    runtime.budget.footprint_extra): everything resident after the first step, as a live run
    does (DeviceTier.go_resident). Device stepping with the state streamed is not simulated.
    ahead_share: the tier's prefetch window (runtime.defaults.AHEAD_SHARE: unread prefetches hold
    at most this share of the budget; 0: no window), as a live run's PrefetchConfig.ahead_share.
    early_step: host stepping steps first the parameters the next step reads first, their copies
    starting in the rest of the optimizer step (a live run's PrefetchConfig.early_step): the trace's
    optimizer compute is shared out by parameter bytes (DeviceTier.early_params, prefetch.sim_trace).
    """
    loaded = _load(traces)
    if gpu_model is not None and not isinstance(gpu_model, GpuModel):
        raise ValueError(f"gpu_model must be a prefetch.gpu_model.GpuModel or None, got {type(gpu_model).__name__}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if lookahead < 1:
        raise ValueError(f"lookahead must be >= 1, got {lookahead}")
    check_ahead_share(ahead_share)
    parsed = parse_budget(budget)
    check_placement(optimizer_placement)
    name = policy if isinstance(policy, str) else check_policy(policy).name
    path = DaemonPath() if daemon is True else (daemon or None)
    if path is not None:
        if policy == "oracle":
            raise ValueError("policy 'oracle' cannot go through the daemon: it needs the future (simulator only)")
        name = f"{name} via daemon"
    runs = []
    for trace in loaded:
        managed, largest, largest_key = _sizes(trace)
        extra = footprint_extra(trace.tensor_kinds(), trace.tensor_nbytes())
        budget_bytes = parsed.resolve(managed, largest, f"{largest_key} in {trace.stem.name}", extra)
        fits = optimizer_placement != "host" and extra > 0 and budget_bytes >= managed + extra
        trace_link = link or _link_from_ratio(trace, link_ratio, latency_s, warmup_steps, managed)
        figures = None
        if gpu_model is not None:  # the same link (the recorded step's), the optimizer re-timed
            trace, figures = gpu_model.apply(trace, warmup_steps)
        pols = _make_policies(policy, trace, budget_bytes, lookahead)
        if path is not None:
            pols = [SimulatedDaemonPolicy(pol, lookahead=lookahead, path=path) for pol in pols]
        if guard and isinstance(policy, str) and policy.startswith("learned:"):
            from predictor.guard import guarded
            from predictor.guard_prior import load_prior

            prior = load_prior(policy.partition(":")[2], trace.architecture or None)
            pols = [guarded(pol, lookahead=lookahead, link=lambda link=trace_link: link, prior=prior) for pol in pols]
        # the oracle's portfolio: the best hit rate, then the shortest time (first wins ties)
        best = simulate_portfolio(
            trace, pols, policy_name=name, budget=parsed, budget_bytes=budget_bytes, managed_bytes=managed,
            link=trace_link, warmup_steps=warmup_steps, resident_extra=extra if fits else None,
            ahead_share=ahead_share, early_step=early_step,
        )
        best.lookahead = lookahead if isinstance(policy, str) and policy != "oracle" else None
        if figures is not None:  # the baseline steps on the device: its own time (slowdown derived again)
            best = dataclasses.replace(best, baseline_ns=figures.baseline_ns, baseline_step_time_s=None,
                                       slowdown=None, gpu_model=figures.as_dict())
        runs.append(best)
    report = runs[0] if len(runs) == 1 else _combine(runs)
    if gpu_model is not None and len(runs) > 1:
        report.gpu_model = combine_gpu([r.gpu_model for r in runs])
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
    and `lookahead`, `ahead_share` and `early_step` when present, else the defaults). trace: the trace it recorded (a stem, a file
    or a Trace; default: the report's `trace`). A report without a link (a CUDA run) is
    simulated with the default link ratio. `overrides` go to simulate() (e.g. policy=...).
    A learned policy is simulated through the daemon path, as a live run serves it (live
    `learned:` always goes through the daemon), unless `daemon` is overridden: with the
    trace's recorded reply schedule when it has one (manifest `daemon_replies`: each reply
    read at the event the run read it), else the round-trip model; the report's
    `daemon_replies` says which ("recorded" or "modelled"). `daemon=True` asks for the model.
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
    if run_report.get("ahead_share") is not None:  # reports before the window have none: the default
        kwargs["ahead_share"] = float(run_report["ahead_share"])
    if run_report.get("early_step") is not None:  # reports before early stepping have none
        kwargs["early_step"] = bool(run_report["early_step"])
    lk = run_report.get("link")
    if lk and lk.get("bandwidth_GBps"):
        kwargs["link"] = LinkModel(bandwidth_bytes_per_s=float(lk["bandwidth_GBps"]) * 1e9,
                                   latency_s=float(lk.get("latency_us", DEFAULT_LATENCY_S * 1e6)) / 1e6,
                                   ratio=lk.get("ratio"))
    placement = run_report.get("optimizer") or {}
    if placement.get("asked"):  # the run's placement: its everything-fits switch is simulated too
        kwargs["optimizer_placement"] = placement["asked"]
    kwargs.update(overrides)
    policy = kwargs.pop("policy", run_report["policy"])
    if "daemon" not in kwargs:  # as the live run serves it: learned through the daemon, the rest in process
        learned = isinstance(policy, str) and policy.startswith("learned:")
        schedule = ReplySchedule.from_trace(trace.managed()) if learned else None  # the daemon saw the managed stream
        kwargs["daemon"] = DaemonPath(batch_events=schedule.batch_events, schedule=schedule) if schedule is not None else learned
    report = simulate(trace, policy, **kwargs)
    path = DaemonPath() if kwargs["daemon"] is True else (kwargs["daemon"] or None)
    if path is not None:
        report.extra["daemon_replies"] = path.replies
    return report


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



__all__ = ["GpuModel", "SimReport", "simulate", "simulate_like_run", "format_table", "HIT", "LATE", "MISS", "WRITE"]

"""Run a user's training loop with managed tensors offloaded and prefetched.

    import runtime
    with runtime.prefetching(model, optimizer, policy="replay", budget=0.4) as pf:
        for batch in data: ...        # unchanged
    print(pf.report())

Parameters and saved activations live in host memory; a device tier under the budget
holds what the policy predicts comes next. On CUDA copies run on a side stream; without
CUDA on the simulated device (a copy-engine thread timed by the link model). The first
step is warm-up: it fixes the budget (as a fraction of the managed bytes seen) and, for
the simulated device, the link (from the link ratio and the step's measured time), unless
both are known up front (a reference tensor table, and the all-resident step's wall and
CPU time: `prefetch run` gives all three), when they are fixed before the first step.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from predictor.interface import BasePolicy, Policy, TensorInfo, check_policy, overrides
from runtime.defaults import AHEAD_SHARE, DAEMON_BATCH_EVENTS, LIVE_LOOKAHEAD
from runtime.device import SIMULATED, CudaDevice, Device, SimulatedDevice
from runtime.link import DEFAULT_LINK_RATIO, LinkModel
from runtime.live_trace import CLOCK_COMPUTE, LiveTrace
from runtime.overhead import HookTimer, OverheadCounters, OverheadSplit, split
from runtime.budget import footprint_extra, fraction_bytes
from runtime.closure_step import ClosureFirst, check_optimizer
from runtime.placement import OptimizerPlacement, check_placement
from runtime.routers import AUTO, DEFAULT_DEPTH, RouterLookahead, find_routers
from runtime.run_report import Identity, LiveCounters, RunReport
from runtime.store import StoreConfig, TensorStore, check_budget
from runtime.tier import check_ahead_share
from runtime.trace_format import MANAGED_KINDS, MIN_MANAGED_BYTES, is_managed
from runtime.trace_format import Kind
from runtime.trace_identity import StepOrderHasher, key_hash
from runtime.tracker import AccessTracker, TrackerConfig

_WARMUP_LINK = LinkModel(bandwidth_bytes_per_s=1e12, latency_s=0.0)  # until step 0 is timed


def parse_budget(budget: float | int | str) -> tuple[int | None, float]:
    """(absolute bytes or None, fraction) from 0.4, '40%', 2_000_000, '2GiB', '512MB'.
    The one parser is runtime.budget's (the simulator's too)."""
    from runtime.budget import parse_budget as parse

    b = parse(budget)
    return (b.nbytes, 1.0) if b.nbytes is not None else (None, float(b.fraction))


@dataclass(kw_only=True, slots=True)
class PrefetchConfig:
    """How `prefetching(...)` runs."""

    policy: str = "replay"
    """none | replay | markov | learned:MODEL_DIR."""
    budget: float | int | str = 0.4
    """Device budget: fraction of managed bytes, or a size (bytes, '2GiB')."""
    lookahead: int = LIVE_LOOKAHEAD
    """How many future reads a policy keeps requested."""
    ahead_share: float = AHEAD_SHARE
    """The prefetch window: prefetches issued and not yet read hold at most this share of the
    budget (runtime.defaults.AHEAD_SHARE; 0: no window)."""
    early_step: bool = True
    """Host stepping: the parameters the next step reads first are stepped first and their
    copies start during the rest of the optimizer step (DeviceTier.early_params). Like device
    stepping, it relies on the optimizer updating each parameter from its own gradient and
    state (every torch.optim optimizer; LBFGS is refused): False for one whose step couples
    parameters (a gradient norm over all of them computed inside `step`)."""
    link_ratio: float = DEFAULT_LINK_RATIO
    """Simulated device: copy-all-managed-bytes time over step compute time."""
    link: LinkModel | None = None
    """Simulated device: an explicit link (overrides link_ratio)."""
    warmup_steps: int = 1
    device: str = "auto"
    """auto (CUDA when the model is on a GPU, else simulated), cuda[:N], simulated, or
    simulated:alias (the simulated device making no real copies: a measurement mode,
    runtime.device)."""
    daemon: str | None = None
    """Endpoint of a running daemon for learned policies (default: start one locally)."""
    daemon_keys: str | None = None
    """CURVE keys for a remote `daemon` (server.key + client.key_secret; else $PREFETCH_DAEMON_KEYS)."""
    daemon_batch_events: int = DAEMON_BATCH_EVENTS
    """Events per message to the daemon: fewer means fresher commands, more CPU per event."""
    baseline_step_time_s: float | None = None
    """Step time of the same job with everything resident, for `slowdown`; with
    baseline_step_cpu_s, the simulated link too, the same for every run given them."""
    baseline_step_cpu_s: float | None = None
    """Work-clock time of that step (runtime.device.work_clock_ns: the training thread's
    CPU): with baseline_step_time_s it fixes how much wall time a CPU second of compute
    stands for on the simulated device's clock."""
    reference_tensors: list[dict[str, Any]] | None = None
    """A tensor table (from a trace) fixing tensor ids and the managed bytes up front."""
    timeline: bool = False
    """Keep every copy, stall and step end for `chrome_trace()` (Perfetto, chrome://tracing)."""
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    seed: int | None = None
    """The seed of the job being run, when known: a learned policy's report says whether
    its model was trained on this seed (`in_sample`, predictor.provenance)."""
    workload: str | None = None
    """The job's workload name, when known (compared with the model's training runs)."""
    optimizer_placement: str = "auto"
    """Where the optimizer steps the managed parameters: host (their host masters), device
    (runtime.device_stepping: state streamed in and out), or auto (runtime.placement's cost
    model, from the first step's measurements; host until then)."""
    guard: bool = True
    """A learned policy runs under predictor.guard (it leans on replay, markov or none in
    steps where it stalls more than they do); False: the learned policy alone."""
    routers: str | Sequence[str] | None = AUTO
    """Router lookahead for mixture-of-experts models (runtime.routers): "auto" finds the
    routers, "off" (or None) uses none, or the router modules' paths (`PATH` or `PATH:K`).
    Used when the policy takes hints (the guarded learned policy); others ignore them."""
    router_depth: int = DEFAULT_DEPTH
    """Routed layers ahead predicted at each router, besides its own layer's choice."""
    trace_out: str | Path | None = None
    """Keep this run's own trace here (runtime.live_trace: managed events; on the simulated
    device timed by its compute clock), for `simulate_like_run(report, pf.trace_stem)`."""

    def __post_init__(self) -> None:
        parse_budget(self.budget)
        if self.lookahead < 1:
            raise ValueError(f"lookahead must be >= 1, got {self.lookahead}")
        check_placement(self.optimizer_placement)
        check_ahead_share(self.ahead_share)
        if self.router_depth < 0:
            raise ValueError(f"router_depth must be >= 0, got {self.router_depth}")
        if not self.link_ratio > 0:
            raise ValueError(f"link_ratio must be > 0, got {self.link_ratio}")
        if self.device not in ("auto", *SIMULATED) and not self.device.startswith("cuda"):
            raise ValueError(f"device must be auto, simulated, simulated:alias or cuda[:N], got {self.device!r}")


def compute_device(spec: str) -> torch.device:
    """The torch device a job's model and data live on for a device spec: the GPU for
    cuda[:N] (and auto with CUDA), the CPU for the simulated device."""
    if spec in SIMULATED or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device())


def make_device(spec: str, link: LinkModel, model_device: torch.device | None = None) -> Device:
    """The device backend for `spec`. `auto` follows the model: CUDA when its parameters
    are on a GPU (or, with none known, when CUDA is available), else simulated. A CUDA
    backend for a model on the CPU would mix devices: a one-line ValueError."""
    if spec == "auto":
        on_gpu = model_device.type == "cuda" if model_device is not None else torch.cuda.is_available()
        spec = f"cuda:{model_device.index or 0}" if on_gpu and model_device is not None else ("cuda" if on_gpu else "simulated")
    if spec in SIMULATED:
        return SimulatedDevice(link, copies=SIMULATED[spec])
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r}: CUDA is not available here (torch.cuda.is_available() is False); "
                         "use device='simulated'")
    idx = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
    if model_device is not None and model_device != torch.device("cuda", idx):
        raise ValueError(f"device {spec!r} but the model's parameters are on {model_device}: "
                         f"move the model (and its inputs) to cuda:{idx} first, or use device='simulated'")
    return CudaDevice(idx)


class Prefetcher:
    """The live system for one model: tracker -> store (+ policy, device). See module doc."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, config: PrefetchConfig,
                 policy: Policy | None = None):
        self.config = config
        self.model = model
        self.optimizer = optimizer
        self._handles: list[Any] = []
        self._closed = False
        self.policy_note: str | None = None
        self.identity: dict[str, Any] = {}  # compare_state(...)'s result, carried by report()
        self.gradients_note: str | None = None  # why gradients are not offloaded during backward, if not
        check_optimizer(optimizer)  # LBFGS (a closure evaluated again) is refused before anything starts
        self.routers = find_routers(model, config.routers)  # first: a bad name is refused before anything starts
        budget_bytes, fraction = parse_budget(config.budget)
        first = next(model.parameters(), None)
        self.device = make_device(config.device, config.link or _WARMUP_LINK, first.device if first is not None else None)
        self._link_fixed = config.link is not None or self.device.name != "simulated"
        self.store = TensorStore(self.device, check_policy(policy) if policy is not None else _NullPolicy(), StoreConfig(
            budget_bytes=budget_bytes, budget_fraction=fraction, warmup_steps=config.warmup_steps,
            ahead_share=config.ahead_share, early_step=config.early_step))
        self.live_trace = LiveTrace(self.store, config.trace_out) if config.trace_out is not None else None
        self.trace_stem: Path | None = None
        """The stem of this run's own trace once closed (with `trace_out`)."""
        self.tracker = AccessTracker(model, optimizer, self.store, config.tracker)
        if self.live_trace is not None and isinstance(self.device, SimulatedDevice):
            self.tracker.clock = self.device.clock.compute_ns  # the trace times what the copy engine saw
            self.live_trace.clock = CLOCK_COMPUTE
        if self.live_trace is not None:
            self.live_trace.now = lambda: self.tracker.clock()  # its router hints, on its events' clock
        if not config.reference_tensors and config.policy.startswith("learned:") and policy is None:
            config.reference_tensors = _artifact_rows(config.policy, self.tracker.architecture)
        if config.reference_tensors:
            self.tracker.preload_tensors(config.reference_tensors)
            managed = sum(r["nbytes"] for r in config.reference_tensors if is_managed(r["kind"], r["nbytes"]))
            if budget_bytes is None and managed:  # sizes known up front: the budget is too
                rows = config.reference_tensors
                extra = footprint_extra([r["kind"] for r in rows], [r["nbytes"] for r in rows])
                self.store.budget_bytes = max(1, fraction_bytes(fraction, managed, extra))
            if managed and not self._link_fixed and config.baseline_step_time_s and config.baseline_step_cpu_s:
                # and so is the link: fixed now, the warm-up step's copies take link time as
                # in the simulation of this run's trace (with the warm-up link, instant, the
                # simulator entered the measured steps with a copy backlog the live run had not)
                self._fix_link()
                self._link_fixed = True
        self.store.attach(self.tracker)
        if self.store.budget_bytes is not None:  # refuse an impossible budget before training starts
            check_budget(self.store.budget_bytes, self.store.largest_managed_bytes(), self.store._largest_key())
        if policy is None:
            self.store.policy = self._make_policy(config.policy)
        self.store.policy.start(self._tensor_info())
        self.store.on_new_tensor = self._extend_policy  # activations, gradients, state: seen from step 0 on
        # Every hook is timed (bookkeeping) and, on the simulated device, off the copy clock.
        self.hooks = HookTimer(self.device.clock if isinstance(self.device, SimulatedDevice) else None)
        self.tracker.wrap = self.hooks.wrap
        self._warm_counters: OverheadCounters | None = None
        self.placement = OptimizerPlacement(config.optimizer_placement, self.store, self.device)
        self.store.on_step_end = lambda: self.optimizer is not None and self.placement.step_end(self.optimizer)
        self.closures = ClosureFirst()  # step(closure): the closure's forward and backward before our pre-step work
        if optimizer is not None:  # registered before the tracker's hooks: runs first
            self._handles.append(optimizer.register_step_pre_hook(self.closures))
            self._handles.append(optimizer.register_step_pre_hook(
                self.hooks.wrap(lambda *a: self.store.before_optimizer_step())))
            self._handles.append(optimizer.register_step_pre_hook(self.place_step))
            self._handles.append(optimizer.register_step_post_hook(lambda opt, *a: self.placement.post(opt)))
            self._handles.append(optimizer.register_step_post_hook(
                self.hooks.wrap(lambda *a: self.store.after_optimizer_step())))
            self.offload_gradients()
        if config.timeline:
            self.store.timeline = []
            if isinstance(self.device, SimulatedDevice):
                self.device.timeline = []
        self.cuda_monitor = None  # stalls from CUDA events, peak device memory (runtime.cuda_monitor)
        if isinstance(self.device, CudaDevice):
            from runtime.cuda_monitor import CudaMonitor

            self.cuda_monitor = CudaMonitor(model, optimizer, self.store, self.device, config.warmup_steps)
        self._t0_ns = time.monotonic_ns()
        self._step_times: list[float] = []
        self._t_step = time.perf_counter()
        self._step_orders: StepOrderHasher | None = None
        self._events_at_step_end = 0
        self._events_per_step = 0
        self._resident_from: int | None = None
        self.hooks_off_from: int | None = None
        """The first step run without the per-access hooks (everything resident: _quiet_step_end)."""
        self.accesses_estimated = 0
        """Managed accesses of the steps since, each counted as the last observed step's."""
        if config.policy.startswith("learned:") and config.seed is None:
            self._track_step_orders()  # the seed cannot tell whether this run is in sample: the order will
        self._wrap_step_end()
        self.router_lookahead: RouterLookahead | None = None
        if self.routers and overrides(self.store.policy, "hint"):
            self.router_lookahead = RouterLookahead(
                self.routers, self.tracker.param_ids, self.store.hint, config.router_depth,
                clock=lambda: self.tracker.clock()).attach(self.hooks.wrap)
        self.tracker.attach()

    # -- setup ---------------------------------------------------------------------------
    def _make_policy(self, spec: str) -> Policy:
        from predictor.policies import make_policy

        if spec.startswith("learned:"):
            from runtime.daemon_policy import DaemonPolicy

            pol = DaemonPolicy(spec, architecture=self.tracker.architecture, endpoint=self.config.daemon,
                               lookahead=self.config.lookahead, tensors_fn=self._tensor_info,
                               batch_events=self.config.daemon_batch_events, curve_keys=self.config.daemon_keys)
            self.policy_note = pol.note
            if self.config.guard:
                from predictor.guard import guarded
                from predictor.guard_prior import load_prior

                if isinstance(self.device, SimulatedDevice):  # shadows need the link and the compute clock
                    dev = self.device
                    prior = load_prior(spec.partition(":")[2], self.tracker.architecture)  # a local model folder's
                    return guarded(pol, lookahead=self.config.lookahead, link=lambda: dev.link,
                                   compute_ns=dev.clock.compute_ns, prior=prior,
                                   budget_share=self.store.config.budget_fraction)
                return guarded(pol, lookahead=self.config.lookahead)  # CUDA: no link model, no shadows yet
            return pol
        return make_policy(spec, lookahead=self.config.lookahead)

    def _tensor_info(self) -> TensorInfo:
        import numpy as np

        n = len(self.store.kind)
        keys = self.tracker.tensor_keys
        paths = self.tracker.module_paths
        modules = tuple(paths[m] if m >= 0 else "" for m in self.tracker._tensor_module)
        return TensorInfo(
            keys=tuple(keys), kinds=np.asarray(self.store.kind[:n], dtype=np.int8),
            nbytes=np.asarray(self.store.nb[:n], dtype=np.int64),
            layers=np.asarray([self.tracker._module_layer[m] if m >= 0 else -1 for m in self.tracker._tensor_module], dtype=np.int16),
            modules=modules,
        )

    def _extend_policy(self, row: dict[str, Any]) -> None:
        """A tensor first seen after the policy started: its row reaches the policy
        (`Policy.extend`), as a daemon's TENSORS message does. Without it a policy started on
        the parameters alone (a fractional budget, no tensor table up front) never learns
        which ids are activations: mirror then mirrored no saved tensor into the backward."""
        import numpy as np

        info = TensorInfo(keys=(row["key"],), kinds=np.asarray([row["kind"]], dtype=np.int8),
                          nbytes=np.asarray([row["nbytes"]], dtype=np.int64),
                          layers=np.asarray([row["layer"]], dtype=np.int16), modules=(row["module"],))
        self.store.policy.extend(info, row["tensor_id"])

    def _track_step_orders(self) -> None:
        """Hash each step's managed access order (runtime.trace_identity) as a recorded
        trace would be hashed: one tuple appended per managed access, hashed at step end.
        Installed before _wrap_step_end's wrappers, which wrap it: on the simulated device
        it is bookkeeping, not compute time."""
        import numpy as np

        hasher = self._step_orders = StepOrderHasher()
        events: list[tuple[int, int, int]] = []
        key_of: dict[int, int] = {}  # tensor id -> key hash
        store, tracker = self.store, self.tracker
        inner_access, inner_end = store.access, store.step_end

        def access(step, micro_step, seq, phase, kind, acc, tensor_id, nbytes, time_ns, module_id, layer) -> None:
            inner_access(step, micro_step, seq, phase, kind, acc, tensor_id, nbytes, time_ns, module_id, layer)
            if store.managed[tensor_id]:  # decided by the store at first sight (trace_format.is_managed)
                events.append((phase, acc, tensor_id))

        def step_end(step: int) -> None:
            inner_end(step)
            if events:
                phase, acc, tid = zip(*events)
                new = set(tid) - key_of.keys()
                if new:  # tensors first seen this step
                    keys = tracker.tensor_keys
                    key_of.update((t, key_hash(keys[t])) for t in new)
                hasher.add_step(step, np.fromiter((key_of[t] for t in tid), np.uint64, len(tid)),
                                np.asarray(phase), np.asarray(acc))  # fmt: skip
                events.clear()

        store.access, store.step_end = access, step_end  # type: ignore[method-assign]

    def _wrap_step_end(self) -> None:
        inner = self.store.step_end
        first_step = self._meter() if not self._link_fixed else None  # what _fix_link times the link from

        def step_end(step: int) -> None:
            now = time.perf_counter()
            self._step_times.append(now - self._t_step)
            self._t_step = now
            timed = first_step() if first_step is not None and not self._link_fixed else None  # with the wall time
            if self.cuda_monitor is not None:
                self.cuda_monitor.before_step_end(step)
            inner(step)
            if self.cuda_monitor is not None:
                self.cuda_monitor.after_step_end(step)
            if step + 1 == self.config.warmup_steps:
                self._warm_counters = self._counters()
            if timed is not None:  # the first step is timed: the link follows from it
                self._fix_link(*timed)
                self._link_fixed = True
            self._quiet_step_end()

        self.store.step_end = step_end  # type: ignore[method-assign]

    def _meter(self) -> Callable[[], tuple[float, float]]:
        """Seconds since now of the simulated device's compute clock (CPU less the hooks) and
        of the prefetcher's own wall time (hooks, the one the step ends in so far, and waits
        for real clones): the first step's, from which an unfixed link is timed."""
        dev, hooks = self.device, self.hooks
        clock = dev.clock

        def own() -> int:
            return hooks.ns + clock.hot_so_far() + dev.copy_lag_ns

        c0, o0 = clock.compute_ns(), own()
        return lambda: ((clock.compute_ns() - c0) / 1e9, (own() - o0) / 1e9)

    def _quiet_step_end(self) -> None:
        """Everything resident (runtime.placement) and one whole measured step observed that
        way: no tensor moves any more, so the per-access hooks come off (`AccessTracker.go_quiet`,
        the router hooks too) and the job runs at the cost of an optimizer hook. Each step after
        counts the managed accesses of that last observed step (`accesses_estimated`); stall
        and hits cannot change: nothing is offloaded. Not with a kept trace (`trace_out`),
        which needs every access."""
        st = self.store
        events, self._events_at_step_end = st.managed_events - self._events_at_step_end, st.managed_events
        if self.hooks_off_from is not None:
            self.accesses_estimated += self._events_per_step
            return
        if not self.placement.resident or self.live_trace is not None:
            return
        if self._resident_from is None:
            self._resident_from = st.steps  # the first step served all resident is this one
            return
        if st.steps > max(self._resident_from, self.config.warmup_steps):
            self._events_per_step = events
            self.hooks_off_from = st.steps
            self.tracker.go_quiet()
            if self.router_lookahead is not None:
                self.router_lookahead.detach()

    def place_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        """The optimizer's pre-hook after the store's: where this step runs (runtime.placement),
        then the device step if it runs there. Not timed as bookkeeping: the device step's
        optimizer compute is the step's compute."""
        self.placement.pre(optimizer)
        self.store.device_step(optimizer)

    def offload_gradients(self) -> None:
        """Gradients leave the device as backward produces them (runtime.grad_offload): the
        hooks, installed with the optimizer (here, or by the script launcher when it adopts
        one after the first step). Idempotent. Not under torch.distributed with more than one
        rank: DistributedDataParallel reduces `p.grad` during the backward, so gradients stay
        on the device until the optimizer's pre-hook copies them (the report says so)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self.gradients_note = (f"gradients stay on the device until the optimizer step: {dist.get_world_size()} "
                                   "ranks reduce them during the backward (runtime.grad_offload is single-rank)")
            return
        if self.store.grads is None:
            from runtime.grad_offload import GradOffload

            GradOffload(self.store, self.tracker, self.hooks.wrap, emit_events=self.live_trace is not None)

    def params_written(self) -> None:
        """Call after writing parameters in place through `p.data` (`p.data.clamp_()`):
        such writes move no version counter, so the store cannot see them. Writes through
        the parameter itself (`with torch.no_grad(): p.clamp_()`, `load_state_dict`) and
        `p.data = t` need no call. See docs/usage.md."""
        self.store.params_written()

    def outside_compute(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn`, whose time gives the simulated device's copies none (`prefetch run`'s
        all-resident twin, stepped between this job's steps). Unchanged on CUDA."""
        if isinstance(self.device, SimulatedDevice):
            return self.device.clock.excluding(fn)
        return fn

    def _fix_link(self, compute_s: float = 0.0, own_s: float = 0.0) -> None:
        """The link from the link ratio: copying every managed byte once takes `link_ratio`
        x the all-resident step time. The clock's rate turns the job's CPU time into that
        step's wall time: wall / CPU time of the all-resident step when both are given,
        else of this job's first step. Without the all-resident step time, the first step's
        wall time less the prefetcher's own (its hooks, waits for real clones) stands for it,
        over its compute (CPU time less the hooks, the compute clock), the rate at most 1. Its
        whole wall time did before, and with it each policy's own warm-up cost (a daemon's
        first round trips) slowed that policy's link (gen-2000: learned's 13-28% slower than
        none's); and without the cap a first step that waited for a core (the daemon's process
        starting beside a learned run) made a link up to 5x slower (gen-2004: 0.07-0.36 GB/s
        across one architecture's runs)."""
        cfg = self.config
        if cfg.baseline_step_time_s and cfg.baseline_step_cpu_s:
            rate = cfg.baseline_step_time_s / cfg.baseline_step_cpu_s
            wall = cfg.baseline_step_time_s
        else:  # the first step's wall time less our own (`own_s`) over its compute (`compute_s`: _meter)
            compute = max(compute_s, 1e-9)
            # at most 1: a CPU second of compute never stands for more than a wall second; more
            # is waiting for a core (another process: the daemon starting beside a learned run)
            rate = min(1.0, max(self._step_times[0] - own_s, 1e-6) / compute)
            wall = cfg.baseline_step_time_s or compute * rate
        self.device.set_link(LinkModel.from_ratio(cfg.link_ratio, managed_bytes=self.store.managed_bytes(),
                                                  step_compute_s=wall))
        self.device.clock.set_rate(rate)

    # -- results -------------------------------------------------------------------------
    def _counters(self) -> OverheadCounters:
        dev = self.device
        sim = isinstance(dev, SimulatedDevice)
        return OverheadCounters(
            hook_ns=self.hooks.ns - (0 if sim else self.store.grad_wait_ns),  # CUDA: gradient waits block the host, in hooks
            hook_calls=self.hooks.calls, stall_ns=self.store.stall_ns + self.store.grad_wait_ns,
            managed_accesses=self.store.managed_events + self.accesses_estimated, clock_reads=dev.clock.work_reads if sim else 0,
            copy_lag_ns=dev.copy_lag_ns if sim else 0, engine_cpu_ns=dev.engine_cpu_ns() if sim else 0)

    def overhead(self, step_s: float | None = None, baseline_step_s: float | None = None) -> OverheadSplit:
        """Where the measured steps' extra time went (runtime.overhead): per step, stall,
        bookkeeping and emulation; `step_s - baseline_step_s` less those is unattributed."""
        warm = self._warm_counters or OverheadCounters()
        sim = isinstance(self.device, SimulatedDevice)
        steps = self.store.steps - (self.config.warmup_steps if self._warm_counters is not None else 0)
        return split(self._counters() - warm, steps, read_cost_ns=self.device.clock_read_ns if sim else 0.0,
                     step_s=step_s, baseline_step_s=baseline_step_s, simulated=sim)

    def report(self) -> dict[str, Any]:
        """The JSON report (DESIGN.md's keys): `run_report().as_dict()`."""
        return self.run_report().as_dict()

    def run_report(self) -> RunReport:
        """The run as a RunReport (runtime.run_report), the type the simulator reports too."""
        cuda = self.cuda_monitor.report() if self.cuda_monitor is not None else None  # first: adds pending stalls
        st = self.store.measured()
        warm = self.config.warmup_steps
        measured_times = self._step_times[warm:]
        step_time = statistics.median(measured_times) if measured_times else None  # median: robust to noise
        base = self.config.baseline_step_time_s
        identity = dict(self.identity)
        extra = self.store.measured_extra()
        return RunReport(
            policy=self.config.policy,
            device=self.device.name,
            link=self.device.describe_link() if isinstance(self.device, SimulatedDevice) else None,
            managed_bytes=self.store.managed_bytes(),
            budget_bytes=self.store.budget_bytes,
            ahead_share=self.config.ahead_share,
            early_step=self.config.early_step,
            peak_device_bytes=self.store.peak,
            steps=st.steps,
            warmup_steps=warm,
            stats=st.snapshot(),  # a copy: the store keeps counting
            warmup=self.store.warmup,
            step_time_s=step_time,
            baseline_step_time_s=base,
            slowdown=(step_time / base) if (step_time and base) else None,
            prefetch_refused=self.store.refused,
            prefetch_held=extra["prefetch_held"],
            overcommits=self.store.overcommits,
            optimizer_wait_ns=extra["optimizer_wait_ns"],
            **self.store.traffic_fields(),
            live=LiveCounters(
                policy_served_by=self.store.policy.served_by or self.store.policy.name,
                managed_kinds=[Kind(k).name.lower() for k in MANAGED_KINDS],
                min_managed_bytes=MIN_MANAGED_BYTES,
                persistent_bytes=self.store.persistent_bytes,
                stale_copies=self.store.stale_copies,  # parameter writes outside the optimizer (store.py)
                dirty_writebacks=self.store.dirty_writebacks,
                adopted_params=self.store.adopted_params,
                overhead=self.overhead(step_time, base).as_dict(),
                policy_note=self.store.policy.note or self.policy_note,
            ),
            identity=Identity(**identity) if identity else None,
            cuda=cuda,
            provenance=self.provenance().as_dict() if self.config.policy.startswith("learned:") else None,
            optimizer=self.placement.report() if self.optimizer is not None else None,
            extra={**self._trace_extra(), **({"gradients": self.gradients_note} if self.gradients_note else {}),
                   **self._routers_extra(), **self._hooks_off_extra(),
                   **({"closures_run_first": self.closures.ran} if self.closures.ran else {})},
        )

    def _routers_extra(self) -> dict[str, Any]:
        """The report's `routers`: the routed layers found and whether the policy took their hints."""
        if not self.routers:
            return {}
        return {"routers": {"layers": len(self.routers), "found": "auto" if self.config.routers == AUTO else "named",
                            "depth": self.config.router_depth,
                            "hints_taken": self.router_lookahead is not None,
                            "first": self.routers[0].path, "top_k": self.routers[0].top_k}}

    def _hooks_off_extra(self) -> dict[str, Any]:
        """The report's `hooks_off`: from which step the per-access hooks were off, and why."""
        if self.hooks_off_from is None:
            return {}
        return {"hooks_off": {"from_step": self.hooks_off_from, "accesses_estimated": self.accesses_estimated,
                              "why": "everything resident (optimizer.resident): no tensor moves, so the per-access "
                                     "hooks came off; hit rate, stall and traffic are counted over the steps before, "
                                     "and the overhead's accesses count each step after as the last observed one"}}

    def _daemon_policy(self) -> Any:
        """The store's DaemonPolicy (a learned run served by the daemon), else None."""
        if not self.config.policy.startswith("learned:"):
            return None
        from runtime.daemon_policy import DaemonPolicy

        pol = self.store.policy
        pol = getattr(pol, "primary", pol)  # under predictor.guard: its learned candidate
        return pol if isinstance(pol, DaemonPolicy) else None

    def _trace_extra(self) -> dict[str, Any]:
        """With a kept trace and the daemon: whether it holds the reply schedule (`daemon_replies`)."""
        pol = self._daemon_policy()
        if self.live_trace is None or self.trace_stem is None or pol is None:
            return {}
        return {"daemon_replies": "recorded" if self.live_trace.daemon_replies else pol.schedule_note or "not recorded"}

    def compare_state(self, reference: Any, *, losses: Any = None, reference_losses: Any = None) -> dict[str, Any]:
        """Compare the model and optimizer now, bit for bit, with `reference` (a
        `runtime.state_compare.snapshot` of the same job all resident); `report()` carries
        `params_identical`, `optimizer_state_identical`, `state_mismatches` (and
        `losses_identical` with both loss lists) from then on. Call it after the `with` block."""
        from runtime.state_compare import identity_report, snapshot

        self.identity = identity_report(reference, snapshot(self.model, self.optimizer), losses=losses,
                                        reference_losses=reference_losses)
        return self.identity

    def provenance(self) -> Any:
        """Whether the learned model was trained on this run (a predictor.provenance
        Provenance): by PrefetchConfig.seed/workload, else by the live step-order hashes.
        Prints the WARNING line on stderr when in sample."""
        from predictor.provenance import assess_model_dir, warn_if_in_sample

        run = {"workload": self.config.workload, "seed": self.config.seed,
               "step_order_hashes": self._step_orders.hashes() if self._step_orders is not None else []}
        prov = assess_model_dir(self.config.policy.partition(":")[2], self.tracker.architecture, run)
        warn_if_in_sample(prov, f"learned policy on {self.config.workload or type(self.model).__name__}")
        return prov

    def chrome_trace(self) -> dict[str, Any]:
        """The run as Chrome trace-event JSON (open in Perfetto or chrome://tracing): a
        compute track with steps and stalls (late waits, demand fetches), a copy track
        with every host<->device copy. Needs PrefetchConfig(timeline=True)."""
        if self.store.timeline is None:
            raise ValueError("no timeline recorded: run with PrefetchConfig(timeline=True) / --timeline")
        t0 = self._t0_ns
        keys = self.tracker.tensor_keys
        us = lambda ns: (ns - t0) / 1e3  # noqa: E731
        ev: list[dict[str, Any]] = [
            {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": f"prefetch {self.config.policy} [{self.device.name}]"}},
            {"ph": "M", "pid": 1, "tid": 1, "name": "thread_name", "args": {"name": "compute"}},
            {"ph": "M", "pid": 1, "tid": 2, "name": "thread_name", "args": {"name": "copy engine"}},
        ]
        last = t0
        for what, t, dur, ref in self.store.timeline:
            if what == "step":
                ev.append({"ph": "X", "pid": 1, "tid": 1, "name": f"step {ref}", "cat": "step", "ts": us(last), "dur": (t - last) / 1e3})
                last = t
            else:
                ev.append({"ph": "X", "pid": 1, "tid": 1, "name": f"stall ({what}) {keys[ref] if ref < len(keys) else ref}",
                           "cat": "stall", "ts": us(t), "dur": dur / 1e3, "cname": "terrible" if what == "miss" else "bad"})
        for start, end, nbytes, direction in getattr(self.device, "timeline", None) or ():
            ev.append({"ph": "X", "pid": 1, "tid": 2, "name": direction, "cat": "copy", "ts": us(start),
                       "dur": (end - start) / 1e3, "args": {"bytes": nbytes}})
        return {"traceEvents": ev, "displayTimeUnit": "ms",
                "otherData": {"policy": self.config.policy, "device": self.device.name}}

    def close(self) -> None:
        """Detach, put parameters back on their masters, stop the device. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.tracker.detach()
        if self.router_lookahead is not None:
            self.router_lookahead.detach()
        for h in self._handles:
            h.remove()
        if self.cuda_monitor is not None:
            self.cuda_monitor.close()
        self.store.close()
        self.store.policy.close()
        self.device.close()
        if self.live_trace is not None:
            pol = self._daemon_policy()
            schedule = pol.reply_schedule() if pol is not None else None
            self.trace_stem = self.live_trace.write(
                name=self.config.workload or type(self.model).__name__,
                daemon_replies=schedule.as_manifest() if schedule is not None else None,
                manifest={"architecture": self.tracker.architecture, "workload": self.config.workload,
                          "seed": self.config.seed, "modules": self.tracker.module_paths,
                          "model_class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
                          "prefetch_policy": self.config.policy, "device": self.device.name})


def _artifact_rows(spec: str, architecture: str) -> list[dict[str, Any]] | None:
    """The tensor table a learned artifact was trained with (keys and kinds; sizes are
    learned live), so live ids match its vocabulary. None when the folder has no
    predictor for this architecture: the daemon then falls back and says so."""
    from predictor.artifact import load_artifact
    from predictor.interface import PolicyError

    try:
        art = load_artifact(spec.partition(":")[2], architecture)
    except PolicyError:
        return None
    info = art.keyinfo
    return [dict(tensor_id=i, key=k, kind=int(info.kind[i]), nbytes=0, module="", shape=[], dtype="")
            for i, k in enumerate(info.keys)]


class _NullPolicy(BasePolicy):
    name = "none"

    def start(self, tensors: TensorInfo) -> None:
        pass

    def observe(self, step, micro_step, phase, access, tensor_id):
        return ()


@contextlib.contextmanager
def prefetching(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                policy: str | Policy = "replay", budget: float | int | str = 0.4, **kwargs: Any) -> Iterator[Prefetcher]:
    """Offload `model`'s parameters and saved activations, prefetch them by `policy`.

    `pf.report()` gives the DESIGN.md report keys (hit rate, late, misses, stall time,
    bytes copied, accuracy, budget and peak device bytes, step times).
    """
    if isinstance(policy, str):
        cfg = PrefetchConfig(policy=policy, budget=budget, **kwargs)
        pf = Prefetcher(model, optimizer, cfg)
    else:
        cfg = PrefetchConfig(policy=check_policy(policy).name, budget=budget, **kwargs)
        pf = Prefetcher(model, optimizer, cfg, policy=policy)
    try:
        yield pf
    finally:
        pf.close()
        if pf.store.overcommits:
            warnings.warn(f"prefetching: {pf.store.overcommits} accesses did not fit the device budget", stacklevel=3)

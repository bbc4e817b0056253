"""Where the optimizer runs: host masters or the device, a measured choice per job.

    est = PlacementInputs(params_bytes=P, resident_bytes=R, grad_bytes=G, state_bytes=S,
                          host_optimizer_ns=h, device_optimizer_ns=d, link=link)
    placement, why = choose("auto", est)

Per optimizer step, counting only what differs between the two placements (gradients
leave the device during the backward either way):
    host     the host optimizer's step, then the device copies it dropped (R bytes of
             parameters that were resident) are fetched again
    device   the device optimizer's step, with G + S + (P - R) bytes in and P + S out, in
             chunks whose copies wait before each chunk's step (runtime.device_stepping)
Link times come from the job's link model (the simulated device's, or one measured on the
GPU). On the simulated device both optimizers are the same CPU code, so their times cancel
and the bytes decide; on a GPU the device optimizer is typically far faster than the host's,
and device stepping wins when the link is fast enough to carry Adam's state both ways.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from runtime.trace_format import MIN_MANAGED_BYTES

PLACEMENTS = ("auto", "host", "device")


def check_placement(value: str) -> str:
    if value not in PLACEMENTS:
        raise ValueError(f"optimizer placement must be one of {', '.join(PLACEMENTS)}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class PlacementInputs:
    """What one optimizer step moves and costs, measured on the job's first step."""

    params_bytes: int
    """Managed parameters the optimizer steps."""
    resident_bytes: int
    """Of those, bytes with a device copy when the step begins (host stepping drops them)."""
    grad_bytes: int
    state_bytes: int
    """Optimizer state that travels with its parameters (non-scalar state tensors)."""
    host_optimizer_ns: float
    device_optimizer_ns: float
    copy_ns: Callable[[int], float]
    """Link time for a copy of n bytes (one direction)."""

    def bytes_in(self) -> int:
        """Device stepping, to the device: gradients, state, parameters not resident."""
        return self.grad_bytes + self.state_bytes + max(0, self.params_bytes - self.resident_bytes)

    def bytes_out(self) -> int:
        """Device stepping, to the host: the updated parameters and state."""
        return self.params_bytes + self.state_bytes

    def host_ns(self) -> float:
        return self.host_optimizer_ns + self.copy_ns(self.resident_bytes)

    def device_ns(self) -> float:
        return self.device_optimizer_ns + self.copy_ns(self.bytes_in()) + self.copy_ns(self.bytes_out())

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "copy_ns"}
        d.update(host_ns=round(self.host_ns()), device_ns=round(self.device_ns()))
        return d


def choose(asked: str, inputs: PlacementInputs | None) -> tuple[str, str]:
    """(placement that runs, why). `host` and `device` are obeyed; `auto` takes the one the
    cost model says is faster per step (host on a tie: it moves fewer bytes)."""
    check_placement(asked)
    if asked != "auto":
        return asked, f"asked for {asked}"
    if inputs is None:
        return "host", "auto: no measurement (no optimizer step with managed parameters): host"
    h, d = inputs.host_ns(), inputs.device_ns()
    pick = "device" if d < h else "host"
    return pick, (f"auto: {pick} (estimated per step: host {h / 1e6:.2f} ms = optimizer "
                  f"{inputs.host_optimizer_ns / 1e6:.2f} + re-fetch {inputs.resident_bytes / 2**20:.1f} MiB; "
                  f"device {d / 1e6:.2f} ms = optimizer {inputs.device_optimizer_ns / 1e6:.2f} + "
                  f"{inputs.bytes_in() / 2**20:.1f} MiB in, {inputs.bytes_out() / 2**20:.1f} MiB out)")


def _state_bytes(optimizer: Any, params: list[Any], at_least: int = 0) -> int:
    """Bytes of the state tensors that travel with `params` (device_stepping.streamed), each
    counted if at least `at_least` bytes (runtime.budget.footprint_extra's rule)."""
    from runtime.device_stepping import moves_scalars, streamed

    scalars = moves_scalars(optimizer)
    sizes = (v.numel() * v.element_size() for p in params for _, v in streamed(optimizer.state.get(p, {}), scalars))
    return sum(n for n in sizes if n >= at_least)


def measure_cuda_optimizer_ns(optimizer: Any, nbytes: int, device: Any) -> float:
    """The device optimizer's step time for `nbytes` of parameters, from one timed step of
    the same optimizer class and defaults on a 16 MiB scratch parameter on the GPU
    (after a warm-up step), scaled linearly. note: CPU-GPU sync point (once per job)."""
    import torch

    n = (16 << 20) // 4
    p = torch.nn.Parameter(torch.zeros(n, device=device))
    p.grad = torch.ones_like(p)
    opt = type(optimizer)([p], **{k: v for k, v in optimizer.defaults.items() if k != "params"})
    opt.step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    opt.step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e6 * nbytes / (n * 4)


class OptimizerPlacement:
    """The Prefetcher's optimizer hooks for placement: `device` steps on the device from the
    first step; `auto` steps the first on the host, times it (the host optimizer's cost on
    this job), and from the second on runs what `choose` picks; `host` never changes.

    Everything fits (`device` or `auto`): once the budget is known (after the first step),
    if it holds the job's whole footprint (managed bytes + footprint_extra: gradients and
    optimizer state), nothing is offloaded from then on (TensorStore.everything_resident): the cost
    is the hooks alone. The budget fraction 1 is that footprint (runtime.budget)."""

    def __init__(self, asked: str, store: Any, device: Any):
        self.asked = check_placement(asked)
        self.store, self.device = store, device
        self.ran: str | None = None
        self.why = ""
        self.from_step: int | None = None
        self.inputs: PlacementInputs | None = None
        self.resident = False
        self.footprint_bytes: int | None = None
        self._fit_checked = False
        self._t0: float | None = None
        self.host_step_ns: float | None = None
        if asked in ("host", "device"):
            self._decide(None, 0)

    def _clock_ns(self) -> float:
        clock = getattr(self.device, "clock", None)
        if clock is not None:
            return clock.compute_ns()  # the simulated device: compute on the link's clock
        import time

        return time.perf_counter_ns()

    def _decide(self, inputs: PlacementInputs | None, step: int) -> None:
        self.ran, self.why = choose(self.asked, inputs)
        self.inputs, self.from_step = inputs, step
        self.store.step_on_device(self.ran == "device")

    def step_end(self, optimizer: Any) -> None:
        """A step ended (the store's step_end, its budget fixed): the first time the budget and
        the footprint are both known, everything resident from the next step on if it fits."""
        st = self.store
        if self._fit_checked or self.asked == "host" or st.budget_bytes is None or not st.footprint_extra:
            return
        self._fit_checked = True
        self.footprint_bytes = need = st.managed_bytes() + st.footprint_extra
        if st.budget_bytes >= need:
            self.ran, self.from_step, self.resident = "device", st.step, True
            self.why = (f"everything fits: budget {st.budget_bytes / 2**20:.1f} MiB >= footprint "
                        f"{need / 2**20:.1f} MiB (managed parameters and activations, gradients, optimizer "
                        "state): nothing offloaded, the optimizer steps the device copies in place")
            st.everything_resident(optimizer)

    def pre(self, optimizer: Any) -> None:
        """Between the store's pre-hook and its device step."""
        st = self.store
        if self.ran is None and self.host_step_ns is not None:
            self._decide(self._inputs(optimizer), st.steps)
        if self.ran is None:
            self._t0 = self._clock_ns()

    def post(self, optimizer: Any) -> None:
        if self._t0 is not None and self.host_step_ns is None:
            self.host_step_ns = self._clock_ns() - self._t0
        self._t0 = None
        if not self.store.footprint_extra:  # after the first step: the optimizer state exists
            st = self.store
            params = [p for tid, p in st.tracker.params_by_tid.items() if st.managed[tid] and p.requires_grad]
            st.footprint_extra = (sum(p.numel() * p.element_size() for p in params)
                                  + _state_bytes(optimizer, params, MIN_MANAGED_BYTES))

    def _inputs(self, optimizer: Any) -> PlacementInputs | None:
        st = self.store
        mine = {id(p) for tid, p in st.tracker.params_by_tid.items() if st.managed[tid]}
        params = [p for g in optimizer.param_groups for p in g["params"] if id(p) in mine and p.grad is not None]
        if not params:
            return None
        pbytes = sum(p.numel() * p.element_size() for p in params)
        if getattr(self.device, "clock", None) is not None:
            copy_ns, device_ns = self.device.link.copy_ns, self.host_step_ns
        else:  # CUDA: the measured host-to-device bandwidth, the device optimizer timed once
            from runtime.link import LinkModel

            copy_ns = LinkModel(bandwidth_bytes_per_s=_measure_cuda_bandwidth(self.device.device)).copy_ns
            try:
                device_ns = measure_cuda_optimizer_ns(optimizer, pbytes, self.device.device)
            except Exception:  # an optimizer its defaults cannot rebuild: no device figure, assume the host's
                device_ns = self.host_step_ns
        return PlacementInputs(params_bytes=pbytes, resident_bytes=min(st.step_dropped_bytes, pbytes),
                               grad_bytes=sum(p.grad.numel() * p.grad.element_size() for p in params),
                               state_bytes=_state_bytes(optimizer, params), host_optimizer_ns=float(self.host_step_ns or 0),
                               device_optimizer_ns=float(device_ns or 0), copy_ns=copy_ns)

    def report(self) -> dict[str, Any]:
        d: dict[str, Any] = {"asked": self.asked, "ran": self.ran or "host", "why": self.why or "no optimizer step yet",
                             "from_step": self.from_step}
        if self.inputs is not None:
            d["estimate"] = self.inputs.as_dict()
        if self.footprint_bytes is not None:
            d.update(resident=self.resident, footprint_bytes=self.footprint_bytes)
        if self.store.stepper is not None:
            d["device_stepping"] = self.store.stepper.report()
        return d


def _measure_cuda_bandwidth(device: Any) -> float:
    """Host-to-device bytes/s from pinned 64 MiB copies (best of 3). note: CPU-GPU sync point (once per job)."""
    import torch

    host = torch.empty(64 << 20, dtype=torch.uint8, pin_memory=True)
    best = float("inf")
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        host.to(device, non_blocking=True)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return (64 << 20) / best

"""The simulator's model of a GPU run: the optimizer steps on the host for us, on the device for the baseline.

    prefetch simulate datasets/samples/gpt2 --policy replay --gpu-model
    prefetch simulate ... --gpu-model --host-optimizer foreach            # measure that variant now
    prefetch simulate ... --gpu-model --host-optimizer out/benchmarks/host_optimizer.json[:fused]
    prefetch simulate ... --gpu-model --device-optimizer-ns-per-byte 0.002

    from prefetch.gpu_model import GpuModel
    simulate(traces, "replay", gpu_model=GpuModel.measure())        # fused, measured at first use

A prefetched job on a GPU steps its optimizer on the host masters (ZeRO-Offload style,
runtime/store.py); the same job with everything resident steps on the device. The trace's
time stands for the device's compute (as everywhere in the simulator), so the model
changes one thing per trace: each optimizer step of the prefetched run takes the host
optimizer's modelled time for the managed parameters' bytes (runtime.optimizer_cost's
fitted line, fixed + per byte) instead of the trace's, and the baseline's optimizer step
takes the trace's time, or `device_ns_per_byte` x every parameter byte when given.

How: `apply` returns the trace re-timed (its time_ns with each optimizer step's delta
replaced; every later event moves with it), which the simulator replays as it replays any
trace, so the event loop is untouched and every consumer of the trace's time (the oracle's
drop-late test included) sees the same clock; the baseline's time is computed apart. The
link is the original trace's (a ratio is taken over the recorded step): the model changes
the optimizer, not the link. docs/simulator.md, "A GPU run", argues the choices.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from prefetch.oracle import compute_deltas, managed_stream
from prefetch.sim_trace import _warmup_split
from runtime.trace_format import Kind, Trace

HOST_VARIANTS = ("single", "foreach", "fused")
"""runtime.optimizer_cost.VARIANTS' names (not imported: that would load torch for a --help)."""
DEFAULT_VARIANT = "fused"
"""The fastest CPU AdamW on this machine at every size and thread count measured (out/benchmarks/host_optimizer.json)."""
MEASURE_BYTES = 16 << 20
"""Largest size measured at first use: 1, 4 and 16 MiB, 3 repeats (~1 s on one thread)."""
MEASURE_REPEATS = 3
_MEASURED: dict[tuple[str, int], "GpuModel"] = {}  # (variant, torch threads) -> the figure measured in this process


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuModel:
    """Where the optimizer runs in the modelled GPU run, and what it costs (hashable: it keys Trace.derived)."""

    host_variant: str = DEFAULT_VARIANT
    """The host AdamW implementation whose cost is modelled (runtime.optimizer_cost.VARIANTS)."""
    host_fixed_ns: float
    """Host step cost that does not scale with bytes (the fitted line's intercept)."""
    host_ns_per_byte: float
    """Host step cost per parameter byte (the fitted line's slope)."""
    host_source: str
    """Where the figure comes from: "measured now on this machine ..." or "file PATH ..."."""
    host_threads: int | None = None
    """Torch intra-op threads the host figure was measured with (None: not known)."""
    device_ns_per_byte: float | None = None
    """The baseline's device optimizer per parameter byte; None: the trace's own optimizer time."""

    def __post_init__(self) -> None:
        if self.host_variant not in HOST_VARIANTS:
            raise ValueError(f"GpuModel: host_variant must be one of {', '.join(HOST_VARIANTS)}, got {self.host_variant!r}")
        for name in ("host_fixed_ns", "host_ns_per_byte"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"GpuModel: {name} must be a finite number >= 0, got {v!r}")
        d = self.device_ns_per_byte
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d <= 0):
            raise ValueError(f"GpuModel: device_ns_per_byte must be a finite number > 0 or None, got {d!r}")
        if not isinstance(self.host_source, str) or not self.host_source:
            raise ValueError("GpuModel: host_source must say where the host figure comes from")
        t = self.host_threads
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
            raise ValueError(f"GpuModel: host_threads must be an int >= 1 or None, got {t!r}")

    # -- where the host figure comes from ------------------------------------------------------------
    @classmethod
    def measure(cls, variant: str = DEFAULT_VARIANT, *, device_ns_per_byte: float | None = None) -> "GpuModel":
        """The host figure measured now on this machine (runtime.optimizer_cost, up to MEASURE_BYTES, on
        torch's current threads), once per process and variant: later calls reuse it."""
        if variant not in HOST_VARIANTS:
            raise ValueError(f"host optimizer variant must be one of {', '.join(HOST_VARIANTS)}, got {variant!r}")
        import torch

        from runtime.optimizer_cost import measure_host_optimizer

        key = (variant, torch.get_num_threads())
        if key not in _MEASURED:
            c = measure_host_optimizer(MEASURE_BYTES, variant=variant, repeats=MEASURE_REPEATS)  # type: ignore[arg-type]
            if not c.supported:
                raise ValueError(f"host optimizer variant {variant!r} does not run with torch {c.torch_version}: {c.error}")
            fixed, per_byte, how = max(c.fixed_ns, 0.0), c.per_byte_ns, f"fit error {c.fit_max_rel_error:.0%}"
            if not per_byte > 0:  # a busy machine can tilt the fitted line: the largest size's step per byte
                fixed, per_byte, how = 0.0, c.ns_per_byte, "the fitted slope was not positive: the largest size's step per byte"
            _MEASURED[key] = cls(host_variant=variant, host_fixed_ns=fixed, host_ns_per_byte=per_byte,
                                 host_threads=c.torch_threads,
                                 host_source=f"measured now on this machine (torch {c.torch_version}, "
                                             f"{c.torch_threads} thread(s), up to {MEASURE_BYTES >> 20} MiB, {how})")
        return _replace_device(_MEASURED[key], device_ns_per_byte)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], variant: str = DEFAULT_VARIANT, *,
                  device_ns_per_byte: float | None = None) -> "GpuModel":
        """The host figure from a benchmarks/host_optimizer.py JSON: that variant's fastest row (the
        thread count it ran best with). ValueError naming the file on anything unreadable."""
        if variant not in HOST_VARIANTS:
            raise ValueError(f"host optimizer variant must be one of {', '.join(HOST_VARIANTS)}, got {variant!r}")
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read a host optimizer measurement: {exc}") from None
        rows = doc.get("results") if isinstance(doc, dict) else None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: not a benchmarks/host_optimizer.py JSON (no 'results' list)")
        ok = []
        for i, r in enumerate(rows):
            if not isinstance(r, dict) or r.get("variant") != variant or not r.get("supported"):
                continue
            vals = [r.get(k) for k in ("fixed_ns", "per_byte_ns", "ns_per_byte")]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals):
                raise ValueError(f"{path}: results[{i}] ({variant}) lacks numeric fixed_ns, per_byte_ns, ns_per_byte")
            ok.append(r)
        if not ok:
            have = sorted({r.get("variant") for r in rows if isinstance(r, dict) and r.get("supported")} - {None})
            raise ValueError(f"{path}: no supported {variant!r} row (has: {', '.join(map(str, have)) or 'none'})")
        r = min(ok, key=lambda r: r["ns_per_byte"])
        threads = r.get("torch_threads") if isinstance(r.get("torch_threads"), int) else None
        when = (doc.get("machine") or {}).get("date") if isinstance(doc.get("machine"), dict) else None
        return cls(host_variant=variant, host_fixed_ns=float(max(r["fixed_ns"], 0.0)),
                   host_ns_per_byte=float(max(r["per_byte_ns"], 0.0)), host_threads=threads,
                   device_ns_per_byte=device_ns_per_byte,
                   host_source=f"file {path}" + (f" ({threads} thread(s)" if threads else " (")
                               + (f", measured {when})" if when else ")"))

    @classmethod
    def from_spec(cls, spec: str | None, *, device_ns_per_byte: float | None = None) -> "GpuModel":
        """The CLI's --host-optimizer: None (fused, measured now), a variant (measured now), FILE or
        FILE:VARIANT (a benchmarks/host_optimizer.py JSON)."""
        if spec is None or spec in HOST_VARIANTS:
            return cls.measure(spec or DEFAULT_VARIANT, device_ns_per_byte=device_ns_per_byte)
        path, _, variant = spec.rpartition(":")
        if path and variant in HOST_VARIANTS and Path(path).is_file() and not Path(spec).is_file():
            return cls.from_file(path, variant, device_ns_per_byte=device_ns_per_byte)
        if Path(spec).is_file():
            return cls.from_file(spec, device_ns_per_byte=device_ns_per_byte)
        raise ValueError(f"--host-optimizer: {spec!r} is neither a variant ({', '.join(HOST_VARIANTS)}) "
                         "nor a file (FILE or FILE:VARIANT, written by benchmarks/host_optimizer.py)")

    # -- the model -------------------------------------------------------------------------------------
    def host_step_ns(self, nbytes: int) -> int:
        """Modelled host step over `nbytes` of parameters (0 bytes: nothing steps on the host)."""
        return round(self.host_fixed_ns + self.host_ns_per_byte * nbytes) if nbytes > 0 else 0

    def apply(self, trace: Trace, warmup_steps: int) -> tuple[Trace, "GpuFigures"]:
        """(the trace re-timed for the prefetched run, the figures and the baseline's time); built once
        per trace, model and warm-up (Trace.derived)."""
        return trace.derived(("gpu_model", self, warmup_steps), lambda: self._apply(trace, warmup_steps))

    def _apply(self, trace: Trace, warmup_steps: int) -> tuple[Trace, "GpuFigures"]:
        kinds, sizes = trace.tensor_kinds(), trace.tensor_nbytes()
        is_param = kinds == int(Kind.PARAMETER)
        host_bytes = int(sizes[is_param & trace.managed_tensors()].sum())  # managed parameters: host masters
        all_bytes = int(sizes[is_param].sum())  # the baseline steps every parameter on the device
        ms = managed_stream(trace)
        pos = ms["opt_pos"]  # the first OPTIMIZER event of each step the simulator replays
        deltas = compute_deltas(trace)
        trace_opt = deltas[pos]  # the trace's optimizer time: from the event before to the post-hook
        host = np.full(len(pos), self.host_step_ns(host_bytes), dtype=np.int64) if host_bytes else trace_opt
        dev = trace_opt if self.device_ns_per_byte is None else \
            np.full(len(pos), round(self.device_ns_per_byte * all_bytes), dtype=np.int64)
        full_start, _ = _warmup_split(trace, warmup_steps)
        idx = ms["index"]
        measure_start = int(np.searchsorted(idx, full_start))
        measured = ms["opt_at"] >= measure_start  # as the event loop: the optimizer before event j is j's
        ctime = ms["ctime"]
        base = int(ctime[-1]) - (int(ctime[measure_start - 1]) if measure_start else 0) if len(idx) else 0
        figures = GpuFigures(
            optimizer_param_bytes=host_bytes, param_bytes=all_bytes, optimizer_steps=int(measured.sum()),
            host_optimizer_ns=int(host[measured].sum()), trace_optimizer_ns=int(trace_opt[measured].sum()),
            baseline_optimizer_ns=int(dev[measured].sum()),
            baseline_ns=base + int((dev[measured] - trace_opt[measured]).sum()), model=self)
        if not len(pos) or np.array_equal(host, trace_opt):
            return trace, figures
        new = deltas.copy()
        new[pos] = host
        times = np.asarray(trace.column("time_ns"), dtype=np.int64)
        retimed = times[0] + np.cumsum(new)  # compute_deltas(retimed) == new: every later event moves with it
        col = trace.events.schema.get_field_index("time_ns")
        events = trace.events.set_column(col, trace.events.schema.field(col),
                                         pa.array(retimed, type=trace.events.schema.field(col).type))
        return Trace(stem=trace.stem, events=events, tensors=trace.tensors, manifest=trace.manifest,
                     truncated=trace.truncated), figures


def _replace_device(m: GpuModel, device_ns_per_byte: float | None) -> GpuModel:
    if device_ns_per_byte == m.device_ns_per_byte:
        return m
    return GpuModel(host_variant=m.host_variant, host_fixed_ns=m.host_fixed_ns, host_ns_per_byte=m.host_ns_per_byte,
                    host_source=m.host_source, host_threads=m.host_threads, device_ns_per_byte=device_ns_per_byte)


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuFigures:
    """One trace's optimizer under the model, over its measured steps (the report's `gpu_model`)."""

    model: GpuModel
    optimizer_param_bytes: int
    """Managed parameters' bytes: what the host optimizer steps."""
    param_bytes: int
    """Every parameter's bytes: what the baseline's device optimizer steps."""
    optimizer_steps: int
    """Optimizer steps in the measured steps."""
    host_optimizer_ns: int
    """Their time on the host (the prefetched run), in all."""
    trace_optimizer_ns: int
    """Their time in the trace, in all."""
    baseline_optimizer_ns: int
    """Their time on the device (the baseline), in all."""
    baseline_ns: int
    """The baseline's measured time: the trace's compute with the baseline's optimizer time."""

    def as_dict(self) -> dict[str, Any]:
        """The report's `gpu_model` object (totals in seconds over the measured steps, and per step)."""
        m, n = self.model, self.optimizer_steps
        return {
            "optimizer": "host", "baseline_optimizer": "device",
            "host_variant": m.host_variant, "host_ns_per_byte": m.host_ns_per_byte, "host_fixed_ns": m.host_fixed_ns,
            "host_threads": m.host_threads, "host_source": m.host_source,
            "device_ns_per_byte": m.device_ns_per_byte,
            "optimizer_param_bytes": self.optimizer_param_bytes, "param_bytes": self.param_bytes,
            "optimizer_steps": n,
            "host_optimizer_s": self.host_optimizer_ns / 1e9, "trace_optimizer_s": self.trace_optimizer_ns / 1e9,
            "baseline_optimizer_s": self.baseline_optimizer_ns / 1e9,
            "host_optimizer_step_s": self.host_optimizer_ns / 1e9 / n if n else None,
            "trace_optimizer_step_s": self.trace_optimizer_ns / 1e9 / n if n else None,
            "baseline_optimizer_step_s": self.baseline_optimizer_ns / 1e9 / n if n else None,
        }


def combine(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The `gpu_model` object of several traces' report: totals summed, per step over all of them,
    bytes the largest (as managed_bytes); the model's figures are the same for every trace."""
    out = dict(docs[0])
    n = sum(d["optimizer_steps"] for d in docs)
    out["optimizer_steps"] = n
    for k in ("optimizer_param_bytes", "param_bytes"):
        out[k] = max(d[k] for d in docs)
    for k in ("host", "trace", "baseline"):
        total = sum(d[f"{k}_optimizer_s"] for d in docs)
        out[f"{k}_optimizer_s"] = total
        out[f"{k}_optimizer_step_s"] = total / n if n else None
    return out

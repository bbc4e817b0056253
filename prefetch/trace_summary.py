"""What a trace holds, in numbers: `prefetch trace info FILE`.

The per-step section shows whether the access order changes from step to step: each
step's sequence of (tensor, access) pairs is hashed, and a static workload has one
distinct sequence after warm-up while dynamic ones have many.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from runtime import hint_schedule
from runtime.trace_format import Kind, Phase, Trace


def step_signatures(trace: Trace) -> list[str]:
    """A short hash of each step's access sequence, in step order."""
    steps = trace.column("step")
    tids = trace.column("tensor_id").astype(np.int64)
    acc = trace.column("access").astype(np.int64)
    code = tids * 2 + acc
    out = []
    if not len(steps):
        return out
    bounds = np.flatnonzero(np.diff(steps)) + 1
    for chunk in np.split(code, bounds):
        out.append(hashlib.sha1(chunk.tobytes()).hexdigest()[:8])
    return out


def summarize(trace: Trace) -> dict[str, Any]:
    phases = trace.column("phase")
    kinds = trace.column("kind")
    steps = trace.column("step")
    tkinds = trace.tensor_kinds()
    tbytes = trace.tensor_nbytes()
    per_step_events = np.bincount(steps - steps.min()).tolist() if len(steps) else []
    sigs = step_signatures(trace)
    # the set of tensors read per step: how many distinct sets (MoE experts, layerdrop)
    read = trace.column("access") == 0
    sets = set()
    for s in np.unique(steps):
        ids = np.unique(trace.column("tensor_id")[(steps == s) & read])
        sets.add(hashlib.sha1(ids.tobytes()).hexdigest()[:8])
    m = trace.manifest
    return {
        "trace": str(trace.stem),
        "architecture": trace.architecture,
        "model_class": m.get("model_class"),
        "workload": m.get("workload"),
        "seed": m.get("seed"),
        "complete": bool(m.get("complete")) and not trace.truncated,
        "truncated": trace.truncated,
        "steps": int(len(np.unique(steps))),
        "events": trace.num_events,
        "events_per_step": per_step_events,
        "events_by_phase": {p.name.lower(): int((phases == p).sum()) for p in Phase},
        "events_by_kind": {k.name.lower(): int((kinds == k).sum()) for k in Kind},
        "tensors": trace.num_tensors,
        "tensors_by_kind": {k.name.lower(): int((tkinds == k).sum()) for k in Kind},
        "bytes_by_kind": {k.name.lower(): int(tbytes[tkinds == k].sum()) for k in Kind},
        "managed_bytes": int(tbytes.sum()),
        "distinct_step_orders": len(set(sigs[1:])) if len(sigs) > 1 else len(sigs),
        "distinct_step_tensor_sets": len(sets),
        "step_order_signatures": sigs,
        "router_hints": _hint_count(m.get(hint_schedule.MANIFEST_KEY)),
        "error": m.get("error"),
    }


def _hint_count(obj: Any) -> int:
    """Router hints a manifest keeps (runtime.hint_schedule); 0 for none or a malformed entry
    (the simulator names what is wrong with one when it reads it)."""
    at = obj.get("at") if isinstance(obj, dict) else None
    return len(at) if isinstance(at, list) else 0


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"trace         {s['trace']}",
        f"workload      {s['workload']}  seed {s['seed']}",
        f"architecture  {s['architecture']}  ({s['model_class']})",
        f"status        {'complete' if s['complete'] else 'TRUNCATED (read up to its last complete batch)'}"
        + (f"  error: {s['error']}" if s.get("error") else ""),
        f"steps         {s['steps']}   events {s['events']}   per step {s['events_per_step']}",
        "events by phase  " + "  ".join(f"{k} {v}" for k, v in s["events_by_phase"].items()),
        "events by kind   " + "  ".join(f"{k} {v}" for k, v in s["events_by_kind"].items()),
        f"tensors       {s['tensors']}  managed {_mib(s['managed_bytes'])}",
    ]
    for k in s["tensors_by_kind"]:
        lines.append(f"  {k:<16}{s['tensors_by_kind'][k]:>7} tensors  {_mib(s['bytes_by_kind'][k]):>12}")
    n = s["steps"]
    lines.append(
        f"step order    {s['distinct_step_orders']} distinct access orders over steps 1..{n - 1} "
        f"(1 = static), {s['distinct_step_tensor_sets']} distinct sets of tensors read"
    )
    lines.append("              " + " ".join(s["step_order_signatures"]))
    if s.get("router_hints"):
        lines.append(f"router hints  {s['router_hints']} (runtime.routers: which experts each router chose or predicted)")
    return "\n".join(lines)

"""Checks a loaded trace before anything trains on it, simulates it or summarises it.

    python -m prefetch trace info suspicious/     # a bad value is one line naming file and column

`trace_format.load_trace` calls these on what it read. A trace is written by this
project's recorder, so anything out of range means the file was damaged or forged: it is
refused with a `TraceError` naming the file, the column and the first bad value, never
read on into a model. The one damage that is expected, a recording killed mid-run, is
not an error: its streams read up to their last complete batch (trace_format) and its
manifest says `complete: false`, so events that refer to tensor rows the cut tensor file
lost are dropped from the first such event on, keeping a consistent prefix.

Kept apart from trace_format so the format module stays the schema and the reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime.trace_format import EVENT_SCHEMA, TENSOR_SCHEMA, Access, Kind, Phase, TraceError

# Manifest keys a reader uses, and the JSON types each may hold (None: absent or null).
_MANIFEST_TYPES: dict[str, tuple[type, ...]] = {
    "architecture": (str,),
    "complete": (bool,),
    "modules": (list,),
    "workload": (str, type(None)),
    "model_class": (str, type(None)),
    "seed": (int, type(None)),
    "error": (str, type(None)),
    "num_events": (int,),
    "num_tensors": (int,),
    "steps": (int,),
}

# (column, lowest, highest or None) for the event columns whose range is known up front.
_EVENT_RANGES: tuple[tuple[str, int, int | None], ...] = (
    ("step", 0, None),
    ("micro_step", 0, None),
    ("seq", 0, None),
    ("phase", 0, int(max(Phase))),
    ("kind", 0, int(max(Kind))),
    ("access", 0, int(max(Access))),
    ("tensor_id", 0, None),  # the upper end is the tensor table's size: see check_event_ids
    ("nbytes", 0, None),
    ("module_id", -1, None),
    ("layer", -1, None),
)
_TENSOR_RANGES: tuple[tuple[str, int, int | None], ...] = (
    ("kind", 0, int(max(Kind))),
    ("nbytes", 0, None),
    ("layer", -1, None),
)


def check_manifest(path: Path, manifest: Any) -> dict[str, Any]:
    """The manifest if it is a JSON object whose known keys have their types; else TraceError."""
    if not isinstance(manifest, dict):
        raise TraceError(f"{path}: expected a JSON object, got a JSON {_json_type(manifest)}")
    for key, types in _MANIFEST_TYPES.items():
        if key not in manifest:
            continue
        value = manifest[key]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            allowed = " or ".join(_json_type_name(t) for t in types)
            raise TraceError(f"{path}: {key!r} must be {allowed}, got a JSON {_json_type(value)}")
    modules = manifest.get("modules")
    if modules is not None and not all(isinstance(m, str) for m in modules):
        raise TraceError(f"{path}: 'modules' must be a list of strings")
    return manifest


def check_columns(path: Path, table: pa.Table, schema: pa.Schema) -> None:
    """Every column of `schema` present with its type and without nulls."""
    try:  # offsets and lengths inside the buffers: a garbled string column must not be read
        table.validate(full=True)
    except pa.ArrowException as exc:
        raise TraceError(f"{path}: damaged ({' '.join(str(exc).split())})") from None
    names = set(table.schema.names)
    missing = [n for n in schema.names if n not in names]
    if missing:
        raise TraceError(f"{path}: missing columns {missing}")
    for f in schema:
        got = table.schema.field(f.name).type
        if got != f.type:
            raise TraceError(f"{path}: column {f.name!r} has type {got}, expected {f.type}")
        nulls = table.column(f.name).null_count
        if nulls:
            raise TraceError(f"{path}: column {f.name!r} has {nulls} null value(s)")


def check_tensors(path: Path, tensors: pa.Table) -> None:
    """The tensor table: typed columns, ids dense 0..n-1 with no repeat, values in range."""
    check_columns(path, tensors, TENSOR_SCHEMA)
    _check_ranges(path, tensors, _TENSOR_RANGES, "tensor row")
    n = tensors.num_rows
    if not n:
        return
    ids = tensors.column("tensor_id").to_numpy()
    if not np.array_equal(np.sort(ids), np.arange(n, dtype=ids.dtype)):
        bad = _first_bad_id(ids)
        raise TraceError(f"{path}: tensor ids must be 0..{n - 1} once each; row {bad} has tensor_id={int(ids[bad])}")


def check_events(path: Path, events: pa.Table) -> None:
    """The event table: typed columns and every value in its column's range."""
    check_columns(path, events, EVENT_SCHEMA)
    _check_ranges(path, events, _EVENT_RANGES, "event")
    _check_order(path, events)


def check_event_ids(events_path: Path, tensors_path: Path, events: pa.Table, num_tensors: int,
                    *, recording_finished: bool) -> tuple[pa.Table, bool]:
    """Events whose tensor ids the table holds, and whether any had to be dropped.

    The recorder writes tensor rows before the events that use them, so ids beyond the
    table mean the tensor file was cut. After a finished recording, or when not one
    tensor row survived, that is an error; after a killed one, the events up to the first
    unknown id are kept (a prefix, so every step but the last is whole)."""
    if not events.num_rows:
        return events, False
    tid = events.column("tensor_id")
    max_id = int(pc.max(tid).as_py())
    if max_id < num_tensors:
        return events, False
    if num_tensors == 0:
        raise TraceError(f"{tensors_path}: no complete tensor rows, but {events_path.name} has "
                         f"{events.num_rows} events; the tensor file is cut or empty")
    first = int(np.argmax(tid.to_numpy() >= num_tensors))
    if recording_finished:
        raise TraceError(f"{tensors_path}: {num_tensors} tensor rows, but event {first} of {events_path.name} "
                         f"has tensor_id={int(tid[first].as_py())}; the tensor file is cut or does not belong "
                         f"to these events")
    return events.slice(0, first), True


def _check_order(path: Path, events: pa.Table) -> None:
    """Events are written as they happen: steps one after another, and within a step
    micro-steps in order and seq strictly rising. A garbled step (say 2**30) would
    otherwise pass the range checks and size every per-step array by it."""
    if events.num_rows < 2:
        return
    step = events.column("step").to_numpy()
    d_step = np.diff(step)
    same = d_step == 0
    micro, seq = events.column("micro_step").to_numpy(), events.column("seq").to_numpy()
    checks = (
        ("step", step, (d_step < 0) | (d_step > 1), "steps must follow one another (+0 or +1 per event)"),
        ("micro_step", micro, same & (np.diff(micro) < 0), "micro-steps must not go back within a step"),
        ("seq", seq, same & (np.diff(seq) <= 0), "seq must rise within a step"),
    )
    for name, values, bad, rule in checks:
        if bad.any():
            i = int(np.flatnonzero(bad)[0]) + 1
            raise TraceError(f"{path}: event {i} has {name}={int(values[i])} after {name}={int(values[i - 1])}; {rule}")


def _check_ranges(path: Path, table: pa.Table, ranges, what: str) -> None:
    for name, lo, hi in ranges:
        col = table.column(name)
        if not len(col):
            continue
        mm = pc.min_max(col)
        cmin, cmax = mm["min"].as_py(), mm["max"].as_py()
        if cmin >= lo and (hi is None or cmax <= hi):
            continue
        values = col.to_numpy()
        bad = (values < lo) if hi is None else ((values < lo) | (values > hi))
        i = int(np.flatnonzero(bad)[0])
        span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise TraceError(f"{path}: {what} {i} has {name}={int(values[i])}, must be {span}")


def _first_bad_id(ids: np.ndarray) -> int:
    n = len(ids)
    seen = np.zeros(n, dtype=bool)
    for i, v in enumerate(ids.tolist()):
        if not 0 <= v < n or seen[v]:
            return i
        seen[v] = True
    return 0  # pragma: no cover - unreachable when the ids are not a permutation


def _json_type(value: Any) -> str:
    return _json_type_name(type(value))


def _json_type_name(t: type) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(t, t.__name__)

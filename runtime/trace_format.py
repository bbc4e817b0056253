"""The trace format: the contract between the recorder and every reader.

    python -m prefetch trace info traces/gpt2/

A trace is three files sharing a stem, one trace per recording process:

    STEM.events.arrow    Arrow IPC *stream* of access events (EVENT_SCHEMA)
    STEM.tensors.arrow   Arrow IPC stream of the tensor table (TENSOR_SCHEMA)
    STEM.manifest.json   architecture signature, model class, config, versions, ...

Both Arrow files are streams, not the random-access file format, because a stream is
readable up to its last complete record batch when the writer dies mid-run; the file
format needs a footer that a killed process never writes. Tensor rows are written
before the first event batch that refers to them, so a truncated trace is consistent.
The schema version lives in each stream's schema metadata (b"prefetch.schema_version").
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1
VERSION_KEY = b"prefetch.schema_version"
MANIFEST_KEY = b"prefetch.manifest"

EVENTS_SUFFIX = ".events.arrow"
TENSORS_SUFFIX = ".tensors.arrow"
MANIFEST_SUFFIX = ".manifest.json"


class Phase(enum.IntEnum):
    """Where in the step an access happens."""

    FORWARD = 0
    BACKWARD = 1
    RECOMPUTE = 2
    OPTIMIZER = 3
    EVAL = 4  # forward passes without grad (evaluation, generate())


class Kind(enum.IntEnum):
    """What sort of managed tensor is accessed."""

    PARAMETER = 0
    ACTIVATION = 1
    GRADIENT = 2
    OPTIMIZER_STATE = 3


# What the device tier manages: parameters and saved activations. Gradients and optimizer
# state stay where the optimizer runs (on the host, ZeRO-Offload style); they are recorded
# for analysis, but policies, the simulator and the live store see the managed stream only.
MANAGED_KINDS: tuple[int, ...] = (0, 1)  # Kind.PARAMETER, Kind.ACTIVATION
# Tensors smaller than this stay resident (DeepSpeed's param persistence threshold):
# biases, norms and small saved values are ~40% of the accesses and <1% of the bytes, and
# moving them would cost more in per-copy overhead than it saves.
MIN_MANAGED_BYTES = 64 * 1024


def is_managed(kind: int, nbytes: int) -> bool:
    """The one rule for what the device tier manages (live store, simulator, predictor)."""
    return kind in MANAGED_KINDS and nbytes >= MIN_MANAGED_BYTES


class Access(enum.IntEnum):
    """Whether the access reads an existing value or produces a new one."""

    READ = 0
    WRITE = 1  # activation packed, gradient produced, optimizer state/parameter updated


# One row per access. Small integer types keep a step of a large model in a few MB.
EVENT_SCHEMA = pa.schema(
    [
        pa.field("step", pa.int32()),  # optimizer step index (0-based)
        pa.field("micro_step", pa.int16()),  # root forward pass within the step (train or eval)
        pa.field("seq", pa.int32()),  # sequence number within the step
        pa.field("phase", pa.int8()),  # Phase
        pa.field("kind", pa.int8()),  # Kind
        pa.field("access", pa.int8()),  # Access
        pa.field("tensor_id", pa.int32()),  # row of the tensor table
        pa.field("nbytes", pa.int64()),
        pa.field("time_ns", pa.int64()),  # time.monotonic_ns() at the access
        pa.field("module_id", pa.int32()),  # index into the manifest's module list, -1 if none
        pa.field("layer", pa.int16()),  # layer index parsed from the module path, -1 if none
    ],
    metadata={VERSION_KEY: str(SCHEMA_VERSION).encode()},
)

# One row per managed tensor, keyed by a string that is stable across steps and runs.
TENSOR_SCHEMA = pa.schema(
    [
        pa.field("tensor_id", pa.int32()),
        pa.field("key", pa.string()),
        pa.field("kind", pa.int8()),
        pa.field("shape", pa.list_(pa.int64())),
        pa.field("dtype", pa.string()),
        pa.field("nbytes", pa.int64()),
        pa.field("module", pa.string()),
        pa.field("layer", pa.int16()),
    ],
    metadata={VERSION_KEY: str(SCHEMA_VERSION).encode()},
)

EVENT_COLUMNS: tuple[str, ...] = tuple(EVENT_SCHEMA.names)
EVENT_DTYPES: dict[str, np.dtype] = {
    f.name: np.dtype(f.type.to_pandas_dtype()) for f in EVENT_SCHEMA
}


class TraceError(ValueError):
    """A trace file is missing, malformed or of an unsupported schema version."""


def stem_of(path: str | os.PathLike[str]) -> Path:
    """The shared stem of a trace, given any of its three files or the stem itself."""
    p = Path(path)
    for suffix in (EVENTS_SUFFIX, TENSORS_SUFFIX, MANIFEST_SUFFIX):
        if p.name.endswith(suffix):
            return p.with_name(p.name[: -len(suffix)])
    return p


def find_traces(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Every trace stem under the given files or directories, sorted, no duplicates."""
    stems: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            stems.update(stem_of(f) for f in p.rglob("*" + EVENTS_SUFFIX))
        elif p.exists() or Path(str(stem_of(p)) + EVENTS_SUFFIX).exists():
            stems.add(stem_of(p))
        else:
            raise TraceError(f"{p}: no such trace file or directory")
    if not stems:
        raise TraceError(f"no traces (*{EVENTS_SUFFIX}) found under: {', '.join(map(str, paths))}")
    return sorted(stems)


@dataclass
class Trace:
    """One recorded process: its events, its tensor table and its manifest.

    `truncated` is true when the recorder did not finish (killed: its manifest is not
    marked complete) or a batch was cut; the events hold every complete batch before that.
    """

    stem: Path
    events: pa.Table
    tensors: pa.Table
    manifest: dict[str, Any]
    truncated: bool = False
    _columns: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _derived: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def derived(self, key: Any, build: Callable[[], Any]) -> Any:
        """What a consumer computes from this (immutable) trace, built once per key: the
        simulator's prepared stream, the oracle's managed stream. Not for mutable results."""
        if key not in self._derived:
            self._derived[key] = build()
        return self._derived[key]

    def column(self, name: str) -> np.ndarray:
        """An event column as a numpy array (cached; zero-copy where Arrow allows)."""
        if name not in self._columns:
            self._columns[name] = self.events.column(name).to_numpy()
        return self._columns[name]

    @property
    def num_events(self) -> int:
        return self.events.num_rows

    @property
    def num_tensors(self) -> int:
        return self.tensors.num_rows

    @property
    def architecture(self) -> str:
        return str(self.manifest.get("architecture", ""))

    @property
    def keys(self) -> list[str]:
        return self.tensors.column("key").to_pylist()

    def tensor_nbytes(self) -> np.ndarray:
        """nbytes per tensor id (tensor ids are dense 0..n-1)."""
        out = np.zeros(self.num_tensors, dtype=np.int64)
        out[self.tensors.column("tensor_id").to_numpy()] = self.tensors.column("nbytes").to_numpy()
        return out

    def tensor_kinds(self) -> np.ndarray:
        out = np.zeros(self.num_tensors, dtype=np.int8)
        out[self.tensors.column("tensor_id").to_numpy()] = self.tensors.column("kind").to_numpy()
        return out

    def managed_tensors(self) -> np.ndarray:
        """Per tensor id: does the device tier manage it (is_managed on the table's sizes)?"""
        kinds, nbytes = self.tensor_kinds(), self.tensor_nbytes()
        return np.isin(kinds, np.asarray(MANAGED_KINDS, dtype=kinds.dtype)) & (nbytes >= MIN_MANAGED_BYTES)

    def managed(self) -> "Trace":
        """The same trace with only the events of managed tensors (is_managed): the stream
        policies see in training, evaluation, simulation and live runs. Ids are unchanged."""
        mask = self.managed_tensors()[self.column("tensor_id")]
        if mask.all():
            return self
        return Trace(stem=self.stem, events=self.events.filter(pa.array(mask)), tensors=self.tensors,
                     manifest=self.manifest, truncated=self.truncated)

    def steps(self) -> np.ndarray:
        """The distinct step indices present, sorted."""
        return np.unique(self.column("step")) if self.num_events else np.zeros(0, np.int32)


def _read_stream(path: Path) -> tuple[pa.Table, bool, dict[bytes, bytes]]:
    """All complete batches of an IPC stream, and whether the stream was cut off."""
    if not path.exists():
        raise TraceError(f"{path}: file not found")
    batches: list[pa.RecordBatch] = []
    truncated = False
    try:
        source = pa.OSFile(str(path), "rb")
        reader = pa.ipc.open_stream(source)
    except (pa.ArrowException, OSError) as exc:
        raise TraceError(f"{path}: not an Arrow IPC stream ({' '.join(str(exc).split())})") from exc
    schema = reader.schema
    while True:
        try:
            batches.append(reader.read_next_batch())
        except StopIteration:
            break
        except (pa.ArrowException, OSError, EOFError) as exc:
            if source.tell() < source.size():  # unreadable bytes before the end: damage, not a cut
                raise TraceError(f"{path}: record batch {len(batches)} is damaged "
                                 f"({' '.join(str(exc).split())})") from None
            truncated = True  # a partial batch after the last complete one: a crash
            break
    source.close()
    meta = dict(schema.metadata or {})
    return pa.Table.from_batches(batches, schema=schema), truncated, meta


def _check_version(path: Path, meta: dict[bytes, bytes]) -> None:
    raw = meta.get(VERSION_KEY)
    if raw is None:
        raise TraceError(f"{path}: no {VERSION_KEY.decode()} in schema metadata; not a prefetch trace")
    if not raw.isdigit() or int(raw) != SCHEMA_VERSION:
        raise TraceError(
            f"{path}: schema version {raw.decode(errors='replace')[:20]}, this build reads version {SCHEMA_VERSION}"
        )


def load_trace(path: str | os.PathLike[str]) -> Trace:
    """Read a trace given its stem or any of its files. Raises TraceError naming the file."""
    stem = stem_of(path)
    events_path = Path(str(stem) + EVENTS_SUFFIX)
    tensors_path = Path(str(stem) + TENSORS_SUFFIX)
    manifest_path = Path(str(stem) + MANIFEST_SUFFIX)
    events, truncated, meta = _read_stream(events_path)
    _check_version(events_path, meta)
    missing = [n for n in EVENT_SCHEMA.names if n not in events.schema.names]
    if missing:
        raise TraceError(f"{events_path}: missing event columns {missing}")
    tensors, tensors_truncated, tmeta = _read_stream(tensors_path)
    _check_version(tensors_path, tmeta)
    manifest: dict[str, Any] = {}
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise TraceError(f"{manifest_path}: invalid JSON ({exc})") from exc
        except UnicodeDecodeError as exc:
            raise TraceError(f"{manifest_path}: not UTF-8 text ({exc.reason})") from exc
    elif MANIFEST_KEY in meta:
        manifest = json.loads(meta[MANIFEST_KEY])
    else:
        raise TraceError(f"{manifest_path}: file not found")
    # Out-of-range values, a cut tensor table, a manifest that is not an object: one-line
    # TraceErrors (runtime/trace_validate.py); a killed recording keeps its readable prefix.
    from runtime import trace_validate as tv

    manifest = tv.check_manifest(manifest_path, manifest)
    tv.check_events(events_path, events)
    tv.check_tensors(tensors_path, tensors)
    events, ids_cut = tv.check_event_ids(events_path, tensors_path, events, tensors.num_rows,
                                         recording_finished=bool(manifest.get("complete", False)))
    truncated = truncated or ids_cut
    return Trace(
        stem=stem,
        events=events,
        tensors=tensors,
        manifest=manifest,
        # a writer that never closed (killed) leaves complete=False in its manifest
        truncated=truncated or tensors_truncated or not manifest.get("complete", False),
    )


def load_traces(paths: Iterable[str | os.PathLike[str]], *, managed_only: bool = False) -> list[Trace]:
    """Every trace under `paths`; with `managed_only`, each reduced to Trace.managed()."""
    traces = [load_trace(s) for s in find_traces(list(paths))]
    return [t.managed() for t in traces] if managed_only else traces

"""Writes a trace off the training thread: events and tensor rows to Arrow IPC streams.

The training thread only appends to Python lists (`add_tensor`, `add_event`); every
`flush_every` events the lists are handed over, whole, to a writer thread, which
converts them to a record batch and writes and flushes it. A crash therefore loses at
most the batch in memory, and the files on disk always end at a batch boundary or in
the middle of the batch being written (which readers drop).
"""

from __future__ import annotations

import json
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from runtime.trace_format import (
    EVENT_COLUMNS,
    EVENT_SCHEMA,
    EVENTS_SUFFIX,
    MANIFEST_SUFFIX,
    SCHEMA_VERSION,
    TENSOR_SCHEMA,
    TENSORS_SUFFIX,
)
from runtime.trace_identity import IDENTITY_KEY, StepOrderHasher

_STEP, _PHASE, _ACCESS, _TENSOR_ID = (EVENT_COLUMNS.index(c) for c in ("step", "phase", "access", "tensor_id"))


class TraceWriteError(OSError):
    """The trace cannot be written where asked."""


@dataclass(kw_only=True, slots=True)
class TraceWriterConfig:
    """How a trace is buffered and written."""

    flush_every: int = 65536
    """Events per record batch: the most a crash can lose."""

    def __post_init__(self) -> None:
        if self.flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {self.flush_every}")


def check_output_dir(out: str | os.PathLike[str]) -> Path:
    """Create `out` if needed and prove it is writable, with a one-line error if not."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TraceWriteError(f"cannot create output folder {path}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise TraceWriteError(f"output path {path} exists and is not a folder")
    probe = path / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TraceWriteError(f"output folder {path} is not writable: {exc.strerror or exc}") from None
    return path


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


class TraceWriter:
    """One trace (one process): `add_tensor`/`add_event` from the training thread, `close()` at the end."""

    _STOP = object()

    def __init__(self, stem: str | os.PathLike[str], manifest: dict[str, Any], config: TraceWriterConfig | None = None):
        self.config = config or TraceWriterConfig()
        self.stem = Path(stem)
        check_output_dir(self.stem.parent)
        self.manifest = dict(manifest)
        self.manifest.setdefault("schema_version", SCHEMA_VERSION)
        self.manifest["complete"] = False
        self.events_path = Path(str(self.stem) + EVENTS_SUFFIX)
        self.tensors_path = Path(str(self.stem) + TENSORS_SUFFIX)
        self.manifest_path = Path(str(self.stem) + MANIFEST_SUFFIX)
        write_json_atomic(self.manifest_path, self.manifest)
        meta = dict(EVENT_SCHEMA.metadata)
        self._events_sink = pa.OSFile(str(self.events_path), "wb")
        self._tensors_sink = pa.OSFile(str(self.tensors_path), "wb")
        self._events_writer = pa.ipc.new_stream(self._events_sink, EVENT_SCHEMA.with_metadata(meta))
        self._tensors_writer = pa.ipc.new_stream(self._tensors_sink, TENSOR_SCHEMA)
        self._events: list[tuple] = []
        self._tensors: list[dict[str, Any]] = []
        self.num_events = 0
        self.num_tensors = 0
        self._error: BaseException | None = None
        self._identity = StepOrderHasher()  # per-step access-order hashes, fed on the writer thread
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="prefetch-trace-writer", daemon=True)
        self._thread.start()

    # -- training thread -------------------------------------------------------------
    def add_tensor(self, row: dict[str, Any]) -> None:
        """A new tensor row (fields of TENSOR_SCHEMA); ids must be dense and in order."""
        self._tensors.append(row)
        self.num_tensors += 1

    def add_event(self, event: tuple) -> None:
        """One event as a tuple in EVENT_COLUMNS order."""
        self._events.append(event)
        if len(self._events) >= self.config.flush_every:
            self.flush()

    @property
    def events_added(self) -> int:
        """Events handed to the writer so far (written or pending): the next one's index."""
        return self.num_events + len(self._events)

    def add_events(self, events: list[tuple]) -> None:
        """Many events at once (the tracker's buffer); handed over as they are."""
        self._events.extend(events)
        if len(self._events) >= self.config.flush_every:
            self.flush()

    def flush(self) -> None:
        """Hand the buffered rows to the writer thread (tensor rows first)."""
        if self._error is not None:
            raise TraceWriteError(f"{self.events_path}: writer failed: {self._error}") from self._error
        if self._tensors or self._events:
            tensors, self._tensors = self._tensors, []
            events, self._events = self._events, []
            self.num_events += len(events)
            self._queue.put((tensors, events))  # blocks only if 8 batches are pending

    def close(self, **manifest_updates: Any) -> None:
        """Flush, finish both streams and mark the manifest complete. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            self._queue.put(self._STOP)
            self._thread.join()
        for closer in (self._events_writer.close, self._tensors_writer.close, self._events_sink.close, self._tensors_sink.close):
            try:
                closer()
            except Exception:  # noqa: BLE001 - already failed; report below
                pass
        if self._error is not None:
            raise TraceWriteError(f"{self.events_path}: writer failed: {self._error}") from self._error
        self.manifest.update(manifest_updates)
        self.manifest.update(complete=True, num_events=self.num_events, num_tensors=self.num_tensors)
        self.manifest[IDENTITY_KEY] = {"workload": self.manifest.get("workload"), "seed": self.manifest.get("seed"),
                                       "step_order_hashes": self._identity.hashes()}  # fmt: skip
        write_json_atomic(self.manifest_path, self.manifest)

    def update_manifest(self, **updates: Any) -> None:
        """Rewrite the manifest now (e.g. once the architecture is known)."""
        self.manifest.update(updates)
        write_json_atomic(self.manifest_path, self.manifest)

    # -- writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            if self._error is not None:
                continue
            tensors, events = item
            try:
                if tensors:
                    self._tensors_writer.write_batch(pa.RecordBatch.from_pylist(tensors, schema=TENSOR_SCHEMA))
                    self._tensors_sink.flush()
                    self._identity.add_tensors(tensors)
                if events:
                    cols = list(zip(*events))
                    columns = [np.asarray(cols[i], dtype=EVENT_SCHEMA.field(name).type.to_pandas_dtype())
                               for i, name in enumerate(EVENT_COLUMNS)]  # fmt: skip
                    arrays = [pa.array(c) for c in columns]
                    self._events_writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=EVENT_SCHEMA))
                    self._events_sink.flush()
                    self._identity.add_events(columns[_STEP], columns[_PHASE], columns[_ACCESS], columns[_TENSOR_ID])
            except BaseException as exc:  # noqa: BLE001 - surfaced on the training thread
                self._error = exc

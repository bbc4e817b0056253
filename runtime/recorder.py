"""Records a training job's tensor accesses to a trace, around the user's own loop.

    import runtime
    with runtime.record(model, optimizer, out="traces/"):
        for batch in data: ...   # unchanged

The tracker's hooks call `Recorder.access`, which appends a tuple to a list; the
TraceWriter turns lists into Arrow batches on its own thread. The buffer is flushed at
every optimizer step, so a killed job loses at most the step in progress.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from runtime.architecture import model_config_dict
from runtime.hint_schedule import MANIFEST_KEY, HintLog
from runtime.routers import AUTO, RouterLookahead, find_routers
from runtime.trace_format import SCHEMA_VERSION
from runtime.tracker import AccessTracker, TrackerConfig
from runtime.trace_writer import TraceWriter, TraceWriterConfig, check_output_dir


def _rank() -> int:
    for var in ("RANK", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _world_size() -> int:
    """torch.distributed's world size when initialised, else torchrun's $WORLD_SIZE, else 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ["WORLD_SIZE"]) if os.environ.get("WORLD_SIZE", "").isdigit() else 1


def unique_stem(out: Path, name: str) -> Path:
    """`out/<name>-r<rank>-p<pid>[-n]`: one trace per process, never overwriting."""
    base = f"{name}-r{_rank()}-p{os.getpid()}"
    stem, n = out / base, 1
    while any(Path(str(stem) + s).exists() for s in (".events.arrow", ".manifest.json")):
        stem, n = out / f"{base}-{n}", n + 1
    return stem


class Recorder:
    """The AccessSink that writes a trace. Most users want `record(...)` instead."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, out: str | os.PathLike[str],
                 *, workload: str | None = None, seed: int | None = None, config: dict[str, Any] | None = None,
                 tracker_config: TrackerConfig | None = None, writer_config: TraceWriterConfig | None = None,
                 extra_manifest: dict[str, Any] | None = None, progress: Any = None,
                 routers: str | Sequence[str] | None = AUTO):
        out_dir = check_output_dir(out)
        layers = find_routers(model, routers)  # a bad name is refused before any file is written
        self._pending_tensors: list[dict[str, Any]] = []
        # the tracker appends event tuples here directly (its fast path); flushed per step
        self.event_buffer: list[tuple] = []
        self.flush_every = (writer_config or TraceWriterConfig()).flush_every
        self.tracker = AccessTracker(model, optimizer, self, tracker_config)
        name = workload or type(model).__name__
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "architecture": self.tracker.architecture,
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "config": config if config is not None else model_config_dict(model),
            "workload": workload,
            "seed": seed,
            "rank": _rank(),
            "world_size": _world_size(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "argv": sys.argv,
            "created_unix_s": time.time(),
            "modules": self.tracker.module_paths,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        }
        manifest.update(extra_manifest or {})
        self.writer = TraceWriter(unique_stem(out_dir, name), manifest, writer_config)
        for row in self._pending_tensors:  # parameters registered while building the tracker
            self.writer.add_tensor(row)
        self._pending_tensors = []
        self.steps_completed = 0
        self.progress = progress  # anything with update(n): a tqdm bar
        self._closed = False
        # Router hints (runtime.routers), kept in the manifest so a simulation of this trace
        # gives them to a policy that takes them where a live run would have.
        self.hints = HintLog(lambda: self.writer.events_added + len(self.event_buffer), lambda: self.tracker.clock())
        self.routers = RouterLookahead(layers, self.tracker.param_ids, self.hints.log,
                                       clock=lambda: self.tracker.clock()) if layers else None

    @property
    def stem(self) -> Path:
        return self.writer.stem

    # -- AccessSink ------------------------------------------------------------------
    def new_tensor(self, row: dict[str, Any]) -> None:
        writer = getattr(self, "writer", None)
        if writer is None:
            self._pending_tensors.append(row)
        else:
            writer.add_tensor(row)

    def access(self, step, micro_step, seq, phase, kind, access, tensor_id, nbytes, time_ns, module_id, layer) -> None:
        self.event_buffer.append((step, micro_step, seq, phase, kind, access, tensor_id, nbytes, time_ns, module_id, layer))

    def flush(self) -> None:
        """Hand buffered events to the writer thread (the buffer object stays the same)."""
        if self.event_buffer:
            self.writer.add_events(self.event_buffer)
            self.event_buffer.clear()
        self.writer.flush()

    def pack(self, kind: int, tensor_id: int, tensor: torch.Tensor) -> Any:
        return tensor

    def unpack(self, kind: int, tensor_id: int, packed: Any) -> torch.Tensor:
        return packed

    def step_end(self, step: int) -> None:
        self.steps_completed = step + 1
        self.flush()  # note: hands a list to the writer thread; no I/O here
        if self.progress is not None:
            self.progress.update(1)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, *, saved_tensor_hooks: bool = True) -> "Recorder":
        self.tracker.attach(saved_tensor_hooks=saved_tensor_hooks)
        if self.routers is not None:
            self.routers.attach()
        return self

    def close(self, **manifest_updates: Any) -> None:
        """Detach and finish the files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.tracker.detach()
        if self.routers is not None:
            self.routers.detach()
        if self.event_buffer:
            self.writer.add_events(self.event_buffer)
            self.event_buffer.clear()
        if self.hints.entries:
            manifest_updates = {MANIFEST_KEY: self.hints.as_manifest(), **manifest_updates}
        self.writer.close(steps=self.steps_completed, **manifest_updates)


@contextlib.contextmanager
def record(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, out: str | os.PathLike[str] = "traces",
           **kwargs: Any) -> Iterator[Recorder]:
    """Record every managed-tensor access of the enclosed training loop to `out`.

    Writes `out/<name>-r<rank>-p<pid>.{events,tensors}.arrow` and `.manifest.json`.
    Steps end at `optimizer.step()`; without an optimizer the trace has one step.
    """
    rec = Recorder(model, optimizer, out, **kwargs).start()
    try:
        yield rec
    except BaseException as exc:
        rec.close(error=f"{type(exc).__name__}: {exc}")
        raise
    else:
        rec.close()

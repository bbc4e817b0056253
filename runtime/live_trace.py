"""The prefetched run's own trace: the managed accesses the store acted on, as it saw them.

`PrefetchConfig(trace_out=DIR)` keeps one. It differs from a recorded trace (runtime.record)
in two ways, both so that `prefetch.simulate.simulate_like_run(report, trace)` replays the
very run it came from:

- only managed events (parameters and saved activations the store moved): gradients and
  optimizer state never reach the store;
- on the simulated device, `time_ns` is the compute the copy engine saw
  (runtime.link.ComputeClock.compute_ns: the device clock less its waits), not wall time;
  on CUDA it is wall time (time.monotonic_ns), as in a recorded trace.

A run whose policy takes router hints (runtime.routers) keeps them under `router_hints`
(runtime.hint_schedule), so its simulation gives each where this run took it.

A learned run served by the daemon also keeps, in the manifest under `daemon_replies`, the
event each daemon reply was read at (predictor.daemon_path.ReplySchedule.as_manifest,
from runtime.daemon_policy.DaemonPolicy), so its simulation reads each reply where this
run read it (docs/traces.md, "A prefetched run's own trace").

Events and tensor rows are kept in memory during the run (one tuple per managed access,
inside the hooks, off the simulated device's clock) and written when the prefetcher closes:
a writer thread during the run would be CPU time the simulated device counts as compute.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from runtime import hint_schedule
from runtime.recorder import unique_stem
from runtime.trace_format import SCHEMA_VERSION
from runtime.trace_writer import TraceWriter, check_output_dir

CLOCK_WALL = "wall: time.monotonic_ns"
DAEMON_REPLIES_KEY = "daemon_replies"
"""Manifest key of the daemon's reply schedule (predictor.daemon_path.MANIFEST_KEY: the same name)."""
CLOCK_COMPUTE = "compute: simulated device clock less its waits (runtime.link.ComputeClock.compute_ns)"


class LiveTrace:
    """Tees the store's AccessSink calls (`new_tensor`, `access`) into lists; `write` makes the trace.

    Install before the tracker is built: the tracker names the parameters in its constructor.
    """

    def __init__(self, store: Any, out: str | os.PathLike[str]):
        self.out = check_output_dir(out)
        self.rows: list[dict[str, Any]] = []
        self.events: list[tuple] = []
        self.clock = CLOCK_WALL
        self.stem: Path | None = None
        self.daemon_replies = False
        """Whether the written trace holds the daemon's reply schedule (manifest `daemon_replies`)."""
        rows, events, managed = self.rows, self.events, store.managed
        inner_tensor, inner_access = store.new_tensor, store.access

        def new_tensor(row: dict[str, Any]) -> None:
            inner_tensor(row)
            rows.append(row)

        def access(step, micro_step, seq, phase, kind, acc, tensor_id, nbytes, time_ns, module_id, layer) -> None:
            inner_access(step, micro_step, seq, phase, kind, acc, tensor_id, nbytes, time_ns, module_id, layer)
            if managed[tensor_id] or kind == 2:  # managed (is_managed), or a managed parameter's gradient (grad_offload)
                events.append((step, micro_step, seq, phase, kind, acc, tensor_id, nbytes, time_ns, module_id, layer))

        store.new_tensor, store.access = new_tensor, access  # type: ignore[method-assign]
        self.now: Callable[[], int] = time.monotonic_ns
        """The clock of the events' time_ns (the prefetcher sets the tracker's), for the hints."""
        self.hints = hint_schedule.HintLog(lambda: len(events), lambda: self.now())
        inner_hint, log = store.hint, self.hints.log

        def hint(want: list[int], skip: list[int]) -> None:
            log(want, skip)
            inner_hint(want, skip)

        store.hint = hint  # type: ignore[method-assign]
        self._store = store

    def write(self, *, name: str, manifest: dict[str, Any], daemon_replies: dict[str, Any] | None = None) -> Path:
        """Write `out/<name>-r<rank>-p<pid>` (the recorder's naming); returns its stem. A row
        preloaded without a size (a learned artifact's table) gets the size the store saw.
        `daemon_replies`: the daemon's reply schedule (ReplySchedule.as_manifest), kept in the manifest."""
        sizes = self._store.nb
        extra = {DAEMON_REPLIES_KEY: daemon_replies} if daemon_replies is not None else {}
        if self.hints.entries:
            extra[hint_schedule.MANIFEST_KEY] = self.hints.as_manifest()
        writer = TraceWriter(unique_stem(self.out, name), {
            "schema_version": SCHEMA_VERSION, "created_unix_s": time.time(), "managed_only": True,
            "time_ns_clock": self.clock, **manifest, **extra})
        for row in sorted(self.rows, key=lambda r: r["tensor_id"]):
            if not row["nbytes"] and row["tensor_id"] < len(sizes):
                row = {**row, "nbytes": int(sizes[row["tensor_id"]] or 0)}
            writer.add_tensor(row)
        writer.add_events(self.events)
        writer.close(steps=(self.events[-1][0] + 1) if self.events else 0)
        self.stem = writer.stem
        self.daemon_replies = daemon_replies is not None
        return writer.stem

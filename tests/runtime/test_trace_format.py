"""Trace files: round trip, versioning, and reading what a crash left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

from runtime.trace_format import EVENTS_SUFFIX, TraceError, find_traces, load_trace
from runtime.trace_writer import TraceWriter, TraceWriterConfig


def _write(stem: Path, steps: int, per_step: int = 10, flush_every: int = 10) -> TraceWriter:
    w = TraceWriter(stem, {"architecture": "toy"}, TraceWriterConfig(flush_every=flush_every))
    for i in range(per_step):
        w.add_tensor(dict(tensor_id=i, key=f"param:w{i}", kind=0, shape=[4], dtype="float32", nbytes=16, module="m", layer=-1))
    for s in range(steps):
        for i in range(per_step):
            w.add_event((s, 0, i, 0, 0, 0, i, 16, s * 100 + i, 0, -1))
        w.flush()
    return w


def test_round_trip(tmp_path):
    """What the writer writes, the reader reads, with the manifest marked complete."""
    w = _write(tmp_path / "t", steps=3)
    w.close()
    t = load_trace(tmp_path / "t.events.arrow")
    assert t.num_events == 30 and t.num_tensors == 10 and not t.truncated
    assert t.manifest["complete"] and t.manifest["num_events"] == 30
    assert t.steps().tolist() == [0, 1, 2]
    # any Arrow reader can open it: no project code needed
    with pa.ipc.open_stream(str(tmp_path / "t.events.arrow")) as r:
        assert r.read_all().num_rows == 30


def test_cut_mid_batch_reads_complete_batches(tmp_path):
    """A file cut inside a batch reads back every complete batch before it, flagged truncated."""
    w = _write(tmp_path / "t", steps=4)
    w.close()
    path = tmp_path / ("t" + EVENTS_SUFFIX)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    t = load_trace(tmp_path / "t")
    assert t.truncated
    assert t.num_events == 30  # three whole steps of ten
    assert t.steps().tolist() == [0, 1, 2]


def test_unclosed_writer_is_truncated_but_readable(tmp_path):
    """A writer never closed (no end-of-stream marker) still reads, flagged truncated."""
    w = _write(tmp_path / "t", steps=2)
    time.sleep(0.3)  # let the writer thread drain
    t = load_trace(tmp_path / "t")
    assert t.truncated and t.num_events == 20
    assert not t.manifest["complete"]
    w.close()


def test_killed_recorder_leaves_readable_trace(tmp_path):
    """SIGKILL during recording leaves a trace readable up to its last complete step."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import time, torch, runtime
        torch.set_num_threads(1)
        m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))
        opt = torch.optim.AdamW(m.parameters())
        with runtime.record(m, opt, out={str(tmp_path / 'out')!r}):
            for i in range(10_000):
                opt.zero_grad(); m(torch.randn(16, 32)).sum().backward(); opt.step()
                if i == 5: print("ready", flush=True)
                time.sleep(0.01)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    (stem,) = find_traces([tmp_path / "out"])
    t = load_trace(stem)
    assert t.truncated
    assert not t.manifest["complete"]
    steps = t.steps()
    assert len(steps) >= 6
    per_step = [int((t.column("step") == s).sum()) for s in steps]
    assert len(set(per_step[1:])) == 1  # whole steps only: flushed at each optimizer step


def test_bad_files_are_clear_errors(tmp_path):
    """Missing, non-Arrow and wrong-version files raise TraceError naming the file."""
    with pytest.raises(TraceError, match="no such trace"):
        find_traces([tmp_path / "nope"])
    with pytest.raises(TraceError, match="no traces"):
        find_traces([tmp_path])
    bad = tmp_path / "x.events.arrow"
    bad.write_bytes(b"not arrow at all")
    with pytest.raises(TraceError, match="x.events.arrow"):
        load_trace(bad)
    w = _write(tmp_path / "v", steps=1)
    w.close()
    sink = pa.OSFile(str(tmp_path / "v.events.arrow"), "wb")
    schema = pa.schema([("step", pa.int32())], metadata={b"prefetch.schema_version": b"99"})
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(pa.RecordBatch.from_pylist([{"step": 0}], schema=schema))
    with pytest.raises(TraceError, match="schema version 99"):
        load_trace(tmp_path / "v")
    w2 = _write(tmp_path / "w", steps=1)
    w2.close()
    (tmp_path / "w.manifest.json").write_text("{broken")
    with pytest.raises(TraceError, match="w.manifest.json"):
        load_trace(tmp_path / "w")

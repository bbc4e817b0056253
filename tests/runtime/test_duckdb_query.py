"""Traces are plain Arrow: a folder of them can be queried with pyarrow + DuckDB alone (docs/traces.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

pytest.importorskip("duckdb")

from runtime.trace_format import Access, load_trace  # noqa: E402

FOLDER = Path(__file__).resolve().parents[2] / "datasets" / "samples" / "moe"  # two traces: train and heldout

# The query of docs/traces.md, run in a separate interpreter that never imports the project.
QUERY = r'''
import glob, json, sys
import duckdb, pyarrow as pa, pyarrow.ipc as ipc

def read(folder, suffix):
    """Every STEM<suffix> under folder (Arrow IPC streams) as one table, with a `trace` column."""
    tables = []
    for path in sorted(glob.glob(f"{folder}/**/*{suffix}", recursive=True)):
        with pa.OSFile(path, "rb") as f:
            t = ipc.open_stream(f).read_all()
        stem = path.rsplit("/", 1)[-1][: -len(suffix)]
        tables.append(t.append_column("trace", pa.array([stem] * t.num_rows)))
    return pa.concat_tables(tables)

events = read(sys.argv[1], ".events.arrow")
tensors = read(sys.argv[1], ".tensors.arrow")
con = duckdb.connect()
per_phase = con.sql("""
    SELECT phase, count(*) AS events FROM events GROUP BY phase ORDER BY phase""").fetchall()
per_layer = con.sql("""
    SELECT t.layer, count(*) AS reads, sum(e.nbytes)::BIGINT AS bytes_read
    FROM events e JOIN tensors t USING (trace, tensor_id)   -- tensor ids are per trace
    WHERE e.access = 0                                      -- reads
    GROUP BY t.layer ORDER BY t.layer""").fetchall()
project = sorted(m for m in sys.modules if m.split(".")[0] in ("runtime", "predictor", "prefetch"))
print(json.dumps({"per_phase": per_phase, "per_layer": per_layer, "project_modules": project}))
'''


def test_trace_files_are_arrow_ipc_streams():
    """Both Arrow files of a trace are IPC streams (continuation marker, no ARROW1 file magic)."""
    for path in sorted(FOLDER.rglob("*.arrow")):
        head = path.read_bytes()[:8]
        assert head[:4] == b"\xff\xff\xff\xff" and not head.startswith(b"ARROW1"), path
        with pa.OSFile(str(path), "rb") as f:
            assert ipc.open_stream(f).read_all().num_rows > 0


def test_duckdb_counts_events_and_bytes_without_the_project():
    """DuckDB over the raw files: events per phase and bytes read per layer match the project's own loader."""
    proc = subprocess.run([sys.executable, "-I", "-c", QUERY, str(FOLDER)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    assert got["project_modules"] == []

    traces = [load_trace(p) for p in sorted(FOLDER.rglob("*.events.arrow"))]
    assert len(traces) == 2
    phases = np.concatenate([t.column("phase") for t in traces])
    expected_phase = [[int(p), int((phases == p).sum())] for p in np.unique(phases)]
    assert got["per_phase"] == expected_phase
    per_layer: dict[int, list[int]] = {}
    for t in traces:
        layer_of = np.zeros(t.num_tensors, np.int64)
        layer_of[t.tensors.column("tensor_id").to_numpy()] = t.tensors.column("layer").to_numpy()
        reads = t.column("access") == int(Access.READ)
        layers = layer_of[t.column("tensor_id")[reads]]
        for layer, nbytes in zip(layers, t.column("nbytes")[reads]):
            acc = per_layer.setdefault(int(layer), [0, 0])
            acc[0] += 1
            acc[1] += int(nbytes)
    assert got["per_layer"] == [[k, *v] for k, v in sorted(per_layer.items())]
    assert len(got["per_layer"]) > 2  # several layers, not one bucket

"""Multi-rank jobs under torchrun (DDP, gloo on CPU): a trace and a report per rank, one daemon per node."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.trace_format import find_traces, load_trace

ROOT = Path(__file__).resolve().parents[2]
DDP = ROOT / "examples" / "train_ddp.py"
TORCHRUN = ["torchrun", "--standalone", "--nproc-per-node", "2"]  # standalone: a free port


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.slow  # four torchrun launches of two ranks: ~60 s on a quiet 2-core machine, ~2 min loaded
def test_ddp_record_train_and_learned_run_bit_identical_per_rank(tmp_path):
    """torchrun 2 ranks with DDP: `prefetch record` gives one trace per rank (rank, world size in the manifest);
    `prefetch train` learns from both; `prefetch run --policy learned --compare` serves both ranks from one daemon,
    writes a report per rank, each bit-identical to the same job all resident; `prefetch report` reads them all."""
    traces, models = tmp_path / "traces", tmp_path / "models"
    proc = _run("-m", "prefetch", "record", "--no-progress", "--out", str(traces), "--", *TORCHRUN, str(DDP),
                "--steps", "4")
    assert proc.returncode == 0, proc.stderr
    stems = find_traces([traces])
    manifests = sorted((load_trace(s).manifest for s in stems), key=lambda m: m["rank"])
    assert [(m["rank"], m["world_size"], m["steps"]) for m in manifests] == [(0, 2, 4), (1, 2, 4)]
    assert sorted(Path(s).name.split("-")[1] for s in stems) == ["r0", "r1"]  # file names by rank

    proc = _run("-m", "prefetch", "train", str(traces), "--out", str(models), "--trees", "10", "--no-progress")
    assert proc.returncode == 0, proc.stderr

    out = tmp_path / "run.json"
    proc = _run("-m", "prefetch", "run", "--policy", f"learned:{models}", "--compare", "--json", str(out), "--",
                *TORCHRUN, str(DDP), "--steps", "4")
    assert proc.returncode == 0, proc.stderr
    reports = [json.loads((tmp_path / f"run.r{r}.json").read_text()) for r in (0, 1)]
    endpoints = set()
    for rank, r in enumerate(reports):
        assert r["rank"] == rank and r["world_size"] == 2
        assert r["losses_identical"] and r["params_identical"] and r["optimizer_state_identical"], r["state_mismatches"]
        assert r["policy_served_by"] == "learned" and r["accesses"] > 0
        assert "ranks reduce them" in r["gradients"]  # DDP's backward reduces p.grad: not offloaded then
        endpoints.add(r["policy_note"].split()[1])
    assert len(endpoints) == 1  # one daemon for the node, one session per rank
    assert proc.stderr.count("sessions_opened': 2") == 1

    proc = _run("-m", "prefetch", "report", str(tmp_path / "run.r0.json"), str(tmp_path / "run.r1.json"),
                "--out", str(tmp_path / "report"), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads((tmp_path / "report" / "report.json").read_text())["summary"]
    assert row["runs"] == 2 and row["params_identical"] is True  # the two ranks, aggregated


@pytest.mark.slow  # one torchrun launch of two ranks: ~15 s
def test_python_api_inside_each_rank(tmp_path):
    """`runtime.prefetching` inside each DDP rank (no launcher): each rank prefetches and writes its own report."""
    proc = _run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(DDP), "--steps",
                "4", "--prefetch", "replay", "--report-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    for rank in (0, 1):
        r = json.loads((tmp_path / f"report.r{rank}.json").read_text())
        assert r["rank"] == rank and r["world_size"] == 2 and r["accesses"] > 0 and r["hits"] + r["late"] > 0


RANK_CLIENT = """
import sys, numpy as np
from predictor.interface import TensorInfo
from runtime.daemon_client import DaemonClient, DaemonClientConfig
n = 4
info = TensorInfo(keys=tuple(f"param:w{i}" for i in range(n)), kinds=np.zeros(n, np.int8),
                  nbytes=np.full(n, 1 << 17, np.int64), layers=np.full(n, -1, np.int16), modules=("m",) * n)
c = DaemonClient(DaemonClientConfig(endpoint=sys.argv[1], architecture="ranks-test", policy="replay"), info).start()
assert c.wait_connected(30)
for i in range(50):
    c.record(i // 8, 0, 0, 0, i % n)
c.flush()
print("connected", flush=True)
import os, signal
os.kill(os.getpid(), signal.SIGKILL)  # a rank dies without a goodbye
"""


def test_node_daemon_survives_a_rank_killed(tmp_path):
    """One daemon for the node: a rank killed mid-session (SIGKILL, no BYE) leaves it serving the other ranks."""
    from runtime.daemon_launch import ping, start_local_daemon

    endpoint, daemon = start_local_daemon(None)
    try:
        script = tmp_path / "rank.py"
        script.write_text(RANK_CLIENT)
        for _ in range(2):  # two ranks in turn, each killed
            proc = _run(str(script), endpoint, timeout=120)
            assert proc.returncode == -9 and "connected" in proc.stdout, proc.stderr
        assert daemon.alive and ping(endpoint, timeout_ms=2000) is not None
        proc = _run(str(script), endpoint, timeout=120)  # a new rank still gets a session
        assert "connected" in proc.stdout, proc.stderr
    finally:
        daemon.stop()

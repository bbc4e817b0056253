"""benchmarks/gpu_check.sh: valid bash, and its dry run (the whole flow, simulated device) passes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
POLICIES = ["none", "replay", "markov", "learned"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def test_gpu_check_is_valid_bash():
    """The script parses (bash -n) and its --help names the dry run."""
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    out = subprocess.run(["bash", str(SCRIPT), "--help"], check=True, capture_output=True, text=True).stdout
    assert "--dry-run" in out


def test_gpu_check_refuses_unknown_option():
    """A mistyped option is one line naming it and exit status 2, before anything runs."""
    p = subprocess.run(["bash", str(SCRIPT), "--dryrun"], capture_output=True, text=True)
    assert p.returncode == 2 and "--dryrun" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0"), reason="a GPU is here")
def test_gpu_check_without_a_gpu_stops_before_setup(tmp_path):
    """Without a GPU the real check stops at once (exit 2, one line), installing nothing."""
    had_venv = (ROOT / ".venv-gpu").exists()
    p = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and "no NVIDIA GPU" in p.stderr and "Traceback" not in p.stderr
    assert (ROOT / ".venv-gpu").exists() == had_venv and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """The dry run records two seeds, trains, runs the four policies on an unseen seed for
    gpt2 and moe (the optimizer on the host), replay again with the optimizer stepping on the
    device, and writes a JSON and Markdown result in which every run is
    bit-identical (losses, parameters, optimizer state) and none is in sample."""
    out = tmp_path / "gpu_check"
    p = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out), "--python", sys.executable],
                       cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    rows = result["rows"]
    expected = [(w, pol) for w in ("gpt2", "moe") for pol in (*POLICIES, "replay (device step)")]
    assert [(r["workload"], r["policy"]) for r in rows] == expected
    assert [r["optimizer"] for r in rows] == ["device" if p.endswith("(device step)") else "host" for _, p in expected]
    for r in rows:
        assert r["device"] == "simulated"
        assert r["losses_identical"] is True and r["params_identical"] is True
        assert r["optimizer_state_identical"] is True
        assert r["in_sample"] is not True and 2 in r["eval_seeds"]
        assert 0 <= r["hit_rate"] <= 1 and r["slowdown"] > 0
    assert result["failed"] == []
    md = (out / "gpu_check.md").read_text()
    assert "Result: all checks passed" in md and md.count("| gpt2 |") == 5 and md.count("| moe |") == 5

"""Recording an unmodified script through `prefetch record --out DIR -- python train.py`."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from runtime.trace_format import find_traces, load_trace

SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 4))
    opt = torch.optim.AdamW(model.parameters())
    steps = int(sys.argv[1])
    for i in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 16)).pow(2).mean().backward()
        opt.step()
    if "--fail" in sys.argv:
        raise RuntimeError("boom at the end")
    print("trained", steps)
""")


def _prefetch(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefetch", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_unmodified_script_is_recorded(tmp_path):
    """A plain script, unchanged, gives a complete trace with its steps, keys and optimizer events."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "traces"
    proc = _prefetch("record", "--no-progress", "--out", str(out), "--", "python", str(script), "4")
    assert proc.returncode == 0, proc.stderr
    assert "trained 4" in proc.stdout  # the script's own arguments and output pass through
    (stem,) = find_traces([out])
    t = load_trace(stem)
    assert t.manifest["complete"] and t.manifest["steps"] == 4 and not t.truncated
    assert t.steps().tolist() == [0, 1, 2, 3]
    keys = set(t.keys)
    assert {"param:0.weight", "param:2.bias", "grad:0.weight", "opt:2.weight:exp_avg"} <= keys
    assert any(k.startswith("act:") for k in keys)
    per_step = [int((t.column("step") == s).sum()) for s in range(4)]
    assert len(set(per_step)) == 1


def test_script_that_raises(tmp_path):
    """A script that raises: non-zero exit, a one-line error naming it, and the trace kept."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = _prefetch("record", "--no-progress", "--out", str(tmp_path / "o"), "--", "python", str(script), "2", "--fail")
    assert proc.returncode != 0
    assert f"script {script} raised RuntimeError: boom at the end" in proc.stderr
    (stem,) = find_traces([tmp_path / "o"])
    t = load_trace(stem)
    assert t.manifest["steps"] == 2 and "boom" in t.manifest["error"]


def test_bad_invocations_are_one_line_errors(tmp_path):
    """A missing script, a non-Python command and an unwritable output folder fail clearly."""
    proc = _prefetch("record", "--out", str(tmp_path / "o"), "--", "python", str(tmp_path / "missing.py"))
    assert proc.returncode == 2 and "missing.py not found" in proc.stderr
    proc = _prefetch("record", "--out", str(tmp_path / "o"), "--", "bash", "x.sh")
    assert proc.returncode == 2 and "can only record Python scripts" in proc.stderr
    blocker = tmp_path / "afile"
    blocker.write_text("")
    proc = _prefetch("record", "--out", str(blocker / "sub"), "--", "python", "x.py")
    assert proc.returncode == 2 and "afile" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

"""Running an unmodified script with prefetching: `prefetch run [--compare] -- python train.py`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prefetch.cli import CommandError
from prefetch.script_run import compare_states, parse_command, rank_files

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "train_tiny.py"

HEADER = textwrap.dedent("""
    import os, sys, time, torch
    torch.set_num_threads(1)
    torch.manual_seed(0)
    def mlp():
        return torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128))
""")


def _prefetch(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefetch", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def _launch(tmp_path: Path, body: str, *opts: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, dict | None]:
    """The child launcher on an inline script; (process, its JSON report or None)."""
    script = tmp_path / "train.py"
    script.write_text(HEADER + textwrap.dedent(body))
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "runtime.run_launch", "--json", str(out), *opts, "--", str(script)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


@pytest.mark.slow  # two launches of a script: ~25 s on a loaded 2-core machine
def test_train_tiny_from_the_cli_is_bit_identical(tmp_path):
    """`prefetch run --compare -- python examples/train_tiny.py`: prefetched, managed accesses hit, and the losses,
    parameters and optimizer state equal the all-resident run's bit for bit."""
    out = tmp_path / "tiny.json"
    proc = _prefetch("run", "--compare", "--json", str(out), "--", "python", str(TINY), "--steps", "5")
    assert proc.returncode == 0, proc.stderr
    assert "final loss" in proc.stdout  # the script's own output passes through
    r = json.loads(out.read_text())
    assert r["workload"] == "train_tiny" and r["managed_model"] == "TinyMLP" and r["managed_optimizer"] == "AdamW"
    assert r["losses_identical"] and r["params_identical"] and r["optimizer_state_identical"], r["state_mismatches"]
    assert r["steps"] == 4 and r["optimizer_steps"] == 5 and r["accesses"] > 0 and r["hits"] + r["late"] > 0
    assert r["budget_bytes"] < r["managed_bytes"]  # offloaded for real: a 40% budget, fixed after step 0
    assert r["bytes_d2h"]["gradient"] > 0  # gradients left as backward produced them (hooks from step 1)
    assert "bit-identical" in proc.stderr  # the summary line


def test_compare_states_flags_each_part():
    """A differing loss, parameter or optimizer tensor clears exactly its flag and is named."""
    ref = {"loss_digests": ["a", "b"], "state": {"model:w": "1", "optimizer:state.exp_avg[w]": "2"}}
    assert all(v in (True, []) for v in compare_states(ref, ref).values())
    other = {"loss_digests": ["a", "c"], "state": {"model:w": "9", "optimizer:state.exp_avg[w]": "2"}}
    got = compare_states(ref, other)
    assert not got["losses_identical"] and not got["params_identical"] and got["optimizer_state_identical"]
    assert got["state_mismatches"] == ["model:w"]


def test_script_that_never_steps_says_nothing_was_prefetched(tmp_path):
    """No optimizer.step(): exit 0, and a note saying no training step ran so nothing was prefetched."""
    proc, r = _launch(tmp_path, """
        model = mlp()
        for _ in range(2):
            model(torch.randn(64, 128)).sum().backward()
    """)
    assert proc.returncode == 0, proc.stderr
    assert r["optimizer_steps"] == 0 and r["prefetch_issued"] == 0
    assert any("no optimizer.step()" in n and "nothing was prefetched" in n for n in r["notes"])
    assert "nothing was prefetched" in proc.stderr


def test_second_model_and_optimizer_are_named_not_managed(tmp_path):
    """Two models, two optimizers: the first of each is managed, the report names the others."""
    proc, r = _launch(tmp_path, """
        class Teacher(torch.nn.Linear):
            pass
        student, teacher = mlp(), Teacher(128, 128)
        opt = torch.optim.SGD(student.parameters(), lr=0.1)
        opt_t = torch.optim.Adam(teacher.parameters())
        for _ in range(3):
            x = torch.randn(64, 128)
            loss = student(x).pow(2).mean() + teacher(x).pow(2).mean()
            loss.backward()
            opt.step(); opt_t.step(); opt.zero_grad(); opt_t.zero_grad()
    """)
    assert proc.returncode == 0, proc.stderr
    assert r["managed_model"] == "Sequential" and r["managed_optimizer"] == "SGD"
    assert r["unmanaged_models"] == ["Teacher"] and r["unmanaged_optimizers"] == ["Adam"]
    assert r["optimizer_steps"] == 3 and r["steps"] == 2 and r["accesses"] > 0  # steps: after the warm-up


def test_a_closure_script_is_adopted_and_prefetched(tmp_path):
    """A script stepping with optimizer.step(closure) (as Lightning does): its first forward runs
    inside the first step, the model and optimizer are still adopted, and every closure runs before
    the store's pre-step work (runtime.closure_step)."""
    proc, r = _launch(tmp_path, """
        model = mlp()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(4):
            x = torch.randn(64, 128)
            def closure():
                opt.zero_grad()
                loss = model(x).pow(2).mean()
                loss.backward()
                return loss
            opt.step(closure)
    """)
    assert proc.returncode == 0, proc.stderr
    assert r["managed_model"] == "Sequential" and r["managed_optimizer"] == "AdamW"
    assert r["optimizer_steps"] == 4 and r["closures_run_first"] == 4 and r["accesses"] > 0


def test_budget_below_largest_tensor_refused_before_training(tmp_path):
    """An absolute budget below the largest parameter: exit 2, one line, before the first forward ran."""
    proc, r = _launch(tmp_path, """
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(64, 128)
        out = model(x)
        print("FORWARD DONE", flush=True)
    """, "--budget", "1000")
    assert proc.returncode == 2
    assert "below the largest managed tensor" in proc.stderr and "Traceback" not in proc.stderr
    assert "FORWARD DONE" not in proc.stdout and r is None


@pytest.mark.parametrize("args, message", [
    (["--policy", "nonsense"], "--policy"),
    (["--policy", "learned:/nonexistent/models"], "model folder /nonexistent/models not found"),
    (["--budget", "-3"], "budget"),
])
def test_bad_flags_refused_before_the_script_starts(tmp_path, args, message):
    """Unknown policy, missing model folder, bad budget: exit 2, one line, and the script never ran."""
    marker = tmp_path / "ran"
    script = tmp_path / "train.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    proc = _prefetch("run", *args, "--", "python", str(script))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_script_exit_code_passes_through_with_report(tmp_path):
    """The script's own sys.exit(5) is the launcher's exit code; the report is written anyway."""
    proc, r = _launch(tmp_path, """
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            model(torch.randn(64, 128)).pow(2).mean().backward(); opt.step(); opt.zero_grad()
        sys.exit(5)
    """)
    assert proc.returncode == 5 and r["exit_code"] == 5 and r["steps"] == 2


def test_interrupted_script_still_reports(tmp_path):
    """SIGINT mid-training: exit 130 and the report up to there."""
    script = tmp_path / "train.py"
    ready = tmp_path / "ready"
    script.write_text(HEADER + textwrap.dedent(f"""
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for i in range(100000):
            model(torch.randn(64, 128)).pow(2).mean().backward(); opt.step(); opt.zero_grad()
            if i == 3:
                open({str(ready)!r}, "w").write("x")
            time.sleep(0.01)
    """))
    out = tmp_path / "report.json"
    # A terminal's Ctrl-C: SIGINT at its default in the child, whatever this process inherited (a
    # background job of a non-interactive shell ignores SIGINT, and an ignored signal stays ignored
    # across exec; the launcher, like Python, then respects that and never sees the interrupt).
    proc = subprocess.Popen([sys.executable, "-m", "runtime.run_launch", "--json", str(out), "--", str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 90
        while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert ready.exists(), proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    r = json.loads(out.read_text())
    assert r["exit_code"] == 130 and "interrupted" in r["error"] and r["optimizer_steps"] >= 4


def test_torchrun_command_is_split_at_the_script(tmp_path):
    """torchrun's options (valued or not, `=` forms) stay torchrun's; the launcher goes before the script."""
    script = tmp_path / "t.py"
    script.write_text("")
    cmd = parse_command(["torchrun", "--standalone", "--nproc-per-node", "2", "--master-port=1234", str(script),
                         "--lr", "3"], "run")
    assert cmd.torchrun_opts == ["--standalone", "--nproc-per-node", "2", "--master-port=1234"]
    argv = cmd.argv("runtime.run_launch", ["--policy", "replay"])
    assert argv[1:3] == ["-m", "torch.distributed.run"]
    assert argv[-7:] == ["-m", "runtime.run_launch", "--policy", "replay", "--", str(script), "--lr", "3"][-7:]
    assert parse_command(["torchrun", "-m", "pkg.train", "--x"], "run").target == ["-m", "pkg.train", "--x"]
    with pytest.raises(CommandError, match="non-Python"):
        parse_command(["torchrun", "--no-python", "bash"], "run")
    with pytest.raises(CommandError, match="not found"):
        parse_command(["torchrun", "--nproc-per-node", "2", str(tmp_path / "missing.py")], "run")


def test_rank_files_in_rank_order(tmp_path):
    """Per-rank files are found by rank number (r10 after r2), a single file as itself."""
    for r in (0, 2, 10):
        (tmp_path / f"run.r{r}.json").write_text("{}")
    assert [p.name for p in rank_files(tmp_path / "run.json")] == ["run.r0.json", "run.r2.json", "run.r10.json"]
    (tmp_path / "one.json").write_text("{}")
    assert rank_files(tmp_path / "one.json") == [tmp_path / "one.json"]

"""`prefetch run`: the report, the bit-identity checks that must catch a stale tensor, and refusals before any step."""

from __future__ import annotations

import json

import pytest
import torch

import prefetch.run as run_mod
from prefetch.cli import main
from prefetch.run import IDENTITY_KEYS, run_workload
from runtime.device import SimCopy, SimulatedDevice
from runtime.store import TensorStore

WORKLOAD = "vit"  # the quickest reference workload to build and step
DESIGN_KEYS = {
    "policy", "device", "link", "managed_bytes", "budget_bytes", "peak_device_bytes", "steps", "warmup_steps",
    "accesses", "hits", "late", "misses", "hit_rate", "stall_s", "bytes_copied", "prefetch_issued",
    "prefetch_used", "accuracy", "step_time_s", "baseline_step_time_s", "slowdown", *IDENTITY_KEYS,
}


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["run", "--workload", WORKLOAD, "--steps", "2", "--no-progress", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_run_report_keys_and_identity(tmp_path, capsys):
    """`prefetch run --json` writes the DESIGN.md report with all three identity flags True, and exits 0."""
    rc, out, _ = _cli(capsys, "--policy", "replay", "--json", str(tmp_path / "r.json"))
    r = json.loads((tmp_path / "r.json").read_text())
    assert rc == 0, out
    assert DESIGN_KEYS <= set(r)
    assert all(r[k] is True for k in IDENTITY_KEYS) and r["state_mismatches"] == []
    assert r["device"] == "simulated" and r["workload"] == WORKLOAD and r["steps"] == 1
    assert r["hits"] + r["late"] + r["misses"] == r["accesses"] > 0
    assert r["peak_device_bytes"] <= r["budget_bytes"] < r["managed_bytes"]
    summary, split = out.splitlines()[-2:]
    assert "bit-identical" in summary
    o = r["overhead"]  # the slowdown's extra time, split (runtime.overhead); the same figures printed
    assert o["extra_s"] == pytest.approx((r["slowdown"] - 1) * r["baseline_step_time_s"])
    assert o["unattributed_s"] == pytest.approx(o["extra_s"] - o["stall_s"] - o["bookkeeping_s"] - o["emulation_s"])
    # the split's stall: reads' stalls and the backward's waits for gradient copies
    assert o["stall_s"] == pytest.approx((r["stall_s"] + r["grad_wait_s"]) / r["steps"]) and o["managed_accesses"] > 0
    assert split.strip().startswith("per step:") and f"stall {1e3 * o['stall_s']:.2f}" in split
    assert len(r["step_slowdowns"]) == 2 and r["step_slowdowns"][1] == pytest.approx(r["slowdown"], abs=1e-4)
    assert "guard_decided_step" not in r  # replay: no guard


def test_slowdown_after_the_guard_decided():
    """The steady state of a guarded run: the median of the measured steps from the decision
    on; nothing without a decision, None with fewer than 3 steps left."""
    ratios = [2.0, 1.5, 1.4, 1.3, 1.1, 1.0, 1.2]
    assert run_mod._after_guard(ratios, None, 1) == {}
    assert run_mod._after_guard(ratios, 4, 1) == {"guard_decided_step": 4, "slowdown_after_guard": 1.1}
    assert run_mod._after_guard(ratios, 0, 2) == {"guard_decided_step": 0, "slowdown_after_guard": 1.2}  # from the warm-up's end
    assert run_mod._after_guard(ratios, 5, 1)["slowdown_after_guard"] is None


def _serve_stale_copies(monkeypatch) -> None:
    """Inject a stale tensor: every later copy of a host tensor hands back its first copy's
    values (as if device copies were never refreshed after the optimizer updated the master)."""
    first: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
    stale_key: dict[SimCopy, tuple[int, tuple[int, ...]]] = {}  # SimCopy is slotted: marks live here
    copy_in, wait = SimulatedDevice.copy_in, SimulatedDevice.wait

    def stale_copy_in(self, host):
        c = copy_in(self, host)
        if isinstance(host, torch.Tensor):
            stale_key[c] = (host.data_ptr(), tuple(host.shape))
        return c

    def stale_wait(self, c):
        t, waited = wait(self, c)
        key = stale_key.get(c)
        return (first.setdefault(key, t) if key is not None else t), waited

    monkeypatch.setattr(SimulatedDevice, "copy_in", stale_copy_in)
    monkeypatch.setattr(SimulatedDevice, "wait", stale_wait)


def test_stale_device_copy_is_caught(monkeypatch, tmp_path, capsys):
    """A stale parameter copy makes params_identical False, names the tensors, and the command exits 1."""
    _serve_stale_copies(monkeypatch)
    rc, out, _ = _cli(capsys, "--policy", "replay", "--json", str(tmp_path / "r.json"))
    r = json.loads((tmp_path / "r.json").read_text())
    assert rc == 1
    assert r["params_identical"] is False and r["losses_identical"] is False
    assert r["optimizer_state_identical"] is False  # the moments saw gradients of stale weights
    assert r["state_mismatches"] and all(n.startswith(("model:", "optimizer:")) for n in r["state_mismatches"])
    assert "NOT bit-identical" in out.splitlines()[-2]  # the last line is the overhead split


def test_wrong_activation_in_the_last_backward_is_caught_by_state_not_losses(monkeypatch, tmp_path, capsys):
    """Activations fetched back wrong in the last step's backward leave every loss equal; the state check catches it (exit 1)."""
    steps_done = {"n": 0}
    step_end, copy_in, wait = TensorStore.step_end, SimulatedDevice.copy_in, SimulatedDevice.wait

    def counting_step_end(self, step):
        steps_done["n"] += 1
        return step_end(self, step)

    corrupt: set[SimCopy] = set()

    def marking_copy_in(self, host):
        c = copy_in(self, host)
        if isinstance(host, SimCopy) and steps_done["n"] == 1:  # a write-back fetched again, last step
            corrupt.add(c)
        return c

    def corrupting_wait(self, c):
        t, waited = wait(self, c)
        return (t * 1.5 if c in corrupt else t), waited

    monkeypatch.setattr(TensorStore, "step_end", counting_step_end)
    monkeypatch.setattr(SimulatedDevice, "copy_in", marking_copy_in)
    monkeypatch.setattr(SimulatedDevice, "wait", corrupting_wait)
    rc, out, _ = _cli(capsys, "--policy", "replay", "--json", str(tmp_path / "r.json"))  # 2 steps: the last is step 1
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["losses_identical"] is True
    assert r["params_identical"] is False and r["optimizer_state_identical"] is False
    assert rc == 1 and "NOT bit-identical: params, optimizer_state" in out.splitlines()[-2]


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a training pass (all-resident, recorded or the budget probe) starts."""
    def boom(*a, **k):
        raise AssertionError("a training pass ran before the input was refused")

    monkeypatch.setattr(run_mod, "_plain", boom)
    monkeypatch.setattr(run_mod, "Recorder", boom)


REFUSED = [
    (["--policy", "bogus"], "--policy: unknown policy 'bogus'"),
    (["--policy", "oracle"], "only in the simulator"),
    (["--policy", "learned:"], "learned needs a model folder"),
    (["--policy", "learned:/nonexistent/models"], "model folder /nonexistent/models not found"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--budget", "2.0"], "--budget '2.0' is ambiguous"),
    (["--budget", "lots"], "budget 'lots'"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--steps", "1"], "--steps (1) must exceed"),
]


@pytest.mark.parametrize("args, message", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_bad_flags_refused_before_any_step(args, message, no_training, capsys):
    """Each bad flag is one line on stderr naming it, exit code 2, and no training step has run."""
    rc, out, err = _cli(capsys, *args)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("prefetch run: error: ") and message in err, err


def test_learned_folder_without_a_predictor_refused(tmp_path, no_training, capsys):
    """learned: on a folder holding no trained predictor is refused up front, not run as a replay labelled learned."""
    rc, _, err = _cli(capsys, "--policy", f"learned:{tmp_path}")
    assert rc == 2 and "holds no trained predictor" in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_refused(no_training, capsys):
    """--device cuda without CUDA is a one-line error (it was an AssertionError), before any step."""
    rc, _, err = _cli(capsys, "--device", "cuda")
    assert rc == 2 and "--device cuda: CUDA is not available" in err and err.count("\n") == 1


@pytest.mark.parametrize("budget", ["1KiB", "0.001"])
def test_budget_below_largest_tensor_refused_after_one_probe_step(budget, monkeypatch, capsys):
    """A budget below the largest managed tensor is refused after one probe step, before the all-resident and recorded passes."""
    def boom(*a, **k):
        raise AssertionError("the all-resident pass ran before the budget was refused")

    monkeypatch.setattr(run_mod, "_plain", boom)
    rc, out, err = _cli(capsys, "--budget", budget)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert f"--budget {budget}:" in err and "below the largest managed tensor" in err and "param:" in err


def test_a_named_router_that_is_not_one_is_refused_before_the_passes(monkeypatch, capsys):
    """--routers naming a module that is not a router: one line saying which and why, before the all-resident pass."""
    def boom(*a, **k):
        raise AssertionError("the all-resident pass ran before the router was refused")

    monkeypatch.setattr(run_mod, "_plain", boom)
    rc, out, err = _cli(capsys, "--routers", "vit.layers.0.attention")
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "router 'vit.layers.0.attention': it has no 2-D weight" in err

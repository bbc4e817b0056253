"""`prefetch demo`: the evaluation protocol end to end (tiny steps), in-sample refusal, stale tensors caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from predictor.policies import POLICIES
from prefetch.cli import main
from prefetch.demo import DemoConfig, DemoError, run_demo

# One static workload that builds fast; 3 live steps (1 warm-up); 3 training steps per seed (2 give
# too few examples for a usable model).
TINY = ["--workloads", "llama", "--steps", "3", "--train-steps", "3", "--no-plots", "--no-progress"]


def _table_rows(stdout: str, workload: str) -> dict[str, list[str]]:
    """policy -> cells of the summary table printed on stdout."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith(f"| {workload} | "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[1]] = cells
    return rows


@pytest.fixture
def stale_device(monkeypatch):
    """Inject a stale tensor: the simulated device serves the first value it ever copied from a host tensor."""
    from runtime.device import SimulatedDevice

    first: dict[tuple, torch.Tensor] = {}
    real = SimulatedDevice.copy_in

    def copy_in(self, host):
        if not isinstance(host, torch.Tensor):
            return real(self, host)
        key = (host.data_ptr(), tuple(host.shape), host.dtype)
        if key not in first:
            first[key] = host.clone()
        return real(self, first[key])

    monkeypatch.setattr(SimulatedDevice, "copy_in", copy_in)


@pytest.mark.slow
def test_quick_demo_protocol_end_to_end(tmp_path, capsys):
    """--quick with tiny steps: every policy on unseen seeds only, learned never in sample, oracle beside sim only."""
    out = tmp_path / "demo"
    rc = main(["demo", "--quick", *TINY, "--seeds", "2,3", "--sweep-workloads", "llama", "--out", str(out)])
    captured = capsys.readouterr()
    stdout = captured.out
    assert rc == 0, captured.err[-3000:]
    doc = json.loads((out / "results.json").read_text())
    assert doc["protocol"]["train_seeds"] == [0, 1] and doc["protocol"]["eval_seeds"] == [2, 3]
    # training data: the training seeds only
    recorded = sorted(p.parent.name for p in (out / "traces" / "llama").glob("*/*.manifest.json"))
    assert recorded == ["seed0", "seed1"]
    runs = doc["runs"]
    assert sorted((r["policy"].partition(":")[0], r["seed"]) for r in runs) == sorted(
        (p, s) for p in POLICIES for s in (2, 3))
    for r in runs:
        assert r["losses_identical"] is True and r.get("params_identical") is not False
        assert r["simulated_hit_rate"] is not None and r["simulated_oracle_hit_rate"] is not None
    for r in (r for r in runs if r["policy"].startswith("learned")):
        assert r.get("in_sample") is not True
        assert r.get("train_seeds", [0, 1]) == [0, 1]
    # the oracle: one simulated report per live trace, never in a live column
    assert sorted((o["workload"], o["seed"]) for o in doc["oracle"]) == [("llama", 2), ("llama", 3)]
    # the budget sweep replays an unseen trace
    assert doc["sweep"] and {s["seed"] for s in doc["sweep"]} == {2}
    assert {s["policy"].partition(":")[0] for s in doc["sweep"]} == {*POLICIES, "oracle"}
    # the printed table: every policy with hit rate, stall, slowdown; learned states its seeds; one fastest
    rows = _table_rows(stdout, "llama")
    assert set(rows) == {*POLICIES, "*oracle (sim)*"}
    head = [c.strip() for c in next(ln for ln in stdout.splitlines() if ln.startswith("| workload")).strip("|").split("|")]
    col = {h: i for i, h in enumerate(head)}
    for p in POLICIES:
        cells = rows[p]
        assert cells[col["seeds"]].startswith("2,3")
        assert "%" in cells[col["hit rate"]] and "[" in cells[col["hit rate"]]  # median [min-max]
        assert "x [" in cells[col["slowdown"]] and cells[col["stall s"]] != "n/a"
        assert cells[col["identical loss/param/optim"]].startswith("yes/")
        assert "NO" not in cells[col["identical loss/param/optim"]]
    assert "trained 0,1" in rows["learned"][col["seeds"]]
    assert rows["learned"][col["policy"]] == "learned"  # served by the learned model, not a fallback
    assert sum("fastest" in cells[col["slowdown"]] for cells in rows.values()) == 1
    oracle = rows["*oracle (sim)*"]
    assert oracle[col["hit rate"]] == "-" and oracle[col["slowdown"]] == "-" and "%" in oracle[col["sim hit rate"]]
    assert (out / "report" / "report.md").is_file() and (out / "eval.json").is_file()
    assert {t["seed"] for t in json.loads((out / "eval.json").read_text())["traces"]} == {2, 3}


def test_demo_catches_a_stale_tensor(tmp_path, capsys, stale_device):
    """A device that serves stale copies makes the demo report not-identical state and exit 1."""
    out = tmp_path / "stale"
    rc = main(["demo", *TINY, "--seeds", "2", "--policies", "replay", "--no-sweep", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    assert "not bit-identical" in captured.err
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert run["losses_identical"] is False or run["params_identical"] is False
    assert run["params_identical"] is False  # whatever the losses, the final parameters are compared
    cells = _table_rows(captured.out, "llama")["replay"]
    assert "**NO**" in " ".join(cells)
    assert "Not bit-identical" in (out / "report" / "report.md").read_text()


@pytest.mark.slow
def test_demo_refuses_an_in_sample_learned_run(tmp_path):
    """Trained and evaluated on the same seed (seed check off), the learned report is in sample: DemoError."""
    cfg = DemoConfig(out=tmp_path / "ins", workloads=("llama",), steps=3, train_steps=3, train_seeds=(2,),
                     eval_seeds=(2,), policies=(f"learned:{tmp_path / 'ins' / 'models'}",), sweep_workloads=(),
                     progress=False, check_seeds=False)
    with pytest.raises(DemoError, match="in sample"):
        run_demo(config=cfg)
    assert not (tmp_path / "ins" / "report").exists()  # nothing was reported


def test_overlapping_seeds_rejected_up_front(tmp_path, capsys):
    """--seeds overlapping --train-seeds is a one-line error (exit 2) before anything runs."""
    rc = main(["demo", "--out", str(tmp_path / "x"), "--train-seeds", "0,1", "--seeds", "1,2"])
    err = capsys.readouterr().err
    assert rc == 2 and "overlap (1)" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kwargs, match", [
    (dict(workloads=("nope",)), "nope"),
    (dict(steps=1), "--steps"),
    (dict(train_steps=1), "--train-steps"),
    (dict(eval_seeds=()), "--seeds"),
    (dict(eval_seeds=(2, 2)), "repeated"),
    (dict(budget=0.0), "--budget"),
    (dict(sweep_workloads=("moe",), workloads=("gpt2",)), "--sweep-workloads"),
])
def test_config_rejects_bad_values(tmp_path, kwargs, match):
    """DemoConfig validates every knob with an error naming the flag."""
    with pytest.raises((ValueError, LookupError), match=match):
        DemoConfig(out=tmp_path, **kwargs)


def test_bad_seed_list_is_a_usage_error(tmp_path, capsys):
    """A non-integer seed list is an argparse error naming the flag."""
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path), "--seeds", "2,x"])
    assert exc.value.code == 2 and "--seeds" in capsys.readouterr().err


def test_default_protocol_is_disjoint():
    """The defaults train on 0,1 and evaluate on 2,3,4 (>= 3 seeds for a spread)."""
    cfg = DemoConfig(out=Path("unused"))
    assert cfg.train_seeds == (0, 1) and cfg.eval_seeds == (2, 3, 4)
    assert not set(cfg.train_seeds) & set(cfg.eval_seeds)
    assert [p.partition(":")[0] for p in cfg.policies] == list(POLICIES)  # the registry, learned last


def _run_all(monkeypatch):
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "run_all.py"
    spec = importlib.util.spec_from_file_location("run_all_under_test", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_run_all_follows_the_protocol(tmp_path, monkeypatch):
    """benchmarks/run_all.py plans its live and offline runs on the unseen seeds only, and refuses a training seed."""
    ra = _run_all(monkeypatch)
    plan = ra.Plan(out=tmp_path, models=tmp_path / "m", quick=True, workloads=["gpt2", "moe"],
                   policies=["none", f"learned:{tmp_path / 'm'}"], steps=4, seeds=(2, 3, 4))
    live = ra.plan_live(plan)
    seeds = [int(c.argv[c.argv.index("--seed") + 1]) for c in live]
    assert len(live) == 2 * 2 * 3 and sorted(set(seeds)) == [2, 3, 4]
    offline = ra.plan_offline_eval(plan)
    assert all(c.argv[c.argv.index("--seed") + 1] == "2" for c in offline if "record" in c.argv)
    assert offline[-1].argv[3] == "eval"
    assert ra.sample_seeds(["datasets/samples/gpt2/train", "datasets/samples/gpt2/heldout"]) == [0, 1]
    protocol = ra.eval_protocol("2,3,4")
    assert protocol["train_seeds"] == [0, 1] and protocol["eval_seeds"] == [2, 3, 4]
    assert any(t.endswith("/heldout") for t in protocol["train_traces"])  # seed 1 is training data now
    with pytest.raises(SystemExit, match="never recorded for training"):
        ra.eval_protocol("1,2")

"""runtime.run_report: one typed report for the live run and the simulator, read back key for key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prefetch.report import write_report
from prefetch.report_inputs import ReportError
from prefetch.sim_report import SimReport
from prefetch.simulate import simulate
from runtime.link import LinkModel
from runtime.prefetcher import prefetching
from runtime.run_report import DESIGN_KEYS, ReportFormatError, RunReport

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "datasets" / "samples"

DESIGN_MD_KEYS = {  # DESIGN.md, "The JSON report of `simulate` and `run`": at least these
    "policy", "device", "link", "managed_bytes", "budget_bytes", "peak_device_bytes", "steps", "warmup_steps",
    "accesses", "hits", "late", "misses", "hit_rate", "stall_s", "bytes_copied", "prefetch_issued",
    "prefetch_used", "accuracy", "step_time_s", "baseline_step_time_s", "slowdown",
}
LIVE_KEYS = DESIGN_MD_KEYS | {  # what Prefetcher.report() has written since before RunReport
    "policy_served_by", "managed_kinds", "min_managed_bytes", "persistent_bytes", "bytes_written_back",
    "prefetch_refused", "evictions", "budget_overflows", "stale_copies", "dirty_writebacks", "adopted_params",
    "warmup", "overhead",
    "bytes_h2d", "bytes_d2h", "grad_wait_s", "grad_moves", "grad_holds",  # issue 15: traffic by direction and kind
    "optimizer", "optimizer_wait_s",  # issue 15: where the optimizer ran and why, its copies' waits
    "ahead_share", "prefetch_held",  # the tier's prefetch window
    "router_hints", "hint_cancelled",  # router hints (runtime.routers)
    "early_step", "early_stepped",  # host stepping: what the next step reads first steps first (DeviceTier.early_params)
}
SIM_KEYS = DESIGN_MD_KEYS | {  # what SimReport.as_dict() has written since before RunReport
    "lookahead", "budget", "budget_fraction", "events", "coverage", "stall_ns", "bytes_written_back", "evictions",
    "prefetch_requested", "prefetch_refused", "overcommits", "budget_overflows", "write_stall_s",
    "optimizer_wait_s", "warmup", "trace",
    "bytes_h2d", "bytes_d2h", "grad_wait_s", "grad_moves", "grad_holds",  # issue 15: traffic by direction and kind
    "ahead_share", "prefetch_held",  # the tier's prefetch window
    "router_hints", "hint_cancelled",  # router hints (runtime.routers)
    "early_step", "early_stepped",  # host stepping: what the next step reads first steps first (DeviceTier.early_params)
}


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(128, 256) for _ in range(3))
        self.out = torch.nn.Linear(256, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(sum(torch.relu(b(x)) for b in self.blocks))


@pytest.fixture(scope="module")
def live() -> RunReport:
    """A tiny real prefetching run (simulated device, replay, 4 steps)."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with prefetching(model, opt, policy="replay", budget=0.5, device="simulated",
                     link=LinkModel(bandwidth_bytes_per_s=2e9), baseline_step_time_s=0.01) as pf:
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(32, 128)).pow(2).mean().backward()
            opt.step()
    rep = pf.run_report()
    assert pf.report() == rep.as_dict()
    return rep


@pytest.fixture(scope="module")
def simulated() -> SimReport:
    return simulate(SAMPLES / "gpt2" / "heldout", "replay")


def test_design_keys_are_design_md_list():
    """The keys from_dict requires are exactly DESIGN.md's report keys."""
    assert set(DESIGN_KEYS) == DESIGN_MD_KEYS


def test_live_report_keys_and_round_trip(live):
    """A live run's report has the keys it always had, and from_dict(as_dict()) gives it back unchanged."""
    d = json.loads(json.dumps(live.as_dict()))
    assert set(d) == LIVE_KEYS
    assert live.live is not None and live.stats.accesses > 0 and live.steps == 3
    back = RunReport.from_dict(d, source="live.json")
    assert back == live and back.extra == {}
    assert back.as_dict() == d and list(back.as_dict()) == list(d)


def test_simulator_report_keys_and_round_trip(simulated):
    """The simulator's report is a RunReport with the keys it always had; it reads back key for key."""
    assert isinstance(simulated, RunReport) and simulated.simulated
    d = json.loads(json.dumps(simulated.as_dict()))
    assert set(d) == SIM_KEYS
    assert simulated.slowdown == pytest.approx(simulated.measured_ns / simulated.baseline_ns)
    back = RunReport.from_dict(d, source="sim.json")
    assert back.as_dict() == d and list(back.as_dict()) == list(d)
    assert back.stats == simulated.stats and back.warmup == simulated.warmup


def test_combined_simulator_report_round_trips():
    """Several traces: the summed report and its per-trace reports read back, oracle variant included."""
    rep = simulate([SAMPLES / "gpt2" / "heldout", SAMPLES / "vit" / "heldout"], "oracle")
    d = json.loads(json.dumps(rep.as_dict()))
    back = RunReport.from_dict(d, source="sim.json")
    assert len(back.traces) == 2 and back.variant is not None
    assert back.as_dict() == d


def test_unknown_keys_kept_in_extra(live):
    """Keys a caller adds (prefetch run's losses, threads) are kept in `extra` and written back."""
    d = {**live.as_dict(), "threads": 2, "losses": [1.0, 0.5], "trace": None}
    back = RunReport.from_dict(d, source="run.json")
    assert back.extra == {"threads": 2, "losses": [1.0, 0.5], "trace": None}
    assert back.as_dict() == d


def test_sections_read_back_typed(live):
    """Identity, provenance, CUDA and the demo's keys land in their typed fields and are written back."""
    d = {**live.as_dict(), "losses_identical": True, "params_identical": False, "optimizer_state_identical": True,
         "state_mismatches": ["model:out.weight"], "train_seeds": [0, 1], "eval_seeds": [2], "in_sample": False,
         "in_sample_reason": "disjoint seeds", "cuda_timed_waits": 3, "simulated_hit_rate": 0.75, "seed": 2,
         "demo_train_seeds": [0, 1]}
    back = RunReport.from_dict(d, source="run.json")
    assert back.identity is not None and back.identity.params_identical is False
    assert back.identity.state_mismatches == ["model:out.weight"]
    assert back.in_sample is False and back.provenance["train_seeds"] == [0, 1]
    assert back.cuda == {"cuda_timed_waits": 3} and back.simulated_hit_rate == 0.75 and back.seed == 2
    assert back.extra == {}
    assert back.as_dict() == d


@pytest.mark.parametrize("key,value,message", [
    ("hits", None, "report key 'hits' is missing"),
    ("budget_bytes", "40%", "report key 'budget_bytes' must be an integer or null, got '40%'"),
    ("link", 3, "report key 'link' must be an object or null"),
    ("stall_s", True, "report key 'stall_s' must be a number"),
])
def test_bad_key_is_one_line_error_naming_file_and_key(simulated, tmp_path, key, value, message):
    """A report missing a key, or with a wrong type, is one line naming the file and the key."""
    d = simulated.as_dict()
    if value is None:
        del d[key]
    else:
        d[key] = value
    path = tmp_path / "bad-run.json"
    path.write_text(json.dumps({"runs": [d]}))
    with pytest.raises(ReportError) as exc:
        write_report([path], tmp_path / "out", plots=False)
    assert str(path) in str(exc.value) and message in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ReportFormatError, match=f"^x.json \\(replay\\): {message}"):
        RunReport.from_dict(d, source="x.json")


def test_report_reads_real_producers(live, simulated, tmp_path):
    """`prefetch report` tables a live report beside the simulator's oracle, from their JSON alone."""
    run = {**live.as_dict(), "workload": "gpt2", "simulated_hit_rate": 0.5}
    oracle = {**simulate(SAMPLES / "gpt2" / "heldout", "oracle").as_dict(), "workload": "gpt2"}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"runs": [run], "oracle": [oracle], "sweep": [simulated.as_dict()]}))
    rows = json.loads(write_report([path], tmp_path / "out", plots=False)["json"].read_text())["rows"]
    assert [(r["workload"], r["policy"]) for r in rows] == [("gpt2", "replay"), ("gpt2", "oracle (sim)")]
    assert rows[0]["hit_rate"] == pytest.approx(live.hit_rate) and rows[0]["served_by"] == "replay"
    assert rows[0]["sim_vs_oracle_pt"] == pytest.approx(100 * (0.5 - oracle["hit_rate"]))
    assert rows[0]["bookkeeping_ms"] == pytest.approx(1e3 * live.live.overhead["bookkeeping_s"])

"""The whole flow in one command: record -> train per architecture -> run -> report.

    prefetch demo --out out/demo             # what `make demo` runs (~5 min on 2 cores)
    prefetch demo --out out/demo --quick     # gpt2 and moe only, fewer steps

1. records every reference workload twice: a training run (seed 0) and a held-out run
   (seed 1);
2. trains one predictor per architecture on the training runs and evaluates it
   offline on the held-out runs;
3. runs each workload live with `none`, `replay`, `markov` and `learned` at the budget
   (default 0.4) on the available device (CUDA, else the simulated device), each
   against the same steps all resident (losses compared bit for bit);
4. simulates each run's own trace with the `oracle` (the bound) and with the run's
   policies (the live-vs-simulated check), and sweeps budgets in the simulator;
5. writes results.json and the report (Markdown, JSON, PNGs, one Perfetto timeline)
   and prints the table.

Knobs that make it faster or bigger: --workloads, --steps (live steps per run),
--train-steps, --policies, --budget, --link-ratio; model sizes are in
prefetch/workloads/.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

ALL_WORKLOADS = ("gpt2", "llama", "vit", "moe", "accum-eval", "layerdrop", "generate-train")
QUICK_WORKLOADS = ("gpt2", "moe")
BASE_POLICIES = ("none", "replay", "markov")
SWEEP_BUDGETS = (0.2, 0.3, 0.4, 0.6, 0.8, 1.0)


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _machine() -> dict[str, Any]:
    import platform

    import lightgbm
    import zmq

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "lightgbm": lightgbm.__version__,
        "pyzmq": zmq.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "simulated (no CUDA)",
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - the zoo extra is required for the demo
        pass
    return info


def run_demo(out: str | Path, *, workloads: Sequence[str] = ALL_WORKLOADS, steps: int = 12,
             train_steps: int = 16, heldout_steps: int = 8, policies: Sequence[str] | None = None,
             budget: float = 0.4, link_ratio: float = 0.5, sweep: bool = True, progress: bool = True) -> dict[str, Any]:
    """Run the mission end to end into `out`; returns the results document."""
    from predictor.evaluate import evaluate
    from predictor.train import TrainConfig, train
    from prefetch.recording import record_workload
    from prefetch.report import write_report
    from prefetch.run import run_policies
    from prefetch.simulate import simulate  # noqa: F401  (imported up front: fail before the long part)
    from prefetch.workloads import get_workload
    from runtime.trace_format import load_traces

    out = Path(out)
    for w in workloads:
        get_workload(w)  # unknown names fail before anything runs
    t_start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    models = out / "models"
    policies = list(policies) if policies is not None else [*BASE_POLICIES, f"learned:{models}"]

    _say(f"1/5 recording {len(workloads)} workloads: {train_steps} training steps (seed 0) + {heldout_steps} held-out (seed 1)")
    for w in workloads:
        for split, seed, n in (("train", 0, train_steps), ("heldout", 1, heldout_steps)):
            folder = out / "traces" / w / split
            for old in folder.glob("*"):
                old.unlink()
            record_workload(w, n, folder, seed=seed, progress=progress)

    _say("2/5 training one predictor per architecture")
    if any(p.startswith("learned:") for p in policies):
        train([out / "traces" / w / "train" for w in workloads], models, TrainConfig(), progress=progress)
        evaluation = evaluate(str(models), load_traces([out / "traces" / w for w in workloads], managed_only=True),
                              progress=progress)
        (out / "eval.json").write_text(json.dumps(evaluation, indent=2, default=str))

    _say(f"3/5 running each workload live with {', '.join(p.partition(':')[0] for p in policies)} "
         f"at budget {budget} (device: {'cuda' if torch.cuda.is_available() else 'simulated'})")
    runs: list[dict[str, Any]] = []
    for i, w in enumerate(workloads):
        reports = run_policies(w, policies, steps=steps, budget=budget, seed=0, link_ratio=link_ratio,
                               trace_out=out / "runs" / w, timeline_dir=out / "timelines" if i == 0 else None,
                               progress=progress)
        runs.extend(reports)
        for r in reports:
            (out / "runs" / f"{w}-{r['policy'].partition(':')[0]}.json").write_text(json.dumps(r, indent=2, default=str))

    _say("4/5 simulating each run's trace: the oracle bound, the same policies, a budget sweep")
    oracle, simulated, sweep_rows = _simulate(out, workloads, runs, policies, budget, link_ratio, sweep)

    doc = {"machine": _machine(), "budget": budget, "link_ratio": link_ratio, "steps": steps,
           "workloads": list(workloads), "runs": runs, "oracle": oracle, "simulated": simulated,
           "sweep": sweep_rows, "elapsed_s": time.monotonic() - t_start}
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=str))

    _say("5/5 writing the report")
    learned_runs = [r for r in runs if r["policy"].startswith("learned")]
    timeline_run = f"{learned_runs[0]['workload']}/learned" if learned_runs else None
    written = write_report([out / "results.json"], out / "report", title="prefetch demo", timeline_run=timeline_run)
    doc["report"] = {k: str(v) for k, v in written.items()}
    _say(f"done in {time.monotonic() - t_start:.0f} s: {out / 'report' / 'report.md'}")
    return doc


def _simulate(out: Path, workloads, runs, policies, budget, link_ratio, sweep) -> tuple[list, list, list]:
    from prefetch.simulate import simulate
    from runtime.link import LinkModel
    from runtime.trace_format import find_traces

    oracle, simulated, sweep_rows = [], [], []
    for w in workloads:
        w_runs = [r for r in runs if r["workload"] == w]
        if not w_runs:
            continue
        stems = find_traces([out / "runs" / w])
        first = w_runs[0]
        link = None
        if first.get("link"):
            link = LinkModel(bandwidth_bytes_per_s=first["link"]["bandwidth_GBps"] * 1e9,
                             latency_s=first["link"]["latency_us"] / 1e6)
        kw = dict(budget=first["budget_bytes"], link=link, warmup_steps=first["warmup_steps"])
        rep = simulate(stems, "oracle", **kw).as_dict()
        rep["workload"] = w
        oracle.append(rep)
        for r in w_runs:
            sim = simulate(stems, r["policy"], **kw).as_dict()
            sim["workload"] = w
            simulated.append(sim)
            r["simulated_hit_rate"] = sim["hit_rate"]
        if sweep:
            for b in SWEEP_BUDGETS:
                for p in [*policies, "oracle"]:
                    s = simulate(stems, p, budget=b, link_ratio=link_ratio, warmup_steps=first["warmup_steps"]).as_dict()
                    sweep_rows.append({"workload": w, "policy": p, "budget": b, "hit_rate": s["hit_rate"],
                                       "slowdown": s["slowdown"]})
    return oracle, simulated, sweep_rows

"""The whole flow in one command, under one evaluation protocol: record -> train -> run -> report.

    prefetch demo --out out/demo             # what `make demo` runs (all 7 workloads)
    prefetch demo --out out/demo --quick     # gpt2 and moe only

The protocol (issue 9): the learned model never sees the runs it is scored on.
1. records every reference workload on the TRAINING seeds (default 0 and 1);
2. trains one predictor per architecture on those traces only;
3. runs every workload live on each EVALUATION seed (default 2, 3, 4; disjoint from the
   training seeds) with every registered policy (`none`, `replay`, ... and `learned`), each against the same
   job all resident (losses, parameters and optimizer state compared bit for bit);
4. evaluates the learned model offline on those unseen runs' traces, and simulates the
   trace recorded from each run's seed with the same policies and the `oracle` (simulated figures are
   only ever compared with simulated figures of the same trace), plus a budget sweep on
   an unseen trace;
5. writes results.json and the report (prefetch.report), and prints the table: per
   workload and policy the median over the evaluation seeds with min-max, the oracle in
   its own row, the fastest policy marked.

A learned report flagged `in_sample` (its evaluated run overlaps its training data) is
an error: the demo refuses to report it and exits non-zero. A report without the flag is
shown as "in-sample: not reported" (the seeds are disjoint by construction, but the run
itself could not confirm it).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from predictor.policies import baseline_names
from prefetch.machine import machine_info
from prefetch.workloads import WORKLOADS
from runtime.link import DEFAULT_LINK_RATIO

ALL_WORKLOADS = tuple(WORKLOADS)
"""Every reference workload, in the registry's order (static ones first)."""
QUICK_WORKLOADS = ("gpt2", "moe")
"""--quick: one static workload and the dynamic one the learned policy is built for."""
BASE_POLICIES = baseline_names()  # every registered policy that needs no model folder
SWEEP_BUDGETS = (0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
TRAIN_SEEDS = (0, 1)
EVAL_SEEDS = (2, 3, 4)
WARMUP_STEPS = 1
STEPS, TRAIN_STEPS = 6, 8
"""Live steps per run and recorded steps per training seed: all 7 workloads in under 10 minutes on
2 CPU cores (about 6 min of CPU measured; docs/usage.md)."""
QUICK_STEPS, QUICK_TRAIN_STEPS = 8, 12
"""--quick (gpt2 and moe): more steps per run, under 4 minutes."""
IDENTITY_KEYS = ("losses_identical", "params_identical", "optimizer_state_identical")
"""Bit-identity of the prefetched run with its all-resident twin (prefetch.run)."""


class DemoError(RuntimeError):
    """The demo cannot report what it measured (an in-sample learned run, a stale tensor)."""


@dataclass(kw_only=True)
class DemoConfig:
    """What `prefetch demo` runs; validated before anything is recorded."""

    out: Path
    """Output folder: traces/, models/, runs/, results.json, report/."""
    workloads: tuple[str, ...] = ALL_WORKLOADS
    """Reference workloads, in table order."""
    steps: int = STEPS
    """Live steps per run (the first is warm-up)."""
    train_steps: int = TRAIN_STEPS
    """Recorded steps per training seed and workload."""
    train_seeds: tuple[int, ...] = TRAIN_SEEDS
    """Seeds recorded for training the learned model."""
    eval_seeds: tuple[int, ...] = EVAL_SEEDS
    """Seeds of the live runs; never recorded for training."""
    policies: tuple[str, ...] | None = None
    """Live policies; default every registered baseline (none, replay, ...) and learned:OUT/models."""
    budget: float = 0.4
    """Device budget, a fraction of the managed bytes."""
    link_ratio: float = DEFAULT_LINK_RATIO
    """Simulated device: time to copy every managed byte once / all-resident step time."""
    sweep_workloads: tuple[str, ...] | None = None
    """Workloads whose first evaluation trace gets a simulated budget sweep (default: all)."""
    plots: bool = True
    """Write the report's PNG plots (matplotlib; a few seconds)."""
    progress: bool = True
    """Progress bars on stderr."""
    check_seeds: bool = True
    """Refuse overlapping training and evaluation seeds up front. False only to test that an
    in-sample learned run is caught downstream (by its report's `in_sample`)."""
    say: Callable[[str], None] = field(default=None, repr=False)  # type: ignore[assignment]
    """Where the phase lines go (default: stderr, timestamped)."""

    def __post_init__(self) -> None:
        from prefetch.workloads import get_workload

        self.out = Path(self.out)
        self.workloads = tuple(self.workloads)
        if not self.workloads:
            raise ValueError("--workloads: name at least one workload")
        for w in self.workloads:
            get_workload(w)  # an unknown name fails before anything runs
        if self.steps <= WARMUP_STEPS:
            raise ValueError(f"--steps must exceed the {WARMUP_STEPS} warm-up step, got {self.steps}")
        if self.train_steps < 2:
            raise ValueError(f"--train-steps must be >= 2, got {self.train_steps}")
        self.train_seeds, self.eval_seeds = tuple(self.train_seeds), tuple(self.eval_seeds)
        for flag, seeds in (("--train-seeds", self.train_seeds), ("--seeds", self.eval_seeds)):
            if not seeds:
                raise ValueError(f"{flag}: name at least one seed")
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"{flag}: a seed is repeated ({','.join(map(str, seeds))})")
        overlap = sorted(set(self.train_seeds) & set(self.eval_seeds))
        if overlap and self.check_seeds:
            raise ValueError(f"--seeds and --train-seeds overlap ({','.join(map(str, overlap))}): the learned model "
                             "would be scored on its own training runs")
        if not 0 < self.budget <= 1:
            raise ValueError(f"--budget must be in (0, 1], got {self.budget}")
        if self.link_ratio <= 0:
            raise ValueError(f"--link-ratio must be > 0, got {self.link_ratio}")
        if self.policies is None:
            self.policies = (*BASE_POLICIES, f"learned:{self.out / 'models'}")
        self.policies = tuple(self.policies)
        if self.sweep_workloads is None:
            self.sweep_workloads = self.workloads
        unknown = [w for w in self.sweep_workloads if w not in self.workloads]
        if unknown:
            raise ValueError(f"--sweep-workloads: {', '.join(unknown)} not among --workloads")
        if self.say is None:
            self.say = _say

    @property
    def learned(self) -> bool:
        return any(p.startswith("learned:") for p in self.policies)

    def protocol(self) -> dict[str, Any]:
        """The protocol as results.json and the report state it."""
        return {"train_seeds": list(self.train_seeds), "eval_seeds": list(self.eval_seeds),
                "train_steps": self.train_steps, "steps": self.steps, "warmup_steps": WARMUP_STEPS,
                "budget": self.budget, "link_ratio": self.link_ratio,
                "policies": [p.partition(":")[0] for p in self.policies],
                "summary": "median over the evaluation seeds with min-max; learned trained on the training seeds "
                           "only; simulated figures (oracle included) replay the trace recorded (all resident) from the same seed"}


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _label(policy: str) -> str:
    return policy.partition(":")[0]


def check_learned(report: dict[str, Any], where: str) -> None:
    """Raise DemoError when a learned report says its evaluation is in sample."""
    if _label(str(report.get("policy", ""))) != "learned":
        return
    if report.get("in_sample") is True:
        raise DemoError(f"{where}: the learned policy was evaluated in sample "
                        f"(train seeds {report.get('train_seeds')}, eval seeds {report.get('eval_seeds')}"
                        + (f"; {report['in_sample_reason']}" if report.get("in_sample_reason") else "")
                        + "): refusing to report it")


def identity_failures(runs: Sequence[dict[str, Any]]) -> list[str]:
    """'workload seed N policy: key, key' for every run whose state is not bit-identical."""
    bad = []
    for r in runs:
        keys = [k for k in IDENTITY_KEYS if r.get(k) is False]
        if keys:
            bad.append(f"{r.get('workload')} seed {r.get('seed')} {_label(str(r.get('policy')))}: {', '.join(keys)}")
    return bad


def run_demo(out: str | Path | None = None, *, config: DemoConfig | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run the protocol end to end into `out`; returns the results document (see module doc).

    Raises DemoError (after writing what was measured) when a learned run is in sample."""
    from predictor.evaluate import evaluate
    from predictor.train import TrainConfig, train
    from prefetch.guard_prior_fit import fit_priors
    from prefetch.recording import record_workload
    from prefetch.report import write_report
    from prefetch.run import run_policies
    from runtime.trace_format import load_traces

    import torch  # here, not at import: `prefetch --help` loads this module's defaults

    cfg = config or DemoConfig(out=Path(out), **kwargs)
    importlib.import_module("prefetch.simulate")  # a broken simulator fails here, not after the live runs
    say, out = cfg.say, cfg.out
    t_start = time.monotonic()
    phases: dict[str, float] = {}
    t_phase = [t_start]

    def done(name: str) -> None:  # wall seconds per phase, into results.json
        now = time.monotonic()
        phases[name] = round(now - t_phase[0], 1)
        t_phase[0] = now
    out.mkdir(parents=True, exist_ok=True)
    models = out / "models"
    seeds_txt = f"training seeds {_seeds(cfg.train_seeds)}, evaluation seeds {_seeds(cfg.eval_seeds)}"

    say(f"1/5 recording {len(cfg.workloads)} workload(s) on the training seeds {_seeds(cfg.train_seeds)}, "
        f"{cfg.train_steps} steps each")
    train_dirs = []
    for w in cfg.workloads:
        for seed in cfg.train_seeds:
            folder = out / "traces" / w / f"seed{seed}"
            _empty(folder)
            record_workload(w, cfg.train_steps, folder, seed=seed, progress=cfg.progress)
            train_dirs.append(folder)
    done("record")

    if cfg.learned:
        say("2/5 training one predictor per architecture on the training seeds only")
        _empty(models, recursive=True)
        folders = train(train_dirs, models, TrainConfig(), progress=cfg.progress, log=say)
        fit_priors(folders, train_dirs, progress=cfg.progress, log=say)  # the guard's prior, held-out steps
    else:
        say("2/5 no learned policy: nothing to train")
    done("train")

    say(f"3/5 running each workload live with {', '.join(_label(p) for p in cfg.policies)} at budget {cfg.budget} "
        f"on the evaluation seeds {_seeds(cfg.eval_seeds)} "
        f"(device: {'cuda' if torch.cuda.is_available() else 'simulated'})")
    runs: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"machine": machine_info(), "protocol": cfg.protocol(), "budget": cfg.budget,
                           "link_ratio": cfg.link_ratio, "steps": cfg.steps, "workloads": list(cfg.workloads),
                           "runs": runs, "oracle": [], "simulated": [], "sweep": [], "phase_s": phases}
    try:
        for i, w in enumerate(cfg.workloads):
            for j, seed in enumerate(cfg.eval_seeds):
                run_dir = out / "runs" / w / f"seed{seed}"
                _empty(run_dir)
                reports = run_policies(w, list(cfg.policies), steps=cfg.steps, budget=cfg.budget, seed=seed,
                                       link_ratio=cfg.link_ratio, warmup_steps=WARMUP_STEPS, trace_out=run_dir,
                                       timeline_dir=out / "timelines" if i == 0 and j == 0 else None,
                                       progress=cfg.progress)
                for r in reports:
                    r.setdefault("seed", seed)
                    r["demo_train_seeds"] = list(cfg.train_seeds)
                    (out / "runs" / f"{w}-seed{seed}-{_label(r['policy'])}.json").write_text(
                        json.dumps(r, indent=2, default=str))
                    check_learned(r, f"{w} seed {seed}")
                runs.extend(reports)
                say(f"  {w} seed {seed}: " + ", ".join(
                    f"{_label(r['policy'])} hit {r['hit_rate']:.1%} x{r['slowdown']:.2f}" for r in reports))
        done("live")

        if cfg.learned:
            say("4/5 offline evaluation of the learned model on the evaluation seeds' traces (unseen runs)")
            traces = load_traces([out / "runs" / w for w in cfg.workloads], managed_only=True)
            evaluation = evaluate(str(models), traces, progress=cfg.progress)
            (out / "eval.json").write_text(json.dumps(evaluation, indent=2, default=str))
            for t in evaluation.get("traces", []):
                check_learned({"policy": "learned", **t}, f"offline evaluation of {t.get('trace')}")
            doc["offline_eval"] = _offline_summary(evaluation)
            done("offline_eval")
        say("4/5 simulating the recorded trace of each run's seed: the same policies and the oracle; a budget sweep")
        _simulate(cfg, runs, doc)
        done("simulate")
    finally:
        doc["elapsed_s"] = time.monotonic() - t_start
        (out / "results.json").write_text(json.dumps(doc, indent=2, default=str))

    say("5/5 writing the report")
    learned_runs = [r for r in runs if _label(r["policy"]) == "learned" and r.get("timeline")]
    timeline_run = f"{learned_runs[0]['workload']}/learned" if learned_runs else None
    written = write_report([out / "results.json"], out / "report", title=f"prefetch demo ({seeds_txt})",
                           timeline_run=timeline_run, plots=cfg.plots)
    doc["report"] = {k: str(v) for k, v in written.items()}
    doc["identity_failures"] = identity_failures(runs)
    done("report")
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=str))  # with the report's phase time
    say("phases (wall s): " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()))
    say(f"done in {time.monotonic() - t_start:.0f} s: {out / 'report' / 'report.md'}")
    return doc


def _seeds(seeds: Sequence[int]) -> str:
    return ",".join(str(s) for s in seeds)


def _empty(folder: Path, recursive: bool = False) -> None:
    """Remove a previous demo's files from `folder` (the recorder refuses a non-empty one)."""
    import shutil

    if recursive and folder.is_dir():
        shutil.rmtree(folder)
        return
    for old in folder.glob("*"):
        if old.is_file():
            old.unlink()


def _offline_summary(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """Per trace: scope, seed and recall of each policy (the full document is eval.json)."""
    rows = []
    for t in evaluation.get("traces", []):
        rows.append({"workload": t.get("workload"), "seed": t.get("seed"), "scope": t.get("scope"),
                     "in_sample": t.get("in_sample"),
                     "recall": {p: v.get("recall") for p, v in (t.get("policies") or {}).items()}})
    return rows


def _simulate(cfg: DemoConfig, runs: list[dict[str, Any]], doc: dict[str, Any]) -> None:
    """Simulated figures, each on the trace of the live run it sits beside."""
    from prefetch.simulate import simulate, simulate_like_run

    for w in cfg.workloads:
        for seed in cfg.eval_seeds:
            w_runs = [r for r in runs if r["workload"] == w and r.get("seed") == seed]
            if not w_runs:
                continue
            trace = w_runs[0]["trace"]
            rep = simulate_like_run(w_runs[0], trace, policy="oracle").as_dict()
            rep.update(workload=w, seed=seed)
            doc["oracle"].append(rep)
            for r in w_runs:
                sim = simulate_like_run(r, trace).as_dict()
                sim.update(workload=w, seed=seed)
                check_learned(sim, f"simulated {w} seed {seed}")
                doc["simulated"].append(sim)
                r["simulated_hit_rate"] = sim["hit_rate"]
                r["simulated_slowdown"] = sim.get("slowdown")
                r["simulated_oracle_hit_rate"] = rep["hit_rate"]
            if w in cfg.sweep_workloads and seed == cfg.eval_seeds[0]:
                for b in SWEEP_BUDGETS:
                    for p in [*cfg.policies, "oracle"]:
                        s = simulate(trace, p, budget=b, link_ratio=cfg.link_ratio,
                                     warmup_steps=WARMUP_STEPS).as_dict()
                        doc["sweep"].append({"workload": w, "seed": seed, "trace": str(trace), "policy": p,
                                             "budget": b, "hit_rate": s["hit_rate"], "slowdown": s["slowdown"],
                                             "in_sample": s.get("in_sample")})
                        check_learned({**s, "policy": p}, f"sweep {w} seed {seed} budget {b}")


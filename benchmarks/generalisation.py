"""The generalisation suite (issue 11, item 5): generated architectures, learned vs the baselines, unseen seed.

    python benchmarks/generalisation.py [--quick] [--seeds 1000-1019] [--steps 12] [--budget 0.4]
        [--train-seeds 0,1] [--out out/benchmarks/generalisation] [--json out/benchmarks/generalisation.json]

Per generated architecture (prefetch.workloads.generated, generator seeds 1000..1019 by
default; 0..99 are the tuning seeds, refused here unless --tuning, so what is reported
was never tuned on): record run seeds 0 and 1 (--train-seeds; the recorder, as
`runtime.record` does), train a model on those traces (predictor.train, one folder per
architecture; four runs did no better than two: docs/predictor.md), then
evaluate on run seed 2, which the model never saw (the provenance `in_sample` is printed
and must be False):
  - live on the simulated device (budget 0.4, link ratio 0.5): none, replay, markov and
    learned (`learned:DIR`, served by the daemon as a live run serves it), one prefetched
    run each (prefetch.live_vs_sim.live_run); slowdown is the device clock's
    (compute + waits) / compute over the measured steps;
  - in the simulator on seed 2's recorded trace (all resident), with each live run's
    budget and link (prefetch.simulate.simulate_like_run): the same four, plus the oracle
    (simulator only).
The table gives, per architecture, the hit rates, learned's stall and slowdown against
the best baseline's, `learned - best` (best of none, replay, markov; live and simulated)
and `oracle - learned` (simulated). The summary: the share of architectures where learned
>= the best baseline, where learned < none, and the mean gap to the oracle; issue 11's
targets are >= 90%, none, and <= 5 pt. One torch thread; the load is printed: on a loaded
machine the live figures move (stalls are slept in wall time), the simulated ones do not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from common import load_average, machine_info, markdown_table, write_json  # noqa: E402
from runtime.link import DEFAULT_LINK_RATIO  # noqa: E402

TRAIN_SEEDS = (0, 1)
"""Run seeds recorded for training, per architecture (--train-seeds)."""
EVAL_SEED = 2
"""The run seed evaluated: never recorded for training."""
BASELINES = ("none", "replay", "markov")
TARGETS = {"share_learned_ge_best": 0.9, "learned_below_none": 0, "oracle_gap_pt": 5.0}
"""Issue 11's targets for the suite."""
QUICK_ARCHS = 5


def parse_seeds(text: str) -> list[int]:
    """'1000-1019' or '1000,1003,1007' (or a mix) -> sorted unique ints; ValueError names the bad part."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, sep, hi = part.partition("-")
        try:
            out.update(range(int(lo), int(hi) + 1) if sep else [int(part)])
        except ValueError:
            raise ValueError(f"--seeds: {part!r} is not a seed or a range A-B") from None
    if not out or min(out) < 0:
        raise ValueError(f"--seeds: {text!r} names no seeds >= 0")
    return sorted(out)


def evaluate_architecture(gen_seed: int, *, steps: int, budget: float, link_ratio: float, out: Path,
                          warmup: int = 1, train_seeds: tuple[int, ...] = TRAIN_SEEDS,
                          routers: str = "auto") -> dict[str, Any]:
    """Record, train, and evaluate one architecture live and simulated (module docstring); one result dict."""
    from predictor.train import TrainConfig, train
    from prefetch.guard_prior_fit import fit_priors
    from prefetch.live_vs_sim import _baseline, _recorded, live_run
    from prefetch.recording import record_workload
    from prefetch.simulate import simulate_like_run
    from prefetch.workloads.generated import generate, workload_for

    arch = generate(gen_seed)
    workload = workload_for(arch)
    base = out / arch.name
    t0 = time.monotonic()
    train_dirs = []
    for seed in train_seeds:
        train_dirs.append(base / f"train-seed{seed}")
        record_workload(workload, steps, train_dirs[-1], seed=seed, progress=False)
    t_record = time.monotonic() - t0
    models = base / "models"
    folders = train(train_dirs, models, TrainConfig(num_threads=1), progress=False, log=lambda *a, **k: None)
    fit_priors(folders, train_dirs, progress=False, log=lambda *a, **k: None)  # as `prefetch train` does
    t_train = time.monotonic() - t0 - t_record

    baseline = _baseline(workload, EVAL_SEED, steps, warmup)
    reference, recorded = _recorded(workload, EVAL_SEED, steps, base / "eval-recorded", routers=routers)
    live: dict[str, dict[str, Any]] = {}
    sim: dict[str, dict[str, Any]] = {}
    in_sample = None
    for policy in (*BASELINES, f"learned:{models}"):
        label = policy.partition(":")[0]
        report, _ = live_run(workload, policy, seed=EVAL_SEED, steps=steps, budget=budget, link_ratio=link_ratio,
                             warmup=warmup, baseline=baseline, reference=reference, out=base / f"live-{label}",
                             routers=routers)
        live[label] = report
        s = simulate_like_run(report, recorded).as_dict()
        sim[label] = s
        if label == "learned":
            in_sample = {"live": report.get("in_sample"), "sim": s.get("in_sample")}
    sim["oracle"] = simulate_like_run(live["none"], recorded, policy="oracle", daemon=False).as_dict()
    # the learned model without its guard (predictor.guard), simulated as the live run was
    sim["learned-alone"] = simulate_like_run(live["learned"], recorded, guard=False).as_dict()
    t_total = time.monotonic() - t0

    def pick(r: dict[str, Any], slowdown_key: str) -> dict[str, Any]:
        return {"hit_rate": r["hit_rate"], "stall_s": r["stall_s"], "slowdown": r.get(slowdown_key),
                "bytes_copied": r.get("bytes_copied")}

    row = {
        "gen_seed": gen_seed, "name": arch.name, "arch": arch.describe(), "features": arch.features(),
        "live": {k: pick(v, "clock_slowdown") for k, v in live.items()},
        "sim": {k: pick(v, "slowdown") for k, v in sim.items()},
        "in_sample": in_sample, "seconds": {"record": t_record, "train": t_train, "total": t_total},
        "guard": live["learned"].get("policy_note"),  # which candidate served from which step, live
    }
    row.update(summarise_row(row))
    return row


def summarise_row(row: dict[str, Any]) -> dict[str, Any]:
    """learned - best baseline (live, sim, points), oracle - learned (sim), learned < none, and which baseline is best."""
    out: dict[str, Any] = {}
    for where in ("live", "sim"):
        hits = {p: row[where][p]["hit_rate"] for p in (*BASELINES, "learned")}
        best = max(BASELINES, key=lambda p: hits[p])  # first wins ties: none, replay, markov
        out[f"best_{where}"] = best
        out[f"learned_minus_best_{where}_pt"] = 100 * (hits["learned"] - hits[best])
        out[f"learned_below_none_{where}"] = hits["learned"] < hits["none"]
    out["oracle_minus_learned_sim_pt"] = 100 * (row["sim"]["oracle"]["hit_rate"] - row["sim"]["learned"]["hit_rate"])
    return out


def distribution(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The suite's summary over architectures (live and simulated), against issue 11's targets."""
    n = len(rows)
    out: dict[str, Any] = {"architectures": n}
    for where in ("live", "sim"):
        diffs = [r[f"learned_minus_best_{where}_pt"] for r in rows]
        out[where] = {
            "share_learned_ge_best": sum(d >= 0 for d in diffs) / n,
            "learned_below_none": sum(r[f"learned_below_none_{where}"] for r in rows),
            "learned_minus_best_pt_median": statistics.median(diffs),
            "learned_minus_best_pt_min": min(diffs),
            "learned_minus_best_pt_max": max(diffs),
            "learned_stall_over_min_baseline": statistics.median(
                r[where]["learned"]["stall_s"] / max(min(r[where][p]["stall_s"] for p in BASELINES), 1e-9)
                for r in rows),
        }
    alone = [r["sim"]["learned-alone"] for r in rows]
    out["sim"]["alone_share_learned_ge_best"] = sum(
        a["hit_rate"] >= max(r["sim"][p]["hit_rate"] for p in BASELINES) for a, r in zip(alone, rows)) / n
    out["sim"]["alone_stall_over_min_baseline"] = statistics.median(
        a["stall_s"] / max(min(r["sim"][p]["stall_s"] for p in BASELINES), 1e-9) for a, r in zip(alone, rows))
    gaps = [r["oracle_minus_learned_sim_pt"] for r in rows]
    out["sim"]["oracle_gap_pt_mean"] = statistics.fmean(gaps)
    out["sim"]["oracle_gap_pt_max"] = max(gaps)
    return out


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def print_tables(rows: list[dict[str, Any]], dist: dict[str, Any]) -> None:
    pols = (*BASELINES, "learned")
    print(markdown_table(
        ["arch", "features", *[f"{p} live/sim %" for p in pols], "learned alone sim %", "oracle sim %",
         "learned-best live pt", "learned-best sim pt", "oracle-learned pt", "in sample"],
        [[r["name"], r["arch"], *[f"{_pct(r['live'][p]['hit_rate'])}/{_pct(r['sim'][p]['hit_rate'])}" for p in pols],
          _pct(r["sim"]["learned-alone"]["hit_rate"]), _pct(r["sim"]["oracle"]["hit_rate"]),
          f"{r['learned_minus_best_live_pt']:+.1f} ({r['best_live']})", f"{r['learned_minus_best_sim_pt']:+.1f} ({r['best_sim']})",
          f"{r['oracle_minus_learned_sim_pt']:+.1f}",
          "/".join(str(v) for v in (r["in_sample"] or {}).values())] for r in rows],
    ))
    print()
    print(markdown_table(
        ["arch", *[f"{p} stall ms live/sim" for p in pols], "learned alone stall ms sim", "oracle stall ms sim",
         *[f"{p} slowdown live/sim" for p in pols], "oracle slowdown sim"],
        [[r["name"], *[f"{1e3 * r['live'][p]['stall_s']:.0f}/{1e3 * r['sim'][p]['stall_s']:.0f}" for p in pols],
          f"{1e3 * r['sim']['learned-alone']['stall_s']:.0f}", f"{1e3 * r['sim']['oracle']['stall_s']:.0f}",
          *[f"{r['live'][p]['slowdown']:.2f}/{r['sim'][p]['slowdown']:.2f}" for p in pols],
          f"{r['sim']['oracle']['slowdown']:.2f}"] for r in rows],
    ))
    print()
    lv, sm = dist["live"], dist["sim"]
    print(markdown_table(
        ["", "live", "simulated", "target (issue 11)"],
        [["learned >= best baseline (share of archs)", f"{lv['share_learned_ge_best']:.0%}",
          f"{sm['share_learned_ge_best']:.0%}", ">= 90%"],
         ["learned < none (archs)", lv["learned_below_none"], sm["learned_below_none"], "0"],
         ["learned - best baseline, pt: median [min, max]",
          f"{lv['learned_minus_best_pt_median']:+.1f} [{lv['learned_minus_best_pt_min']:+.1f}, {lv['learned_minus_best_pt_max']:+.1f}]",
          f"{sm['learned_minus_best_pt_median']:+.1f} [{sm['learned_minus_best_pt_min']:+.1f}, {sm['learned_minus_best_pt_max']:+.1f}]", ""],
         ["learned stall / smallest baseline stall (median)", f"{lv['learned_stall_over_min_baseline']:.2f}",
          f"{sm['learned_stall_over_min_baseline']:.2f}", "<= 1.05"],
         ["without the guard: learned >= best baseline", "", f"{sm['alone_share_learned_ge_best']:.0%}", ""],
         ["without the guard: learned stall / smallest baseline stall", "",
          f"{sm['alone_stall_over_min_baseline']:.2f}", ""],
         ["oracle - learned, pt: mean (max)", "", f"{sm['oracle_gap_pt_mean']:.1f} ({sm['oracle_gap_pt_max']:.1f})", "<= 5"]],
    ))


def main(argv: list[str] | None = None) -> int:
    from prefetch.workloads.generated import REPORT_SEEDS, TUNING_SEEDS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default=None,
                    help=f"generator seeds, e.g. 1000-1019 (default {REPORT_SEEDS.start}-{REPORT_SEEDS.stop - 1}; "
                         f"--quick: the first {QUICK_ARCHS})")
    ap.add_argument("--tuning", action="store_true",
                    help=f"allow the tuning seeds {TUNING_SEEDS.start}-{TUNING_SEEDS.stop - 1} (figures to tune on, not to report)")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default 12; --quick 5)")
    ap.add_argument("--budget", type=float, default=0.4)
    ap.add_argument("--link-ratio", type=float, default=DEFAULT_LINK_RATIO)
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_ARCHS} architectures, 5 steps per run")
    ap.add_argument("--out", default="out/benchmarks/generalisation", help="traces and models (overwritten)")
    ap.add_argument("--train-seeds", default=",".join(map(str, TRAIN_SEEDS)),
                    help=f"run seeds recorded for training per architecture (default {','.join(map(str, TRAIN_SEEDS))}; "
                         f"never {EVAL_SEED}, the evaluated one)")
    ap.add_argument("--routers", default="auto", choices=("auto", "off"),
                    help="router hints for the learned policy (runtime.routers; default auto, off for the ablation)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds) if args.seeds else list(REPORT_SEEDS)[: QUICK_ARCHS if args.quick else None]
        train_seeds = tuple(parse_seeds(args.train_seeds))
    except ValueError as exc:
        print(f"generalisation.py: {exc}", file=sys.stderr)
        return 2
    if EVAL_SEED in train_seeds or not train_seeds:
        print(f"generalisation.py: --train-seeds must be non-empty and leave out the evaluated run seed {EVAL_SEED}",
              file=sys.stderr)
        return 2
    tuning = [s for s in seeds if s in TUNING_SEEDS]
    if tuning and not args.tuning:
        print(f"generalisation.py: --seeds: {tuning[0]} is a tuning seed ({TUNING_SEEDS.start}-{TUNING_SEEDS.stop - 1}); "
              "report seeds only, or pass --tuning", file=sys.stderr)
        return 2
    steps = args.steps or (5 if args.quick else 12)
    if steps < 3:
        print(f"generalisation.py: --steps must be >= 3 (warm-up 1, held-out steps for training), got {steps}",
              file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import shutil

    load_before, t0 = load_average(), time.monotonic()
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        shutil.rmtree(out / f"gen-{seed}", ignore_errors=True)  # traces and models of an earlier run
        r = evaluate_architecture(seed, steps=steps, budget=args.budget, link_ratio=args.link_ratio, out=out,
                                  train_seeds=train_seeds, routers=args.routers)
        rows.append(r)
        print(f"  {r['name']} ({r['arch']}): live learned {_pct(r['live']['learned']['hit_rate'])}% vs best "
              f"{r['best_live']} {r['learned_minus_best_live_pt']:+.1f} pt; sim oracle-learned "
              f"{r['oracle_minus_learned_sim_pt']:+.1f} pt; in_sample {r['in_sample']}; "
              f"{r['seconds']['total']:.0f} s (train {r['seconds']['train']:.0f} s); {r['guard']}", file=sys.stderr)
    elapsed = time.monotonic() - t0
    dist = distribution(rows)
    leaks = [r["name"] for r in rows if any((r["in_sample"] or {}).values())]
    print(f"Generalisation suite: {len(rows)} generated architectures (generator seeds "
          f"{', '.join(map(str, seeds))}{'; TUNING seeds, not for reporting' if tuning else ''}); per architecture "
          f"recorded on run seeds {', '.join(map(str, train_seeds))}, trained, evaluated on run seed {EVAL_SEED} "
          f"(in_sample False: {'all' if not leaks else 'NOT ' + ', '.join(leaks)}); {steps} steps per run, warm-up 1, "
          f"budget {args.budget}, link ratio {args.link_ratio}, router hints {args.routers}; hit rates live/simulated (the recorded seed-{EVAL_SEED} "
          f"trace), slowdown the device clock's (live) and the simulator's; torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average before {load_before}, after "
          f"{load_average()}; {elapsed:.0f} s.")
    print()
    print_tables(rows, dist)
    write_json(args.json, {"machine": machine_info(), "load_before": load_before, "load_after": load_average(),
                           "elapsed_s": elapsed, "generator_seeds": seeds, "tuning": bool(tuning),
                           "train_seeds": list(train_seeds), "eval_seed": EVAL_SEED, "steps": steps,
                           "budget": args.budget, "link_ratio": args.link_ratio, "targets": TARGETS,
                           "distribution": dist, "results": rows})
    if leaks:  # a figure on a seed the model was trained on is not a generalisation figure
        print(f"generalisation.py: the learned model was in sample on {', '.join(leaks)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

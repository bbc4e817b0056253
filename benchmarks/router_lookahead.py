"""Router lookahead (issue 11, item 3): how well the next layers' experts are predicted, what the hooks cost, what they buy.

    python benchmarks/router_lookahead.py [--workloads moe] [--seeds 2,3,4] [--steps 12]
        [--models out/benchmarks/models] [--json out/benchmarks/router_lookahead.json]

Part 1, prediction and cost, all resident (no prefetching): the workload trains `--steps`
steps with runtime.routers.RouterLookahead attached. At each router the hook says its own
layer's experts (depth 0: the router's own choice) and predicts the next two layers' from
this layer's input (depth 1, 2). Recall and precision of each prediction are counted
against the choice that layer's router then makes in the same forward, over expert sets;
the cost is the hooks' own time (per router call, per step, and as a share of the step's
compute), each hook timed as a prefetched run times its hooks (runtime.overhead.HookTimer).

Part 2, the effect, live on the simulated device (budget 0.4, link ratio 0.5): per seed (the
repeats; the learned model must not have been trained on them, and the row says in_sample),
the learned policy (guarded, served by the daemon) with router hints (`--routers auto`)
and without (`off`), and none, replay and markov (which take no hints), each a live run that
keeps its own trace and the simulation of that trace (prefetch.live_vs_sim). Medians with
[min-max] over the seeds. One torch thread; the load is printed with the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from common import load_average, machine_info, markdown_table, write_json  # noqa: E402

COST_TARGET_PCT = 1.0
"""Issue 11: the lookahead costs under 1% of step compute."""


def accuracy_and_cost(workload: str, seed: int, steps: int, warmup: int = 1) -> dict[str, Any]:
    """Part 1 for one workload and seed (module docstring)."""
    from prefetch.workloads import get_workload
    from runtime.overhead import HookTimer
    from runtime.routers import RouterLookahead, find_routers

    job = get_workload(workload).build(seed)
    layers = find_routers(job.model)
    if not layers:
        return {"workload": workload, "seed": seed, "layers": 0}
    timer = HookTimer()  # wall time in the hooks, as a prefetched run times its bookkeeping

    look = RouterLookahead(layers, lambda m: [], lambda want, skip: None, depth=2).attach(timer.wrap)
    own: dict[int, set[int]] = {}  # this forward's choice per layer
    predicted: list[tuple[int, int, set[int]]] = []  # (layer, depth, experts) this forward
    scores: dict[int, list[tuple[int, int, int]]] = {1: [], 2: []}  # depth -> (hit, predicted, actual)

    def settle() -> None:
        for j, d, chosen in predicted:
            if j in own:
                scores[d].append((len(chosen & own[j]), len(chosen), len(own[j])))
        own.clear()
        predicted.clear()

    def on_choice(j: int, d: int, chosen: set[int]) -> None:
        if d == 0:
            if j == 0:
                settle()  # a new forward
            own[j] = chosen
        else:
            predicted.append((j, d, chosen))

    look.on_choice = on_choice
    times, hook_ns, calls = [], [], []
    for i in range(steps):
        timer.ns, h0 = 0, look.hints
        t0 = time.perf_counter()
        job.step(i)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            hook_ns.append(timer.ns)
            calls.append(look.hints - h0)
    settle()
    look.detach()
    step_ms = 1e3 * statistics.median(times)
    per_step_ms = statistics.median(hook_ns) / 1e6
    row: dict[str, Any] = {
        "workload": workload, "seed": seed, "layers": len(layers), "top_k": layers[0].top_k,
        "experts": layers[0].num_experts, "step_ms": step_ms, "hook_ms_per_step": per_step_ms,
        "hook_us_per_hint": 1e3 * per_step_ms / max(1, statistics.median(calls)),
        "hook_pct_of_step": 100 * per_step_ms / step_ms,
    }
    for d, s in scores.items():
        hit, pred, act = (sum(x[k] for x in s) for k in range(3))
        row[f"recall_d{d}"] = hit / act if act else None
        row[f"precision_d{d}"] = hit / pred if pred else None
    return row


def effect(workload: str, seeds: list[int], steps: int, models: str, out: Path) -> list[dict[str, Any]]:
    """Part 2: one row per policy variant, medians over the seeds."""
    from prefetch.live_vs_sim import live_and_simulated

    variants = [("learned, routers", f"learned:{models}", "auto"), ("learned, no routers", f"learned:{models}", "off"),
                ("none", "none", "auto"), ("replay", "replay", "auto"), ("markov", "markov", "auto")]
    per: dict[str, list[dict[str, Any]]] = {v[0]: [] for v in variants}
    for seed in seeds:
        for label, policy, routers in variants:
            (r,) = live_and_simulated(workload, [policy], seed=seed, steps=steps, routers=routers,
                                      out=out / f"{workload}-s{seed}-{label.replace(', ', '-').replace(' ', '-')}")
            per[label].append(r)
            print(f"  {workload} seed {seed} {label}: live {100 * r['hit_rate_live']:.1f}% "
                  f"sim {100 * r['hit_rate_sim']:.1f}%, slowdown {r['slowdown_live']:.3f}x", file=sys.stderr)
    rows = []
    for label, policy, routers in variants:
        rs = per[label]

        def med(key: str, scale: float = 1.0) -> tuple[float, float, float]:
            xs = [scale * r[key] for r in rs]
            return statistics.median(xs), min(xs), max(xs)

        rows.append({"workload": workload, "variant": label, "policy": policy, "routers": routers, "seeds": seeds,
                     "hit_live": med("hit_rate_live", 100), "hit_sim": med("hit_rate_sim", 100),
                     "stall_ms_live": med("stall_s_live", 1e3), "slowdown_live": med("slowdown_live"),
                     "slowdown_sim": med("slowdown_sim"), "in_sample": any(r.get("in_sample") for r in rs),
                     "router_hints": [r.get("live_report", {}).get("router_hints") for r in rs]})
    return rows


def _spread(t: tuple[float, float, float], fmt: str) -> str:
    return f"{t[0]:{fmt}} [{t[1]:{fmt}}-{t[2]:{fmt}}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="moe")
    ap.add_argument("--seeds", default="2,3,4", help="repeats, on seeds the learned model never saw")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--models", default="out/benchmarks/models", help="learned models (trained on other seeds)")
    ap.add_argument("--out", default="out/benchmarks/router_lookahead", help="the runs' traces")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    load0 = load_average()
    t0 = time.perf_counter()
    acc, eff = [], []
    for w in args.workloads.split(","):
        acc.append(accuracy_and_cost(w, seeds[0], args.steps))
        eff.extend(effect(w, seeds, args.steps, args.models, Path(args.out)))
    print(f"Router lookahead: prediction and cost all resident ({args.steps} steps, seed {seeds[0]}, warm-up 1, "
          f"medians); torch threads {torch.get_num_threads()}; load before {load0}, after {load_average()}; "
          f"{time.perf_counter() - t0:.0f} s. Target: hooks <= {COST_TARGET_PCT}% of step compute.\n")
    print(markdown_table(
        ["workload", "routed layers", "experts/top-k", "recall 1 ahead", "precision 1 ahead", "recall 2 ahead",
         "precision 2 ahead", "step ms", "hooks ms/step", "us/hint", "% of step", "target"],
        [[a["workload"], a["layers"], f"{a.get('experts')}/{a.get('top_k')}",
          *(f"{100 * a[k]:.1f}%" if a.get(k) is not None else "-" for k in ("recall_d1", "precision_d1", "recall_d2", "precision_d2")),
          f"{a.get('step_ms', 0):.1f}", f"{a.get('hook_ms_per_step', 0):.3f}", f"{a.get('hook_us_per_hint', 0):.0f}",
          f"{a.get('hook_pct_of_step', 0):.2f}", "ok" if a.get("hook_pct_of_step", 0) <= COST_TARGET_PCT else "**miss**"]
         for a in acc]))
    print(f"\nLive on the simulated device, budget 0.4, link ratio 0.5, {args.steps} steps, unseen seeds "
          f"{args.seeds} (median [min-max]); sim: the simulation of each run's own trace.\n")
    print(markdown_table(
        ["workload", "policy", "hit rate live %", "hit rate sim %", "stall ms live", "slowdown live",
         "slowdown sim", "in sample"],
        [[r["workload"], r["variant"], _spread(r["hit_live"], ".1f"), _spread(r["hit_sim"], ".1f"),
          _spread(r["stall_ms_live"], ".0f"), _spread(r["slowdown_live"], ".3f"), _spread(r["slowdown_sim"], ".3f"),
          r["in_sample"]] for r in eff]))
    write_json(args.json, {"machine": machine_info(), "load_before": load0, "load_after": load_average(),
                           "steps": args.steps, "seeds": seeds, "accuracy_and_cost": acc, "effect": eff})
    return 0


if __name__ == "__main__":
    sys.exit(main())

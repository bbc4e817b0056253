"""How good a bound the simulator's oracle is: a randomized search for a policy that beats it.

    python benchmarks/oracle_search.py --cases 400 --json out/benchmarks/oracle_search.json

The oracle (prefetch/oracle.py) is a portfolio of offline strategies, not a proof: this
script is the evidence docs/oracle.md quotes. Each case is a small random dynamic trace
(tests/prefetch/oracle_cases.py: random expert subsets and orders, activations,
gradients, optimizer updates) at a random budget and link ratio; every competitor (none,
replay and markov at lookaheads 4/16/64, a random adversary, just-in-time policies that
know the trace) is simulated on it, and a comparison is "beaten" when the competitor's
hit count exceeds the oracle's. The sample traces are checked too (budgets 0.2-1.0, link
ratios 0.5 and 2). Seeds are fixed: rerunning prints the same table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "prefetch"))  # the cases the test suite uses

from common import machine_info, markdown_table, write_json  # noqa: E402
from oracle_cases import competitors, random_trace  # noqa: E402

from prefetch.simulate import simulate  # noqa: E402
from runtime.trace_format import find_traces, load_trace  # noqa: E402

BUDGETS = (0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
RATIOS = (0.25, 0.5, 1.0, 2.0)


def _hits(trace, policy, budget, ratio) -> tuple[int, int] | None:
    try:
        r = simulate(trace, policy, budget=budget, link_ratio=ratio)
    except ValueError:  # budget below the largest tensor: not a case
        return None
    return r.stats.hits, r.stats.accesses


def search(cases: int, seed: int, seconds: float) -> dict:
    rng = np.random.default_rng(seed)
    beaten: list[dict] = []
    per_budget: Counter = Counter()
    beaten_budget: Counter = Counter()
    done = comparisons = 0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for case in range(cases):
            if time.monotonic() - t0 > seconds:
                break
            trace_seed = int(rng.integers(0, 2**31))
            budget = float(rng.choice(BUDGETS))
            ratio = float(rng.choice(RATIOS))
            trace = random_trace(Path(tmp) / f"c{case}", seed=trace_seed, steps=4)
            bound = _hits(trace, "oracle", budget, ratio)
            if bound is None:
                continue
            done += 1
            for pol in competitors(trace, trace_seed):
                got = _hits(trace, pol, budget, ratio)
                if got is None:
                    continue
                comparisons += 1
                per_budget[budget] += 1
                if got[0] > bound[0]:
                    beaten_budget[budget] += 1
                    beaten.append({"trace_seed": trace_seed, "budget": budget, "link_ratio": ratio,
                                   "policy": getattr(pol, "name", str(pol)), "lookahead": getattr(pol, "lookahead", None),
                                   "hits": got[0], "oracle_hits": bound[0], "reads": bound[1]})
    return {"cases": done, "comparisons": comparisons, "beaten": beaten,
            "per_budget": {str(b): {"comparisons": per_budget[b], "beaten": beaten_budget[b]} for b in BUDGETS},
            "seconds": time.monotonic() - t0}


def samples() -> dict:
    from predictor.policies import make_policy

    stems = find_traces([ROOT / "datasets" / "samples"])
    comparisons, beaten = 0, []
    for stem in stems:
        trace = load_trace(stem)
        for budget in (0.2, 0.4, 0.6, 0.8, 1.0):
            for ratio in (0.5, 2.0):
                bound = _hits(trace, "oracle", budget, ratio)
                if bound is None:
                    continue
                for spec in ("none", "replay", "markov"):
                    for k in (16, 64):
                        got = _hits(trace, make_policy(spec, lookahead=k), budget, ratio)
                        comparisons += 1
                        if got is not None and got[0] > bound[0]:
                            beaten.append({"trace": stem.name, "budget": budget, "link_ratio": ratio,
                                           "policy": f"{spec}@{k}", "hits": got[0], "oracle_hits": bound[0]})
    return {"traces": len(stems), "comparisons": comparisons, "beaten": beaten}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=400, help="random traces to try (default 400)")
    ap.add_argument("--seed", type=int, default=2026, help="search seed (default 2026)")
    ap.add_argument("--seconds", type=float, default=600, help="stop starting new cases after this long")
    ap.add_argument("--no-samples", action="store_true", help="skip the sample-trace check")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    res = {"machine": machine_info(), "args": vars(args), "random": search(args.cases, args.seed, args.seconds)}
    if not args.no_samples:
        res["samples"] = samples()
    r = res["random"]
    print(f"random dynamic traces: {r['cases']} cases, {r['comparisons']} comparisons, "
          f"oracle beaten {len(r['beaten'])} times ({r['seconds']:.0f} s, seed {args.seed})")
    print(markdown_table(["budget", "comparisons", "beaten"],
                         [[b, v["comparisons"], v["beaten"]] for b, v in r["per_budget"].items()]))
    if r["beaten"]:
        print(markdown_table(["trace seed", "budget", "link ratio", "policy", "hits", "oracle hits", "reads"],
                             [[b["trace_seed"], b["budget"], b["link_ratio"], b["policy"], b["hits"], b["oracle_hits"],
                               b["reads"]] for b in r["beaten"]]))
    if "samples" in res:
        s = res["samples"]
        print(f"sample traces: {s['traces']} traces, {s['comparisons']} comparisons, oracle beaten {len(s['beaten'])} times")
    write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

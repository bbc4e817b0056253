"""How fast the simulator replays traces: events per second, per policy.

    .venv/bin/python benchmarks/simulate_speed.py                 # datasets/samples, all policies
    .venv/bin/python benchmarks/simulate_speed.py traces/ --policies none,replay --json speed.json

Traces are loaded once; each policy is simulated `--repeat` times on all of them at
`--budget` and the default link, and the best wall time counts (policy construction,
the oracle's precomputation and the per-trace setup included, trace loading not). The
oracle simulates each of its strategies (prefetch.oracle.VARIANTS) and keeps the best,
so its events/s are per event of the trace, all strategies included. Events/s count
every event of the traces; the simulator replays only the managed ones (parameters and
saved activations of at least 64 KiB), so their rate is printed too. Prints a table
and writes the figures as JSON (default out/benchmarks/simulate_speed.json). Targets
(TARGETS): none >= 2M events/s, replay >= 500k, oracle >= 200k, others >= 200k.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.common import machine_info, write_json  # noqa: E402
from prefetch.simulate import simulate  # noqa: E402
from runtime.trace_format import load_traces  # noqa: E402

TARGET_EVENTS_PER_S = 200_000
TARGETS = {"none": 2_000_000, "replay": 500_000, "oracle": 200_000}
"""Floors per policy (issue 10: the simulator on the shared device tier must not regress); others: the default."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="*", default=["datasets/samples"], help="trace files or folders")
    ap.add_argument("--policies", default="none,replay,markov,oracle", help="comma-separated policy specs")
    ap.add_argument("--budget", default="0.4", help="device budget (fraction or size)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per policy; the best counts")
    ap.add_argument("--json", type=Path, default=Path("out/benchmarks/simulate_speed.json"),
                    help="write the results here (default out/benchmarks/simulate_speed.json)")
    args = ap.parse_args(argv)

    traces = load_traces(args.traces)
    events = sum(t.num_events for t in traces)
    managed = sum(int(t.managed_tensors()[t.column("tensor_id")].sum()) for t in traces)
    rows = []
    print(f"{len(traces)} trace(s), {events} events ({managed} managed), budget {args.budget}, "
          f"load average {os.getloadavg()[0]:.2f} (pure Python: one thread)")
    print(f"{'policy':>10} {'events/s':>12} {'managed/s':>12} {'best s':>9} {'hit rate':>9}  target")
    for spec in [p.strip() for p in args.policies.split(",") if p.strip()]:
        best = float("inf")
        report = None
        for _ in range(max(1, args.repeat)):
            for t in traces:
                t._derived.clear()  # the per-trace preparation (TraceStream) counts in every repeat
            t0 = time.perf_counter()
            report = simulate(traces, spec, budget=args.budget)
            best = min(best, time.perf_counter() - t0)
        rate = events / best
        target = TARGETS.get(spec, TARGET_EVENTS_PER_S)
        meets = f"{'ok' if rate >= target else 'below'} (>= {target:,})"
        rows.append({"policy": spec, "events": events, "managed_events": managed, "seconds": best,
                     "events_per_s": rate, "managed_events_per_s": managed / best, "hit_rate": report.hit_rate,
                     "target_events_per_s": target})
        print(f"{spec:>10} {rate:>12,.0f} {managed / best:>12,.0f} {best:>9.3f} {report.hit_rate:>9.2%}  {meets}")
    out = {"traces": [str(t.stem) for t in traces], "events": events, "managed_events": managed,
           "budget": args.budget,
           "repeat": args.repeat, "machine": machine_info(), "target_events_per_s": TARGET_EVENTS_PER_S,
           "results": rows}
    write_json(args.json, out)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

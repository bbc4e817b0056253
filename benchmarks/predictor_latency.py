"""Per-decision latency of every policy, in process: features + model, one read at a time.

    python benchmarks/predictor_latency.py                                  # the moe sample trace
    python benchmarks/predictor_latency.py --model models/ traces/moe/ --json lat.json

A decision is one observe() call for a read (what the daemon does per access event);
writes are timed apart (policies only record them). Each policy is driven over the
traces `--repeat` times after one warm-up pass; p50/p99/max are over all decisions.
Target: p99 <= 100 us for the learned policy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from predictor.interface import TensorInfo  # noqa: E402
from predictor.policies import baseline_names, make_policy  # noqa: E402
from runtime.defaults import EVAL_LOOKAHEAD  # noqa: E402
from runtime.trace_format import Access, load_traces  # noqa: E402


def thread_counts() -> dict[str, object]:
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "lightgbm_predict_threads": 1,  # FastBooster passes num_threads=1
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


def time_policy(spec: str, traces, *, lookahead: int, repeat: int) -> dict[str, object]:
    read_ns: list[np.ndarray] = []
    write_ns: list[np.ndarray] = []
    clock = time.perf_counter_ns
    READ = int(Access.READ)
    for rep in range(repeat + 1):  # the first pass warms caches and is not counted
        for trace in traces:
            policy = make_policy(spec, lookahead=lookahead, architecture=trace.architecture,
                                 tensors=TensorInfo.from_table(trace.tensors))  # fmt: skip
            cols = [trace.column(c).tolist() for c in ("step", "micro_step", "phase", "access", "tensor_id")]
            out = np.empty(len(cols[0]), dtype=np.int64)
            observe = policy.observe
            for i, (s, m, p, a, t) in enumerate(zip(*cols)):
                t0 = clock()
                observe(s, m, p, a, t)
                out[i] = clock() - t0
            if rep:
                is_read = np.asarray(cols[3]) == READ
                read_ns.append(out[is_read])
                write_ns.append(out[~is_read])
    r = np.concatenate(read_ns) / 1e3
    w = np.concatenate(write_ns) / 1e3 if write_ns else np.zeros(1)
    return {
        "policy": spec.split(":")[0],
        "decisions": int(len(r)),
        "p50_us": float(np.percentile(r, 50)),
        "p90_us": float(np.percentile(r, 90)),
        "p99_us": float(np.percentile(r, 99)),
        "max_us": float(r.max()),
        "mean_us": float(r.mean()),
        "write_p50_us": float(np.percentile(w, 50)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description="p50/p99 per decision of each policy, in process")
    ap.add_argument("traces", nargs="*", type=Path, help="trace folders (default: datasets/samples/moe/heldout, the model trained on .../train)")
    ap.add_argument("--model", type=Path, help="model folder for the learned policy (default: trained on the fly)")
    ap.add_argument("--lookahead", type=int, default=EVAL_LOOKAHEAD)
    ap.add_argument("--repeat", type=int, default=3, help="timed passes over the traces (default 3)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    paths = args.traces
    if not paths:  # the moe sample: trained on its seed-0 run, timed on the seed-1 run
        samples = Path(__file__).resolve().parent.parent / "datasets" / "samples" / "moe"
        paths = [samples / "heldout"]
        if args.model is None:
            from predictor.train import train

            args.model = Path(tmp.name) / "models"
            train([samples / "train"], args.model, progress=False, log=lambda *_: None)
    traces = load_traces(paths, managed_only=True)
    specs = [*baseline_names()] + ([f"learned:{args.model}"] if args.model else [])  # every registered policy
    threads = thread_counts()
    print("threads: " + "  ".join(f"{k}={v}" for k, v in threads.items()))
    rows = [time_policy(s, traces, lookahead=args.lookahead, repeat=args.repeat) for s in specs]
    head = f"{'policy':<8} {'decisions':>9} {'p50 us':>8} {'p90 us':>8} {'p99 us':>8} {'max us':>8} {'mean us':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['policy']:<8} {r['decisions']:>9} {r['p50_us']:8.1f} {r['p90_us']:8.1f} {r['p99_us']:8.1f} "
              f"{r['max_us']:8.1f} {r['mean_us']:8.1f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"threads": threads, "lookahead": args.lookahead, "traces": [str(t.stem) for t in traces],
                                         "results": rows}, indent=2))  # fmt: skip
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The framing and feature ablations behind docs/predictor.md.

    python benchmarks/predictor_ablations.py --traces datasets/samples --json ablations.json

Expects TRACES/<workload>/train (training run) and TRACES/<workload>/heldout (another
seed). For each workload, trains every variant on the training run and scores it on
the held-out run (all steps but the first), as `prefetch eval` does:

- learned: the shipped configuration;
- table only: the candidate table alone (accept candidates with p >= 0.5, no model);
- no history / no expert / no dynamic context: the model without those columns;
- multiclass: the rejected framing, LightGBM multiclass over the tensor vocabulary
  predicting the next read from the current one (top-1/top-5 and its fit on the
  training rows; one call gives one next read, so a D-read window needs D calls).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: run as a script

import lightgbm as lgb  # noqa: E402
import numpy as np  # noqa: E402

from predictor.artifact import save_artifact  # noqa: E402
from predictor.evaluate import HELD_OUT_RUN, WARMUP_STEPS, evaluate_trace  # noqa: E402
from predictor.features import F, FEATURES, KeyInfo  # noqa: E402
from predictor.read_sequence import read_sequence, sequence_context  # noqa: E402
from predictor.model import LearnedPolicy  # noqa: E402
from predictor.train import TrainConfig, _vocabulary, split_steps, train_architecture  # noqa: E402
from prefetch.workloads import list_workloads  # noqa: E402
from runtime.defaults import EVAL_LOOKAHEAD  # noqa: E402
from runtime.trace_format import load_traces  # noqa: E402

HISTORY = tuple(n for n in FEATURES if n.startswith(("h_", "e_")))
EXPERT = tuple(n for n in FEATURES if n.startswith("e_"))
DYNAMIC = ("micro_step", "pos_in_step", "pos_frac", "steps_since_eval", "eval_in_step", "prev_micro_steps")
VARIANTS: dict[str, tuple[str, ...]] = {
    "learned": (),
    "no history": HISTORY,
    "no expert": EXPERT,
    "no dynamic context": DYNAMIC,
}


class TableOnly(LearnedPolicy):
    """The candidate table without the model: a candidate is in when p >= threshold."""

    name = "table"

    def _score(self, ci: int, s: int, e: int) -> np.ndarray:
        return self.static_[s:e, F["p"]].astype(np.float64)


def _score(trace, policy, lookahead: int) -> dict[str, float]:
    steps = [int(s) for s in trace.steps()][WARMUP_STEPS:]
    r = evaluate_trace(trace, {"p": policy}, scope=HELD_OUT_RUN, steps=steps, lookahead=lookahead)
    m = r["policies"]["p"]
    return {k: m[k] for k in ("top1", "topk", "recall", "coverage")}


def multiclass(train, run, lookahead: int, rounds: int = 10) -> dict[str, Any]:
    """Next-id classification: one class per tensor of the vocabulary."""
    ki = KeyInfo.from_keys(_vocabulary([train, run]))
    vocab = {k: i for i, k in enumerate(ki.keys)}

    def rows(trace, steps=None):
        seq = read_sequence(trace, vocab, steps)
        sc = sequence_context(seq, ki)
        prev = np.concatenate([[-1], seq.vid[:-1]])
        X = np.column_stack([seq.vid, seq.phase, sc.occ, seq.micro, np.arange(len(seq)) - sc.step_start, prev]).astype(np.float32)
        y = np.concatenate([seq.vid[1:], [-1]])
        return X[:-1], y[:-1], seq.step[:-1]

    X, y, _ = rows(train, split_steps(train, 0.25)[0])
    t0 = time.perf_counter()
    params = {"objective": "multiclass", "num_class": ki.size, "num_leaves": 15, "learning_rate": 0.3, "num_threads": 2,
              "verbose": -1, "min_data_in_leaf": 1, "min_data_per_group": 1, "cat_smooth": 1, "max_cat_to_onehot": 64}
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=[0, 5]), rounds)  # current and previous id
    fit_s = time.perf_counter() - t0
    Xr, yr, step = rows(run)
    keep = step >= sorted(set(step.tolist()))[WARMUP_STEPS]
    P = booster.predict(Xr[keep], num_threads=1)  # (n, V)
    order = np.argsort(-P, axis=1)
    top1 = float((order[:, 0] == yr[keep]).mean())
    top5 = float((order[:, :5] == yr[keep, None]).any(axis=1).mean())
    train_top1 = float((booster.predict(X, num_threads=1).argmax(axis=1) == y).mean())
    lat = []
    for i in range(min(300, len(Xr))):
        t = time.perf_counter_ns()
        booster.predict(Xr[i : i + 1], num_threads=1)
        lat.append(time.perf_counter_ns() - t)
    return {"top1": top1, "topk": top5, "train_top1": train_top1, "classes": ki.size, "trees": booster.num_trees(), "fit_s": round(fit_s, 1),
            "predict_p50_us": float(np.percentile(lat, 50) / 1e3), "predict_p99_us": float(np.percentile(lat, 99) / 1e3)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=Path, required=True)
    ap.add_argument("--workloads", nargs="+", default=[w.name for w in list_workloads() if w.dynamic])
    ap.add_argument("--lookahead", type=int, default=EVAL_LOOKAHEAD)
    ap.add_argument("--no-multiclass", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    for w in args.workloads:
        (train,) = load_traces([args.traces / w / "train"], managed_only=True)
        (run,) = load_traces([args.traces / w / "heldout"], managed_only=True)
        res: dict[str, Any] = {}
        for name, drop in VARIANTS.items():
            config = TrainConfig(lookahead=args.lookahead, drop_features=drop)
            artifact = train_architecture([train], config, progress=False)
            with tempfile.TemporaryDirectory() as d:
                save_artifact(artifact, d)  # exercise the same path as `prefetch train`
            res[name] = _score(run, LearnedPolicy(artifact, args.lookahead), args.lookahead)
            if name == "learned":
                res["table only"] = _score(run, TableOnly(artifact, args.lookahead, threshold=0.5), args.lookahead)
        if not args.no_multiclass:
            res["multiclass"] = multiclass(train, run, args.lookahead)
        results[w] = res
        for name, m in res.items():
            extra = {k: v for k, v in m.items() if k not in ("top1", "topk", "recall", "coverage")}
            recall = f"{m['recall']:8.2%}" if "recall" in m else f"{'-':>8}"
            print(f"{w:<16} {name:<20} top-1 {m['top1']:7.2%}  top-5 {m['topk']:7.2%}  recall@{args.lookahead} {recall}"
                  + (f"  {extra}" if extra else ""), flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

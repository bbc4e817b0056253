"""Training: traces in, one predictor artifact per architecture out.

    prefetch train traces/moe/ --out models/

Per architecture found in the traces: hold out the last quarter of each trace's steps,
build the vocabulary and the candidate table from the rest, compute the (read,
candidate) examples with predictor.features_offline, fit a small binary LightGBM model on the
contexts that are not deterministic, pick the score threshold on the held-out steps,
and write the artifact (predictor.artifact) with its held-out metrics.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import lightgbm as lgb
import numpy as np

from predictor.artifact import Artifact, save_artifact
from predictor.candidates import build_table, static_columns
from predictor.features import CATEGORICAL, FEATURES, KeyInfo
from predictor.features_offline import pair_features, pair_labels
from predictor.read_sequence import read_sequence, sequence_context
from runtime.defaults import EVAL_LOOKAHEAD
from runtime.trace_format import Trace, load_traces


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    """How a predictor is trained."""

    lookahead: int = EVAL_LOOKAHEAD
    """D: the label is "read within the next D reads"; also the table's horizon."""
    max_candidates: int = 48
    """Candidates kept per context (rows per decision); >= lookahead."""
    holdout_fraction: float = 0.25
    """Share of each trace's last steps held out of training (at least one, if the trace has two)."""
    num_trees: int = 30
    num_leaves: int = 15
    learning_rate: float = 0.2
    min_data_in_leaf: int = 100
    num_threads: int = 2
    max_rows: int = 2_000_000
    """Training rows kept at most (a random subset of decision points beyond this)."""
    thresholds: tuple[float, ...] = (0.3, 0.4, 0.5)
    """Score thresholds tried on the held-out steps; the best recall wins (ties: the higher)."""
    seed: int = 0
    cross_fit: bool = False
    """Table statistics (p, rank, log_n) of training rows come from the other half of the
    training steps, as they will for an unseen run; else from all (leaks the label)."""
    drop_features: tuple[str, ...] = ()
    """Ablations only: these columns are held constant in training, so the model cannot use them."""

    def __post_init__(self) -> None:
        if self.lookahead < 1:
            raise ValueError(f"lookahead must be >= 1, got {self.lookahead}")
        if self.max_candidates < self.lookahead:
            raise ValueError(f"max_candidates ({self.max_candidates}) must be >= lookahead ({self.lookahead})")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.num_trees < 1 or self.num_leaves < 2 or self.num_threads < 1:
            raise ValueError("num_trees >= 1, num_leaves >= 2 and num_threads >= 1 are required")
        unknown = set(self.drop_features) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown features to drop: {sorted(unknown)}")
        if not self.thresholds or not all(0.0 < t < 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must be in (0, 1), got {self.thresholds}")


def split_steps(trace: Trace, holdout_fraction: float) -> tuple[list[int], list[int]]:
    """(training steps, held-out steps): the last ceil(fraction * n) steps are held out."""
    steps = [int(s) for s in trace.steps()]
    n_hold = min(len(steps) - 1, math.ceil(holdout_fraction * len(steps))) if len(steps) > 1 else 0
    n_hold = max(n_hold, 0)
    return steps[: len(steps) - n_hold], steps[len(steps) - n_hold :]


def _vocabulary(traces: Sequence[Trace]) -> list[str]:
    """Every key of the traces, in order of first appearance."""
    seen: dict[str, None] = {}
    for t in traces:
        for k in t.keys:
            seen.setdefault(k, None)
    return list(seen)


def _progress_callback(bar):
    def callback(env: lgb.callback.CallbackEnv) -> None:
        bar.update(1)

    return callback


def lgb_params(config: TrainConfig) -> dict[str, Any]:
    """LightGBM's parameters for `config` (shared with predictor.train_dask)."""
    return {
        "objective": "binary",
        "num_leaves": config.num_leaves,
        "learning_rate": config.learning_rate,
        "min_data_in_leaf": config.min_data_in_leaf,
        "num_threads": config.num_threads,
        "seed": config.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
    }


def fit_booster(X: np.ndarray, y: np.ndarray, params: dict[str, Any], num_trees: int, *, callbacks=()) -> lgb.Booster:
    """One binary LightGBM model on the rows (X, y), named columns FEATURES."""
    dataset = lgb.Dataset(X, label=y, feature_name=list(FEATURES), categorical_feature=list(CATEGORICAL),
                          free_raw_data=True, params={"verbose": -1})  # fmt: skip
    return lgb.train(params, dataset, num_boost_round=num_trees, callbacks=list(callbacks))


def out_of_fold_stats(ex, seq, sc, fold_tables, second_half_steps, keyinfo) -> None:
    """Candidate statistics (p, rank, log_n) of each row from the table of the other fold,
    so the model never sees a statistic computed from its own row (local and Dask training)."""
    fold = np.isin(seq.step[ex.t], np.asarray(second_half_steps, dtype=np.int64)).astype(np.int64)
    for f in (0, 1):
        m = fold == f
        p, rank, n = fold_tables[f].stats(sc.ctx[ex.t[m]], ex.cand[m], keyinfo.size)
        ex.X[m, FEATURES.index("p")] = p
        ex.X[m, FEATURES.index("rank")] = rank
        ex.X[m, FEATURES.index("log_n")] = np.log2(1.0 + n)


def train_architecture(traces: Sequence[Trace], config: TrainConfig, *, progress: bool = True) -> Artifact:
    """Train the predictor for one architecture from its traces (in memory)."""
    from predictor.evaluate import HELD_OUT_STEPS, evaluate_trace, trace_fingerprint
    from predictor.model import LearnedPolicy
    from predictor.policies import make_policy
    from predictor.provenance import train_seeds
    from runtime.trace_identity import trace_identity

    t0 = time.perf_counter()
    arch = traces[0].architecture
    keyinfo = KeyInfo.from_keys(_vocabulary(traces))
    vocab = {k: i for i, k in enumerate(keyinfo.keys)}
    splits = [split_steps(t, config.holdout_fraction) for t in traces]
    seqs = []
    for trace, (train_steps, _) in zip(traces, splits):
        seq = read_sequence(trace, vocab, train_steps)
        seqs.append((seq, sequence_context(seq, keyinfo)))
    table = build_table(seqs, keyinfo.size, config.lookahead, config.max_candidates)
    det = table.deterministic()
    static = static_columns(table, keyinfo)

    # Cross-fitting: two tables, each from one half of every trace's training steps.
    halves = [(tr[: len(tr) // 2], tr[len(tr) // 2 :]) for tr, _ in splits]
    fold_tables = None
    if config.cross_fit:
        chunks: list[list] = [[], []]
        for trace, parts in zip(traces, halves):
            for f in (0, 1):
                if parts[f]:
                    s = read_sequence(trace, vocab, parts[f])
                    chunks[f].append((s, sequence_context(s, keyinfo)))
        fold_tables = [build_table(chunks[1 - f], keyinfo.size, config.lookahead, config.max_candidates) for f in (0, 1)]

    # Examples at non-deterministic contexts only: elsewhere the policy skips the model.
    rng = np.random.default_rng(config.seed)
    Xs, ys = [], []
    budget = config.max_rows
    for (seq, sc), parts in zip(seqs, halves):
        ci = table.lookup(sc.ctx)
        pos = np.flatnonzero((ci >= 0) & ~det[np.maximum(ci, 0)])
        if len(pos) == 0:
            continue
        ex = pair_features(seq, sc, table, keyinfo, static, positions=pos)
        y = pair_labels(seq, ex.t, ex.cand, config.lookahead)
        if fold_tables is not None:
            out_of_fold_stats(ex, seq, sc, fold_tables, parts[1], keyinfo)
        Xs.append(ex.X)
        ys.append(y)
    X = np.concatenate(Xs) if Xs else np.zeros((0, len(FEATURES)), np.float32)
    y = np.concatenate(ys) if ys else np.zeros(0, np.int8)
    if len(y) > budget:
        keep = np.sort(rng.choice(len(y), budget, replace=False))
        X, y = X[keep], y[keep]
    for name in config.drop_features:
        X[:, FEATURES.index(name)] = 0
    if len(np.unique(y)) < 2:  # static architecture: nothing to learn, keep a valid constant model
        X = np.concatenate([X, static[:1], static[:1]]) if len(static) else np.zeros((2, len(FEATURES)), np.float32)
        y = np.concatenate([y, [0, 1]]).astype(np.int8)

    params = lgb_params(config)
    bar = None
    callbacks = []
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.num_trees, desc=f"training {arch[:40]}", unit="tree", leave=False)
        callbacks.append(_progress_callback(bar))
    try:
        booster = fit_booster(X, y, params, config.num_trees, callbacks=callbacks)
    finally:
        if bar is not None:
            bar.close()
    fit_s = time.perf_counter() - t0

    training_traces = [
        {
            "stem": t.stem.name,
            "workload": t.manifest.get("workload"),
            "seed": t.manifest.get("seed"),
            "fingerprint": trace_fingerprint(t),
            "train_steps": tr,
            "holdout_steps": ho,
        }
        for t, (tr, ho) in zip(traces, splits)
    ]
    # What the model was trained on, for predictor.provenance: an evaluation of the same
    # run (same seed, or the same access order step by step) is flagged in sample.
    identities = [trace_identity(t) for t in traces]
    training_data = [
        {"trace": t.stem.name, "workload": ident["workload"], "seed": ident["seed"], "steps": tr,
         "holdout_steps": ho, "step_order_hashes": ident["step_order_hashes"]}
        for t, ident, (tr, ho) in zip(traces, identities, splits)
    ]  # fmt: skip
    meta: dict[str, Any] = {
        "training_data": training_data,
        "train_seeds": list(train_seeds({"training_data": training_data})),
        "model_class": traces[0].manifest.get("model_class"),
        "training": {
            "traces": training_traces,
            "reads": int(sum(len(s) for s, _ in seqs)),
            "contexts": table.num_contexts,
            "deterministic_contexts": int(det.sum()),
            "rows": int(len(y)),
            "positives": int(y.sum()),
            "params": params,
            "num_trees": booster.num_trees(),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        },
    }
    artifact = Artifact(architecture=arch, keyinfo=keyinfo, table=table, booster=booster,
                        threshold=config.thresholds[-1], meta=meta)  # fmt: skip

    # Pick the threshold on the held-out steps, and record the held-out metrics.
    held = [(t, ho) for t, (_, ho) in zip(traces, splits) if ho]
    metrics: dict[str, Any] = {"scope": HELD_OUT_STEPS, "lookahead": config.lookahead}
    if held:
        policies = {"replay": make_policy("replay", lookahead=config.lookahead),
                    "markov": make_policy("markov", lookahead=config.lookahead)}  # fmt: skip
        learned = pick_threshold(artifact, config.thresholds, metrics, lambda thr: [
            evaluate_trace(t, {"learned": LearnedPolicy(artifact, config.lookahead, threshold=thr)},
                           scope=HELD_OUT_STEPS, steps=ho, lookahead=config.lookahead)  # fmt: skip
            for t, ho in held])
        base = [evaluate_trace(t, policies, scope=HELD_OUT_STEPS, steps=ho, lookahead=config.lookahead) for t, ho in held]
        held_out_metrics(metrics, learned, base)
    finish_meta(artifact, meta, metrics, fit_s, t0)
    return artifact


def pick_threshold(artifact: Artifact, thresholds: Sequence[float], metrics: dict[str, Any],
                   learned_at: Callable[[float], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Set the threshold with the best held-out recall (the highest on a tie), record the
    search in `metrics`, and return the learned results at it (local and Dask training)."""
    best = None
    for thr in sorted(thresholds, reverse=True):
        results = learned_at(thr)
        recall = _weighted(results, "learned", "recall")
        metrics.setdefault("threshold_search", {})[str(thr)] = recall
        if best is None or recall > best[0] + 1e-9:
            best = (recall, thr, results)
    artifact.threshold = best[1]
    return best[2]


def held_out_metrics(metrics: dict[str, Any], learned: list[dict[str, Any]], base: list[dict[str, Any]]) -> None:
    for name, results in (("learned", learned), ("replay", base), ("markov", base)):
        metrics[name] = {m: _weighted(results, name, m) for m in ("top1", "topk", "recall", "coverage")}


def finish_meta(artifact: Artifact, meta: dict[str, Any], metrics: dict[str, Any], fit_s: float, t0: float) -> None:
    metrics["threshold"] = artifact.threshold
    meta["metrics"] = metrics
    meta["training"]["fit_seconds"] = round(fit_s, 3)
    meta["training"]["seconds"] = round(time.perf_counter() - t0, 3)


def _weighted(results: list[dict[str, Any]], name: str, metric: str) -> float:
    reads = sum(r["policies"][name]["reads"] for r in results)
    return sum((r["policies"][name][metric] or 0.0) * r["policies"][name]["reads"] for r in results) / max(reads, 1)


def group_by_architecture(traces: Iterable[Trace]) -> dict[str, list[Trace]]:
    groups: dict[str, list[Trace]] = {}
    for t in traces:
        if not t.architecture:
            raise ValueError(f"{t.stem}: the manifest names no architecture; re-record with this version")
        groups.setdefault(t.architecture, []).append(t)
    return groups


def train(
    paths: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    log=print,
) -> list[Path]:
    """Train one artifact per architecture found under `paths`; return their folders."""
    config = config or TrainConfig()
    traces = load_traces(paths, managed_only=True)  # policies see the managed stream
    written = []
    for arch, group in group_by_architecture(traces).items():
        artifact = train_architecture(group, config, progress=progress)
        folder = save_artifact(artifact, out)
        written.append(folder)
        tr, m = artifact.meta["training"], artifact.meta["metrics"]
        line = (f"{arch}: {len(group)} trace(s), {tr['reads']} reads, {tr['contexts']} contexts "
                f"({tr['deterministic_contexts']} deterministic), {tr['rows']} rows, {tr['seconds']:.1f} s -> {folder}")  # fmt: skip
        log(line)
        if "learned" in m:
            log("  held-out steps, recall@{D}: learned {l:.2%}  replay {r:.2%}  markov {k:.2%}  (threshold {t})".format(
                D=config.lookahead, l=m["learned"]["recall"], r=m["replay"]["recall"], k=m["markov"]["recall"],
                t=artifact.threshold))  # fmt: skip
    return written

"""Training on a Dask cluster: the same artifact as predictor.train, the work where the data is.

    prefetch train traces/ --out models/ --dask local:4            # a LocalCluster here
    prefetch train /shared/traces/ --out models/ --dask tcp://sched:8786

Why: a fleet of jobs records more traces than one process should read. Here the client
never reads an event: the workers load the traces, count the candidate table, compute
the rows and score the held-out steps (predictor.dask_tasks); the client adds up the
counts, drives LightGBM's Dask interface and writes the artifact. docs/dask.md lists
what runs where and how the result compares with local training.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from predictor.candidates import static_columns
from predictor.dask_cluster import DEFAULT_CONNECT_TIMEOUT_S, DaskTarget, dask_client
from predictor.dask_tasks import TableCounts, _counts, _describe, _evaluate, _find, _load, _rows, _shape, _take, is_uri
from predictor.features import FEATURES, KeyInfo
from predictor.train import TrainConfig, finish_meta, held_out_metrics, lgb_params, pick_threshold


class FitHung(RuntimeError):
    """A distributed step (the LightGBM fit, or gathering the workers' results) did not
    finish within its watchdog's time."""


def _gather(client, futures: Any, timeout_s: float | None, what: str) -> Any:
    """client.gather, watched: FitHung if the futures are not all done within `timeout_s`
    (a worker stuck after a hung LightGBM network holds the tasks queued behind it)."""
    if timeout_s is not None:
        from distributed import wait

        try:
            wait(futures if isinstance(futures, list) else [futures], timeout=timeout_s)
        except TimeoutError:  # distributed raises the builtin (asyncio's alias) on a timeout
            raise FitHung(f"{what} did not finish within {timeout_s:g} s on the dask workers") from None
    return client.gather(futures)


def train_dask(
    paths: Sequence[str | Path],
    out: str | Path,
    config: TrainConfig | None = None,
    *,
    dask: str | DaskTarget = "local:2",
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    fit_timeout_s: float | None = None,
    log=print,
) -> list[Path]:
    """predictor.train.train on a Dask cluster: one artifact per architecture under `out`."""
    target = dask if isinstance(dask, DaskTarget) else DaskTarget.parse(dask)
    with dask_client(target, connect_timeout_s=connect_timeout_s) as client:
        return train_on_client(client, paths, out, config, log=log, fit_timeout_s=fit_timeout_s)


def train_on_client(client, paths: Sequence[str | Path], out: str | Path, config: TrainConfig | None = None,
                    *, log=print, fit_timeout_s: float | None = None) -> list[Path]:  # fmt: skip
    """Train with a connected distributed.Client (see the module docstring for the steps).

    `fit_timeout_s`: a watchdog on each distributed LightGBM fit and on each wait for the
    workers' results. LightGBM's socket network between the workers can hang before the first
    tree (LightGBM issue 4942; seen here once in several hundred fits), and once a gather of
    the threshold scores after a fit sat for 300 s; a step not done by then is taken as hung: the workers are
    restarted (`client.restart()`: their memory goes) and the whole training is done once
    more, from the traces. None: no watchdog (a large fit may take long)."""
    if fit_timeout_s is None:
        return _train_all(client, paths, out, config, log, None)
    try:
        return _train_all(client, paths, out, config, log, fit_timeout_s)
    except FitHung as exc:
        log(f"{exc}; restarting the dask workers and training once more")
        client.restart()
        return _train_all(client, paths, out, config, log, fit_timeout_s)


def _train_all(client, paths: Sequence[str | Path], out: str | Path, config: TrainConfig | None, log,
               fit_timeout_s: float | None) -> list[Path]:  # fmt: skip
    from predictor.artifact import save_artifact

    config = config or TrainConfig()
    # absolute paths: the workers' working directory is not the client's
    stems = _gather(client, client.submit(_find, [str(p) if is_uri(str(p)) else str(Path(p).absolute()) for p in paths],
                                          pure=False), fit_timeout_s, "finding the traces")  # fmt: skip
    workers = sorted(client.scheduler_info()["workers"])
    loaded: list[Any] = [
        client.submit(_load, s, workers=[workers[i % len(workers)]], allow_other_workers=True, pure=False)
        for i, s in enumerate(stems)
    ]
    infos = _gather(client, [client.submit(_describe, f, config.holdout_fraction, pure=False) for f in loaded],
                    fit_timeout_s, "describing the traces")
    groups: dict[str, list[int]] = {}
    for i, info in enumerate(infos):
        groups.setdefault(info["architecture"], []).append(i)
    written = []
    for arch, idx in groups.items():
        artifact = _train_group(client, arch, [loaded[i] for i in idx], [infos[i] for i in idx], config, len(workers),
                                fit_timeout_s)
        for i in idx:  # this architecture's traces leave the workers' memory
            loaded[i] = None
        folder = save_artifact(artifact, out)
        written.append(folder)
        tr, m = artifact.meta["training"], artifact.meta["metrics"]
        log(f"{arch}: {len(idx)} trace(s) on {len(workers)} dask worker(s), {tr['reads']} reads, {tr['contexts']} contexts "
            f"({tr['deterministic_contexts']} deterministic), {tr['rows']} rows, {tr['seconds']:.1f} s -> {folder}")  # fmt: skip
        if "learned" in m:
            log("  held-out steps, recall@{D}: learned {l:.2%}  replay {r:.2%}  markov {k:.2%}  (threshold {t})".format(
                D=config.lookahead, l=m["learned"]["recall"], r=m["replay"]["recall"], k=m["markov"]["recall"],
                t=artifact.threshold))  # fmt: skip
    return written


def _fit(model: Any, X: Any, y: Any, timeout_s: float | None) -> None:
    """model.fit, watched: FitHung if it has not returned within `timeout_s` (its thread is
    left to the workers' restart, which makes its gather fail)."""
    if timeout_s is None:
        model.fit(X, y, feature_name=list(FEATURES))
        return
    box: dict[str, BaseException] = {}

    def run() -> None:
        try:
            model.fit(X, y, feature_name=list(FEATURES))
        except BaseException as exc:  # noqa: BLE001 (handed to the caller)
            box["error"] = exc

    t = threading.Thread(target=run, name="lightgbm-dask-fit", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise FitHung(f"the distributed LightGBM fit did not finish within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]


def _train_group(client, arch: str, traces: list, infos: list[dict[str, Any]], config: TrainConfig,
                 num_workers: int, fit_timeout_s: float | None = None):  # fmt: skip
    import lightgbm as lgb

    from predictor.artifact import Artifact
    from predictor.evaluate import HELD_OUT_STEPS
    from predictor.provenance import train_seeds

    t0 = time.perf_counter()
    seen: dict[str, None] = {}
    for info in infos:  # the vocabulary in order of first appearance, as predictor.train
        for k in info["keys"]:
            seen.setdefault(k, None)
    keyinfo = KeyInfo.from_keys(list(seen))
    D = config.lookahead
    kf = client.scatter(keyinfo, broadcast=True)

    def counts_for(steps_of) -> TableCounts:
        futs = [client.submit(_counts, t, kf, steps_of(info), D, pure=False) for t, info in zip(traces, infos)]
        return TableCounts.merge(_gather(client, futs, fit_timeout_s, "counting contexts"), keyinfo.size, D)

    table_counts = counts_for(lambda info: info["train_steps"])
    table = table_counts.table(config.max_candidates)
    det = table.deterministic()
    halves = [(tr[: len(tr) // 2], tr[len(tr) // 2 :]) for tr in (info["train_steps"] for info in infos)]
    fold_tables = None
    if config.cross_fit:
        # two tables, each from one half of every trace's training steps (as predictor.train)
        by_stem = {info["stem"]: h for info, h in zip(infos, halves)}
        fold_counts = [counts_for(lambda info, f=f: by_stem[info["stem"]][f]) for f in (0, 1)]
        fold_tables = [fold_counts[1 - f].table(config.max_candidates) for f in (0, 1)]
    tf = client.scatter(table, broadcast=True)
    ff = client.scatter(fold_tables, broadcast=True) if fold_tables is not None else None
    rows = [client.submit(_rows, t, kf, tf, ff, info["train_steps"], h, config, pure=False)
            for t, info, h in zip(traces, infos, halves)]  # fmt: skip
    shapes = _gather(client, [client.submit(_shape, r, pure=False) for r in rows], fit_timeout_s, "building rows")
    total = sum(n for n, _ in shapes)
    # the same subset as local training: one draw over the rows in trace order
    keeps: list[np.ndarray | None] = [None] * len(rows)
    if total > config.max_rows:
        keep = np.sort(np.random.default_rng(config.seed).choice(total, config.max_rows, replace=False))
        bounds = np.cumsum([0] + [n for n, _ in shapes])
        keeps = [keep[(keep >= lo) & (keep < hi)] - lo for lo, hi in zip(bounds[:-1], bounds[1:])]
    sizes = [n if k is None else len(k) for (n, _), k in zip(shapes, keeps)]
    params = lgb_params(config)
    Xs = [client.submit(_take, r, k, 0, pure=False) for r, k in zip(rows, keeps)]
    ys = [client.submit(_take, r, k, 1, pure=False) for r, k in zip(rows, keeps)]
    y_sum = _gather(client, [client.submit(np.sum, y, pure=False) for y in ys], fit_timeout_s, "counting labels")
    n_rows, positives = sum(sizes), int(sum(y_sum))
    if positives == 0 or positives == n_rows:  # one class: predictor.train's constant model, locally
        from predictor.train import fit_booster

        X = np.concatenate(_gather(client, Xs, fit_timeout_s, "gathering rows")) if Xs else np.zeros((0, len(FEATURES)), np.float32)
        y = np.concatenate(_gather(client, ys, fit_timeout_s, "gathering labels")) if ys else np.zeros(0, np.int8)
        static = static_columns(table, keyinfo)
        X = np.concatenate([X, static[:1], static[:1]]) if len(static) else np.zeros((2, len(FEATURES)), np.float32)
        y = np.concatenate([y, [0, 1]]).astype(np.int8)
        booster = fit_booster(X, y, params, config.num_trees)
        n_rows, positives, parts = len(y), int(y.sum()), 0
    else:
        import dask.array as da

        from lightgbm import DaskLGBMClassifier

        live = [i for i, n in enumerate(sizes) if n > 0]  # LightGBM's Dask interface wants no empty parts
        X = da.concatenate([da.from_delayed(Xs[i], shape=(sizes[i], len(FEATURES)), dtype=np.float32) for i in live])
        y = da.concatenate([da.from_delayed(ys[i], shape=(sizes[i],), dtype=np.int8) for i in live])
        model = DaskLGBMClassifier(
            client=client, objective=params["objective"], num_leaves=params["num_leaves"],
            learning_rate=params["learning_rate"], min_child_samples=params["min_data_in_leaf"],
            n_estimators=config.num_trees, random_state=params["seed"], deterministic=True, force_row_wise=True,
            verbose=-1,
        )  # threads: LightGBM's Dask interface uses each worker's own thread count  # fmt: skip
        # its "Finding random open ports" goes to stdout; its n_jobs warning is about a default we never set
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
            _fit(model, X, y, fit_timeout_s)
        booster = lgb.Booster(model_str=model.booster_.model_to_string())
        parts = len(live)
    fit_s = time.perf_counter() - t0

    meta: dict[str, Any] = {
        "training_data": [
            {"trace": i["stem"], "workload": i["identity"]["workload"], "seed": i["identity"]["seed"],
             "steps": i["train_steps"], "holdout_steps": i["holdout_steps"],
             "step_order_hashes": i["identity"]["step_order_hashes"]}
            for i in infos
        ],  # fmt: skip
        "model_class": infos[0]["model_class"],
        "training": {
            "traces": [{"stem": i["stem"], "workload": i["workload"], "seed": i["seed"], "fingerprint": i["fingerprint"],
                        "train_steps": i["train_steps"], "holdout_steps": i["holdout_steps"]} for i in infos],  # fmt: skip
            "reads": table_counts.reads,
            "contexts": table.num_contexts,
            "deterministic_contexts": int(det.sum()),
            "rows": int(n_rows),
            "positives": int(positives),
            "params": params,
            "num_trees": booster.num_trees(),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
            "dask": {"scheduler": client.scheduler.address, "workers": num_workers, "partitions": parts},
        },
    }
    meta["train_seeds"] = list(train_seeds({"training_data": meta["training_data"]}))
    artifact = Artifact(architecture=arch, keyinfo=keyinfo, table=table, booster=booster,
                        threshold=config.thresholds[-1], meta=meta)  # fmt: skip

    # the threshold and held-out metrics, scored where the traces are
    held = [(t, i["holdout_steps"]) for t, i in zip(traces, infos) if i["holdout_steps"]]
    metrics: dict[str, Any] = {"scope": HELD_OUT_STEPS, "lookahead": D}
    if held:
        af = client.scatter(artifact, broadcast=True)
        scores = _gather(client, [client.submit(_evaluate, t, af, list(config.thresholds), ho, D, pure=False)
                                  for t, ho in held], fit_timeout_s, "scoring the thresholds")  # fmt: skip
        learned = pick_threshold(artifact, config.thresholds, metrics, lambda thr: [s["learned"][thr] for s in scores])
        held_out_metrics(metrics, learned, [s["base"] for s in scores])
    finish_meta(artifact, meta, metrics, fit_s, t0)
    return artifact

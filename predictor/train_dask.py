"""Training on a Dask cluster: the same artifact as predictor.train, the work where the data is.

    prefetch train traces/ --out models/ --dask local:4            # a LocalCluster here
    prefetch train /shared/traces/ --out models/ --dask tcp://sched:8786

Why: a fleet of jobs records more traces than one process should read. Here the client
never reads an event. The steps, in the order they run:

1. A worker lists the trace files under the given paths (the workers must see them).
2. Each trace file is loaded by one worker (spread round robin) and stays in that
   worker's memory as a future; later tasks on it run where it is.
3. Each worker describes its traces (architecture, tensor keys, steps, provenance): the
   client builds each architecture's vocabulary from the keys, as local training does.
4. The candidate table: each worker counts, for its traces' training steps, the
   occurrences of each context and of each (context, candidate, first distance) triple.
   The client adds the counts up and builds the table from them. Distances are integers
   in 1..D, so these counts hold the whole distance distribution and the median is exact:
   the table is *equal* to local training's (tests/predictor/test_train_dask.py checks it).
5. Each worker computes the feature rows and labels of its traces (predictor.features_offline,
   the same code as local training) and keeps them. The row cap (`max_rows`) draws the
   same random subset as local training (the same generator over the same global order).
6. LightGBM trains with its Dask interface (`lightgbm.DaskLGBMClassifier`): one
   LightGBM process per worker holding rows, talking over its own sockets. Distributed
   LightGBM finds histogram bins per worker, so the trees can differ slightly from a
   local fit on the same rows (held-out quality within a point on the sample traces).
7. The score threshold and the held-out metrics are computed by the workers on the
   held-out steps of their traces, then the client writes the artifact: LightGBM's text
   model and JSON (predictor.artifact), as local training. Nothing in it is pickled;
   Dask itself pickles the tasks, their arguments and results between the client and
   the workers (cloudpickle), so only join a scheduler you trust.

When a group's rows hold a single class (a static architecture: every context is
deterministic), the rows are gathered and the constant model is fit locally, as
predictor.train does: there is nothing to distribute.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from predictor.candidates import CandidateTable, rank_candidates, static_columns
from predictor.features import FEATURES, KeyInfo
from predictor.features_offline import pair_features, pair_labels
from predictor.read_sequence import ReadSeq, SeqContext, read_sequence, sequence_context
from predictor.train import (TrainConfig, finish_meta, held_out_metrics, lgb_params, out_of_fold_stats, pick_threshold,
                             split_steps)
from runtime.trace_format import Trace, TraceError

DEFAULT_CONNECT_TIMEOUT_S = 10.0
_ADDRESS = re.compile(r"^(?:(tcp|tls|ws|wss)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


class DaskError(RuntimeError):
    """The cluster cannot be started or reached; the message is one line for the CLI."""


@dataclass(frozen=True, slots=True)
class DaskTarget:
    """Where to train: a LocalCluster of `workers` processes, or a running scheduler at `address`."""

    workers: int | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        if (self.workers is None) == (self.address is None):
            raise ValueError("a DaskTarget is either local (workers) or remote (address)")
        if self.workers is not None and not 1 <= self.workers <= 256:
            raise ValueError(f"local:N needs 1 <= N <= 256, got {self.workers}")

    @classmethod
    def parse(cls, text: str) -> "DaskTarget":
        """`local:N` or a scheduler address (`tcp://host:8786`, `host:8786`, tls/ws/wss)."""
        text = text.strip()
        if text.startswith("local"):
            n = text[len("local") :]
            if not re.fullmatch(r":\d{1,4}", n):
                raise ValueError(f"{text!r}: expected local:N with N workers, e.g. local:2")
            return cls(workers=int(n[1:]))
        m = _ADDRESS.match(text)
        if not m:
            raise ValueError(f"{text!r}: expected local:N or a scheduler address like tcp://host:8786")
        if not 1 <= int(m.group(3)) <= 65535:
            raise ValueError(f"{text!r}: port must be in 1..65535")
        return cls(address=text if m.group(1) else f"tcp://{text}")

    def __str__(self) -> str:
        return f"local:{self.workers}" if self.workers is not None else str(self.address)


@contextmanager
def dask_client(target: DaskTarget, *, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> Iterator[Any]:
    """A distributed.Client on `target`; a LocalCluster (processes, one thread each,
    loopback, no dashboard) is started and stopped here."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise DaskError("--dask needs the dask extra: pip install 'learned-prefetch[dask]'") from None
    if target.workers is not None:
        cluster = LocalCluster(n_workers=target.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=logging.ERROR,
                               # its HTTP routes (health, metrics) on a free loopback port, not 0.0.0.0:8787
                               scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})  # fmt: skip
        try:
            with Client(cluster) as client:
                check_workers(client, target)
                yield client
        finally:
            cluster.close()
        return
    try:
        client = Client(target.address, timeout=connect_timeout_s)
    except (OSError, TimeoutError) as exc:
        raise DaskError(f"--dask {target}: no scheduler answered within {connect_timeout_s:g} s "
                        f"({' '.join(str(exc).split())[:160]})") from None  # fmt: skip
    try:
        if not client.scheduler_info().get("workers"):
            client.wait_for_workers(1, timeout=connect_timeout_s)
    except (OSError, TimeoutError):
        client.close()
        raise DaskError(f"--dask {target}: the scheduler has no workers (waited {connect_timeout_s:g} s)") from None
    try:
        check_workers(client, target)
        yield client
    finally:
        client.close()


def _versions() -> dict[str, str]:
    """What must match between the client and every worker: the tasks are pickled code of
    this project, and the rows, tables and models they exchange are numpy, Arrow and LightGBM objects."""
    import platform

    import dask
    import distributed

    from predictor.artifact import versions

    v = dict(versions())
    v["python"] = ".".join(platform.python_version_tuple()[:2])  # pickles need the same minor version
    v.update(dask=dask.__version__, distributed=distributed.__version__)
    return v


def check_workers(client, target: DaskTarget) -> None:
    """Every worker runs this project with the client's versions (else DaskError, one line)."""
    try:
        theirs = client.run(_versions)
    except Exception as exc:  # a worker that cannot import this module fails here, with its own error type
        raise DaskError(f"--dask {target}: the workers cannot run this project's code (install learned-prefetch[dask] "
                        f"in the workers' environment): {' '.join(str(exc).split())[:160]}") from None  # fmt: skip
    ours = _versions()
    for worker, v in sorted(theirs.items()):
        for name, mine in ours.items():
            if v.get(name) != mine:
                raise DaskError(f"--dask {target}: worker {worker} has {name} {v.get(name)}, this client {mine}; "
                                "install the same versions on the client and every worker")  # fmt: skip


# --- the candidate table from per-trace counts ------------------------------------------


@dataclass(frozen=True, slots=True)
class TableCounts:
    """The sufficient statistics of predictor.candidates.build_table over some reads: how
    often each context occurs (with a next read), and how often each (context, candidate)
    pair is first followed at each distance j in 1..D. Counts add across traces."""

    vocab_size: int
    lookahead: int
    reads: int  # reads counted (training statistics only)
    ctx: np.ndarray  # int64 context codes, sorted, unique
    ctx_n: np.ndarray  # int64 occurrences
    pair: np.ndarray  # int64 ctx * V + candidate, sorted (then by off)
    off: np.ndarray  # int64 first distance j
    n: np.ndarray  # int64 occurrences of (pair, off)

    @classmethod
    def of(cls, seq: ReadSeq, sc: SeqContext, vocab_size: int, lookahead: int) -> "TableCounts":
        """The counts of one read sequence (the pairing is build_table's, step for step)."""
        V = np.int64(max(vocab_size, 1))
        n = len(seq)
        ctx_all = sc.ctx[(sc.ctx >= 0) & (np.arange(n) < n - 1)]
        t_list, c_list, j_list = [], [], []
        for j in range(1, lookahead + 1):
            t = np.arange(max(n - j, 0))
            ok = (sc.ctx[t] >= 0) & (seq.vid[t + j] >= 0)
            t_list.append(t[ok])
            c_list.append(seq.vid[t + j][ok])
            j_list.append(np.full(int(ok.sum()), j, dtype=np.int64))
        t = np.concatenate(t_list) if t_list else np.zeros(0, np.int64)
        c = np.concatenate(c_list) if c_list else np.zeros(0, np.int64)
        j = np.concatenate(j_list) if j_list else np.zeros(0, np.int64)
        key = t * V + c  # first occurrence of each candidate after each read: smallest j per (t, c)
        order = np.lexsort((j, key))
        key, j = key[order], j[order]
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        t, c, j = key[first] // V, key[first] % V, j[first]
        return cls._reduce(vocab_size, lookahead, n, ctx_all, np.ones(len(ctx_all), np.int64),
                           sc.ctx[t] * V + c, j, np.ones(len(t), np.int64))  # fmt: skip

    @classmethod
    def merge(cls, parts: Sequence["TableCounts"], vocab_size: int, lookahead: int) -> "TableCounts":
        """The counts of all parts' reads together (sums)."""
        for p in parts:
            if p.vocab_size != vocab_size or p.lookahead != lookahead:
                raise ValueError("table counts of different vocabularies or horizons cannot be merged")
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts] or [np.zeros(0, np.int64)])  # noqa: E731
        reads = sum(p.reads for p in parts)
        return cls._reduce(vocab_size, lookahead, reads, cat("ctx"), cat("ctx_n"), cat("pair"), cat("off"), cat("n"))

    @classmethod
    def _reduce(cls, V, D, reads, ctx, ctx_n, pair, off, n) -> "TableCounts":
        ctx = np.asarray(ctx, np.int64)
        u_ctx, inv = np.unique(ctx, return_inverse=True)
        u_ctx_n = np.bincount(inv.ravel(), weights=ctx_n, minlength=len(u_ctx)).astype(np.int64)
        key = np.asarray(pair, np.int64) * (D + 1) + np.asarray(off, np.int64)
        u_key, kinv = np.unique(key, return_inverse=True)
        u_n = np.bincount(kinv.ravel(), weights=n, minlength=len(u_key)).astype(np.int64)
        return cls(V, D, int(reads), u_ctx, u_ctx_n, u_key // (D + 1), u_key % (D + 1), u_n)

    def table(self, max_candidates: int) -> CandidateTable:
        """The candidate table: equal to build_table over the same reads."""
        V = np.int64(max(self.vocab_size, 1))
        if len(self.pair) == 0:
            empty = np.zeros(0, dtype=np.int64)
            return CandidateTable(self.lookahead, max_candidates, empty, np.zeros(1, np.int64), empty, empty,
                                  np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.int16))  # fmt: skip
        # per pair: total count and the lower median distance (build_table's po[first + (count - 1) // 2])
        uniq, first_i = np.unique(self.pair, return_index=True)
        cum = np.cumsum(self.n)
        base = np.concatenate([[0], cum[:-1]])[first_i]
        count = np.append(base[1:], cum[-1]) - base
        median_off = self.off[np.searchsorted(cum, base + (count - 1) // 2, side="right")].astype(np.float64)
        return rank_candidates(uniq, count, median_off, self.ctx, self.ctx_n, V, self.lookahead, max_candidates)


# --- tasks (run on the workers; module-level so Dask ships them by reference) ----------------


def is_uri(path: str) -> bool:
    """A pyarrow filesystem URI (s3://bucket/traces, gs://..., file:///...), not a local path."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", str(path)) is not None


def _find(paths: list[str]) -> list[str]:
    """Every trace stem under `paths` (local paths as runtime.trace_format.find_traces; URIs through pyarrow.fs)."""
    from pyarrow import fs

    from runtime.trace_format import EVENTS_SUFFIX, MANIFEST_SUFFIX, TENSORS_SUFFIX, find_traces

    SUFFIXES = (EVENTS_SUFFIX, TENSORS_SUFFIX, MANIFEST_SUFFIX)

    local = [p for p in paths if not is_uri(p)]
    stems = [str(s) for s in find_traces(local)] if local else []
    for uri in (p for p in paths if is_uri(p)):
        try:
            filesystem, root = fs.FileSystem.from_uri(uri)
            info = filesystem.get_file_info(root)
            if info.type == fs.FileType.Directory:
                found = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
                rel = sorted(f.path[len(root.rstrip("/")) + 1 : -len(EVENTS_SUFFIX)] for f in found
                             if f.type == fs.FileType.File and f.path.endswith(EVENTS_SUFFIX))  # fmt: skip
                if not rel:
                    raise TraceError(f"{uri}: no traces (*{EVENTS_SUFFIX}) found")
                stems += [uri.rstrip("/") + "/" + r for r in rel]
            else:  # one trace, named by its stem or any of its files
                stem = next((uri[: -len(s)] for s in SUFFIXES if uri.endswith(s)), uri)
                if filesystem.get_file_info(fs.FileSystem.from_uri(stem)[1] + EVENTS_SUFFIX).type != fs.FileType.File:
                    raise TraceError(f"{uri}: no such trace file or directory")
                stems.append(stem)
        except (OSError, ValueError) as exc:
            if isinstance(exc, TraceError):
                raise
            raise TraceError(f"{uri}: cannot list it ({' '.join(str(exc).split())[:160]})") from None
    return stems


def _load(stem: str) -> Trace:
    """Load one trace on this worker (a URI's three files are copied to a temporary folder first)."""
    import shutil
    import tempfile

    from runtime.trace_format import EVENTS_SUFFIX, MANIFEST_SUFFIX, TENSORS_SUFFIX, load_trace

    if not is_uri(stem):
        return load_trace(stem).managed()  # policies see the managed stream
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(stem)
    folder = Path(tempfile.mkdtemp(prefix="prefetch-trace-"))
    try:
        local = folder / path.rsplit("/", 1)[-1]
        for suffix in (EVENTS_SUFFIX, TENSORS_SUFFIX, MANIFEST_SUFFIX):
            if filesystem.get_file_info(path + suffix).type != fs.FileType.File:
                continue  # load_trace names what is missing
            with filesystem.open_input_stream(path + suffix) as src, open(str(local) + suffix, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        return load_trace(local).managed()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _describe(trace: Trace, holdout_fraction: float) -> dict[str, Any]:
    from predictor.evaluate import trace_fingerprint
    from runtime.trace_identity import trace_identity

    if not trace.architecture:
        raise TraceError(f"{trace.stem}: the manifest names no architecture; re-record with this version")
    train_steps, holdout_steps = split_steps(trace, holdout_fraction)
    return {
        "stem": trace.stem.name,
        "architecture": trace.architecture,
        "keys": trace.keys,
        "train_steps": train_steps,
        "holdout_steps": holdout_steps,
        "workload": trace.manifest.get("workload"),
        "seed": trace.manifest.get("seed"),
        "model_class": trace.manifest.get("model_class"),
        "fingerprint": trace_fingerprint(trace),
        "identity": trace_identity(trace),
    }


def _sequence(trace: Trace, keyinfo: KeyInfo, steps: Sequence[int]) -> tuple[ReadSeq, SeqContext]:
    seq = read_sequence(trace, {k: i for i, k in enumerate(keyinfo.keys)}, steps)
    return seq, sequence_context(seq, keyinfo)


def _counts(trace: Trace, keyinfo: KeyInfo, steps: Sequence[int], lookahead: int) -> TableCounts:
    seq, sc = _sequence(trace, keyinfo, steps)
    return TableCounts.of(seq, sc, keyinfo.size, lookahead)


def _rows(trace: Trace, keyinfo: KeyInfo, table: CandidateTable, fold_tables: list[CandidateTable] | None,
          train_steps: list[int], halves: tuple[list[int], list[int]],
          config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(X, y) of one trace: predictor.train's loop body for one training sequence."""
    seq, sc = _sequence(trace, keyinfo, train_steps)
    det = table.deterministic()
    ci = table.lookup(sc.ctx)
    pos = np.flatnonzero((ci >= 0) & ~det[np.maximum(ci, 0)])
    if len(pos) == 0:
        return np.zeros((0, len(FEATURES)), np.float32), np.zeros(0, np.int8)
    ex = pair_features(seq, sc, table, keyinfo, static_columns(table, keyinfo), positions=pos)
    y = pair_labels(seq, ex.t, ex.cand, config.lookahead)
    if fold_tables is not None:
        out_of_fold_stats(ex, seq, sc, fold_tables, halves[1], keyinfo)
    for name in config.drop_features:
        ex.X[:, FEATURES.index(name)] = 0
    return ex.X, y


def _shape(rows: tuple[np.ndarray, np.ndarray]) -> tuple[int, int]:
    return len(rows[1]), int(rows[1].sum())


def _take(rows: tuple[np.ndarray, np.ndarray], keep: np.ndarray | None, column: int) -> np.ndarray:
    """X (column 0) or y (column 1) of a part, restricted to the `keep` rows if given."""
    a = rows[column]
    return a if keep is None else a[keep]


def _evaluate(trace: Trace, artifact, thresholds: Sequence[float], steps: list[int], lookahead: int) -> dict[str, Any]:
    """The held-out scores of one trace: the learned policy at each threshold, and the baselines."""
    from predictor.evaluate import HELD_OUT_STEPS, evaluate_trace
    from predictor.model import LearnedPolicy
    from predictor.policies import make_policy

    learned = {thr: evaluate_trace(trace, {"learned": LearnedPolicy(artifact, lookahead, threshold=thr)},
                                   scope=HELD_OUT_STEPS, steps=steps, lookahead=lookahead)
               for thr in thresholds}  # fmt: skip
    policies = {"replay": make_policy("replay", lookahead=lookahead), "markov": make_policy("markov", lookahead=lookahead)}
    base = evaluate_trace(trace, policies, scope=HELD_OUT_STEPS, steps=steps, lookahead=lookahead)
    return {"learned": learned, "base": base}


# --- the client ---------------------------------------------------------------------------


def train_dask(
    paths: Sequence[str | Path],
    out: str | Path,
    config: TrainConfig | None = None,
    *,
    dask: str | DaskTarget = "local:2",
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    log=print,
) -> list[Path]:
    """predictor.train.train on a Dask cluster: one artifact per architecture under `out`."""
    target = dask if isinstance(dask, DaskTarget) else DaskTarget.parse(dask)
    with dask_client(target, connect_timeout_s=connect_timeout_s) as client:
        return train_on_client(client, paths, out, config, log=log)


def train_on_client(client, paths: Sequence[str | Path], out: str | Path, config: TrainConfig | None = None,
                    *, log=print) -> list[Path]:  # fmt: skip
    """Train with a connected distributed.Client (see the module docstring for the steps)."""
    from predictor.artifact import save_artifact

    config = config or TrainConfig()
    # absolute paths: the workers' working directory is not the client's
    stems = client.submit(_find, [str(p) if is_uri(str(p)) else str(Path(p).absolute()) for p in paths],
                          pure=False).result()  # fmt: skip
    workers = sorted(client.scheduler_info()["workers"])
    loaded: list[Any] = [
        client.submit(_load, s, workers=[workers[i % len(workers)]], allow_other_workers=True, pure=False)
        for i, s in enumerate(stems)
    ]
    infos = client.gather([client.submit(_describe, f, config.holdout_fraction, pure=False) for f in loaded])
    groups: dict[str, list[int]] = {}
    for i, info in enumerate(infos):
        groups.setdefault(info["architecture"], []).append(i)
    written = []
    for arch, idx in groups.items():
        artifact = _train_group(client, arch, [loaded[i] for i in idx], [infos[i] for i in idx], config, len(workers))
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


def _train_group(client, arch: str, traces: list, infos: list[dict[str, Any]], config: TrainConfig,
                 num_workers: int):  # fmt: skip
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
        return TableCounts.merge(client.gather(futs), keyinfo.size, D)

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
    shapes = client.gather([client.submit(_shape, r, pure=False) for r in rows])
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
    y_sum = client.gather([client.submit(np.sum, y, pure=False) for y in ys])
    n_rows, positives = sum(sizes), int(sum(y_sum))
    if positives == 0 or positives == n_rows:  # one class: predictor.train's constant model, locally
        from predictor.train import fit_booster

        X = np.concatenate(client.gather(Xs)) if Xs else np.zeros((0, len(FEATURES)), np.float32)
        y = np.concatenate(client.gather(ys)) if ys else np.zeros(0, np.int8)
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
            model.fit(X, y, feature_name=list(FEATURES))
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
        scores = client.gather([client.submit(_evaluate, t, af, list(config.thresholds), ho, D, pure=False)
                                for t, ho in held])  # fmt: skip
        learned = pick_threshold(artifact, config.thresholds, metrics, lambda thr: [s["learned"][thr] for s in scores])
        held_out_metrics(metrics, learned, [s["base"] for s in scores])
    finish_meta(artifact, meta, metrics, fit_s, t0)
    return artifact




"""The tasks of Dask training that run on the workers, where the traces are (module level, so
Dask ships them by reference), and `TableCounts`: the candidate table as summable counts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from predictor.candidates import CandidateTable, rank_candidates, static_columns
from predictor.features import FEATURES, KeyInfo
from predictor.features_offline import pair_features, pair_labels
from predictor.read_sequence import ReadSeq, SeqContext, read_sequence, sequence_context
from predictor.train import TrainConfig, out_of_fold_stats, split_steps
from runtime.trace_format import Trace, TraceError


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

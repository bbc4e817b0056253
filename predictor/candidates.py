"""The candidate table: per context, the tensors that followed it within D reads in training
(the learned policy ranks only these), and the columns of each row that no session changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from predictor.features import F, FEATURES, KeyInfo, _dlayer, decode_context
from predictor.read_sequence import ReadSeq, SeqContext


# --- the candidate table ---------------------------------------------------------------


@dataclass
class CandidateTable:
    """Per context code, up to `max_candidates` tensors seen within `lookahead` reads
    after it in training, sorted by median distance (the order they are requested in)."""

    lookahead: int
    max_candidates: int
    ctx: np.ndarray  # int64 (C,) sorted context codes
    start: np.ndarray  # int64 (C+1,) rows of each context in the arrays below
    n: np.ndarray  # int64 (C,) occurrences of the context in training
    cand: np.ndarray  # int64 (K,) vocab ids
    p: np.ndarray  # float32 (K,)
    off: np.ndarray  # float32 (K,) median distance of the first read after the context
    rank: np.ndarray  # int16 (K,) rank by frequency within the context

    @property
    def num_contexts(self) -> int:
        return len(self.ctx)

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        """Row index of each context code in `ctx`, -1 if unseen."""
        codes = np.asarray(codes, dtype=np.int64)
        if not len(self.ctx):
            return np.full(codes.shape, -1, dtype=np.int64)
        i = np.minimum(np.searchsorted(self.ctx, codes), len(self.ctx) - 1)
        return np.where(self.ctx[i] == codes, i, -1)

    def stats(self, codes: np.ndarray, cand: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(p, rank, n) of arbitrary (context, candidate) pairs: 0, max_candidates and
        the context's count (0 if unseen) where the pair is not in the table."""
        V = np.int64(max(vocab_size, 1))
        codes = np.asarray(codes, dtype=np.int64)
        ci = self.lookup(codes)
        n = np.where(ci >= 0, self.n[np.maximum(ci, 0)] if len(self.n) else 0, 0)
        if not len(self.cand):
            z = np.zeros(len(codes))
            return z, np.full(len(codes), self.max_candidates), n
        keys = np.repeat(self.ctx, np.diff(self.start)) * V + self.cand
        order = np.argsort(keys)
        ks = keys[order]
        q = codes * V + np.asarray(cand, dtype=np.int64)
        i = np.minimum(np.searchsorted(ks, q), len(ks) - 1)
        found = ks[i] == q
        row = order[i]
        return np.where(found, self.p[row], 0.0), np.where(found, self.rank[row], self.max_candidates), n

    def deterministic(self) -> np.ndarray:
        """(C,) bool: every candidate followed every occurrence of the context, and
        none was cut off by max_candidates. The policy skips the model there."""
        sizes = np.diff(self.start)
        full = np.add.reduceat(self.p >= 1.0, self.start[:-1]) if len(self.p) else np.zeros(0, int)
        return (full == sizes) & (sizes > 0)

    def to_json(self) -> dict:
        return {
            "lookahead": self.lookahead,
            "max_candidates": self.max_candidates,
            "ctx": self.ctx.tolist(),
            "start": self.start.tolist(),
            "n": self.n.tolist(),
            "cand": self.cand.tolist(),
            "p": [round(float(x), 6) for x in self.p],
            "off": [round(float(x), 4) for x in self.off],
            "rank": self.rank.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict) -> "CandidateTable":
        t = cls(
            lookahead=int(d["lookahead"]),
            max_candidates=int(d["max_candidates"]),
            ctx=np.asarray(d["ctx"], dtype=np.int64),
            start=np.asarray(d["start"], dtype=np.int64),
            n=np.asarray(d["n"], dtype=np.int64),
            cand=np.asarray(d["cand"], dtype=np.int64),
            p=np.asarray(d["p"], dtype=np.float32),
            off=np.asarray(d["off"], dtype=np.float32),
            rank=np.asarray(d["rank"], dtype=np.int16),
        )
        c, k = len(t.ctx), len(t.cand)
        if len(t.start) != c + 1 or len(t.n) != c or t.start[-1] != k or not (len(t.p) == len(t.off) == len(t.rank) == k):
            raise ValueError("inconsistent candidate table arrays")
        return t


def build_table(
    seqs: Sequence[tuple[ReadSeq, SeqContext]], vocab_size: int, lookahead: int, max_candidates: int
) -> CandidateTable:
    """Count, over all training reads, which tensors follow each context within `lookahead` reads."""
    V = np.int64(max(vocab_size, 1))
    pair_ctx, pair_cand, pair_off, ctx_all = [], [], [], []
    for seq, sc in seqs:
        n = len(seq)
        has_next = np.arange(n) < n - 1
        ctx_all.append(sc.ctx[(sc.ctx >= 0) & has_next])
        t_list, c_list, j_list = [], [], []
        for j in range(1, lookahead + 1):  # D vectorised passes, not a loop over events
            t = np.arange(n - j)
            ok = (sc.ctx[t] >= 0) & (seq.vid[t + j] >= 0)
            t_list.append(t[ok])
            c_list.append(seq.vid[t + j][ok])
            j_list.append(np.full(int(ok.sum()), j, dtype=np.int64))
        if not t_list:
            continue
        t = np.concatenate(t_list)
        c = np.concatenate(c_list)
        j = np.concatenate(j_list)
        # first occurrence of each candidate after each read: smallest j per (t, c)
        key = t * V + c
        order = np.lexsort((j, key))
        key, j = key[order], j[order]
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        t, c, j = key[first] // V, key[first] % V, j[first]
        pair_ctx.append(sc.ctx[t])
        pair_cand.append(c)
        pair_off.append(j)
    if not pair_ctx:
        empty = np.zeros(0, dtype=np.int64)
        return CandidateTable(lookahead, max_candidates, empty, np.zeros(1, np.int64), empty, empty,
                              np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.int16))
    pc = np.concatenate(pair_ctx)
    pk = pc * V + np.concatenate(pair_cand)
    po = np.concatenate(pair_off)
    # per (context, candidate): occurrences and the median distance (robust to odd steps,
    # e.g. step 0, which writes the optimizer state instead of reading it)
    order = np.lexsort((po, pk))
    pk, po = pk[order], po[order]
    uniq, first_i, count = np.unique(pk, return_index=True, return_counts=True)
    median_off = po[first_i + (count - 1) // 2].astype(np.float64)
    ctx_codes, ctx_n = np.unique(np.concatenate(ctx_all), return_counts=True)
    return rank_candidates(uniq, count, median_off, ctx_codes, ctx_n, V, lookahead, max_candidates)


def rank_candidates(uniq: np.ndarray, count: np.ndarray, median_off: np.ndarray, ctx_codes: np.ndarray,
                    ctx_n: np.ndarray, V: int, lookahead: int, max_candidates: int) -> CandidateTable:
    """The table from per-pair statistics (pair code ctx * V + cand, its count and median
    distance; each context's count): shared by local and Dask training, so both rank alike."""
    u_ctx, u_cand = uniq // V, uniq % V
    n_of = ctx_n[np.searchsorted(ctx_codes, u_ctx)]
    # rank by frequency (then nearness) within each context; keep the first max_candidates
    order = np.lexsort((median_off, -count, u_ctx))
    u_ctx, u_cand, count, median_off, n_of = u_ctx[order], u_cand[order], count[order], median_off[order], n_of[order]
    first = np.ones(len(u_ctx), dtype=bool)
    first[1:] = u_ctx[1:] != u_ctx[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(u_ctx)), 0))
    rank = np.arange(len(u_ctx)) - group_start
    keep = rank < max_candidates
    u_ctx, u_cand, count, median_off, n_of, rank = (a[keep] for a in (u_ctx, u_cand, count, median_off, n_of, rank))
    # within a context, request order = median distance
    order = np.lexsort((u_cand, median_off, u_ctx))
    u_ctx, u_cand, count, median_off, n_of, rank = (a[order] for a in (u_ctx, u_cand, count, median_off, n_of, rank))
    ctx, start = np.unique(u_ctx, return_index=True)
    return CandidateTable(
        lookahead=lookahead,
        max_candidates=max_candidates,
        ctx=ctx.astype(np.int64),
        start=np.append(start, len(u_ctx)).astype(np.int64),
        n=ctx_n[np.searchsorted(ctx_codes, ctx)].astype(np.int64),
        cand=u_cand.astype(np.int64),
        p=(count / n_of).astype(np.float32),
        off=median_off.astype(np.float32),
        rank=rank.astype(np.int16),
    )


def static_columns(table: CandidateTable, keyinfo: KeyInfo) -> np.ndarray:
    """(K, F) float32: the columns of each table row that do not depend on the session
    (the context's own tensor, table statistics, the candidate's key); the dynamic
    context and history columns are filled per decision."""
    k = len(table.cand)
    X = np.zeros((k, len(FEATURES)), dtype=np.float32)
    ctx_of_row = np.repeat(np.arange(table.num_contexts), np.diff(table.start))
    vid, phase, occ = decode_context(table.ctx[ctx_of_row])
    c = table.cand
    X[:, F["phase"]] = phase
    X[:, F["cur_kind"]] = keyinfo.kind[vid]
    X[:, F["occ"]] = occ
    cur_layer = keyinfo.layer[vid]
    X[:, F["cur_layer"]] = cur_layer
    X[:, F["p"]] = table.p
    X[:, F["offset"]] = table.off
    X[:, F["rank"]] = table.rank
    X[:, F["log_n"]] = np.log2(1.0 + table.n[ctx_of_row]).astype(np.float32)
    X[:, F["kind"]] = keyinfo.kind[c]
    X[:, F["layer"]] = keyinfo.layer[c]
    X[:, F["dlayer"]] = _dlayer(cur_layer, keyinfo.layer[c])
    X[:, F["mtype"]] = keyinfo.mtype[c]
    X[:, F["expert"]] = keyinfo.expert[c]
    X[:, F["call"]] = keyinfo.call[c]
    return X

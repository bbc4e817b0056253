"""The features offline: every (read, candidate) pair of a read sequence, its features and its
label, for training and evaluation (no per-event loop)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from predictor.candidates import CandidateTable, static_columns
from predictor.features import CONTEXT_COLUMNS, F, SINCE_CAP, KeyInfo, _dlayer
from predictor.read_sequence import GroupIndex, ReadSeq, SeqContext


# --- offline: every (read, candidate) pair of a sequence ----------------------------------


@dataclass
class Examples:
    X: np.ndarray  # (P, F) float32
    t: np.ndarray  # (P,) read index of the decision
    cand: np.ndarray  # (P,) candidate vocab id
    row: np.ndarray  # (P,) table row
    ctx_row: np.ndarray  # (P,) table context index


def pair_features(
    seq: ReadSeq,
    sc: SeqContext,
    table: CandidateTable,
    keyinfo: KeyInfo,
    static: np.ndarray | None = None,
    positions: np.ndarray | None = None,
) -> Examples:
    """The feature rows of every (read, candidate) pair at `positions` (default: all reads)."""
    if static is None:
        static = static_columns(table, keyinfo)
    n = len(seq)
    pos = np.arange(n) if positions is None else np.asarray(positions, dtype=np.int64)
    ci = table.lookup(sc.ctx[pos])
    pos, ci = pos[ci >= 0], ci[ci >= 0]
    sizes = table.start[ci + 1] - table.start[ci]
    t = np.repeat(pos, sizes)
    ctx_row = np.repeat(ci, sizes)
    within = np.arange(len(t)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    row = table.start[ctx_row] + within
    c = table.cand[row]

    X = static[row].copy()
    X[:, : len(CONTEXT_COLUMNS)] = sc.columns[t]
    c_layer = keyinfo.layer[c]
    X[:, F["dlayer"]] = _dlayer(sc.columns[t, F["cur_layer"]].astype(np.int64), c_layer)

    by_tensor = GroupIndex(seq.vid)
    X[:, F["h_step"]] = by_tensor.count(c, sc.step_start[t], t)
    X[:, F["h_micro"]] = by_tensor.count(c, sc.micro_start[t], t)
    X[:, F["h_prev_step"]] = by_tensor.count(c, sc.prev_start[t], sc.prev_end[t])
    last = by_tensor.last(c, t)
    X[:, F["h_since"]] = np.where(last >= 0, np.minimum(t - last, SINCE_CAP), SINCE_CAP)
    X[:, F["h_last_phase"]] = np.where(last >= 0, seq.phase[np.maximum(last, 0)], -1)
    # writes seen after the first read of the step (micro-step), up to read t
    by_write = GroupIndex(seq.w_vid, seq.w_pos)
    X[:, F["w_step"]] = by_write.count(c, sc.step_start[t] + 1, t)
    X[:, F["w_micro"]] = by_write.count(c, sc.micro_start[t] + 1, t)

    e_of, el_of, lay_of = keyinfo.expert_groups()
    known = seq.vid >= 0
    vid0 = np.maximum(seq.vid, 0)
    e_reads = GroupIndex(np.where(known, e_of[vid0], -1))
    el_reads = GroupIndex(np.where(known, el_of[vid0], -1))
    lay_reads = GroupIndex(np.where(known, lay_of[vid0], -1))
    is_exp = e_of[c] >= 0
    lo = sc.micro_start[t]
    span = keyinfo.num_layers + 2
    X[:, F["e_micro"]] = np.where(is_exp, e_reads.count(e_of[c], lo, t), -1)
    prev_g = np.where(is_exp & (c_layer >= 1), e_of[c] * span + c_layer, -1)  # layer - 1, +1 offset
    next_g = np.where(is_exp, e_of[c] * span + c_layer + 2, -1)
    X[:, F["e_prev_layer"]] = np.where(is_exp, el_reads.count(prev_g, lo, t), -1)
    X[:, F["e_next_layer"]] = np.where(is_exp, el_reads.count(next_g, lo, t), -1)
    X[:, F["e_layer"]] = np.where(is_exp, lay_reads.count(lay_of[c], lo, t), -1)
    return Examples(X=X, t=t, cand=c, row=row, ctx_row=ctx_row)


def pair_labels(seq: ReadSeq, t: np.ndarray, cand: np.ndarray, lookahead: int) -> np.ndarray:
    """1 where the candidate is read within `lookahead` reads after read t."""
    nxt = GroupIndex(seq.vid).next(cand, t)
    return ((nxt >= 0) & (nxt - t <= lookahead)).astype(np.int8)

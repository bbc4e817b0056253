"""The read sequence of a trace and its per-read context (step, micro-step, occurrence, the
context code), computed for a whole trace at once with sorts and `searchsorted`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from predictor.features import CONTEXT_COLUMNS, EVAL_CAP, F, NUM_PHASES, OCC_CAP, _EVAL, KeyInfo, context_code
from runtime.trace_format import Access, Trace


# --- the read sequence of a trace -----------------------------------------------------


@dataclass
class ReadSeq:
    """The reads of one trace (or a prefix of its steps), in order, with their context."""

    vid: np.ndarray  # int64 vocab id per read, -1 if the key is not in the vocabulary
    phase: np.ndarray  # int64
    step: np.ndarray  # int64
    micro: np.ndarray  # int64
    w_vid: np.ndarray  # int64 vocab id per write
    w_pos: np.ndarray  # int64 reads before each write (it is seen at decision w_pos and later)

    def __len__(self) -> int:
        return len(self.vid)


def read_sequence(trace: Trace, vocab_index: Mapping[str, int], steps: Sequence[int] | None = None) -> ReadSeq:
    """The reads of `trace` (only those of `steps` if given), mapped to vocab ids, and
    the writes between them."""
    access = trace.column("access")
    in_steps = np.ones(len(access), dtype=bool)
    if steps is not None:
        in_steps = np.isin(trace.column("step"), np.asarray(list(steps)))
    is_read = access == int(Access.READ)
    mask = is_read & in_steps
    id_to_vid = np.array([vocab_index.get(k, -1) for k in trace.keys] or [-1], dtype=np.int64)
    tid = trace.column("tensor_id")[mask]
    reads_before = np.cumsum(mask) - mask  # per event: reads of the selection before it
    wmask = ~is_read & in_steps
    return ReadSeq(
        w_vid=id_to_vid[trace.column("tensor_id")[wmask]],
        w_pos=reads_before[wmask].astype(np.int64),
        vid=id_to_vid[tid],
        phase=trace.column("phase")[mask].astype(np.int64),
        step=trace.column("step")[mask].astype(np.int64),
        micro=trace.column("micro_step")[mask].astype(np.int64),
    )


def _starts(changes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From a 'new segment here' mask: segment ordinal per read and start of each segment."""
    ordinal = np.cumsum(changes) - 1
    return ordinal, np.flatnonzero(changes)


def _cumcount(groups: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions share its group."""
    n = len(groups)
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    first = np.ones(n, dtype=bool)
    first[1:] = g[1:] != g[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    out = np.empty(n, dtype=np.int64)
    out[order] = np.arange(n) - start
    return out


@dataclass
class SeqContext:
    """Per-read context of a ReadSeq, vectorised: what OnlineState tracks incrementally."""

    step_ord: np.ndarray
    micro_ord: np.ndarray
    step_start: np.ndarray  # first read of this read's step
    micro_start: np.ndarray
    prev_start: np.ndarray  # first read of the previous step (-1 if none)
    prev_end: np.ndarray  # last read of the previous step (-1 if none)
    occ: np.ndarray
    ctx: np.ndarray  # context code, -1 for reads of unknown tensors
    columns: np.ndarray  # (N, len(CONTEXT_COLUMNS)) float32: the context features


def sequence_context(seq: ReadSeq, keyinfo: KeyInfo) -> SeqContext:
    """Step and micro-step boundaries, occurrences, context codes and context columns of every read."""
    n = len(seq)
    idx = np.arange(n)
    new_step = np.ones(n, dtype=bool)
    new_step[1:] = seq.step[1:] != seq.step[:-1]
    new_micro = new_step.copy()
    new_micro[1:] |= seq.micro[1:] != seq.micro[:-1]
    step_ord, step_starts = _starts(new_step)
    micro_ord, micro_starts = _starts(new_micro)
    num_steps = len(step_starts)
    step_ends = np.append(step_starts[1:], n) - 1
    step_start = step_starts[step_ord]
    micro_start = micro_starts[micro_ord]
    has_prev = step_ord > 0
    prev_ord = np.maximum(step_ord - 1, 0)
    prev_start = np.where(has_prev, step_starts[prev_ord] if num_steps else 0, -1)
    prev_end = np.where(has_prev, step_ends[prev_ord] if num_steps else 0, -1)

    known = seq.vid >= 0
    occ_group = np.where(known, (micro_ord * NUM_PHASES + seq.phase) * (keyinfo.size + 1) + seq.vid, -1)
    occ = _cumcount(occ_group)
    ctx = np.where(known, context_code(np.maximum(seq.vid, 0), seq.phase, occ), -1)

    is_eval = seq.phase == _EVAL
    # eval_in_step: any evaluation read in this step up to and including this read
    eval_count = np.cumsum(is_eval)
    eval_before_step = np.where(step_start > 0, eval_count[np.maximum(step_start - 1, 0)], 0)
    eval_in_step = (eval_count - eval_before_step) > 0
    step_has_eval = np.zeros(num_steps, dtype=bool)
    step_has_eval[step_ord[is_eval]] = True
    last_eval = np.maximum.accumulate(np.where(step_has_eval, np.arange(num_steps), -1)) if num_steps else np.zeros(0, int)
    last_eval_before = np.concatenate([[-1], last_eval[:-1]]) if num_steps else last_eval
    since = np.where(last_eval_before[step_ord] >= 0, step_ord - last_eval_before[step_ord], EVAL_CAP)
    micros_per_step = np.bincount(step_ord[new_micro], minlength=num_steps) if n else np.zeros(0, int)
    prev_micros = np.where(has_prev, micros_per_step[prev_ord] if num_steps else 0, 0)
    pos = idx - step_start
    prev_len = np.where(has_prev, prev_end - prev_start + 1, 0)
    pos_frac = np.where(prev_len > 0, pos / np.maximum(prev_len, 1), -1.0)

    cur_kind = np.where(known, keyinfo.kind[np.maximum(seq.vid, 0)], -1)
    cur_layer = np.where(known, keyinfo.layer[np.maximum(seq.vid, 0)], -1)
    cols = np.empty((n, len(CONTEXT_COLUMNS)), dtype=np.float32)
    cols[:, F["phase"]] = seq.phase
    cols[:, F["cur_kind"]] = cur_kind
    cols[:, F["micro_step"]] = np.minimum(seq.micro, 63)
    cols[:, F["occ"]] = np.minimum(occ, OCC_CAP)
    cols[:, F["pos_in_step"]] = pos
    cols[:, F["pos_frac"]] = pos_frac.astype(np.float32)
    cols[:, F["cur_layer"]] = cur_layer
    cols[:, F["steps_since_eval"]] = np.minimum(since, EVAL_CAP)
    cols[:, F["eval_in_step"]] = eval_in_step
    cols[:, F["prev_micro_steps"]] = prev_micros
    return SeqContext(step_ord, micro_ord, step_start, micro_start, prev_start, prev_end, occ, ctx, cols)


class GroupIndex:
    """Positions of events by group (tensor, expert, ...), for counts over position ranges.

    Positions default to the index (reads); writes pass theirs (repeats allowed)."""

    def __init__(self, groups: np.ndarray, positions: np.ndarray | None = None) -> None:
        n = len(groups)
        pos = np.arange(n, dtype=np.int64) if positions is None else np.asarray(positions, dtype=np.int64)
        self.mult = np.int64((int(pos.max()) if n else 0) + 2)
        order = np.lexsort((pos, groups))
        keep = groups[order] >= 0
        order = order[keep]
        self.keys = groups[order].astype(np.int64) * self.mult + pos[order]

    def count(self, g: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Reads of group g at positions lo..hi (inclusive); 0 where g < 0 or lo < 0."""
        base = np.maximum(g, 0) * self.mult
        out = np.searchsorted(self.keys, base + hi, "right") - np.searchsorted(self.keys, base + np.maximum(lo, 0), "left")
        return np.where((g >= 0) & (lo >= 0) & (hi >= lo), out, 0)

    def last(self, g: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The last position <= t with group g, -1 if none."""
        i = np.searchsorted(self.keys, np.maximum(g, 0) * self.mult + t, "right") - 1
        k = self.keys[np.maximum(i, 0)] if len(self.keys) else np.zeros_like(i)
        ok = (i >= 0) & (k // self.mult == g) & (g >= 0)
        return np.where(ok, k % self.mult, -1)

    def next(self, g: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The first position > t with group g, -1 if none."""
        i = np.searchsorted(self.keys, np.maximum(g, 0) * self.mult + t, "right")
        k = self.keys[np.minimum(i, len(self.keys) - 1)] if len(self.keys) else np.zeros_like(i)
        ok = (i < len(self.keys)) & (k // self.mult == g) & (g >= 0)
        return np.where(ok, k % self.mult, -1)

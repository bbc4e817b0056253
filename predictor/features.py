"""Features and labels of the learned policy: one definition, computed two ways.

    seq = read_sequence(trace, vocab); sc = sequence_context(seq, keyinfo)    # offline, a whole trace
    ex = pair_features(seq, sc, table, keyinfo); y = pair_labels(seq, ex.t, ex.cand, D)
    state = OnlineState(keyinfo); code = state.read(vid, step, micro, phase)  # online, one read
    state.fill(X, cand, expert_idx)                                           # the same rows

The learning problem is candidate ranking (docs/predictor.md says why): after each
read, the *context* (tensor, phase, occurrence of that tensor in its micro-step and
phase) selects up to `max_candidates` tensors from a table built from the training
traces: those seen within the next D reads after that context. Each (read, candidate)
pair is one row; its label is "the candidate is read within the next D reads".

Offline, every feature of every pair is computed with sorts and `searchsorted` over
the whole read sequence (no per-event Python loop). Online, `OnlineState` keeps a few
counters per tensor and fills the same columns for one decision in a handful of numpy
operations. tests/predictor/test_features.py checks that both agree exactly.

Read counts include the read just observed; write counts include the writes seen
since the step (micro-step) began at a read, up to that read. Positions are read
indices within the session (a trace, or a daemon client); a write's position is the
number of reads before it. Decisions are made at reads only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from runtime.trace_format import Access, Kind, Phase, Trace

FEATURE_VERSION = 2
OCC_CAP = 3  # occurrences of the current tensor in its micro-step and phase: 0, 1, 2, 3+
NUM_PHASES = len(Phase)
SINCE_CAP = 1 << 16  # "reads since last read" for a tensor never read (or read long ago)
EVAL_CAP = 16  # "steps since the last evaluation pass" when there was none
_EVAL = int(Phase.EVAL)

FEATURES: tuple[str, ...] = (
    # the context that changes from read to read
    "micro_step",  # micro_step of the read (capped at 63)
    "pos_in_step",  # reads since the step began
    "pos_frac",  # pos_in_step / length of the previous step in reads (-1 if none)
    "steps_since_eval",  # steps since the last one with an evaluation pass (capped)
    "eval_in_step",  # an evaluation pass has run in this step so far
    "prev_micro_steps",  # micro-steps in the previous step
    # the context fixed by the table context (the read's tensor, phase, occurrence)
    "phase",  # Phase of the read
    "cur_kind",  # Kind of the tensor read
    "occ",  # earlier reads of that tensor in this micro-step and phase (capped)
    "cur_layer",  # layer index of the tensor read (-1 if none)
    # the candidate, from the table (how the context was followed in training)
    "p",  # share of the context's occurrences followed by the candidate within D reads
    "offset",  # median distance (reads) of its first read after the context
    "rank",  # rank by frequency within the context
    "log_n",  # log2(1 + occurrences of the context in training)
    # the candidate, from its key
    "kind",
    "layer",
    "dlayer",  # layer - cur_layer (-999 if either has none)
    "mtype",  # module type: key with indices blanked, an id in the artifact's list
    "expert",  # expert index (`...experts.3...`), -1 if none
    "call",  # activation call index within the step, -1 for other kinds
    # the candidate, from this session's history
    "h_step",  # its reads in this step
    "h_prev_step",  # its reads in the previous step
    "h_micro",  # its reads in this micro-step
    "h_last_phase",  # phase of its last read (-1 if never)
    "w_step",  # its writes in this step (an activation saved, a gradient produced, ...)
    "w_micro",  # its writes in this micro-step
    "h_since",  # reads since its last read (SINCE_CAP if never or longer)
    "e_micro",  # reads of any tensor of the same expert index in this micro-step (-1: not an expert)
    "e_prev_layer",  # ... of the same expert at the previous layer
    "e_next_layer",  # ... of the same expert at the next layer
    "e_layer",  # reads of any expert tensor of the candidate's layer in this micro-step
)
F = {name: i for i, name in enumerate(FEATURES)}
CONTEXT_COLUMNS = tuple(range(F["micro_step"], F["cur_layer"] + 1))
DYNAMIC_CONTEXT = slice(F["micro_step"], F["prev_micro_steps"] + 1)
HISTORY = slice(F["h_step"], F["w_micro"] + 1)  # gathered in one go from OnlineState.hist
CATEGORICAL: tuple[str, ...] = ()  # plain numeric splits do as well on these small integer codes


# --- keys -----------------------------------------------------------------------------

_PREFIX_KIND = {
    "param": Kind.PARAMETER,
    "act": Kind.ACTIVATION,
    "grad": Kind.GRADIENT,
    "opt": Kind.OPTIMIZER_STATE,
}


def parse_key(key: str) -> tuple[int, int, str, int, int]:
    """(kind, layer, module type, expert, call) from a tensor key.

    `param:model.layers.0.mlp.experts.3.gate_up_proj` -> (PARAMETER, 0,
    "param:model.layers.#.mlp.experts.#.gate_up_proj", 3, -1); activations keep their
    pack index in the type and give their call index; optimizer state its state name.
    """
    prefix, _, rest = key.partition(":")
    kind = int(_PREFIX_KIND.get(prefix, -1))
    suffix, call = "", -1
    if prefix == "act":
        parts = rest.rsplit(":", 2)
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            rest, call, suffix = parts[0], int(parts[1]), "pack" + parts[2]
    elif prefix == "opt":
        path, sep, state = rest.rpartition(":")
        if sep:
            rest, suffix = path, state
    comps = rest.split(".")
    layer, expert = -1, -1
    for i, comp in enumerate(comps):
        if comp.isdigit():
            if i > 0 and comps[i - 1] in ("experts", "expert"):
                expert = int(comp)
            elif layer < 0:
                layer = int(comp)
    generic = ".".join("#" if c.isdigit() else c for c in comps)
    mtype = f"{prefix}:{generic}" + (f":{suffix}" if suffix else "")
    return kind, layer, mtype, expert, call


@dataclass(frozen=True)
class KeyInfo:
    """Per vocabulary entry (index = vocab id): what its key says."""

    keys: tuple[str, ...]
    kind: np.ndarray  # int16
    layer: np.ndarray  # int32, -1 none
    mtype: np.ndarray  # int32 index into mtypes, -1 unknown type
    expert: np.ndarray  # int32, -1 none
    call: np.ndarray  # int32, -1 none
    mtypes: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.keys)

    @property
    def num_layers(self) -> int:
        return int(self.layer.max(initial=-1)) + 1

    @property
    def num_experts(self) -> int:
        return int(self.expert.max(initial=-1)) + 1

    @classmethod
    def from_keys(cls, keys: Sequence[str], mtypes: Sequence[str] | None = None) -> "KeyInfo":
        """Parse `keys`; module type ids index `mtypes` (built from the keys if None)."""
        parsed = [parse_key(k) for k in keys]
        if mtypes is None:
            mtypes = sorted({p[2] for p in parsed})
        mindex = {m: i for i, m in enumerate(mtypes)}
        return cls(
            keys=tuple(keys),
            kind=np.array([p[0] for p in parsed], dtype=np.int16),
            layer=np.array([p[1] for p in parsed], dtype=np.int32),
            mtype=np.array([mindex.get(p[2], -1) for p in parsed], dtype=np.int32),
            expert=np.array([p[3] for p in parsed], dtype=np.int32),
            call=np.array([p[4] for p in parsed], dtype=np.int32),
            mtypes=tuple(mtypes),
        )

    def expert_groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per vocab id, -1 where not an expert tensor: expert index, (expert, layer)
        group, layer group. The (expert, layer) group is expert * (L + 2) + layer + 1."""
        is_exp = self.expert >= 0
        span = self.num_layers + 2
        e = np.where(is_exp, self.expert, -1).astype(np.int64)
        el = np.where(is_exp, self.expert.astype(np.int64) * span + self.layer + 1, -1)
        lay = np.where(is_exp, self.layer.astype(np.int64) + 1, -1)
        return e, el, lay


def context_code(vid: np.ndarray | int, phase: np.ndarray | int, occ: np.ndarray | int):
    """The table key of a read: (vocab id, phase, min(occ, OCC_CAP)) as one integer."""
    return (np.asarray(vid, dtype=np.int64) * NUM_PHASES + phase) * (OCC_CAP + 1) + np.minimum(occ, OCC_CAP)


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


def decode_context(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vocab id, phase, occ) of context codes (inverse of context_code)."""
    codes = np.asarray(codes, dtype=np.int64)
    return codes // (NUM_PHASES * (OCC_CAP + 1)), (codes // (OCC_CAP + 1)) % NUM_PHASES, codes % (OCC_CAP + 1)


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


def _dlayer(cur_layer: np.ndarray, c_layer: np.ndarray) -> np.ndarray:
    return np.where((cur_layer >= 0) & (c_layer >= 0), c_layer - cur_layer, -999)


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


# --- online: one read at a time -------------------------------------------------------------


class OnlineState:
    """The session history the features need, updated in O(1) per read.

    Per-tensor counts live in one float32 matrix `hist` (V+1, 4) whose columns are the
    HISTORY features, so a decision gathers them in one indexing operation; they are
    reset when a step or micro-step begins (O(V), a few times a step) instead of being
    stamped per entry. Expert counters have two sentinel slots: ZERO (always 0, "same
    expert at layer -1") and NEG (always -1, "not an expert")."""

    def __init__(self, keyinfo: KeyInfo) -> None:
        self.keyinfo = keyinfo
        e_of, el_of, lay_of = keyinfo.expert_groups()
        self._e_of, self._el_of, self._lay_of = e_of.tolist(), el_of.tolist(), lay_of.tolist()
        self._kind = keyinfo.kind.tolist()
        self._layer = keyinfo.layer.tolist()
        self._span = keyinfo.num_layers + 2
        ne = max(keyinfo.num_experts, 1)
        # expert counters, one array: [experts | (expert, layer) groups | layers | ZERO | NEG]
        self._e0 = 0
        self._el0 = ne
        self._l0 = ne + ne * self._span + 1
        self.ZERO = self._l0 + self._span
        self.NEG = self.ZERO + 1
        self.reset()

    def reset(self) -> None:
        v = self.keyinfo.size
        self.t = -1  # read index of the last read
        self.step: int | None = None
        self.micro: int | None = None
        self.step_ord = -1
        self.step_start = 0
        self.prev_len = 0
        self.micros_in_step = 0
        self.prev_micros = 0
        self.eval_in_step = False
        self.last_eval_ord = -1
        self.cur_vid = -1
        self.hist = np.zeros((v + 1, 6), dtype=np.float32)  # h_step, h_prev_step, h_micro, h_last_phase, w_step, w_micro
        self.hist[:, 3] = -1
        self.last_pos = np.full(v + 1, -SINCE_CAP, dtype=np.int64)
        self.occ = np.zeros((v + 1) * NUM_PHASES, dtype=np.int64)
        self.expert = np.zeros(self.NEG + 1, dtype=np.float32)
        self.expert[self.NEG] = -1

    def read(self, vid: int, step: int, micro: int, phase: int) -> int:
        """Record a read of vocab id `vid` (-1: unknown tensor); return its context code (-1 if unknown)."""
        self.t += 1
        t = self.t
        if step != self.step:
            if self.step is not None:
                self.prev_len = t - self.step_start
                self.prev_micros = self.micros_in_step
                if self.eval_in_step:
                    self.last_eval_ord = self.step_ord
            self.step_ord += 1
            self.step = step
            self.step_start = t
            self.micros_in_step = 0
            self.eval_in_step = False
            self.micro = None
            self.hist[:, 1] = self.hist[:, 0]  # note: O(V), once per step
            self.hist[:, 0] = 0
            self.hist[:, 4] = 0
        if micro != self.micro:
            self.micro = micro
            self.micros_in_step += 1
            self.hist[:, 2] = 0  # note: O(V), once per micro-step
            self.hist[:, 5] = 0
            self.occ[:] = 0
            self.expert[: self.ZERO + 1] = 0
        if phase == _EVAL:
            self.eval_in_step = True
        self.cur_vid = vid
        if vid < 0:
            return -1
        o = vid * NUM_PHASES + phase
        occ = int(self.occ[o])
        self.occ[o] = occ + 1
        row = self.hist[vid]
        row[0] += 1
        row[2] += 1
        row[3] = phase
        self.last_pos[vid] = t
        e = self._e_of[vid]
        if e >= 0:
            ex = self.expert
            ex[self._e0 + e] += 1
            ex[self._el0 + self._el_of[vid]] += 1
            ex[self._l0 + self._lay_of[vid]] += 1
        return (vid * NUM_PHASES + phase) * (OCC_CAP + 1) + min(occ, OCC_CAP)

    def write(self, vid: int) -> None:
        """Record a write of vocab id `vid` (-1: unknown tensor)."""
        if vid >= 0:
            row = self.hist[vid]
            row[4] += 1
            row[5] += 1

    def dynamic_context(self) -> list[float]:
        """The DYNAMIC_CONTEXT columns for the read just recorded."""
        pos = self.t - self.step_start
        since = self.step_ord - self.last_eval_ord if self.last_eval_ord >= 0 else EVAL_CAP
        # float32 of the float64 quotient, as offline
        pos_frac = float(np.float32(pos / self.prev_len)) if self.prev_len > 0 else -1.0
        return [min(self.micro, 63), pos, pos_frac, min(since, EVAL_CAP), float(self.eval_in_step), self.prev_micros]

    def candidate_index(self, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-candidate gather indices, computed once per table: (vocab ids,
        (K, 4) indices into `expert` for e_micro, e_prev_layer, e_next_layer, e_layer,
        or None when no candidate is an expert tensor)."""
        cand = np.asarray(cand, dtype=np.int64)
        e_of = np.asarray(self._e_of, dtype=np.int64)[cand]
        if not (e_of >= 0).any():
            return cand, None
        is_exp = e_of >= 0
        layer = self.keyinfo.layer[cand].astype(np.int64)
        e0 = np.maximum(e_of, 0)
        span = self._span
        idx = np.empty((len(cand), 4), dtype=np.int64)
        idx[:, 0] = np.where(is_exp, self._e0 + e0, self.NEG)
        idx[:, 1] = np.where(is_exp, np.where(layer >= 1, self._el0 + e0 * span + layer, self.ZERO), self.NEG)
        idx[:, 2] = np.where(is_exp, self._el0 + e0 * span + layer + 2, self.NEG)
        idx[:, 3] = np.where(is_exp, self._l0 + layer + 1, self.NEG)
        return cand, idx

    def fill(self, X: np.ndarray, cand: np.ndarray, expert_idx: np.ndarray | None) -> None:
        """Write the dynamic context and history columns of candidate rows X
        (the static columns are already set)."""
        X[:, DYNAMIC_CONTEXT] = self.dynamic_context()
        X[:, HISTORY] = self.hist[cand]
        X[:, F["h_since"]] = np.minimum(self.t - self.last_pos[cand], SINCE_CAP)
        if expert_idx is None:
            X[:, F["e_micro"] : F["e_layer"] + 1] = -1
        else:
            X[:, F["e_micro"] : F["e_layer"] + 1] = self.expert[expert_idx]

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

This module holds the definition (the columns, the context code, key parsing). Offline
(predictor.read_sequence, predictor.candidates, predictor.features_offline), every feature
of every pair is computed with sorts and `searchsorted` over the whole read sequence (no
per-event Python loop). Online, `OnlineState` (predictor.features_online) keeps a few
counters per tensor and fills the same columns for one decision in a handful of numpy
operations. tests/predictor/test_features.py checks that both agree exactly.

Read counts include the read just observed; write counts include the writes seen
since the step (micro-step) began at a read, up to that read. Positions are read
indices within the session (a trace, or a daemon client); a write's position is the
number of reads before it. Decisions are made at reads only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from runtime.trace_format import Kind, Phase

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


def decode_context(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vocab id, phase, occ) of context codes (inverse of context_code)."""
    codes = np.asarray(codes, dtype=np.int64)
    return codes // (NUM_PHASES * (OCC_CAP + 1)), (codes // (OCC_CAP + 1)) % NUM_PHASES, codes % (OCC_CAP + 1)


def _dlayer(cur_layer: np.ndarray, c_layer: np.ndarray) -> np.ndarray:
    return np.where((cur_layer >= 0) & (c_layer >= 0), c_layer - cur_layer, -999)

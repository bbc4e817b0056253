"""The features online: one read at a time, the same columns as predictor.features_offline
(tests/predictor/test_features.py checks both agree exactly), in a handful of numpy operations."""

from __future__ import annotations

import numpy as np

from predictor.features import DYNAMIC_CONTEXT, EVAL_CAP, F, HISTORY, NUM_PHASES, OCC_CAP, SINCE_CAP, _EVAL, KeyInfo


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

"""The learned policy ("learned:MODEL_DIR"): a candidate table plus a LightGBM ranker.

    policy = make_policy("learned:models/", architecture=trace.architecture)

After each read the policy looks up the read's context (tensor, phase, occurrence) in
the table learnt offline, which names the tensors that have followed it within D reads.
Where that context was always followed by the same tensors, it requests them without
asking the model (most reads of most models: the fast path). Elsewhere it fills the
features of each candidate (predictor.features) and one LightGBM call scores them all;
those scoring >= the threshold form the window, in order of their median distance, and
the ones not yet requested are returned. See docs/predictor.md.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Sequence

import lightgbm as lgb
import numpy as np

from predictor.artifact import Artifact, ArchitectureMismatchError
from predictor.candidates import static_columns
from predictor.features_online import OnlineState
from predictor.horizon import Outstanding
from predictor.interface import BasePolicy, TensorInfo
from predictor.mirror import Mirror
from runtime.defaults import EVAL_LOOKAHEAD
from runtime.trace_format import Access, Phase

_READ = int(Access.READ)
_BACKWARD = int(Phase.BACKWARD)
BACKWARD_LOOKAHEAD = 16
"""Reads ahead the backward's mirror asks for (at most the policy's lookahead). Measured in
the simulator on the samples and the generalisation suite (budget 0.4): 16 stalled less than
64 almost everywhere; further ahead, the copies crowd the link before the demand fetches."""
MIN_KEY_OVERLAP = 0.5  # share of a session's parameter keys the vocabulary must know


class FastBooster:
    """Booster.predict without the Python-side checks: one C call per decision.

    Booster.predict costs ~15 us of argument checking before any tree is walked; for
    a few dozen rows the C API itself is ~5 us plus ~0.5 us a row (single thread)."""

    def __init__(self, booster: lgb.Booster, num_threads: int = 1) -> None:
        self.booster = booster  # keeps the handle alive
        self.num_feature = booster.num_feature()
        self._params = ctypes.c_char_p(f"num_threads={num_threads}".encode())
        try:
            from lightgbm.basic import _LIB

            self._lib = _LIB
            self._fn = _LIB.LGBM_BoosterPredictForMat
        except (ImportError, AttributeError):  # pragma: no cover - other lightgbm builds
            self._lib = None

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Probabilities for the rows of X ((n, num_feature) float32, C-contiguous)."""
        n = X.shape[0]
        if self._lib is None:  # pragma: no cover
            return self.booster.predict(X, num_threads=1)
        out = np.empty(n, dtype=np.float64)
        rc = self._fn(
            self.booster._handle,
            X.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_int(0),  # C_API_DTYPE_FLOAT32
            ctypes.c_int32(n),
            ctypes.c_int32(self.num_feature),
            ctypes.c_int(1),  # row major
            ctypes.c_int(0),  # C_API_PREDICT_NORMAL
            ctypes.c_int(0),  # start iteration
            ctypes.c_int(-1),  # all iterations
            self._params,
            ctypes.byref(ctypes.c_int64(0)),
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
        )
        if rc != 0:  # pragma: no cover
            raise RuntimeError(lgb.basic._LIB.LGBM_GetLastError().decode())
        return out


@dataclass
class Prepared:
    """What every session of one artifact shares: built once, read-only afterwards."""

    model: FastBooster
    static: np.ndarray  # (K, F) float32: static feature columns of every table row
    start: list[int]  # table rows of each context
    det: list[bool]  # deterministic contexts (no model call)
    ctx_index: dict[int, int]  # context code -> context index
    off: np.ndarray  # (K,) int64 expected distance of each candidate, >= 1
    cand: np.ndarray  # (K,) vocab ids
    expert_idx: np.ndarray | None  # (K, 4) gather indices of the expert features
    ctx_has_expert: list[bool]


def prepared(artifact: Artifact) -> Prepared:
    """The artifact's session-independent runtime structures (cached on the artifact)."""
    cached = artifact.__dict__.get("_prepared")
    if cached is not None:
        return cached
    table, ki = artifact.table, artifact.keyinfo
    cand, expert_idx = OnlineState(ki).candidate_index(table.cand)
    if expert_idx is not None and len(cand):
        is_exp = (expert_idx[:, 0] != OnlineState(ki).NEG).astype(np.int64)
        has_expert = [bool(x) for x in np.add.reduceat(is_exp, table.start[:-1])]
    else:
        has_expert = [False] * table.num_contexts
    p = Prepared(
        model=FastBooster(artifact.booster),
        static=static_columns(table, ki),
        start=table.start.tolist(),
        det=table.deterministic().tolist(),
        ctx_index={int(c): i for i, c in enumerate(table.ctx)},
        off=np.maximum(np.rint(table.off), 1).astype(np.int64),
        cand=cand,
        expert_idx=expert_idx,
        ctx_has_expert=has_expert,
    )
    artifact.__dict__["_prepared"] = p
    return p


class LearnedPolicy(BasePolicy):
    """The learned predictor behind the Policy interface (see the module docstring)."""

    name = "learned"

    def __init__(self, artifact: Artifact, lookahead: int = EVAL_LOOKAHEAD, threshold: float | None = None,
                 backward: str = "mirror") -> None:
        """`backward`: "mirror" (default): in the backward, the requests and next uses are
        predictor.mirror's, this micro-step's own forward reversed, which knows what the
        forward did (the experts a router picked, the layers skipped); "model": the model's."""
        if lookahead < 1:
            raise ValueError(f"lookahead must be >= 1, got {lookahead}")
        if backward not in ("mirror", "model"):
            raise ValueError(f"backward must be 'mirror' or 'model', got {backward!r}")
        self.artifact = artifact
        self.lookahead = lookahead
        self.threshold = threshold
        self.backward = backward

    def _prepare(self) -> None:
        p = prepared(self.artifact)
        self.model_ = p.model
        self.threshold_ = self.artifact.threshold if self.threshold is None else self.threshold
        self.static_, self.start_, self.det_, self.ctx_index_ = p.static, p.start, p.det, p.ctx_index
        self.off_, self.cand_, self.expert_idx_, self.ctx_has_expert_ = p.off, p.cand, p.expert_idx, p.ctx_has_expert
        self.state_ = OnlineState(self.artifact.keyinfo)
        self.model_calls_ = 0

    def start(self, tensors: TensorInfo) -> None:
        if not hasattr(self, "state_"):
            self._prepare()
        a = self.artifact
        vocab = {k: i for i, k in enumerate(a.keyinfo.keys)}
        vid = [vocab.get(k, -1) for k in tensors.keys]
        params = [i for i, k in enumerate(tensors.keys) if k.startswith("param:")]
        if params:
            known = sum(1 for i in params if vid[i] >= 0) / len(params)
            if known < MIN_KEY_OVERLAP:
                raise ArchitectureMismatchError(
                    f"predictor for {a.architecture!r} knows {known:.0%} of this job's parameters; "
                    "it was trained for another model"
                )
        self.vid_of_ = vid  # session tensor id -> vocab id
        v2s = np.full(a.keyinfo.size + 1, -1, dtype=np.int64)
        for sid, v in enumerate(vid):
            if v >= 0 and v2s[v] < 0:
                v2s[v] = sid
        self.sess_cand_ = v2s[a.table.cand]  # table row -> session tensor id (-1 absent)
        self.state_.reset()
        self.pending_ = Outstanding(self.lookahead)
        self.window_: list[int] = []
        self.now_ = 0
        self.mirror_ = Mirror(min(self.lookahead, BACKWARD_LOOKAHEAD)) if self.backward == "mirror" else None
        if self.mirror_ is not None:
            self.mirror_.start(tensors)
        self.in_backward_ = False

    def observe(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> Sequence[int]:
        mirror = self.mirror_
        if mirror is None:
            return self._observe(step, micro_step, phase, access, tensor_id)
        mirrored = mirror.observe(step, micro_step, phase, access, tensor_id)  # it records every forward
        own = self._observe(step, micro_step, phase, access, tensor_id)  # the model's context moves on
        self.in_backward_ = phase == _BACKWARD
        return mirrored if self.in_backward_ else own

    def _observe(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> Sequence[int]:
        vid = self.vid_of_[tensor_id] if 0 <= tensor_id < len(self.vid_of_) else -1
        if access != _READ:
            self.state_.write(vid)  # context only: decisions are made at reads
            return ()
        self.now_ += 1
        self.pending_.consume(tensor_id)
        code = self.state_.read(vid, step, micro_step, phase)
        ci = self.ctx_index_.get(code, -1) if code >= 0 else -1
        if ci < 0:
            self.window_ = []
            return ()
        s, e = self.start_[ci], self.start_[ci + 1]
        ids = self.sess_cand_[s:e]
        off = self.off_[s:e]
        if not self.det_[ci]:
            scores = self._score(ci, s, e)
            keep = scores >= self.threshold_
            ids, off = ids[keep], off[keep]
        keep = ids >= 0
        ids, off = ids[keep][: self.lookahead], off[keep][: self.lookahead]
        self.window_ = window = ids.tolist()
        return self.pending_.admit(window, (off + self.now_).tolist(), self.now_)

    def _score(self, ci: int, s: int, e: int) -> np.ndarray:
        X = self.static_[s:e].copy()  # (n, F) float32
        self.state_.fill(X, self.cand_[s:e], self.expert_idx_[s:e] if self.ctx_has_expert_[ci] else None)
        self.model_calls_ += 1
        return self.model_.predict(X)

    def upcoming(self, k: int) -> list[int]:
        if self.in_backward_:
            return self.mirror_.upcoming(k)  # type: ignore[union-attr]
        return self.window_[:k]

    def predicted_next_use(self, tensor_id: int) -> float:
        if self.in_backward_:
            return self.mirror_.predicted_next_use(tensor_id)  # type: ignore[union-attr]
        return self.pending_.next_use(tensor_id, self.now_)


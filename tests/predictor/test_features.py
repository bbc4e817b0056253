"""Features: keys parse as documented, and online (one read at a time) equals offline (vectorised)."""

from __future__ import annotations

import numpy as np
import pytest

from predictor.candidates import build_table, static_columns
from predictor.features import FEATURES, KeyInfo, parse_key
from predictor.features_offline import pair_features, pair_labels
from predictor.features_online import OnlineState
from predictor.read_sequence import read_sequence, sequence_context
from tests.fixtures.synthetic_traces import SyntheticConfig, write_synthetic_trace
from runtime.trace_format import Access, Kind, load_trace


def test_parse_key():
    """Kind, layer, module type, expert and call index come out of the recorder's key formats."""
    assert parse_key("param:model.layers.0.mlp.experts.3.gate_up_proj") == (
        Kind.PARAMETER, 0, "param:model.layers.#.mlp.experts.#.gate_up_proj", 3, -1)  # fmt: skip
    assert parse_key("act:transformer.h.2.attn:1:4") == (Kind.ACTIVATION, 2, "act:transformer.h.#.attn:pack4", -1, 1)
    assert parse_key("grad:lm_head.weight") == (Kind.GRADIENT, -1, "grad:lm_head.weight", -1, -1)
    assert parse_key("opt:model.layers.5.attn.q.weight:exp_avg_sq") == (
        Kind.OPTIMIZER_STATE, 5, "opt:model.layers.#.attn.q.weight:exp_avg_sq", -1, -1)  # fmt: skip
    assert parse_key("act:<root>:0:0")[2] == "act:<root>:pack0"
    assert parse_key("weird")[0] == -1


def _online_rows(trace, table, keyinfo):
    """Replay the trace's events through OnlineState exactly as LearnedPolicy does."""
    state = OnlineState(keyinfo)
    static = static_columns(table, keyinfo)
    cand, expert_idx = state.candidate_index(table.cand)
    ctx_index = {int(c): i for i, c in enumerate(table.ctx)}
    vocab = {k: i for i, k in enumerate(keyinfo.keys)}
    vid_of = [vocab.get(k, -1) for k in trace.keys]
    codes, rows = [], []
    cols = [trace.column(c).tolist() for c in ("step", "micro_step", "phase", "access", "tensor_id")]
    for step, micro, phase, access, tid in zip(*cols):
        if access != int(Access.READ):
            state.write(vid_of[tid])
            continue
        code = state.read(vid_of[tid], step, micro, phase)
        codes.append(code)
        ci = ctx_index.get(code, -1) if code >= 0 else -1
        if ci < 0:
            continue
        s, e = table.start[ci], table.start[ci + 1]
        X = static[s:e].copy()
        state.fill(X, cand[s:e], None if expert_idx is None else expert_idx[s:e])
        rows.append(X)
    return np.array(codes), np.concatenate(rows)


VARYING = {
    "moe": ("pos_in_step", "pos_frac", "h_step", "h_prev_step", "h_micro", "h_last_phase", "h_since", "w_step", "w_micro",
            "e_micro", "e_prev_layer", "e_next_layer", "e_layer"),
    "accum": ("micro_step", "pos_in_step", "steps_since_eval", "eval_in_step", "prev_micro_steps", "h_micro", "w_micro"),
    "layerdrop": ("pos_frac", "h_step", "h_prev_step", "dlayer"),
}


@pytest.mark.parametrize("kind", sorted(VARYING))
def test_online_features_equal_offline(kind, tmp_path):
    """Every feature of every (read, candidate) pair of a held-out run is identical online and offline."""
    cfg = SyntheticConfig.of_kind(kind)
    train = load_trace(write_synthetic_trace(tmp_path / "a", cfg, steps=6, seed=0, name=kind))
    run = load_trace(write_synthetic_trace(tmp_path / "b", cfg, steps=6, seed=1, name=kind))
    ki = KeyInfo.from_keys(train.keys)
    vocab = {k: i for i, k in enumerate(ki.keys)}
    seq = read_sequence(train, vocab)
    table = build_table([(seq, sequence_context(seq, ki))], ki.size, 12, 24)

    seq = read_sequence(run, vocab)
    sc = sequence_context(seq, ki)
    ex = pair_features(seq, sc, table, ki)
    codes, X_online = _online_rows(run, table, ki)
    assert np.array_equal(codes, sc.ctx)
    assert X_online.shape == ex.X.shape and len(ex.X) > 1000
    for j, name in enumerate(FEATURES):
        assert np.array_equal(X_online[:, j], ex.X[:, j]), name
    for name in VARYING[kind]:  # the comparison is not vacuous
        assert len(np.unique(ex.X[:, FEATURES.index(name)])) > 1, name
    y = pair_labels(seq, ex.t, ex.cand, table.lookahead)
    assert 0 < y.mean() < 1


def test_offline_table_candidates_follow_their_context(moe_train):
    """Static columns come from the table, and every candidate of a static trace's context is a positive."""
    ki = KeyInfo.from_keys(moe_train.keys)
    assert ki.num_experts == 8 and ki.num_layers == 4
    vocab = {k: i for i, k in enumerate(ki.keys)}
    seq = read_sequence(moe_train, vocab)
    sc = sequence_context(seq, ki)
    table = build_table([(seq, sc)], ki.size, 8, 16)
    X = static_columns(table, ki)
    assert np.array_equal(X[:, FEATURES.index("p")], table.p)
    assert (np.diff(table.start) <= 16).all() and (table.off >= 1).all() and (table.off <= 8).all()
    ex = pair_features(seq, sc, table, ki)
    y = pair_labels(seq, ex.t, ex.cand, 8)
    det = table.deterministic()[ex.ctx_row]
    assert det.any() and y[det & (ex.t < len(seq) - 8)].all()

"""The learned policy: beats replay and markov where the order changes, matches replay where it does not."""

from __future__ import annotations

from predictor.evaluate import HELD_OUT_RUN, HELD_OUT_STEPS, evaluate
from predictor.interface import TensorInfo
from predictor.policies import make_policy
from runtime.trace_format import Access


def test_learned_beats_replay_and_markov_on_a_dynamic_run(model_dir, moe_run):
    """On a held-out MoE run (another seed) learned has the best recall@D and top-1."""
    report = evaluate(str(model_dir), [moe_run], lookahead=8)
    (result,) = report["traces"]
    assert result["scope"] == HELD_OUT_RUN
    m = result["policies"]
    assert m["learned"]["recall"] > m["replay"]["recall"] + 0.2
    assert m["learned"]["recall"] > m["markov"]["recall"] + 0.1
    assert m["learned"]["top1"] > max(m["replay"]["top1"], m["markov"]["top1"])
    assert set(m["learned"]["by_phase"]) == {"forward", "backward"}  # optimizer reads are not managed


def test_learned_is_exact_on_static_held_out_steps(model_dir, static_train):
    """On the held-out steps of a static trace learned's next-access top-1 is >= 99.9%."""
    report = evaluate(str(model_dir), [static_train], lookahead=8)
    (result,) = report["traces"]
    assert result["scope"] == HELD_OUT_STEPS and result["steps"]
    assert result["policies"]["learned"]["top1"] >= 0.999
    assert result["policies"]["learned"]["recall"] >= 0.999


def test_learned_looks_ahead(model_dir, moe_run):
    """The learned window holds several future ids, never more than the lookahead, soonest first."""
    info = TensorInfo.from_table(moe_run.tensors)
    for lookahead in (4, 12):
        p = make_policy(f"learned:{model_dir}", lookahead=lookahead, architecture=moe_run.architecture, tensors=info)
        sizes = []
        cols = [moe_run.column(c).tolist() for c in ("step", "micro_step", "phase", "access", "tensor_id")]
        for step, micro, phase, access, tid in zip(*cols):
            p.observe(step, micro, phase, access, tid)
            if access == int(Access.READ):
                window = p.upcoming(lookahead)
                sizes.append(len(window))
                uses = [p.predicted_next_use(t) for t in window]
                assert all(u >= 1 for u in uses)
        assert max(sizes) == lookahead and sum(sizes) / len(sizes) > lookahead / 2


def test_in_the_backward_learned_follows_the_forward_it_just_ran(model_dir, moe_run):
    """backward="mirror" (the default): the backward's requests are this micro-step's own
    forward reversed (predictor.mirror), which knows the experts the router picked; its
    backward recall beats the model's own on a held-out MoE run, the forward's is unchanged."""
    from predictor.evaluate import evaluate_trace
    from predictor.model import LearnedPolicy
    from predictor.policies import load_learned

    art = load_learned(model_dir, moe_run.architecture)
    steps = sorted(set(moe_run.column("step").tolist()))[1:]
    res = evaluate_trace(moe_run, {"mirror": LearnedPolicy(art, 8), "model": LearnedPolicy(art, 8, backward="model")},
                         scope=HELD_OUT_RUN, steps=steps, lookahead=8)["policies"]
    assert res["mirror"]["by_phase"]["backward"]["recall"] > res["model"]["by_phase"]["backward"]["recall"]
    assert res["mirror"]["by_phase"]["forward"] == res["model"]["by_phase"]["forward"]

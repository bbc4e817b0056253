"""Every policy make_policy builds satisfies the Policy protocol and answers in range."""

from __future__ import annotations

import math

import pytest

from predictor.interface import Policy, PolicyError, TensorInfo
from predictor.policies import POLICIES, make_policy

SPECS = tuple(POLICIES)  # every registered policy: a new one is checked here without a new line


def _spec(name: str, model_dir) -> str:
    return f"learned:{model_dir}" if name == "learned" else name


@pytest.mark.parametrize("name", SPECS)
def test_policy_satisfies_interface_and_returns_ids_in_range(name, model_dir, moe_run):
    """Requests are ints within the tensor table, distinct per call, at most the lookahead; next-use is >= 1 or inf."""
    info = TensorInfo.from_table(moe_run.tensors)
    policy = make_policy(_spec(name, model_dir), lookahead=6, tensors=info, architecture=moe_run.architecture)
    assert isinstance(policy, Policy) and policy.name == name
    cols = [moe_run.column(c).tolist() for c in ("step", "micro_step", "phase", "access", "tensor_id")]
    requested = 0
    for step, micro, phase, access, tid in zip(*cols):
        reqs = policy.observe(step, micro, phase, access, tid)
        assert all(isinstance(r, int) and 0 <= r < info.num_tensors for r in reqs)
        assert len(set(reqs)) == len(reqs) <= 6
        requested += len(reqs)
        for r in reqs:
            use = policy.predicted_next_use(r)
            assert use >= 1 and (math.isinf(use) or use == int(use))
        assert all(0 <= r < info.num_tensors for r in policy.upcoming(6) or ())
    assert (requested == 0) == (name == "none")


def test_oracle_is_simulator_only():
    """oracle needs the future: make_policy says to use the simulator."""
    with pytest.raises(PolicyError, match="simulator"):
        make_policy("oracle")


def test_unknown_policy_lists_the_choices():
    """An unknown spec names every valid choice."""
    with pytest.raises(PolicyError, match=r"none \| replay \| markov .*learned:MODEL_DIR.*oracle: simulator only"):
        make_policy("lru")
    with pytest.raises(PolicyError, match="model folder"):
        make_policy("learned:")


def test_start_forgets_the_previous_session(model_dir, moe_run):
    """Restarting a policy on the same trace gives the same requests as a fresh one."""
    info = TensorInfo.from_table(moe_run.tensors)
    cols = list(zip(*[moe_run.column(c).tolist() for c in ("step", "micro_step", "phase", "access", "tensor_id")]))[:400]
    for name in SPECS:
        p = make_policy(_spec(name, model_dir), architecture=moe_run.architecture, tensors=info)
        first = [list(p.observe(*e)) for e in cols]
        p.start(info)
        assert [list(p.observe(*e)) for e in cols] == first

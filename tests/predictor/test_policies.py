"""The policy registry and spec syntax, and the Policy protocol's declared hooks and defaults."""

from __future__ import annotations

import typing
from pathlib import Path

import numpy as np
import pytest

from predictor.interface import (
    INF_POS,
    NO_PREDICTION,
    BasePolicy,
    Policy,
    PolicyError,
    TensorInfo,
    check_policy,
    overrides,
)
from predictor.policies import POLICIES, baseline_names, make_policy, parse_spec, spec_help
from prefetch.simulate import simulate
from runtime.trace_format import load_traces

SAMPLE = load_traces([Path(__file__).resolve().parents[2] / "datasets" / "samples" / "gpt2"])[0]


def _info(n: int) -> TensorInfo:
    return TensorInfo(keys=tuple(f"p{i}" for i in range(n)), kinds=np.zeros(n, np.int8),
                      nbytes=np.full(n, 64, np.int64), layers=np.full(n, -1, np.int16), modules=("m",) * n)


class Minimal(BasePolicy):
    """Only what a plug-in must write: every other hook is BasePolicy's default."""

    name = "minimal"

    def start(self, tensors):
        pass

    def observe(self, step, micro_step, phase, access, tensor_id):
        return ()


class Refusing(Minimal):
    """Requests the next id and refuses every prefetch at the simulator's last word."""

    def start(self, tensors):
        self.n = tensors.num_tensors

    def observe(self, step, micro_step, phase, access, tensor_id):
        return ((tensor_id + 1) % self.n,)

    def admit_prefetch(self, tensor_id, end_ns, now_ns, compute_ns):
        return False


def test_spec_keys_are_typed_from_the_constructor():
    """`name:key=value,...` sets constructor parameters with their annotated types; a key overrides lookahead."""
    p = make_policy("markov:num_successors=8,lookahead=5", lookahead=64)
    assert (p.num_successors, p.lookahead) == (8, 5) and isinstance(p.num_successors, int)
    assert make_policy("markov", lookahead=7).lookahead == 7


@pytest.mark.parametrize("spec, message", [
    ("markov:depth=3", "unknown key 'depth'; markov takes: lookahead, num_successors"),
    ("markov:num_successors=many", "num_successors must be int, got 'many'"),
    ("markov:num_successors=0", "num_successors must be >= 1, got 0"),
    ("markov:num_successors", "'num_successors' is not key=value"),
    ("markov:lookahead=2,lookahead=3", "lookahead given twice"),
    ("replay:", "nothing after ':'"),
    ("lru", "unknown policy 'lru'; choose from: none | replay | markov"),
])  # fmt: skip
def test_bad_spec_is_one_line_policy_error(spec, message):
    """An unknown name, unknown key, untyped or out-of-range value is one PolicyError line naming it."""
    with pytest.raises(PolicyError) as exc:
        make_policy(spec)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_learned_spec_keeps_its_folder_whole():
    """learned:MODEL_DIR takes the rest of the spec as the folder, colons and commas included."""
    assert parse_spec("learned:models/a:b,c=d") == ("learned", {"model_dir": "models/a:b,c=d"})
    with pytest.raises(PolicyError, match="model folder"):
        parse_spec("learned:")


def test_registry_entries_are_base_policies_named_as_registered():
    """Each entry's class subclasses BasePolicy, carries its registry name and a one-line description."""
    for name, entry in POLICIES.items():
        cls = entry.cls()
        assert issubclass(cls, BasePolicy) and cls.name == name
        assert entry.description and "\n" not in entry.description
    assert list(POLICIES)[-1] == "learned" and "learned" not in baseline_names()
    assert spec_help().split(" | ") == [n for n in POLICIES if n != "learned"] + ["learned:MODEL_DIR"]


def test_every_protocol_hook_has_a_default_in_base_policy():
    """A subclass writing only start and observe satisfies the whole protocol; the defaults mean 'no view'."""
    hooks = [h for h in dir(Policy) if not h.startswith("_")] + list(typing.get_type_hints(Policy))
    p = Minimal()
    assert isinstance(p, Policy) and check_policy(p) is p
    assert all(hasattr(BasePolicy, h) for h in hooks)
    assert p.predicted_next_use(3) == NO_PREDICTION and p.upcoming(4) is None and p.next_read_key(3) == INF_POS
    assert p.admit_prefetch(3, 10, 0, 0) is True and p.rekeyed() == [] and p.extend(_info(2), 5) is None
    assert p.served_by is None and p.note is None and p.variant is None and p.close() is None


def test_object_without_the_hooks_is_refused_in_one_line():
    """A plug-in that does not subclass BasePolicy and misses hooks gets a TypeError naming them."""

    class Bare:
        name = "bare"

        def start(self, tensors):
            pass

        def observe(self, *event):
            return ()

    with pytest.raises(TypeError, match=r"Bare lacks served_by, note, variant, predicted_next_use, .*BasePolicy"):
        check_policy(Bare())


def test_overrides_tells_defaults_from_a_policy_own_hooks():
    """overrides() is True only for hooks the policy's class defines itself (the simulator's fast-path check)."""
    assert not overrides(Minimal(), "admit_prefetch") and overrides(Refusing(), "admit_prefetch")
    assert not overrides(Refusing(), "next_read_key")


def test_simulator_calls_admit_prefetch_when_overridden():
    """A policy whose admit_prefetch refuses everything gets no prefetch issued; the default admits."""

    class Admitting(Refusing):
        admit_prefetch = BasePolicy.admit_prefetch

    refused = simulate(SAMPLE, Refusing(), budget=0.5)
    admitted = simulate(SAMPLE, Admitting(), budget=0.5)
    assert refused.stats.prefetch_issued == 0 and admitted.stats.prefetch_issued > 0


def test_daemon_hands_a_grown_tensor_table_to_extend(ctx):
    """A TENSORS message reaches the session policy's extend hook with the new rows and their first id."""
    import zmq

    from prefetch.daemon_config import DaemonConfig
    from prefetch.daemon_sessions import PolicyChoice
    from prefetch.daemon_thread import run_daemon_in_thread
    from runtime import wire, wire_decode

    seen = []

    class Growing(Minimal):
        def extend(self, tensors, first_id):
            seen.append((tensors.keys, first_id))

    def factory(spec, *, architecture, tensors, lookahead):
        return PolicyChoice(Growing(), served=spec)

    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=20), policy_factory=factory, context=ctx)
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(d.endpoint)
        s.send_multipart(wire.Hello(architecture="A", policy="growing", tensors=_info(2)).encode(), copy=False)
        assert s.poll(3000)
        ok = wire_decode.decode(s.recv_multipart())
        s.send_multipart(wire.Tensors(session=ok.session, first_id=2, tensors=_info(1)).encode(), copy=False)
        s.send_multipart(wire.Events(session=ok.session, seq=1, events=wire.pack_events([(0, 0, 0, 0, 2)])).encode(),
                         copy=False)
        assert s.poll(3000) and isinstance(wire_decode.decode(s.recv_multipart(), num_tensors=3), wire.Commands)
        assert seen == [(("p0",), 2)]
    finally:
        d.stop()

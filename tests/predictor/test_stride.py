"""The stride policy, added as one class and one registry line, works in every executor unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from predictor.evaluate import evaluate
from predictor.interface import TensorInfo
from predictor.policies import make_policy
from predictor.stride import Stride
from prefetch.daemon_config import DaemonConfig
from prefetch.daemon_sessions import make_policy_factory
from prefetch.daemon_thread import run_daemon_in_thread
from prefetch.simulate import simulate
from runtime import prefetching, wire, wire_decode
from runtime.link import LinkModel
from runtime.trace_format import load_traces

SAMPLE = load_traces([Path(__file__).resolve().parents[2] / "datasets" / "samples" / "gpt2"])[0]
R, WRITE = 0, 1


def _info(n: int) -> TensorInfo:
    return TensorInfo(keys=tuple(f"p{i}" for i in range(n)), kinds=np.zeros(n, np.int8),
                      nbytes=np.full(n, 1 << 17, np.int64), layers=np.full(n, -1, np.int16), modules=("m",) * n)


def _feed(policy, steps):
    """Requests per read of `steps` (lists of tensor ids read in order), writes ignored."""
    return [list(policy.observe(s, 0, 0, R, t)) for s, ids in enumerate(steps) for t in ids]


def test_stride_requests_the_previous_steps_read_k_ahead():
    """At read n of a step it asks for the previous step's read n + k (wrapping), due k reads later."""
    p = make_policy("stride:k=2", tensors=_info(5))
    got = _feed(p, [[0, 1, 2, 3], [0, 1, 2, 3]])
    assert got[:4] == [[], [], [], []]  # nothing learned during the first step
    assert got[4:] == [[2], [3], [0], [1]]
    assert p.predicted_next_use(1) == 2 and p.predicted_next_use(4) == float("inf")
    assert p.observe(2, 0, 0, WRITE, 4) == ()  # writes are context, never requested


def test_stride_k_must_be_positive():
    """stride:k=0 is refused with the constructor's reason in one line."""
    with pytest.raises(ValueError, match="policy 'stride:k=0': k must be >= 1, got 0"):
        make_policy("stride:k=0")


def test_stride_in_the_simulator_beats_no_prefetching():
    """prefetch.simulate builds it from its spec and it hits more than `none` on a real trace."""
    none, stride = simulate(SAMPLE, "none", budget=0.4), simulate(SAMPLE, "stride:k=2", budget=0.4)
    assert stride.policy == "stride:k=2" and stride.stats.prefetch_issued > 0
    assert stride.stats.hit_rate > none.stats.hit_rate


def test_stride_in_offline_evaluation():
    """predictor.evaluate scores it as a baseline by default, with a positive recall."""
    report = evaluate(None, [SAMPLE], lookahead=16)
    scores = report["traces"][0]["policies"]["stride"]
    assert scores["recall"] > 0


def test_stride_in_process_keeps_training_identical():
    """runtime.prefetching(policy="stride:k=2") prefetches, and training computes exactly what it does unmanaged."""
    def train(policy):
        torch.manual_seed(0)
        model = torch.nn.Sequential(*(torch.nn.Linear(256, 256) for _ in range(4)))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses, pf = [], None

        def loop():
            for _ in range(4):
                opt.zero_grad()
                loss = model(torch.ones(8, 256)).pow(2).mean()
                loss.backward()
                opt.step()
                losses.append(loss.item())

        if policy is None:
            loop()
            return losses, None
        with prefetching(model, opt, policy=policy, budget=0.5, device="simulated",
                         link=LinkModel(bandwidth_bytes_per_s=2e9)) as pf:
            loop()
        return losses, pf.report()

    base, _ = train(None)
    got, report = train("stride:k=2")
    assert got == base and report["policy"] == "stride:k=2" and report["policy_served_by"] == "stride"
    assert report["prefetch_issued"] > 0


def test_stride_through_the_daemon_answers_as_in_process(ctx):
    """A daemon session asking for stride:k=2 is served it and sends the ids the in-process policy returns."""
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=20), policy_factory=make_policy_factory(None),
                             context=ctx)
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(d.endpoint)
        s.send_multipart(wire.Hello(architecture="A", policy="stride:k=2", tensors=_info(4)).encode(), copy=False)
        assert s.poll(3000)
        ok = wire_decode.decode(s.recv_multipart())
        assert isinstance(ok, wire.HelloOk) and ok.policy == "stride:k=2" and ok.fallback_reason is None
        events = [(step, 0, 0, R, t) for step in range(2) for t in range(4)]
        s.send_multipart(wire.Events(session=ok.session, seq=1, events=wire.pack_events(events)).encode(), copy=False)
        assert s.poll(3000)
        cmd = wire_decode.decode(s.recv_multipart(), num_tensors=4)
        local = make_policy("stride:k=2", tensors=_info(4))
        assert cmd.tensor_ids.tolist() == [t for e in events for t in local.observe(*e)] == [2, 3, 0, 1]
    finally:
        d.stop()

"""The recorder: exact events on a hand-made model, stable keys, step boundaries."""

from __future__ import annotations

import pytest
import torch

import runtime
from runtime.trace_format import Access, Kind, Phase, load_trace

A, W = Access.READ, Access.WRITE
P, ACT, G, O = Kind.PARAMETER, Kind.ACTIVATION, Kind.GRADIENT, Kind.OPTIMIZER_STATE
F, B, OPT, EV = Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER, Phase.EVAL


class TwoLayer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def _train(seed: int, out, steps: int = 3, accum: int = 1, eval_every: int = 0):
    torch.manual_seed(seed)
    model = TwoLayer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    with runtime.record(model, opt, out=out) as rec:
        for step in range(steps):
            if eval_every and step % eval_every == 0:
                model.eval()
                with torch.no_grad():
                    model(torch.randn(16, 16, generator=g))
                model.train()
            opt.zero_grad()
            for _ in range(accum):
                model(torch.randn(16, 16, generator=g)).pow(2).mean().backward()
            opt.step()
    return load_trace(rec.stem)


def _rows(trace, step):
    keys = trace.keys
    return [
        (Phase(e["phase"]), Kind(e["kind"]), Access(e["access"]), keys[e["tensor_id"]], e["micro_step"])
        for e in trace.events.to_pylist()
        if e["step"] == step
    ]


EXPECTED_STEP = [
    (F, P, A, "param:fc1.weight"), (F, P, A, "param:fc1.bias"),
    (F, ACT, W, "act:fc1:0:0"),  # fc1 saves its input for grad_weight (16x16 fp32 = 1 KiB)
    (F, ACT, W, "act:<root>:0:0"),  # tanh, called in the root's forward, saves its output
    (F, P, A, "param:fc2.weight"), (F, P, A, "param:fc2.bias"),
    (F, ACT, W, "act:fc2:0:0"),  # fc2 saves its input (the same tanh output)
    (B, ACT, A, "act:fc2:0:0"), (B, P, A, "param:fc2.weight"),
    (B, G, W, "grad:fc2.bias"), (B, G, W, "grad:fc2.weight"),
    (B, ACT, A, "act:<root>:0:0"),
    (B, ACT, A, "act:fc1:0:0"),  # fc1.weight is not read: the input needs no gradient
    (B, G, W, "grad:fc1.bias"), (B, G, W, "grad:fc1.weight"),
    *[
        row
        for p in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
        for row in ((OPT, G, A, f"grad:{p}"), (OPT, O, A, f"opt:{p}:exp_avg"),
                    (OPT, O, A, f"opt:{p}:exp_avg_sq"), (OPT, P, W, f"param:{p}"))
    ],
]


def test_two_layer_exact_events(tmp_path):
    """A two-layer MLP step gives exactly the expected events, in order, every step after the first."""
    trace = _train(0, tmp_path, steps=3)
    for step in (1, 2):
        got = [r[:4] for r in _rows(trace, step)]
        assert got == EXPECTED_STEP
    first = _rows(trace, 0)
    # step 0 creates the optimizer state: the same events, state written instead of read
    assert [r[:2] + (r[3],) for r in first] == [r[:2] + (r[3],) for r in EXPECTED_STEP]
    assert {r[2] for r in first if r[1] == O} == {W}
    seqs = [e["seq"] for e in trace.events.to_pylist() if e["step"] == 1]
    assert seqs == list(range(len(EXPECTED_STEP)))


def test_tensor_table_and_manifest(tmp_path):
    """The tensor table names each tensor once with its size; the manifest has the architecture."""
    trace = _train(0, tmp_path, steps=2)
    rows = {r["key"]: r for r in trace.tensors.to_pylist()}
    assert len(rows) == trace.num_tensors
    assert rows["param:fc1.weight"]["shape"] == [32, 16]
    assert rows["param:fc1.weight"]["nbytes"] == 32 * 16 * 4
    assert rows["param:fc1.weight"]["module"] == "fc1"
    assert rows["act:fc2:0:0"]["nbytes"] == 16 * 32 * 4
    m = trace.manifest
    assert m["architecture"].startswith("TwoLayer-")
    assert m["complete"] and m["steps"] == 2 and not trace.truncated
    assert m["torch_version"] == torch.__version__
    for key in ("model_class", "rank", "config", "schema_version", "modules"):
        assert key in m


def test_keys_identical_across_seeds(tmp_path):
    """Two runs with different seeds give the same keys, ids and architecture."""
    a = _train(1, tmp_path / "a")
    b = _train(2, tmp_path / "b")
    assert a.keys == b.keys
    assert a.architecture == b.architecture
    assert a.column("tensor_id").tolist() == b.column("tensor_id").tolist()


def test_accumulation_and_eval_boundaries(tmp_path):
    """Micro-steps count forwards within an optimizer step; no-grad passes are EVAL, not training."""
    trace = _train(0, tmp_path, steps=4, accum=3, eval_every=2)
    ev = trace.events.to_pylist()
    assert sorted({e["step"] for e in ev}) == [0, 1, 2, 3]
    for step in range(4):
        rows = [e for e in ev if e["step"] == step]
        has_eval = step % 2 == 0
        eval_micro = {e["micro_step"] for e in rows if e["phase"] == EV}
        train_micro = {e["micro_step"] for e in rows if e["phase"] == F}
        assert eval_micro == ({0} if has_eval else set())
        assert train_micro == ({1, 2, 3} if has_eval else {0, 1, 2})
        # every micro-step saves its own activations with its own call index
        acts = {trace.keys[e["tensor_id"]] for e in rows if e["kind"] == ACT and e["access"] == W}
        assert {k.rsplit(":", 2)[1] for k in acts} == {"0", "1", "2"}
        assert sum(1 for e in rows if e["phase"] == OPT and e["kind"] == P) == 4  # one update per param
        # eval passes read parameters but save nothing
        assert all(e["kind"] == P for e in rows if e["phase"] == EV)
    # gradients accumulate: 3 writes per parameter per step
    g = [e for e in ev if e["step"] == 1 and e["kind"] == G and e["access"] == W]
    assert len(g) == 3 * 4


def test_unwritable_output_is_a_clear_error(tmp_path):
    """An output path that is a file, or inside one, fails before training with the path named."""
    f = tmp_path / "file"
    f.write_text("x")
    model = TwoLayer()
    with pytest.raises(OSError, match="file"):
        with runtime.record(model, None, out=f / "sub"):
            pass


def test_recording_does_not_change_losses(tmp_path):
    """Recording is observation only: losses are bit-identical with and without it."""
    def run(record: bool) -> list[float]:
        torch.manual_seed(0)
        model = TwoLayer()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(0)
        losses = []
        ctx = runtime.record(model, opt, out=tmp_path) if record else _null()
        with ctx:
            for _ in range(3):
                opt.zero_grad()
                loss = model(torch.randn(8, 16, generator=g)).pow(2).mean()
                loss.backward()
                opt.step()
                losses.append(loss.item())
        return losses

    assert run(True) == run(False)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

"""prefetch.gpu_model: a GPU run's optimizer on the host (prefetched) and on the device (baseline).

Hand-computed in units of K = 1000: tensors in kB, times in us. The trace: parameters A, B, C
(100 kB, managed) and b (1 kB, not managed); each of 4 steps reads A, B, C, b and the
optimizer writes A, B, C, 1000 us apart; the optimizer's first event (its post-hook) comes
1000 us after the one before it, so the trace's optimizer step is 1000 us. Warm-up 1 step:
3 measured steps of 6000 us, 3 measured optimizer steps. The policy predicts A, B, C, so
the parameters dropped at the optimizer step come back before they are read: no stall.
"""

from __future__ import annotations

import json

import pytest

from predictor.interface import NO_PREDICTION, BasePolicy
from prefetch.cli import main as cli_main
from prefetch.gpu_model import GpuModel
from prefetch.simulate import simulate
from runtime.link import LinkModel
from runtime.run_report import RunReport
from runtime.trace_format import Access, Kind, Phase, load_trace
from runtime.trace_writer import TraceWriter

R, W = int(Access.READ), int(Access.WRITE)
K = 1000
LINK = LinkModel(bandwidth_bytes_per_s=1e9, latency_s=0.0)  # 100 kB -> 100 us
HOST = dict(host_fixed_ns=1000 * K, host_ns_per_byte=5.0, host_source="test")  # 1000 + 5 x 300 kB = 2500 us


def write_trace(stem, steps=4):
    """The module docstring's trace."""
    tensors = [("A", 100), ("B", 100), ("C", 100), ("b", 1)]
    w = TraceWriter(stem, {"architecture": "hand", "model_class": "Hand"})
    for i, (key, nb) in enumerate(tensors):
        w.add_tensor(dict(tensor_id=i, key=key, kind=int(Kind.PARAMETER), shape=[nb * K], dtype="uint8",
                          nbytes=nb * K, module="", layer=-1))
    events = [(R, 0, Phase.FORWARD), (R, 1, Phase.FORWARD), (R, 2, Phase.FORWARD), (R, 3, Phase.FORWARD),
              (W, 0, Phase.OPTIMIZER), (W, 1, Phase.OPTIMIZER), (W, 2, Phase.OPTIMIZER)]
    start = 0
    for s in range(steps):
        for j, (a, t, ph) in enumerate(events):
            w.add_event((s, 0, j, int(ph), int(Kind.PARAMETER), a, t, tensors[t][1] * K, start + j * 1000 * K, -1, -1))
        start += (len(events) - 1) * 1000 * K
    w.close()
    return load_trace(stem)


class Predicts(BasePolicy):
    """Requests nothing; predicts A, B, C 1, 2, 3 reads ahead, so the optimizer's drops come back."""

    name = "predicts"

    def start(self, tensors):
        pass

    def observe(self, step, micro_step, phase, access, tensor_id):
        return ()

    def predicted_next_use(self, tensor_id):
        return {0: 1.0, 1: 2.0, 2: 3.0}.get(tensor_id, NO_PREDICTION)


@pytest.fixture
def trace(tmp_path):
    return write_trace(tmp_path / "opt")


def run(trace, model=None):
    return simulate(trace, Predicts(), budget=1.0, link=LINK, gpu_model=model)


def test_host_optimizer_replaces_the_trace_optimizer_time_in_the_prefetched_run_only(trace):
    """The measured time grows by exactly (host - trace optimizer) per measured step; the baseline does not."""
    off = run(trace)
    assert (off.measured_ns, off.baseline_ns, off.stats.stall_ns) == (18000 * K, 18000 * K, 0)
    for fixed_us, host_us in ((1000, 2500), (100, 1600), (0, 1500)):  # slower and faster than the trace's 1000 us
        on = run(trace, GpuModel(**{**HOST, "host_fixed_ns": fixed_us * K}))
        assert on.measured_ns == off.measured_ns + 3 * (host_us - 1000) * K
        assert on.baseline_ns == off.baseline_ns
        assert on.slowdown == pytest.approx(on.measured_ns / off.baseline_ns)
        assert on.stats == off.stats and on.outcomes.tolist() == off.outcomes.tolist()
        g = on.gpu_model
        assert (g["optimizer"], g["baseline_optimizer"], g["optimizer_steps"]) == ("host", "device", 3)
        assert (g["optimizer_param_bytes"], g["param_bytes"]) == (300 * K, 301 * K)  # b is not managed
        assert g["host_optimizer_step_s"] == pytest.approx(host_us * 1e-6)
        assert g["trace_optimizer_step_s"] == pytest.approx(1000e-6)
        assert g["baseline_optimizer_step_s"] == pytest.approx(1000e-6)


def test_the_oracle_replays_the_retimed_trace(trace):
    """The oracle (built from the trace it is fed) gets the same exact difference: its clock is the re-timed one."""
    off = simulate(trace, "oracle", budget=1.0, link=LINK)
    on = simulate(trace, "oracle", budget=1.0, link=LINK, gpu_model=GpuModel(**HOST))
    assert on.measured_ns == off.measured_ns + 3 * 1500 * K and on.baseline_ns == off.baseline_ns


def test_host_time_equal_to_the_trace_changes_nothing(trace):
    """A host step as long as the trace's gives the same times as the model off (the re-timing is exact)."""
    off = run(trace)
    on = run(trace, GpuModel(host_fixed_ns=1000 * K, host_ns_per_byte=0.0, host_source="test"))
    assert (on.measured_ns, on.baseline_ns, on.slowdown) == (off.measured_ns, off.baseline_ns, off.slowdown)


def test_device_ns_per_byte_changes_the_baseline_only(trace):
    """The baseline's optimizer takes device_ns_per_byte x every parameter byte; the prefetched run is unchanged."""
    host = run(trace, GpuModel(**HOST))
    dev = run(trace, GpuModel(**HOST, device_ns_per_byte=1.0))  # 301 kB: 301 us per step
    assert dev.measured_ns == host.measured_ns
    assert dev.baseline_ns == host.baseline_ns - 3 * (1000 - 301) * K
    assert dev.gpu_model["baseline_optimizer_step_s"] == pytest.approx(301e-6)
    assert dev.gpu_model["device_ns_per_byte"] == 1.0 and host.gpu_model["device_ns_per_byte"] is None
    assert dev.slowdown == pytest.approx(dev.measured_ns / dev.baseline_ns)


def test_several_traces_sum_the_optimizer_figures(trace, tmp_path):
    """Two traces: the combined report's optimizer totals are the per-trace sums, per step over all steps."""
    other = write_trace(tmp_path / "five", steps=5)
    r = simulate([trace, other], Predicts(), budget=1.0, link=LINK, gpu_model=GpuModel(**HOST))
    assert r.gpu_model["optimizer_steps"] == 3 + 4
    assert r.gpu_model["host_optimizer_s"] == pytest.approx(7 * 2500e-6)
    assert r.gpu_model["host_optimizer_step_s"] == pytest.approx(2500e-6)
    assert r.baseline_ns == sum(t.baseline_ns for t in r.traces)


def test_report_round_trips_and_summary_says_it(trace):
    """as_dict -> JSON -> from_dict keeps the gpu_model object; summary() adds one line about it."""
    r = run(trace, GpuModel(**HOST, device_ns_per_byte=1.0))
    d = json.loads(json.dumps(r.as_dict()))
    back = RunReport.from_dict(d, source="test")
    assert back.gpu_model == r.gpu_model and "gpu_model" not in back.extra
    assert back.as_dict() == d
    lines = r.summary().splitlines()
    assert len(lines) == 2 and "gpu model: optimizer on the host" in lines[1] and "2.50 ms/step" in lines[1]
    assert "1 ns/byte" in lines[1] and "test" in lines[1]


def test_off_writes_no_gpu_key_and_one_summary_line(trace):
    """Without the model the report has no gpu_model key and summary() stays one line."""
    r = run(trace)
    assert "gpu_model" not in r.as_dict() and r.gpu_model is None
    assert len(r.summary().splitlines()) == 1
    assert "gpu_model" not in RunReport.from_dict(json.loads(json.dumps(r.as_dict())), source="t").as_dict()


def test_model_fields_are_validated():
    """A bad variant, a negative or non-finite cost, a zero device figure or no source is a ValueError."""
    for bad in (dict(host_variant="adam"), dict(host_ns_per_byte=-1.0), dict(host_fixed_ns=float("nan")),
                dict(device_ns_per_byte=0.0), dict(host_source=""), dict(host_threads=0)):
        with pytest.raises(ValueError, match="GpuModel"):
            GpuModel(**{**HOST, **bad})


def _bench_json(path):
    """A benchmarks/host_optimizer.py JSON: fused at 1 and 2 threads (2 faster), foreach, single unsupported."""
    rows = [dict(variant="fused", torch_threads=1, supported=True, fixed_ns=300e3, per_byte_ns=0.11, ns_per_byte=0.12),
            dict(variant="fused", torch_threads=2, supported=True, fixed_ns=290e3, per_byte_ns=0.07, ns_per_byte=0.07),
            dict(variant="foreach", torch_threads=1, supported=True, fixed_ns=500e3, per_byte_ns=0.8, ns_per_byte=0.9),
            dict(variant="single", torch_threads=1, supported=False, error="no")]
    path.write_text(json.dumps({"machine": {"date": "2026-11-30 18:45 UTC"}, "results": rows}))
    return path


def test_from_file_takes_the_variants_fastest_row(tmp_path):
    """FILE gives fused's fastest row; FILE:VARIANT another variant; an unsupported one is an error."""
    f = _bench_json(tmp_path / "h.json")
    m = GpuModel.from_spec(str(f))
    assert (m.host_variant, m.host_ns_per_byte, m.host_fixed_ns, m.host_threads) == ("fused", 0.07, 290e3, 2)
    assert m.host_source.startswith(f"file {f}")
    m = GpuModel.from_spec(f"{f}:foreach", device_ns_per_byte=0.5)
    assert (m.host_variant, m.host_ns_per_byte, m.device_ns_per_byte) == ("foreach", 0.8, 0.5)
    with pytest.raises(ValueError, match="no supported 'single' row"):
        GpuModel.from_spec(f"{f}:single")


def test_measure_runs_once_per_process(monkeypatch):
    """The default figure is measured now (real AdamW steps, small sizes here) and reused by later calls."""
    import prefetch.gpu_model as gm

    monkeypatch.setattr(gm, "_MEASURED", {})
    monkeypatch.setattr(gm, "MEASURE_BYTES", 1 << 20)
    m = GpuModel.measure()
    assert m.host_variant == "fused" and m.host_source.startswith("measured now on this machine")
    assert m.host_ns_per_byte > 0 and m.host_threads >= 1
    assert GpuModel.measure() is m
    assert GpuModel.measure(device_ns_per_byte=2.0).host_ns_per_byte == m.host_ns_per_byte


def test_a_tilted_measurement_falls_back_to_the_largest_steps_bytes(monkeypatch):
    """A fitted slope that is not positive (a loaded machine) is not a cost: the model takes the
    largest size's step per byte, no fixed cost, and says so."""
    import dataclasses

    import prefetch.gpu_model as gm
    import runtime.optimizer_cost as oc

    real = oc.measure_host_optimizer

    def tilted(*a, **kw):
        return dataclasses.replace(real(*a, **kw), per_byte_ns=-0.08, fixed_ns=5e5)

    monkeypatch.setattr(gm, "_MEASURED", {})
    monkeypatch.setattr(gm, "MEASURE_BYTES", 1 << 20)
    monkeypatch.setattr(oc, "measure_host_optimizer", tilted)
    m = GpuModel.measure()
    assert m.host_fixed_ns == 0 and m.host_ns_per_byte > 0 and "not positive" in m.host_source


def test_variant_names_are_optimizer_costs():
    """The CLI's variant names (kept here so --help loads no torch) are runtime.optimizer_cost's."""
    from prefetch.gpu_model import HOST_VARIANTS
    from runtime.optimizer_cost import VARIANTS

    assert HOST_VARIANTS == tuple(VARIANTS)


@pytest.mark.parametrize("argv, variant", [([], "fused"), (["--host-optimizer", "foreach"], "foreach")])
def test_cli_gpu_model_measures_now_by_default(trace, tmp_path, monkeypatch, argv, variant):
    """--gpu-model alone measures fused AdamW now; --host-optimizer VARIANT measures that one."""
    import prefetch.gpu_model as gm

    monkeypatch.setattr(gm, "_MEASURED", {})
    monkeypatch.setattr(gm, "MEASURE_BYTES", 1 << 20)
    out = tmp_path / "r.json"
    assert cli_main(["simulate", str(trace.stem), "--policy", "none", "--gpu-model", *argv, "--json", str(out)]) == 0
    g = json.loads(out.read_text())["gpu_model"]
    assert g["host_variant"] == variant and g["host_source"].startswith("measured now on this machine")


def test_cli_gpu_model_from_a_file_writes_the_report(trace, tmp_path, capsys):
    """--gpu-model --host-optimizer FILE: the JSON has gpu_model with its source; the summary line is printed."""
    f, out = _bench_json(tmp_path / "h.json"), tmp_path / "r.json"
    assert cli_main(["simulate", str(trace.stem), "--policy", "none", "--budget", "1.0", "--gpu-model",
                     "--host-optimizer", str(f), "--device-optimizer-ns-per-byte", "0.002", "--json", str(out)]) == 0
    g = json.loads(out.read_text())["gpu_model"]
    assert (g["host_variant"], g["host_ns_per_byte"], g["device_ns_per_byte"]) == ("fused", 0.07, 0.002)
    assert g["host_source"].startswith("file ")
    assert "gpu model: optimizer on the host" in capsys.readouterr().out


def test_cli_sweep_says_the_model_is_on(trace, tmp_path, capsys):
    """A sweep with --gpu-model prints the model's line above its table."""
    f = _bench_json(tmp_path / "h.json")
    assert cli_main(["simulate", str(trace.stem), "--sweep", "--sweep-policies", "none", "--sweep-budgets", "1.0",
                     "--gpu-model", "--host-optimizer", str(f), "--plot", str(tmp_path / "p.png")]) == 0
    assert "gpu model: optimizer on the host (fused, 0.0700 ns/byte" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--host-optimizer", "fused"], "--host-optimizer goes with --gpu-model"),
    (["--device-optimizer-ns-per-byte", "1"], "--device-optimizer-ns-per-byte goes with --gpu-model"),
    (["--gpu-model", "--host-optimizer", "adam"], "is neither a variant"),
    (["--gpu-model", "--device-optimizer-ns-per-byte", "-1"], "--device-optimizer-ns-per-byte"),
    (["--gpu-model", "--host-optimizer", "NOTJSON"], "cannot read a host optimizer measurement"),
])
def test_cli_bad_flags_are_one_line_errors(trace, tmp_path, capsys, argv, message):
    """Each bad flag exits 2 with one line naming it."""
    argv = [a.replace("NOTJSON", str(_write(tmp_path / "x.json", "{"))) for a in argv]
    try:
        rc = cli_main(["simulate", str(trace.stem), "--policy", "none", *argv])
    except SystemExit as exc:  # argparse's own checks (a value's type) exit from the parser
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def _write(path, text):
    path.write_text(text)
    return path

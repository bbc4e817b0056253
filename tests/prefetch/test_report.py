"""prefetch.report and `prefetch report`: tables, JSON, plots, the timeline copy, input errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefetch.report import write_report
from prefetch.report_inputs import ReportError
from prefetch.report_rows import build_rows, build_sweep
from prefetch.report_tables import format_markdown, format_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MiB = 2**20
ROOT = Path(__file__).resolve().parents[2]


def run_report(workload="gpt2", policy="replay", *, accesses=1000, hits=990, late=3, misses=7, **kw):
    """A fake `prefetch run` report with DESIGN.md's keys."""
    d = dict(workload=workload, policy=policy, device="simulated",
             link={"bandwidth_GBps": 1.5, "latency_us": 5.0, "ratio": 0.5}, managed_bytes=100 * MiB,
             budget_bytes=40 * MiB, peak_device_bytes=39 * MiB, steps=11, warmup_steps=1, accesses=accesses,
             hits=hits, late=late, misses=misses, hit_rate=hits / accesses, stall_s=0.05, bytes_copied=10 * MiB,
             prefetch_issued=100, prefetch_used=80, accuracy=0.8, step_time_s=0.21, baseline_step_time_s=0.2,
             slowdown=1.05, losses_identical=True, seed=2)
    d.update(kw)
    return d


def oracle_report(workload="gpt2", hit_rate=0.999, **kw):
    """A fake simulator report for the oracle, with DESIGN.md's keys."""
    d = dict(workload=workload, policy="oracle", device="simulated",
             link={"bandwidth_GBps": 1.5, "latency_us": 5.0, "ratio": 0.5}, hit_rate=hit_rate, accesses=1000,
             hits=int(round(hit_rate * 1000)), late=0, misses=1, stall_s=0.01, slowdown=1.01, bytes_copied=8 * MiB,
             managed_bytes=100 * MiB, budget_bytes=40 * MiB, peak_device_bytes=40 * MiB, steps=11, warmup_steps=1,
             prefetch_issued=90, prefetch_used=90, accuracy=1.0, step_time_s=0.202, baseline_step_time_s=0.2, seed=2)
    d.update(kw)
    return d


def results_doc(sweep=True):
    """A `prefetch demo` results document: two workloads, three policies, oracle, a sweep."""
    runs = [run_report("gpt2", "none", hits=300, late=0, misses=700, slowdown=1.8, bytes_copied=300 * MiB),
            run_report("gpt2", "replay"),
            run_report("gpt2", "learned:/x/y", hits=995, late=2, misses=3, slowdown=1.02),
            run_report("moe", "replay", hits=500, late=10, misses=490, slowdown=1.6),
            run_report("moe", "learned:/x/y", hits=960, late=20, misses=20, slowdown=1.1)]
    doc = {"machine": {"cpu_count": 2, "python": "3.11", "torch": "2.x"}, "runs": runs,
           "oracle": [oracle_report("gpt2"), oracle_report("moe", 0.98)]}
    if sweep:
        doc["sweep"] = [{"workload": w, "policy": p, "budget": b, "hit_rate": h, "slowdown": 1 + (1 - h)}
                        for w in ("gpt2", "moe") for p, h0 in (("replay", 0.9), ("learned:/x/y", 0.95), ("oracle", 0.99))
                        for b, h in ((0.2, h0 - 0.2), (0.4, h0), (1.0, 1.0))]
    return doc


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def table_line(md: str, workload: str, policy: str) -> str:
    lines = [ln for ln in md.splitlines() if ln.startswith(f"| {workload} | {policy} |")]
    assert len(lines) == 1, (workload, policy, md)
    return lines[0]


def test_markdown_has_rows_with_the_right_numbers(tmp_path):
    """report.md holds one row per run with hit rate, late, misses, stall, slowdown, MiB, losses."""
    written = write_report([write_json(tmp_path / "r.json", results_doc())], tmp_path / "out", title="T")
    md = written["markdown"].read_text()
    assert md.startswith("# T")
    cells = [c.strip() for c in table_line(md, "gpt2", "replay").strip("|").split("|")]
    assert cells[:10] == ["gpt2", "replay", "2", "99.00%", "3", "7", "0.050", "1.050x", "10.0", "yes/?/?"]
    assert "30.00%" in table_line(md, "gpt2", "none") and "300.0" in table_line(md, "gpt2", "none")
    assert "simulated device" in md and "1.5 GB/s" in md and "40%" in md


def test_oracle_row_holds_only_simulated_figures(tmp_path):
    """Each workload's oracle row has its simulated hit rate and no live figure to set beside live runs."""
    md = format_markdown(build_rows([results_doc()]))
    head = [c.strip() for c in md.split("| workload |", 1)[1].split("\n", 1)[0].strip("|").split("|")]
    col = {h: i + 1 for i, h in enumerate(head)}
    for w, hit in (("gpt2", "99.90%"), ("moe", "98.00%")):
        cells = [c.strip() for c in table_line(md, w, "*oracle (sim)*").strip("|").split("|")]
        assert cells[col["sim hit rate"]] == hit
        assert cells[col["hit rate"]] == "-" and cells[col["slowdown"]] == "-" and cells[col["stall s"]] == "-"


def test_rows_order_and_oracle_gap_on_the_same_trace_only():
    """Rows come by workload then none, replay, markov, learned, oracle; a run is set against the oracle
    only through its simulated hit rate on the same trace (same workload and seed)."""
    doc = results_doc()
    doc["runs"][4]["simulated_hit_rate"] = 0.95  # moe learned, seed 2: the oracle's trace
    doc["runs"][3].update(simulated_hit_rate=0.5, seed=3)  # moe replay, seed 3: no oracle on that trace
    rows = build_rows([doc])
    assert [(r["workload"], r["policy"]) for r in rows] == [
        ("gpt2", "none"), ("gpt2", "replay"), ("gpt2", "learned"), ("gpt2", "oracle (sim)"),
        ("moe", "replay"), ("moe", "learned"), ("moe", "oracle (sim)")]
    moe_replay, moe_learned = rows[4], rows[5]
    assert moe_learned["oracle_hit_rate"] == pytest.approx(0.98)
    assert moe_learned["sim_vs_oracle_pt"] == pytest.approx(-3.0)  # simulated 95% - oracle 98%, never live 96%
    assert moe_replay["oracle_hit_rate"] is None and moe_replay["sim_vs_oracle_pt"] is None
    assert rows[1]["sim_vs_oracle_pt"] is None  # no simulated figure: no comparison with the oracle


def test_hit_rate_is_strict():
    """The table's hit rate is hits / accesses even when the report's hit_rate counted late hits."""
    rows = build_rows([run_report(hits=900, late=90, misses=10, hit_rate=0.99)])
    assert rows[0]["hit_rate"] == pytest.approx(0.9)


def test_learned_spec_shown_as_learned(tmp_path):
    """A 'learned:/x/y' policy is 'learned' in the table; the spec stays in report.json."""
    written = write_report([write_json(tmp_path / "r.json", run_report(policy="learned:/x/y"))], tmp_path / "o")
    md = written["markdown"].read_text()
    table_line(md, "gpt2", "learned")
    assert "/x/y" not in format_table(build_rows([run_report(policy="learned:/x/y")]))
    rows = json.loads(written["json"].read_text())["rows"]
    assert rows[0]["policy"] == "learned" and rows[0]["policy_spec"] == "learned:/x/y"


def test_report_json_round_trips(tmp_path):
    """report.json's rows are build_rows' rows, and its sweep is build_sweep's."""
    doc = results_doc()
    written = write_report([write_json(tmp_path / "r.json", doc)], tmp_path / "out")
    back = json.loads(written["json"].read_text())
    expected = json.loads(json.dumps(build_rows([(str(tmp_path / "r.json"), doc)])))
    assert back["rows"] == expected
    assert [s["budget_fraction"] for s in back["sweep"]] == [s["budget_fraction"] for s in build_sweep([doc])]
    assert back["machine"]["cpu_count"] == 2


def test_pngs_are_written_and_valid(tmp_path):
    """hit_rate.png, slowdown.png and budget_sweep.png are non-empty PNG files."""
    written = write_report([write_json(tmp_path / "r.json", results_doc())], tmp_path / "out")
    for key in ("hit_rate_png", "slowdown_png", "budget_sweep_png"):
        data = written[key].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, key
    assert "![hit_rate](hit_rate.png)" in written["markdown"].read_text()


def test_no_sweep_plot_without_sweep(tmp_path):
    """Without sweep data there is no budget_sweep.png."""
    written = write_report([write_json(tmp_path / "r.json", results_doc(sweep=False))], tmp_path / "out")
    assert "budget_sweep_png" not in written and not (tmp_path / "out" / "budget_sweep.png").exists()
    assert "hit_rate_png" in written


def test_no_plots(tmp_path):
    """plots=False writes only report.md and report.json."""
    written = write_report([write_json(tmp_path / "r.json", results_doc())], tmp_path / "out", plots=False)
    assert sorted(written) == ["json", "markdown"]


def test_timeline_copied(tmp_path):
    """The first run's timeline is copied to timeline.trace.json and the md names the run."""
    trace = {"traceEvents": [{"ph": "X", "pid": 1, "tid": 1, "name": "step 0", "ts": 0, "dur": 5}]}
    (tmp_path / "tl").mkdir()
    write_json(tmp_path / "tl" / "gpt2-replay.trace.json", trace)
    doc = [run_report("gpt2", "none"), run_report("gpt2", "replay", timeline="tl/gpt2-replay.trace.json")]
    written = write_report([write_json(tmp_path / "runs.json", doc)], tmp_path / "out")  # relative to the json
    assert json.loads(written["timeline"].read_text()) == trace
    md = written["markdown"].read_text()
    assert "timeline.trace.json" in md and "**gpt2 / replay**" in md and "ui.perfetto.dev" in md


def test_timeline_run_selects_and_unknown_is_an_error(tmp_path):
    """timeline_run picks WORKLOAD/POLICY; one without a timeline is a clear error."""
    for p in ("none", "replay"):
        write_json(tmp_path / f"{p}.trace.json", {"traceEvents": [], "otherData": {"policy": p}})
    doc = [run_report("gpt2", p, timeline=str(tmp_path / f"{p}.trace.json")) for p in ("none", "replay")]
    src = write_json(tmp_path / "runs.json", doc)
    written = write_report([src], tmp_path / "out", plots=False, timeline_run="gpt2/replay")
    assert json.loads(written["timeline"].read_text())["otherData"]["policy"] == "replay"
    with pytest.raises(ReportError, match="moe/replay"):
        write_report([src], tmp_path / "out2", plots=False, timeline_run="moe/replay")


def test_no_timeline_when_absent(tmp_path):
    """Runs without a timeline give no timeline file."""
    written = write_report([write_json(tmp_path / "r.json", run_report())], tmp_path / "out", plots=False)
    assert "timeline" not in written and not (tmp_path / "out" / "timeline.trace.json").exists()


def test_missing_file_error_names_file(tmp_path):
    """A missing input is a one-line error naming it."""
    with pytest.raises(ReportError, match=r"nope\.json: no such file"):
        write_report([tmp_path / "nope.json"], tmp_path / "out")


def test_invalid_json_error_names_file(tmp_path):
    """Invalid JSON is an error naming the file and the position."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"runs": [')
    with pytest.raises(ReportError, match=r"bad\.json: not valid JSON.*line 1"):
        write_report([bad], tmp_path / "out")


@pytest.mark.parametrize("doc", [{"foo": 1}, {"runs": []}, [], 3, [{"workload": "gpt2"}]])
def test_documents_without_runs_error_names_file(tmp_path, doc):
    """Documents without run reports are an error naming the file."""
    path = write_json(tmp_path / "empty.json", doc)
    with pytest.raises(ReportError, match=r"empty\.json"):
        write_report([path], tmp_path / "out")


def test_only_oracle_is_an_error(tmp_path):
    """Inputs with oracle data but no runs are an error naming the files."""
    path = write_json(tmp_path / "oracle.json", {"oracle": [oracle_report()]})
    with pytest.raises(ReportError, match=r"oracle\.json"):
        write_report([path], tmp_path / "out")


def test_several_inputs_and_shapes(tmp_path):
    """A single report, a list and a list holding an oracle report combine into one table."""
    a = write_json(tmp_path / "a.json", run_report("gpt2", "none", hits=100, late=0, misses=900))
    b = write_json(tmp_path / "b.json", [run_report("gpt2", "replay"), oracle_report("gpt2")])
    rows = build_rows([("a.json", json.loads(a.read_text())), ("b.json", json.loads(b.read_text()))])
    assert [r["policy"] for r in rows] == ["none", "replay", "oracle (sim)"]
    assert rows[0]["source"] == "a.json"


def test_oracle_workload_from_trace_name():
    """An oracle report without 'workload' gets it from its trace's name."""
    doc = {"runs": [run_report("accum-eval", "replay")],
           "oracle": [oracle_report(workload=None, trace="datasets/samples/accum-eval/heldout/accum-eval-heldout")]}
    rows = build_rows([doc])
    assert [(r["workload"], r["kind"]) for r in rows] == [("accum-eval", "run"), ("accum-eval", "oracle")]


def test_sweep_budget_forms():
    """Sweep budgets may be fractions, percentages, sizes or simulator reports' budget_fraction."""
    doc = {"runs": [run_report()], "sweep": [
        {"workload": "gpt2", "policy": "replay", "budget": 0.4, "hit_rate": 0.9, "slowdown": 1.1},
        {"workload": "gpt2", "policy": "replay", "budget": "60%", "hit_rate": 0.95, "slowdown": 1.05},
        {"workload": "gpt2", "policy": "replay", "budget": "50MiB", "managed_bytes": 100 * MiB, "hit_rate": 0.9,
         "slowdown": 1.0},
        {"trace": "x/gpt2-train", "policy": "learned:/m", "budget": "0.2", "budget_fraction": 0.2, "hit_rate": 0.8,
         "slowdown": 1.3}]}
    sweep = build_sweep([doc])
    assert [s["budget_fraction"] for s in sweep] == pytest.approx([0.4, 0.6, 0.5, 0.2])
    assert sweep[3]["workload"] == "gpt2" and sweep[3]["policy"] == "learned"


def test_losses_differ_flagged():
    """A run whose losses differ is marked NO in the table and called out."""
    md = format_markdown(build_rows([run_report(losses_identical=False)]))
    assert "**NO**" in table_line(md, "gpt2", "replay")
    assert "Not bit-identical" in md and "gpt2/replay seed 2 (losses)" in md


def test_missing_optional_values_are_na():
    """A run without slowdown or losses_identical shows n/a, not an error."""
    r = run_report()
    del r["losses_identical"]
    r["slowdown"] = None
    line = table_line(format_table(build_rows([r])), "gpt2", "replay")
    assert "n/a" in line


def _cells(table: str, workload: str, policy: str) -> dict[str, str]:
    """The summary row of (workload, policy) as {column header: cell}."""
    head = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    lines = [ln for ln in table.splitlines() if ln.startswith(f"| {workload} | {policy}")]
    assert len(lines) == 1, (workload, policy, table)
    return dict(zip(head, (c.strip() for c in lines[0].strip().strip("|").split("|"))))


def _seeds(policy="replay", workload="gpt2", hits=(900, 950, 990), slowdowns=(1.3, 1.1, 1.2), **kw):
    """One run report per evaluation seed 2, 3, 4."""
    return [run_report(workload, policy, hits=h, late=10 * i, misses=1000 - h - 10 * i, slowdown=sl, seed=2 + i, **kw)
            for i, (h, sl) in enumerate(zip(hits, slowdowns))]


def test_summary_is_median_with_min_max_over_seeds():
    """One row per workload and policy: hit rate and slowdown as median [min-max], late as the median."""
    cells = _cells(format_table(build_rows([_seeds()])), "gpt2", "replay")
    assert cells["seeds"] == "2,3,4"
    assert cells["hit rate"] == "95.00% [90.00-99.00]"
    assert cells["slowdown"].startswith("1.200x [1.100-1.300]")
    assert cells["late"] == "10"


def test_fastest_policy_marked_none_included():
    """The lowest median slowdown per workload is marked, `none` included, and the report says prefetching did not pay."""
    runs = _seeds("none", hits=(300, 300, 300), slowdowns=(1.15, 1.25, 1.2)) + _seeds("replay")
    rows = build_rows([runs])
    table = format_table(rows)
    assert "fastest" in _cells(table, "gpt2", "none")["slowdown"]
    assert "fastest" not in _cells(table, "gpt2", "replay")["slowdown"]
    assert table.count("fastest") == 1
    assert "did not pay" in format_markdown(rows) and "gpt2" in format_markdown(rows).split("did not pay")[1]


def test_in_sample_learned_runs_are_refused():
    """A learned run flagged in_sample is left out of every figure; all in sample: the row says REFUSED."""
    runs = _seeds("learned:/m", train_seeds=[0, 1], in_sample=False)
    runs[0].update(hits=100, slowdown=9.0, in_sample=True)  # would drag the median and min-max if counted
    table = format_table(build_rows([runs]))
    cells = _cells(table, "gpt2", "learned")
    assert cells["hit rate"] == "97.00% [95.00-99.00]" and "1 in-sample run(s) refused" in cells["seeds"]
    only = [dict(r, in_sample=True) for r in runs]
    rows = build_rows([only])
    cells = _cells(format_table(rows), "gpt2", "learned")
    assert cells["hit rate"] == "REFUSED: in sample" and cells["slowdown"] == "-"
    assert "Refused (in sample" in format_markdown(rows)
    assert "95.00%" not in format_markdown(rows)  # not in the detail table either


def test_learned_row_states_training_and_evaluation_seeds():
    """A learned row names the seeds it was evaluated on and those its model was trained on."""
    runs = _seeds("learned:/m", train_seeds=[0, 1], eval_seeds=[2], in_sample=False)
    assert _cells(format_table(build_rows([runs])), "gpt2", "learned")["seeds"] == "2,3,4; trained 0,1"


def test_missing_in_sample_flag_is_unknown_and_said():
    """A learned report without `in_sample` is shown as not reported, and the report says so."""
    rows = build_rows([_seeds("learned:/m")])
    assert "trained ?; in-sample not reported" in _cells(format_table(rows), "gpt2", "learned")["seeds"]
    md = format_markdown(rows, protocol={"train_seeds": [0, 1], "eval_seeds": [2, 3, 4]})
    assert "In-sample not reported (unknown)" in md and "trained 0,1" in md


def test_identity_of_params_and_optimizer_state_shown():
    """losses/params/optimizer state identity each get a place; a False anywhere is NO and called out."""
    runs = _seeds(params_identical=True, optimizer_state_identical=True)
    assert _cells(format_table(build_rows([runs])), "gpt2", "replay")["identical loss/param/optim"] == "yes/yes/yes"
    runs[1]["params_identical"] = False
    rows = build_rows([runs])
    assert _cells(format_table(rows), "gpt2", "replay")["identical loss/param/optim"] == "yes/**NO**/yes"
    md = format_markdown(rows)
    assert "Not bit-identical" in md and "gpt2/replay seed 3 (params)" in md


LIVE_KEYS = dict(managed_kinds=["parameter", "activation"], min_managed_bytes=65536, persistent_bytes=0)
"""The keys a live report carries with policy_served_by (runtime.run_report.LiveCounters)."""


def test_fallback_served_runs_are_marked():
    """A learned row served by a fallback policy says so in the policy cell."""
    runs = _seeds("learned:/m", policy_served_by="replay", **LIVE_KEYS)
    assert "learned (served by replay)" in format_table(build_rows([runs]))


def test_table_printed_to_stdout(tmp_path):
    """write_report(stdout=...) prints the Markdown table."""
    buf = io.StringIO()
    write_report([write_json(tmp_path / "r.json", results_doc())], tmp_path / "out", plots=False, stdout=buf)
    assert buf.getvalue().startswith("| workload | policy | seeds | hit rate")


def test_cli(tmp_path):
    """`prefetch report` writes the report and prints the table; a bad file exits 2 naming it."""
    src = write_json(tmp_path / "results.json", results_doc())
    cmd = [sys.executable, "-m", "prefetch", "report", str(src), "--out", str(tmp_path / "out"), "--title", "CLI"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| gpt2 | learned |" in proc.stdout
    for name in ("report.md", "report.json", "hit_rate.png", "budget_sweep.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    bad = [sys.executable, "-m", "prefetch", "report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o2")]
    proc = subprocess.run(bad, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "missing.json: no such file" in proc.stderr

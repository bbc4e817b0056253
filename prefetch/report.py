"""Run reports -> a report a person wants to look at: Markdown + JSON table, PNG plots, a timeline.

    prefetch report out/demo/results.json --out out/demo/report
    prefetch report runs/gpt2-replay.json runs/gpt2-learned.json --out report/ --title "gpt2 at 40%"

    from prefetch.report import write_report          # rows: prefetch.report_rows, tables: report_tables
    written = write_report(["out/demo/results.json"], "out/report")   # {"markdown": Path, ...}

Inputs are JSON files, each one of:
  * one run report (`prefetch run --json`, `Prefetcher.report()` plus `workload`);
  * a list of run reports (simulator reports with policy "oracle" in it count as oracles);
  * a results document (what `prefetch demo` writes):
        {"machine": {...}, "runs": [run reports], "oracle": [simulator reports],
         "sweep": [{"workload", "policy", "budget", "hit_rate", "slowdown"}, ...]}
    every part optional except that, over all inputs, there must be at least one run;
  * a simulator sweep (`prefetch simulate --sweep --json`): {"sweep": [simulator reports]}.
Every report is read as a runtime.run_report.RunReport (DESIGN.md's keys required): a missing or
mistyped key is a one-line error naming the file and the key.

Writes into the output folder:
  report.md            the table: workload x policy -> hit rate (strict: hits / accesses),
                       late, misses, stall, slowdown vs all resident, MiB copied, accuracy,
                       losses identical, the gap to the oracle; a row per workload for the
                       (simulated) oracle; device, link, budget and a legend
  report.json          the same rows (and the sweep, the machine, the inputs)
  hit_rate.png         grouped bars: hit rate per policy per workload, oracle as a line
  slowdown.png         grouped bars: step time / all resident per policy per workload
  budget_sweep.png     hit rate and slowdown over the budget (only with sweep data)
  timeline.trace.json  a copy of the first run's timeline (Perfetto / chrome://tracing)

The policy "learned:SOME/DIR" is shown as "learned" (the full spec stays in report.json).
Reading: prefetch.report_inputs; rows and summaries: report_rows; Markdown: report_tables; PNGs: report_plots.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

from prefetch.report_inputs import Parts, ReportError, Source, _policy_name, load_inputs
from prefetch.report_plots import plot_hit_rate, plot_slowdown, plot_sweep
from prefetch.report_rows import _same, _workload_of, build_rows, build_sweep, summarize
from prefetch.report_tables import format_markdown, format_table
from runtime.run_report import RunReport


# -- the report -----------------------------------------------------------------------------


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def _find_timeline(parts: Parts, which: str | None = None) -> tuple[Path, RunReport, Source] | None:
    """The first run with an existing timeline file (of WORKLOAD/POLICY `which` when given)."""
    want_w, _, want_p = (which or "").partition("/")
    for r, source in parts.runs:
        t = r.timeline
        if not t:
            continue
        if which and (str(r.workload) != want_w or (want_p and _policy_name(r.policy) != want_p)):
            continue
        cand = [Path(t)] if Path(t).is_absolute() else [Path(t), Path(source).parent / t]
        for c in cand:
            if c.is_file():
                return c, r, source
    return None


def write_report(inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                 title: str | None = None, plots: bool = True, sweep_workloads: Sequence[str] | None = None,
                 timeline_run: str | None = None, stdout: TextIO | None = None) -> dict[str, Path]:
    """Read the inputs, write report.md, report.json, the PNGs and the timeline into out_dir.

    Returns the written paths: markdown, json, hit_rate_png, slowdown_png, budget_sweep_png (with
    sweep data), timeline (the first run that has one, or the run `timeline_run` names as
    WORKLOAD/POLICY, e.g. "gpt2/learned"). With `stdout`, the Markdown table is printed there."""
    parts = load_inputs(inputs)
    rows = build_rows(parts)
    sweep = build_sweep(parts)
    found = _find_timeline(parts, timeline_run)
    if found is None and timeline_run:
        raise ReportError(f"no run {timeline_run} (WORKLOAD/POLICY) with a timeline file in the inputs")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    notes: list[str] = []

    images: list[str] = []
    if plots:
        written["hit_rate_png"] = plot_hit_rate(rows, out / "hit_rate.png", title=title)
        images.append("hit_rate.png")
        if any(r["slowdown"] is not None for r in rows):
            written["slowdown_png"] = plot_slowdown(rows, out / "slowdown.png", title=title)
            images.append("slowdown.png")
        if sweep:
            runs = [r for r in rows if r["kind"] == "run"]
            p = plot_sweep(sweep, out / "budget_sweep.png", title=title, workloads=sweep_workloads,
                           budget_mark=_same(r["budget_fraction"] for r in runs))
            if p is not None:
                written["budget_sweep_png"] = p
                images.append("budget_sweep.png")

    timeline_info = None
    if found is not None:
        src, run, source = found
        dst = out / "timeline.trace.json"
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        written["timeline"] = dst
        timeline_info = {"path": str(dst), "from": str(src), "workload": _workload_of(run),
                         "policy": _policy_name(run.policy), "policy_spec": run.policy, "source": source}
    else:
        wanted = [r.timeline for r, _ in parts.runs if r.timeline]
        if wanted:
            notes.append(f"No timeline copied: {wanted[0]} (named by a run) was not found.")

    md = format_markdown(rows, title=title, machine=parts.machine, images=images, timeline=timeline_info,
                         inputs=[str(i) for i in inputs], notes=notes, protocol=parts.protocol)
    (out / "report.md").write_text(md + "\n")
    written["markdown"] = out / "report.md"
    doc = {
        "title": title,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": [str(i) for i in inputs],
        "machine": parts.machine,
        "protocol": parts.protocol,
        "summary": summarize(rows, parts.protocol),
        "rows": rows,
        "sweep": sweep,
        "timeline": timeline_info,
        "files": {k: Path(v).name for k, v in written.items()},
    }
    (out / "report.json").write_text(json.dumps(_clean(doc), indent=2, allow_nan=False) + "\n")
    written["json"] = out / "report.json"
    if stdout is not None:
        print(format_table(rows, parts.protocol), file=stdout)
    return written

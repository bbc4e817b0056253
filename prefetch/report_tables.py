"""The report's Markdown: the summary table, the per-run table, the whole report.md with its legend."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from prefetch.report_inputs import ORACLE, _policy_name
from prefetch.report_rows import _same, summarize


# -- Markdown -------------------------------------------------------------------------------


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _fmt(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def _describe_device(rows: list[dict[str, Any]], machine: dict[str, Any] | None) -> str:
    devices = list(dict.fromkeys(r["device"] for r in rows if r["kind"] == "run"))
    out = []
    for d in devices:
        if d == "simulated":
            out.append("simulated device (no CUDA: copies run on a copy-engine thread and take the time "
                       "the link model gives)")
        elif d.startswith("cuda"):
            gpu = (machine or {}).get("device") or (machine or {}).get("cuda")
            out.append(f"{d} ({gpu})" if gpu and "simulated" not in str(gpu) else d)
        else:
            out.append(d)
    return "; ".join(out) or "unknown"


def _describe_link(rows: list[dict[str, Any]]) -> str | None:
    links = [(r["workload"], r["link"]) for r in rows if r["kind"] == "run" and r["link"]]
    if not links:
        return None
    ratios = {lk.get("ratio") for _, lk in links}
    lat = {lk.get("latency_us") for _, lk in links}
    bw: dict[str, float] = {}
    for w, lk in links:
        if lk.get("bandwidth_GBps") is not None:
            bw.setdefault(w, float(lk["bandwidth_GBps"]))
    parts = []
    if len(ratios) == 1 and None not in ratios:
        parts.append(f"ratio {ratios.pop():g} (copying every managed byte once takes that share of a step's "
                     "compute time)")
    if len(lat) == 1 and None not in lat:
        parts.append(f"latency {lat.pop():g} us per copy")
    if bw:
        parts.append("bandwidth " + ", ".join(f"{w} {v:.3g} GB/s" for w, v in bw.items()))
    return "; ".join(parts)


def _seed_text(seeds: Any) -> str:
    return ",".join(str(x) for x in seeds) if isinstance(seeds, (list, tuple)) and seeds else "?"


def _ident(v: bool | None) -> str:
    return "?" if v is None else ("yes" if v else "**NO**")


def _identity_cell(r: dict[str, Any]) -> str:
    """losses/params/optimizer state bit-identical to the all-resident twin ('?' = not reported)."""
    return "/".join(_ident(r[k]) for k in ("losses_identical", "params_identical", "optimizer_state_identical"))


def _med(sp: dict[str, float] | None, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    return "n/a" if sp is None else f"{scale * sp['median']:{spec}}{suffix}"


def _range(sp: dict[str, float] | None, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    """'median [min-max]' over the seeds; just the value for one run."""
    if sp is None:
        return "n/a"
    med = f"{scale * sp['median']:{spec}}{suffix}"
    if sp["n"] < 2:
        return med
    return f"{med} [{scale * sp['min']:{spec}}-{scale * sp['max']:{spec}}]"


def _seeds_cell(s: dict[str, Any]) -> str:
    text = ",".join(str(x) for x in s["seeds"]) or "?"
    if s["policy"] == "learned":
        text += "; trained " + (",".join(str(x) for x in s["train_seeds"]) if s["train_seeds"] else "?")
        if s["refused"]:
            text += f"; {s['refused']} in-sample run(s) refused"
        elif not s["in_sample_reported"]:
            text += "; in-sample not reported"
    return text


def format_table(rows: list[dict[str, Any]], protocol: dict[str, Any] | None = None) -> str:
    """The summary table (what `prefetch demo` prints): one row per workload and policy.

    Live figures are the median over the runs (seeds) with [min-max] for hit rate and
    slowdown; late, misses, stall and MiB copied are medians. The simulated columns replay
    the trace recorded (all resident) from each run's seed; the oracle row has only simulated figures. The fastest policy
    per workload (lowest median slowdown, `none` included) is marked."""
    summary = summarize(rows, protocol)
    runs = [s for s in summary if s["kind"] == "run"]
    budget_col = _same(s["budget_fraction"] for s in runs) is None and any(s["budget_fraction"] for s in summary)
    device_col = len({s["device"] for s in runs}) > 1
    sim_col = any(s["simulated_hit_rate"] is not None for s in summary)
    cols = [("workload", "---"), ("policy", "---"), ("seeds", "---")]
    cols += [("device", "---")] if device_col else []
    cols += [("budget", "---:")] if budget_col else []
    cols += [(h, "---:") for h in ("hit rate", "late", "misses", "stall s", "slowdown", "MiB copied")]
    cols += [("identical loss/param/optim", ":---:")]
    cols += [("sim hit rate", "---:"), ("sim slowdown", "---:")] if sim_col else []
    head, align = [c[0] for c in cols], [c[1] for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for s in summary:
        is_oracle = s["kind"] == ORACLE
        name = f"*{s['policy']}*" if is_oracle else s["policy"]
        if s["served_by"]:  # a fallback served (some of) these runs: they are not this policy's figures
            name += f" (served by {', '.join(s['served_by'])})"
        cells = [s["workload"], name, _seeds_cell(s)]
        if device_col:
            cells.append("simulated" if is_oracle else s["device"])
        if budget_col:
            bf = s["budget_fraction"]
            cells.append("n/a" if bf is None else f"{100 * bf:.0f}%")
        if is_oracle:
            cells += ["-"] * 7
        elif s["runs"] == 0 and s["refused"]:
            cells += ["REFUSED: in sample"] + ["-"] * 6
        else:
            slow = _range(s["slowdown"], ".3f", suffix="x") + (" **fastest**" if s["fastest"] else "")
            cells += [_range(s["hit_rate"], ".2f", 100, "%"), _med(s["late"], ".0f"), _med(s["misses"], ".0f"),
                      _med(s["stall_s"], ".3f"), slow, _med(s["mib_copied"], ".1f"), _identity_cell(s)]
        if sim_col:
            cells += [_range(s["simulated_hit_rate"], ".2f", 100, "%"), _med(s["simulated_slowdown"], ".3f", suffix="x")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_runs_table(rows: list[dict[str, Any]]) -> str:
    """Every run on its own line (report.md's detail table), with its seed."""
    runs = [r for r in rows if r["kind"] == "run"]
    budget_col = _same(r["budget_fraction"] for r in runs) is None and any(r["budget_fraction"] for r in rows)
    device_col = len({r["device"] for r in runs}) > 1
    sim_col = any(r["simulated_hit_rate"] is not None for r in rows)
    oracle_col = any(r["sim_vs_oracle_pt"] is not None for r in rows)
    book_col = any(r.get("bookkeeping_ms") is not None for r in runs)
    cols = [("workload", "---"), ("policy", "---"), ("seed", "---:")]
    cols += [("device", "---")] if device_col else []
    cols += [("budget", "---:")] if budget_col else []
    cols += [(h, "---:") for h in ("hit rate", "late", "misses", "stall s")]
    cols += [("bookkeeping ms/step", "---:")] if book_col else []
    cols += [(h, "---:") for h in ("slowdown", "MiB copied", "accuracy")]
    cols += [("identical loss/param/optim", ":---:")]
    cols += [("sim hit rate", "---:"), ("sim slowdown", "---:")] if sim_col else []
    cols += [("sim vs oracle", "---:")] if oracle_col else []
    head, align = [c[0] for c in cols], [c[1] for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        is_oracle = r["kind"] == ORACLE
        cells = [r["workload"], f"*{r['policy']}*" if is_oracle else r["policy"], _fmt(r["seed"], "d")]
        if device_col:
            cells.append("simulated" if is_oracle else r["device"])
        if budget_col:
            bf = r["budget_fraction"]
            cells.append("n/a" if bf is None else f"{100 * bf:.0f}%")
        if is_oracle:
            cells += ["-"] * (8 + book_col)
        elif r["in_sample"] is True:
            cells += ["REFUSED: in sample"] + ["-"] * (7 + book_col)
        else:
            cells += [
                _pct(r["hit_rate"]),
                _fmt(r["late"], "d"),
                _fmt(r["misses"], "d"),
                _fmt(r["stall_s"], ".3f"),
                *([_fmt(r.get("bookkeeping_ms"), ".2f")] if book_col else []),
                "n/a" if r["slowdown"] is None else f"{r['slowdown']:.3f}x",
                _fmt(r["mib_copied"], ".1f"),
                _pct(r["accuracy"], 1),
                _identity_cell(r),
            ]
        if sim_col:
            sim_hit = r["hit_rate"] if is_oracle else r["simulated_hit_rate"]
            sim_slow = r["slowdown"] if is_oracle else r["simulated_slowdown"]
            cells += ["" if sim_hit is None else _pct(sim_hit),
                      "" if sim_slow is None else f"{sim_slow:.3f}x"]
        if oracle_col:
            cells.append("" if r["sim_vs_oracle_pt"] is None else f"{r['sim_vs_oracle_pt']:+.2f} pt")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


LEGEND = """\
- **seeds**: the runs (seeds) behind a row; every live figure is their median, hit rate and slowdown
  with [min-max]. A learned row also names the seeds its model was trained on: the protocol keeps them
  disjoint, and a run whose report flags `in_sample` is refused, never shown as a result.
- **hit rate**: hits / accesses to managed tensors (parameters and saved activations) over the measured
  steps, warm-up excluded. Strict: a *late* access (its copy still in flight) is not a hit.
- **late**: accesses that found their prefetch in flight and waited for it; **misses**: accesses that found
  the tensor absent and fetched it synchronously.
- **stall s**: time the computation waited for copies (late + misses), summed over the measured steps.
- **bookkeeping ms/step**: the prefetcher's own code on the training thread (hooks, store, policy), per
  measured step; with stall and emulation it is the run's `overhead` split (docs/overhead.md).
- **slowdown**: step time over the same job with everything resident (1.000x = no cost); for `prefetch run`,
  the median per-step ratio against an all-resident twin stepped alternately. **fastest**: the lowest median
  slowdown of the workload, `none` (no prefetching) included: when it is `none`, prefetching did not pay.
- **MiB copied**: host-to-device bytes copied in the measured steps (MiB = 2^20 bytes).
- **accuracy**: prefetches used / prefetches issued.
- **identical loss/param/optim**: the prefetched run's losses, final parameters and optimizer state equal the
  all-resident twin's, bit for bit (`?`: not reported by the run).
- **sim hit rate / sim slowdown**: the simulator (prefetch.simulate) replaying the trace recorded (all
  resident) from each live run's seed with the same policy, budget and link (a live run against the simulation
  of its own trace: benchmarks/live_vs_sim.py). ***oracle (sim)***: the offline bound on those same traces; it is
  simulated, so compare it with the sim columns only, never with live figures.
- **sim vs oracle**: a run's simulated hit rate minus the oracle's on the same trace, in percentage points."""


def format_markdown(rows: list[dict[str, Any]], *, title: str | None = None, machine: dict[str, Any] | None = None,
                    images: Sequence[str] = (), timeline: dict[str, Any] | None = None,
                    inputs: Sequence[str] = (), notes: Sequence[str] = (),
                    protocol: dict[str, Any] | None = None) -> str:
    """The whole report.md: title, setup (protocol, device, link, budget), the summary table,
    every run, the in-sample and bit-identity notes, legend, files."""
    runs = [r for r in rows if r["kind"] == "run"]
    out = [f"# {title or 'Prefetch report'}", ""]
    setup = []
    if protocol:
        setup.append(f"- **protocol**: learned trained on seeds {_seed_text(protocol.get('train_seeds'))} "
                     f"({protocol.get('train_steps', '?')} steps each); every policy run live on the unseen seeds "
                     f"{_seed_text(protocol.get('eval_seeds'))}, one run per seed; figures are the median over "
                     "them with [min-max]; simulated figures replay the trace recorded from each run's seed")
    setup.append(f"- **device**: {_describe_device(rows, machine)}")
    link = _describe_link(rows)
    if link:
        setup.append(f"- **link** (simulated device): {link}")
    bf = _same(r["budget_fraction"] for r in runs)
    if bf is not None:
        setup.append(f"- **budget**: {100 * bf:.0f}% of the managed bytes (parameters and saved activations)")
    steps, warm = _same(r["steps"] for r in runs), _same(r["warmup_steps"] for r in runs)
    if steps is not None:
        setup.append(f"- **steps**: {steps} measured per run" + (f", after {warm} warm-up" if warm is not None else ""))
    if machine:
        keys = ("cpu_count", "platform", "python", "torch", "torch_threads", "transformers", "lightgbm", "pyzmq")
        facts = ", ".join(f"{k} {machine[k]}" for k in keys if machine.get(k) is not None)
        if facts:
            setup.append(f"- **machine**: {facts}")
    summary = summarize(rows, protocol)
    out += setup + ["", format_table(rows, protocol), ""]
    slow = [s for s in summary if s["fastest"] and s["policy"] == "none"]
    if slow:
        out += ["Prefetching did not pay (no prefetching, `none`, was fastest) on: "
                + ", ".join(s["workload"] for s in slow) + ".", ""]
    refused = [s for s in summary if s["refused"]]
    if refused:
        out += ["**Refused (in sample: the evaluated run overlaps the model's training data): "
                + ", ".join(f"{s['workload']}/{s['policy']} ({s['refused']} run(s))" for s in refused)
                + ". Their figures are not shown.**", ""]
    unknown = [s for s in summary if s["policy"] == "learned" and s["in_sample_reported"] is False]
    if unknown:
        out += ["In-sample not reported (unknown) for the learned runs of "
                + ", ".join(s["workload"] for s in unknown)
                + ": their reports carry no `in_sample` flag" + (
                    f"; by the protocol the training seeds ({_seed_text(protocol.get('train_seeds'))}) and "
                    f"evaluation seeds ({_seed_text(protocol.get('eval_seeds'))}) are disjoint" if protocol else "")
                + ".", ""]
    for r in runs:
        served = r.get("served_by")
        if served and _policy_name(served) != r["policy"]:
            out += [f"Note: {r['workload']} / {r['policy']} was served by `{served}`"
                    + (f" ({r['policy_note']})" if r.get("policy_note") else "") + ".", ""]
    bad = [f"{r['workload']}/{r['policy']}" + (f" seed {r['seed']}" if r["seed"] is not None else "")
           + " (" + ", ".join(k.replace("_identical", "") for k in
                               ("losses_identical", "params_identical", "optimizer_state_identical")
                               if r[k] is False) + ")"
           for r in runs if False in (r["losses_identical"], r["params_identical"], r["optimizer_state_identical"])]
    if bad:
        out += [f"**Not bit-identical to the all-resident run (losses differ, or the final parameters or "
                f"optimizer state): {', '.join(bad)}.**", ""]
    if len(runs) > len(summary):
        out += ["Every run:", "", format_runs_table(rows), ""]
    out += list(notes) + ([""] if notes else [])
    out += ["Legend:", "", LEGEND, ""]
    if images:
        out += ["Figures:", ""] + [f"- ![{Path(i).stem}]({Path(i).name})" for i in images] + [""]
    if timeline:
        out += [
            f"Timeline: [`{Path(timeline['path']).name}`]({Path(timeline['path']).name}) is the run "
            f"**{timeline['workload']} / {timeline['policy']}** (from `{timeline['from']}`). Open it in "
            "https://ui.perfetto.dev (\"Open trace file\") or in Chrome at chrome://tracing (\"Load\"). "
            "Tracks: *compute* (one slice per step; stalls marked: late waits and demand fetches) and "
            "*copy engine* (every host-to-device and device-to-host copy).",
            "",
        ]
    if inputs:
        out += ["Inputs: " + ", ".join(f"`{i}`" for i in inputs), ""]
    return "\n".join(out)

"""Every benchmark, one results table: out/benchmarks/results.md (and results.json).

    python benchmarks/run_all.py                      # everything (live: one run per workload, policy, seed)
    python benchmarks/run_all.py --quick              # fewer steps, workloads and policies
    python benchmarks/run_all.py --only daemon_latency         # one benchmark; other sections kept
    python benchmarks/run_all.py --skip record_overhead,cuda
    python benchmarks/run_all.py --workloads gpt2,llama --policies none,replay,learned:out/benchmarks/models
    python benchmarks/run_all.py --only live,offline_eval --seeds 2,3,4

Each benchmark runs as its own subprocess (from the repository root, OMP/MKL/OpenBLAS
threads 1 unless --omp-threads says otherwise) and writes JSON under --out; this script
reads those files and writes one Markdown file with the machine, the versions, the
device, and a table per benchmark with the exact command that produced it:

  record_overhead     benchmarks/record_overhead.py: step time recorded vs not, per workload
  predictor_latency   benchmarks/predictor_latency.py: p50/p99 per decision, per policy
  simulate_speed      benchmarks/simulate_speed.py: simulator events/s per policy
  daemon_latency      benchmarks/daemon_latency.py: round trip per transport, throughput per
                      policy (the default replay run, and the learned policy on the same models)
  offline_eval        `prefetch record --seed S` (an unseen seed) + `prefetch eval`: the learned model's
                      next-access accuracy and recall on runs it was not trained on
  live                `prefetch run --workload W --policy P --seed S` for each unseen seed S:
                      hit rate, late, misses, stall, slowdown vs all resident, bit-identity;
                      median over the seeds with min-max, per workload x policy
  overhead            benchmarks/overhead.py: the slowdown split into stall, bookkeeping, emulation and
                      the rest, for gpt2, llama, vit at budgets 0.4 and 1.0 (none, replay, learned)
  live_vs_sim         benchmarks/live_vs_sim.py: each workload x policy live on the simulated device against
                      the simulation of that run's own trace (issue 10's check: hit rates within 1 pt)
  router_lookahead    benchmarks/router_lookahead.py: moe's router hooks, how well they predict the next
                      layers' experts and what they cost; learned with and without them live on the
                      unseen seeds, beside none, replay and markov
  oracle_search       benchmarks/oracle_search.py: random dynamic traces where a policy might beat the oracle
  daemon_flood        benchmarks/daemon_flood.py: another client's round trip while one client floods
  daemon_ranks        benchmarks/daemon_ranks.py: one daemon serving 1, 2 and 4 local ranks
  fault_suite         benchmarks/fault_suite.py: fuzzed wire messages, damaged files, daemon faults
  host_optimizer      benchmarks/host_optimizer.py: the host AdamW step per parameter byte (single-tensor,
                      foreach, fused; 1 and 2 threads), the cost a GPU run's host optimizer adds
  optimizer_placement benchmarks/optimizer_placement.py: host vs device stepping on the simulated device
                      at link ratios 0.5 and 8 (gpt2, vit), and whether auto's cost model picks the faster
  cuda                where torch.cuda.is_available(): `prefetch run --device cuda` for gpt2 with
                      replay and learned (step time and peak device memory vs all resident)
  generalisation      opt-in (--only generalisation; minutes): benchmarks/generalisation.py, 20 generated
                      architectures, each recorded, trained and judged live and simulated on an unseen seed
  user_path           opt-in (--only user_path; minutes): benchmarks/user_path.py, generated architectures
                      recorded with runtime.record, trained with `prefetch train`, run with runtime.prefetching

The evaluation protocol is `prefetch demo`'s: the learned model is trained on the sample
traces, recorded on seeds 0 (datasets/samples/*/train) and 1 (*/heldout), and scored live and
offline only on seeds never recorded for training (--seeds, default 2,3,4; an overlap with the
samples' seeds is refused). If --models (default out/benchmarks/models) holds no model,
`prefetch train datasets/samples/*/train datasets/samples/*/heldout --out MODELS` runs first.
--only / --skip take benchmark names (comma-separated); sections not run this time are
kept from the previous results.json, with the date they ran. A failed or timed-out
benchmark is reported with the tail of its log (out/benchmarks/logs/) and the others go on.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ("record_overhead", "predictor_latency", "simulate_speed", "daemon_latency", "offline_eval", "live",
              "overhead", "live_vs_sim", "router_lookahead", "oracle_search", "daemon_flood", "daemon_ranks", "fault_suite",
              "host_optimizer", "optimizer_placement", "cuda")
OPT_IN = ("generalisation", "user_path")
"""Benchmarks run only when --only names them: too long for the default set."""
TIMEOUT_SCALE = {"overhead": 2.5}
"""Benchmarks whose one command runs longer than the others: their timeout is scaled
(overhead runs every budget-0.4 row twice, with and without real copies: 11.5 min here)."""
EVAL_SEEDS = (2, 3, 4)
"""Seeds of the live and offline evaluation runs: never recorded for training (samples are seeds 0, 1)."""
DEFAULT_OUT = Path("out/benchmarks")
DEFAULT_MODELS = DEFAULT_OUT / "models"
_T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[run_all {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# -- running commands --------------------------------------------------------------------------


@dataclass
class Command:
    argv: list[str]
    json: Path | None = None
    label: str = ""
    rc: int | None = None
    elapsed_s: float | None = None
    status: str = "not run"  # ok | failed | timeout | not run
    log: Path | None = None
    data: Any = None

    def shown(self) -> str:
        """The command as a person would type it from the repository root."""
        argv = list(self.argv)
        if argv and argv[0] == sys.executable:
            exe = Path(sys.executable)
            try:
                argv[0] = str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else "python"
            except ValueError:
                argv[0] = "python"
        return shlex.join(argv)

    def as_dict(self) -> dict[str, Any]:
        return {"command": self.shown(), "label": self.label, "rc": self.rc, "elapsed_s": self.elapsed_s,
                "status": self.status, "json": str(self.json) if self.json else None,
                "log": str(self.log) if self.log else None}


@dataclass
class Section:
    name: str
    commands: list[Command] = field(default_factory=list)
    status: str = "not run"
    elapsed_s: float = 0.0
    ran_at: str | None = None
    note: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def run_command(cmd: Command, env: dict[str, str], timeout: float, log_dir: Path, name: str) -> Command:
    """Run one benchmark command (own process group; killed at the timeout), output to a log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd.log = log_dir / f"{name}{'-' + cmd.label if cmd.label else ''}.log"
    if cmd.json is not None and cmd.json.exists():
        cmd.json.unlink()  # never report a stale file
    say(f"{name}{' ' + cmd.label if cmd.label else ''}: start: {cmd.shown()}")
    t0 = time.monotonic()
    with open(cmd.log, "w") as log:
        proc = subprocess.Popen(cmd.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            cmd.rc = proc.wait(timeout=timeout)
            cmd.status = "ok" if cmd.rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # this command's own process group only
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            cmd.rc, cmd.status = None, "timeout"
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
    cmd.elapsed_s = time.monotonic() - t0
    if cmd.json is not None and cmd.json.exists():
        try:
            cmd.data = json.loads(cmd.json.read_text())
        except json.JSONDecodeError:
            cmd.data = None
    if cmd.status == "failed" and cmd.data is not None and name in ("live", "cuda") and cmd.rc == 1:
        cmd.status = "ok"  # `prefetch run` exits 1 when losses differ: the report says so
    say(f"{name}{' ' + cmd.label if cmd.label else ''}: {cmd.status} in {cmd.elapsed_s:.1f} s"
        + (f" (rc {cmd.rc}; log {cmd.log})" if cmd.status != "ok" else ""))
    return cmd


def log_tail(path: Path | str | None, lines: int = 12) -> str:
    if not path or not Path(path).exists():
        return ""
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


# -- the benchmarks ---------------------------------------------------------------------------


@dataclass
class Plan:
    out: Path
    models: Path
    quick: bool
    workloads: list[str]
    policies: list[str]
    steps: int
    seeds: tuple[int, ...] = EVAL_SEEDS
    py: str = sys.executable

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)


def plan_record_overhead(p: Plan) -> list[Command]:
    argv = [p.py, "benchmarks/record_overhead.py", "--json", str(p.path("record_overhead.json"))]
    argv += ["--steps", "8", "--warmup", "2", "--workloads", ",".join(p.workloads)] if p.quick else []
    return [Command(argv, p.path("record_overhead.json"))]


def plan_predictor_latency(p: Plan) -> list[Command]:
    split = "heldout"
    if p.quick:
        traces = [f"datasets/samples/{w}/{split}" for w in p.workloads if (ROOT / "datasets/samples" / w / split).is_dir()]
    else:
        traces = sorted(str(Path(t).relative_to(ROOT)) for t in glob.glob(str(ROOT / "datasets/samples/*" / split)))
    argv = [p.py, "benchmarks/predictor_latency.py", "--model", str(p.models), *traces,
            "--json", str(p.path("predictor_latency.json"))]
    argv += ["--repeat", "1"] if p.quick else []
    return [Command(argv, p.path("predictor_latency.json"))]


def plan_simulate_speed(p: Plan) -> list[Command]:
    argv = [p.py, "benchmarks/simulate_speed.py", "datasets/samples", "--json", str(p.path("simulate_speed.json"))]
    argv += ["--repeat", "1"] if p.quick else []
    return [Command(argv, p.path("simulate_speed.json"))]


_DAEMON_QUICK = ["--round-trips", "3000", "--warmup", "300", "--throughput-events", "60000",
                 "--overhead-events", "3000", "--rounds", "2", "--batches", "1,64,1024"]


def plan_daemon_latency(p: Plan) -> list[Command]:
    cmds = []
    for label, extra in (("replay", []), ("learned", ["--policy", "learned", "--models", str(p.models)])):
        j = p.path(f"daemon_latency-{label}.json")
        cmds.append(Command([p.py, "benchmarks/daemon_latency.py", *extra, *(_DAEMON_QUICK if p.quick else []),
                             "--json", str(j)], j, label))
    return cmds


def _policy_label(spec: str) -> str:
    return spec.partition(":")[0]


def plan_offline_eval(p: Plan) -> list[Command]:
    """Record each workload on the first unseen seed, then score every policy offline on those runs."""
    seed = p.seeds[0]
    cmds, dirs = [], []
    for w in p.workloads:
        d = p.path("offline_eval", "traces", f"{w}-seed{seed}")
        dirs.append(str(d))
        cmds.append(Command([p.py, "-m", "prefetch", "record", "--workload", w, "--steps", str(p.steps), "--seed",
                             str(seed), "--out", str(d), "--no-progress"], None, f"record-{w}-seed{seed}"))
    j = p.path("offline_eval.json")
    cmds.append(Command([p.py, "-m", "prefetch", "eval", "--model", str(p.models), *dirs, "--no-progress",
                         "--json", str(j)], j, "eval"))
    return cmds


def plan_live(p: Plan) -> list[Command]:
    cmds = []
    for w in p.workloads:
        for pol in p.policies:
            for seed in p.seeds:
                label = f"{w}-{_policy_label(pol)}-seed{seed}"
                j = p.path("live", f"{label}.json")
                cmds.append(Command([p.py, "-m", "prefetch", "run", "--workload", w, "--steps", str(p.steps),
                                     "--policy", pol, "--seed", str(seed), "--no-progress", "--json", str(j)], j,
                                    label))
    return cmds


def plan_cuda(p: Plan) -> list[Command]:
    cmds = []
    for pol in ("replay", f"learned:{p.models}"):
        j = p.path("cuda", f"gpt2-{_policy_label(pol)}.json")
        cmds.append(Command([p.py, "-m", "prefetch", "run", "--workload", "gpt2", "--device", "cuda", "--steps",
                             str(p.steps), "--policy", pol, "--no-progress", "--json", str(j)], j,
                            f"gpt2-{_policy_label(pol)}"))
    return cmds


def plan_overhead(p: Plan) -> list[Command]:
    """benchmarks/overhead.py: the split of the slowdown, on the unseen seeds, with the learned models."""
    j = p.path("overhead.json")
    return [Command([p.py, "benchmarks/overhead.py", "--policies", f"none,replay,learned:{p.models}",
                     "--seeds", ",".join(map(str, p.seeds)), "--json", str(j)], j)]


def plan_live_vs_sim(p: Plan) -> list[Command]:
    """benchmarks/live_vs_sim.py: every workload live vs the simulation of its own trace, on the first unseen seed."""
    j = p.path("live_vs_sim.json")
    argv = [p.py, "benchmarks/live_vs_sim.py", "--models", str(p.models), "--seed", str(p.seeds[0]), "--json", str(j)]
    return [Command(argv + (["--quick"] if p.quick else []), j)]


def plan_router_lookahead(p: Plan) -> list[Command]:
    """benchmarks/router_lookahead.py: router hints on moe, learned with and without them, on the unseen seeds."""
    j = p.path("router_lookahead.json")
    return [Command([p.py, "benchmarks/router_lookahead.py", "--models", str(p.models), "--seeds",
                     ",".join(map(str, p.seeds)), "--out", str(p.path("router_lookahead")), "--json", str(j)], j)]


def plan_generalisation(p: Plan) -> list[Command]:
    """benchmarks/generalisation.py: generated architectures, learned vs the baselines on an unseen seed (trains its own models)."""
    j = p.path("generalisation.json")
    argv = [p.py, "benchmarks/generalisation.py", "--out", str(p.path("generalisation")), "--json", str(j)]
    return [Command(argv + (["--quick"] if p.quick else []), j)]


def _script(name: str, *args: str) -> Callable[[Plan], list[Command]]:
    """A benchmark whose own printed tables are its section (its stdout, kept in its log)."""
    def plan(p: Plan) -> list[Command]:
        j = p.path(f"{name}.json")
        return [Command([p.py, f"benchmarks/{name}.py", *args, "--json", str(j)], j)]
    return plan


PLANS: dict[str, Callable[[Plan], list[Command]]] = {
    "record_overhead": plan_record_overhead,
    "predictor_latency": plan_predictor_latency,
    "simulate_speed": plan_simulate_speed,
    "daemon_latency": plan_daemon_latency,
    "offline_eval": plan_offline_eval,
    "live": plan_live,
    "overhead": plan_overhead,
    "live_vs_sim": plan_live_vs_sim,
    "router_lookahead": plan_router_lookahead,
    "oracle_search": _script("oracle_search", "--cases", "4000"),
    "daemon_flood": _script("daemon_flood", "--seconds", "4"),
    "daemon_ranks": _script("daemon_ranks"),
    "fault_suite": _script("fault_suite"),
    "host_optimizer": lambda p: _script("host_optimizer", *(["--quick"] if p.quick else []))(p),
    "optimizer_placement": lambda p: _script("optimizer_placement", *(["--quick"] if p.quick else []))(p),
    "cuda": plan_cuda,
    "generalisation": plan_generalisation,
    "user_path": _script("user_path"),
}


def needs_models(name: str, p: Plan) -> bool:
    if name in ("predictor_latency", "daemon_latency", "offline_eval", "cuda", "overhead", "live_vs_sim",
                "router_lookahead"):
        return True
    return name == "live" and any(pol.startswith("learned:") for pol in p.policies)


def has_models(models: Path) -> bool:
    return models.is_dir() and any(d.is_dir() for d in models.iterdir())


# -- Markdown ---------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:,.4g}" if abs(v) >= 1e4 else f"{v:.4g}"
        return str(v)

    align = align or ("l" + "r" * (len(headers) - 1))
    sep = ["---:" if a == "r" else ":---:" if a == "c" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _ok(v: bool | None) -> str:
    return "n/a" if v is None else ("ok" if v else "**miss**")


def md_record_overhead(s: Section) -> list[str]:
    d = s.commands[0].data or {}
    rows = [[r["workload"], r.get("steps"), f"{r['plain_step_ms']:.1f}", f"{r['recorded_step_ms']:.1f}",
             f"{r['overhead_pct']:+.1f}", int(r.get("events_per_step", 0)), _ok(r["overhead_pct"] <= 3.0)]
            for r in d.get("results", [])]
    return ["Median over paired steps (plain step i, recorded step i, alternately) of recorded / plain; "
            "one torch thread. Target: <= 3%.", "",
            table(["workload", "steps", "plain step ms", "recorded step ms", "overhead %", "events/step",
                   "target"], rows, "lrrrrrc")]


def md_predictor_latency(s: Section) -> list[str]:
    d = s.commands[0].data or {}
    rows = []
    for r in d.get("results", []):
        target = _ok(r["p99_us"] <= 100) if r["policy"] == "learned" else ""
        rows.append([r["policy"], r["decisions"], f"{r['p50_us']:.1f}", f"{r['p90_us']:.1f}", f"{r['p99_us']:.1f}",
                     f"{r['max_us']:.1f}", f"{r['mean_us']:.1f}", target])
    th = d.get("threads") or {}
    traces = d.get("traces") or []
    return [f"One observe() per read, in process; lookahead {d.get('lookahead')}; traces: "
            f"{', '.join(Path(t).name for t in traces)}; threads: "
            + ", ".join(f"{k}={v}" for k, v in th.items()) + ". Target: learned p99 <= 100 us.", "",
            table(["policy", "decisions", "p50 us", "p90 us", "p99 us", "max us", "mean us", "target"], rows,
                  "lrrrrrrc")]


def md_simulate_speed(s: Section) -> list[str]:
    d = s.commands[0].data or {}
    target = d.get("target_events_per_s", 200_000)
    rows, floors = [], []
    for r in d.get("results", []):
        floor = r.get("target_events_per_s", target)  # each policy's own floor (simulate_speed.TARGETS)
        floors.append(f"{r['policy']} >= {floor:,}")
        ok = _ok(r["events_per_s"] >= floor)
        rows.append([r["policy"], f"{r['events_per_s']:,.0f}",
                     f"{r['managed_events_per_s']:,.0f}" if r.get("managed_events_per_s") else "n/a",
                     f"{r['seconds']:.3f}", f"{100 * r['hit_rate']:.2f}%", ok])
    return [f"{len(d.get('traces', []))} traces, {d.get('events', 0):,} events"
            + (f" ({d['managed_events']:,} managed)" if d.get("managed_events") else "")
            + f", budget {d.get('budget')}, best of {d.get('repeat')}. Targets, events/s: {', '.join(floors)}.", "",
            table(["policy", "events/s", "managed events/s", "best s", "hit rate", "target"], rows, "lrrrrc")]


def md_daemon_latency(s: Section) -> list[str]:
    out: list[str] = []
    rt_rows, tp_rows, pol_rows = [], [], []
    settings = None
    for c in s.commands:
        d = c.data
        if not d:
            continue
        settings = settings or d.get("settings")
        served = d.get("served_policy") or d.get("policy")
        for transport, e in (d.get("echo") or {}).items():
            if c.label == "replay":
                rt_rows.append(["bare pyzmq echo", transport, f"{e['median_us']:.1f}", f"{e['p99_us']:.1f}",
                                f"{e['p999_us']:.1f}", ""])
        for transport, r in (d.get("round_trip") or {}).items():
            rt_rows.append([f"round trip ({_policy_label(str(served))})", transport, f"{r['median_us']:.1f}",
                            f"{r['p99_us']:.1f}", f"{r['p999_us']:.1f}",
                            _ok(r["median_us"] <= 200 and r["p99_us"] <= 1000)])
        for transport, tps in (d.get("throughput") or {}).items():
            for tp in tps:
                tp_rows.append([_policy_label(str(served)), transport, tp["batch"], f"{tp['events_per_s']:,.0f}",
                                _ok(tp["events_per_s"] >= 200_000) if tp["batch"] >= 256 else ""])
        if c.label == "learned" or not pol_rows:
            rows = []
            for tp in d.get("throughput_by_policy") or []:
                name = str(tp["policy"]).split(" -> ")[0]
                rows.append([name, "on" if tp.get("next_use") else "off", f"{tp['events_per_s']:,.0f}",
                             _ok(tp["events_per_s"] >= 200_000)])
            pol_rows = rows or pol_rows
    out += ["Daemon in its own process, client = runtime.daemon_client.DaemonClient; events replay the gpt2 "
            "sample trace. Targets: round trip median <= 200 us and p99 <= 1 ms; >= 200k events/s batched.", ""]
    if settings:
        keys = ("zmq", "pyzmq", "client_io", "daemon_threads", "OMP_NUM_THREADS", "python_switch_interval_s")
        out += ["Settings: " + "; ".join(f"{k} {settings[k]}" for k in keys if k in settings) + ".", ""]
    out += ["Round trip (one event per message, until its commands come back):", "",
            table(["measure", "transport", "median us", "p99 us", "p99.9 us", "target"], rt_rows, "llrrrc"), ""]
    out += ["Throughput (batches of B events, up to 64 batches in flight):", "",
            table(["policy", "transport", "events/batch", "events/s", "target"], tp_rows, "llrrc"), ""]
    if pol_rows:
        out += ["Throughput per policy served (ipc, 1024 events/batch; next_use: next-use predictions sent "
                "with the commands):", "", table(["policy", "next_use", "events/s", "target"], pol_rows, "lcrc")]
    return out


def md_live(s: Section, out_dir: Path) -> list[str]:
    from prefetch.report import write_report
    from prefetch.report_rows import build_rows
    from prefetch.report_tables import format_table

    runs = [c.data for c in s.commands if isinstance(c.data, dict)]
    if not runs:
        return []
    protocol = s.data.get("protocol")
    doc_path = out_dir / "live" / "results.json"  # one document: the runs and the protocol they follow
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    doc_path.write_text(json.dumps({"protocol": protocol, "runs": runs}, indent=2, default=str))
    rows = build_rows([(str(doc_path), {"protocol": protocol, "runs": runs})])
    seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None})
    lines = ["Live `prefetch run`: the job with managed tensors offloaded and prefetched, against its all-resident "
             "twin stepped alternately; hit rate strict (hits / accesses), warm-up step excluded. One run per "
             f"seed ({', '.join(map(str, seeds))}); each figure is the median over them, hit rate and slowdown "
             "with [min-max]."
             + (f" The learned model was trained on seeds {', '.join(map(str, protocol['train_seeds']))} only."
                if protocol and protocol.get("train_seeds") else ""), ""]
    devices = sorted({r["device"] for r in rows})
    links = {r["workload"]: r["link"] for r in rows if r.get("link")}
    bf = {round(100 * r["budget_fraction"]) for r in rows if r.get("budget_fraction")}
    lines += [f"Device: {', '.join(devices)}; budget {', '.join(f'{b}%' for b in sorted(bf))} of managed bytes"
              + ("; link ratio " + ", ".join(sorted({str(lk.get('ratio')) for lk in links.values()})) if links else "")
              + ".", "", format_table(rows, protocol)]
    refused = [r for r in rows if r.get("in_sample") is True]
    if refused:
        lines += ["", f"**{len(refused)} learned run(s) flagged in sample were refused (not in the figures).**"]
    try:
        written = write_report([str(doc_path)], out_dir / "live" / "report", title="live runs")
        pngs = [Path(os.path.relpath(written[k], out_dir)) for k in ("hit_rate_png", "slowdown_png") if k in written]
        lines += ["", "Plots: " + ", ".join(f"[{p.name}]({p})" for p in pngs)
                  + f" (and the full report, [report.md]({Path(os.path.relpath(written['markdown'], out_dir))}))."]
    except Exception as exc:  # noqa: BLE001 - plots are a bonus here
        lines += ["", f"(plots not written: {exc})"]
    notes = [f"{r['workload']}/{r['policy']} was served by {r['served_by']}" for r in rows
             if r.get("served_by") and r["served_by"].split(":")[0].split(" ")[0] != r["policy"]]
    if notes:
        lines += ["", "Note: " + "; ".join(notes) + "."]
    return lines


def md_offline_eval(s: Section) -> list[str]:
    d = next((c.data for c in s.commands if c.label == "eval" and isinstance(c.data, dict)), None) or {}
    protocol = s.data.get("protocol") or {}
    from predictor.policies import POLICIES

    scored = [p for p in POLICIES if p != "none"]  # the registry's order; none predicts nothing
    rows = []
    for e in d.get("summary") or []:
        pols = e.get("policies") or {}
        flag = e.get("in_sample")
        rows.append([e.get("workload"), e.get("scope"), "n/a" if flag is None else ("**YES**" if flag else "no")]
                    + [f"{100 * pols[p]['recall']:.1f}%" if pols.get(p, {}).get("recall") is not None else "n/a"
                       for p in scored]
                    + [f"{100 * pols[p]['top1']:.1f}%" if pols.get(p, {}).get("top1") is not None else "n/a"
                       for p in scored])
    return [f"Offline next-access scores (`prefetch eval`, lookahead {d.get('lookahead')}) on runs recorded on seed "
            f"{', '.join(map(str, protocol.get('eval_seeds', [])[:1]))}, never recorded for training (the learned model "
            f"was trained on seeds {', '.join(map(str, protocol.get('train_seeds', [])))}).", "",
            table(["workload", "scope", "in sample"] + [f"recall {p}" for p in scored] + [f"top-1 {p}" for p in scored],
                  rows, "llc" + "r" * (2 * len(scored)))]


def md_cuda(s: Section) -> list[str]:
    rows = []
    for c in s.commands:
        d = c.data
        if not d:
            continue
        peak, managed = d.get("peak_device_bytes"), d.get("managed_bytes")
        rows.append([d.get("workload"), _policy_label(str(d["policy"])), d.get("device"),
                     f"{1e3 * d['step_time_s']:.1f}" if d.get("step_time_s") else "n/a",
                     f"{1e3 * d['baseline_step_time_s']:.1f}" if d.get("baseline_step_time_s") else "n/a",
                     f"{d['slowdown']:.3f}x" if d.get("slowdown") else "n/a",
                     f"{peak / 2**20:.1f}" if peak is not None else "n/a",
                     f"{managed / 2**20:.1f}" if managed else "n/a",
                     f"{100 * peak / managed:.0f}%" if (peak is not None and managed) else "n/a",
                     f"{100 * d['hits'] / d['accesses']:.2f}%" if d.get("accesses") else "n/a",
                     "yes" if d.get("losses_identical") else "**NO**"])
    gpu = s.data.get("gpu")
    return [f"Real CUDA path on {gpu}: pinned host memory, copies on a side stream. Peak device memory is the "
            "managed tensors' (parameters and saved activations) peak on the device during the measured steps; "
            "all resident keeps every managed byte there.", "",
            table(["workload", "policy", "device", "step ms", "all-resident step ms", "slowdown", "peak MiB",
                   "all-resident MiB", "peak / all resident", "hit rate", "losses identical"], rows, "lll" + "r" * 7 + "c")]


TITLES = {
    "record_overhead": "Recording overhead",
    "predictor_latency": "Predictor decision latency",
    "simulate_speed": "Simulator speed",
    "daemon_latency": "Daemon round trip and throughput",
    "offline_eval": "Offline evaluation on unseen seeds",
    "live": "Live hit rate and slowdown",
    "overhead": "Where the slowdown goes",
    "live_vs_sim": "Live run vs the simulation of its own trace",
    "router_lookahead": "Router lookahead (mixture of experts)",
    "oracle_search": "How good a bound the oracle is",
    "daemon_flood": "Daemon under a flooding client",
    "daemon_ranks": "One daemon, several local ranks",
    "fault_suite": "Fault suite",
    "host_optimizer": "The host optimizer's step cost",
    "optimizer_placement": "Where the optimizer runs: host or device stepping",
    "cuda": "CUDA",
    "generalisation": "Generalisation suite (generated architectures, unseen seed)",
    "user_path": "The user path (runtime.record, prefetch train, runtime.prefetching)",
}


def md_printed(s: Section) -> list[str]:
    """The script's own printed output (from its log), as it printed it."""
    out = []
    for c in s.commands:
        if c.log and Path(c.log).exists():
            text = [ln for ln in Path(c.log).read_text(errors="replace").splitlines()
                    if not ln.startswith(("[LightGBM]", "Warning"))]
            out += ["```", *text[-60:], "```"]
    return out


def section_markdown(s: Section, out_dir: Path) -> list[str]:
    lines = [f"## {TITLES.get(s.name, s.name)}", ""]
    if s.name == "cuda" and s.status == "no device":
        return lines + [s.note or "No CUDA device was available.", ""]
    if s.status == "skipped":
        return lines + [f"Skipped{': ' + s.note if s.note else ''}.", ""]
    if s.ran_at and s.data.get("kept"):
        lines += [f"*(from an earlier run at {s.ran_at})*", ""]
    lines += ["Command" + ("s" if len(s.commands) > 1 else "") + ":", "", "```"]
    lines += [c.shown() if isinstance(c, Command) else c for c in s.commands]
    lines += ["```", ""]
    try:
        body = {"record_overhead": md_record_overhead, "predictor_latency": md_predictor_latency,
                "simulate_speed": md_simulate_speed, "daemon_latency": md_daemon_latency,
                "offline_eval": md_offline_eval, "cuda": md_cuda, "oracle_search": md_printed,
                "overhead": md_printed, "live_vs_sim": md_printed, "router_lookahead": md_printed, "daemon_flood": md_printed, "daemon_ranks": md_printed, "fault_suite": md_printed, "generalisation": md_printed, "user_path": md_printed,
                "host_optimizer": md_printed, "optimizer_placement": md_printed}.get(s.name)
        content = md_live(s, out_dir) if s.name == "live" else body(s) if body else []
    except Exception as exc:  # noqa: BLE001 - a changed JSON layout must not lose the other sections
        content = [f"(could not tabulate {s.name}'s JSON: {type(exc).__name__}: {exc})"]
    lines += content + [""] if content else []
    bad = [c for c in s.commands if c.status != "ok"]
    for c in bad:
        lines += [f"**{c.status}**: `{c.shown()}` (rc {c.rc}, {c.elapsed_s or 0:.0f} s; log `{c.log}`):", "",
                  "```", log_tail(c.log), "```", ""]
    lines += [f"Elapsed: {s.elapsed_s:.0f} s.", ""]
    return lines


def write_results(sections: dict[str, Section], machine: dict[str, Any], args: argparse.Namespace,
                  out_dir: Path, pre: list[Command], total_s: float) -> tuple[Path, Path]:
    lines = ["# Benchmark results", "",
             f"Produced by `{shlex.join(['python', 'benchmarks/run_all.py', *args.argv])}` on {machine['date']} "
             f"in {total_s:.0f} s" + (" (--quick)" if args.quick else "") + ".", "",
             "| | |", "|---|---|",
             f"| machine | {machine['cpu_count']} CPUs (affinity {machine['affinity']}), {machine['processor']}, "
             f"{machine['platform']} |",
             f"| device | {machine['device']} |",
             f"| versions | python {machine['python']}, torch {machine['torch']}, transformers "
             f"{machine['transformers']}, lightgbm {machine['lightgbm']}, pyzmq {machine['pyzmq']}, numpy "
             f"{machine['numpy']}, pyarrow {machine['pyarrow']} |",
             f"| threads | torch {machine['torch_threads']} per process, OMP/MKL/OpenBLAS "
             f"{machine['OMP_NUM_THREADS']} (set for every benchmark process) |", ""]
    if pre:
        lines += ["Models for the learned policy:", "", "```"] + [c.shown() for c in pre] + ["```", ""]
        lines += [f"({c.status}, {c.elapsed_s:.0f} s)" for c in pre] + [""]
    if any(s.data.get("kept") for s in sections.values()):
        lines += ["Sections marked *from an earlier run* were not run by this command (--only/--skip); they "
                  "are kept from the previous results.json.", ""]
    summary = [[TITLES.get(n, n), s.status, f"{s.elapsed_s:.0f}" if s.elapsed_s else "", s.ran_at or ""]
               for n, s in sections.items()]
    lines += [table(["benchmark", "status", "seconds", "ran at"], summary, "lcrl"), ""]
    for s in sections.values():
        lines += section_markdown(s, out_dir)
    md_path = out_dir / "results.md"
    md_path.write_text("\n".join(lines).rstrip() + "\n")
    doc = {"machine": machine, "argv": args.argv, "quick": args.quick, "total_s": total_s,
           "pre": [c.as_dict() for c in pre],
           "benchmarks": {n: {"status": s.status, "ran_at": s.ran_at, "elapsed_s": s.elapsed_s, "note": s.note,
                              "commands": [c.as_dict() if isinstance(c, Command) else {"command": c}
                                           for c in s.commands],
                              "data": {**s.data, "results": [c.data for c in s.commands if isinstance(c, Command)]}
                              if not s.data.get("kept") else s.data}
                          for n, s in sections.items()}}
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return md_path, json_path


def kept_section(name: str, old: dict[str, Any]) -> Section | None:
    """A section from a previous results.json, rebuilt so it renders the same way."""
    b = (old.get("benchmarks") or {}).get(name)
    if not b or b.get("status") in (None, "not run"):
        return None
    s = Section(name, status=b["status"], ran_at=b.get("ran_at"), elapsed_s=b.get("elapsed_s") or 0.0,
                note=b.get("note"))
    data = b.get("data") or {}
    results = data.get("results") or []
    for i, c in enumerate(b.get("commands") or []):
        cmd = Command(argv=shlex.split(c["command"]), json=Path(c["json"]) if c.get("json") else None,
                      label=c.get("label") or "", rc=c.get("rc"), elapsed_s=c.get("elapsed_s"),
                      status=c.get("status") or "ok", log=Path(c["log"]) if c.get("log") else None)
        cmd.data = results[i] if i < len(results) else None
        if cmd.data is None and cmd.json and cmd.json.exists():
            cmd.data = json.loads(cmd.json.read_text())
        s.commands.append(cmd)
    s.data = {k: v for k, v in data.items() if k != "results"}
    s.data["kept"] = True
    s.data["results"] = results
    return s


# -- main -----------------------------------------------------------------------------------------


def sample_seeds(trace_dirs: list[str]) -> list[int]:
    """The seeds the training traces were recorded on (from their manifests)."""
    seeds = set()
    for d in trace_dirs:
        for m in (ROOT / d).glob("*.manifest.json"):
            seed = json.loads(m.read_text()).get("seed")
            if isinstance(seed, int):
                seeds.add(seed)
    return sorted(seeds)


def eval_protocol(seeds_text: str) -> dict[str, Any]:
    """Training traces (the samples, seeds 0 and 1) and the evaluation seeds; SystemExit on an overlap."""
    try:
        seeds = [int(x) for x in seeds_text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"run_all.py: --seeds takes comma-separated integers, got {seeds_text!r}") from None
    train_dirs = sorted(str(Path(d).relative_to(ROOT)) for split in ("train", "heldout")
                        for d in glob.glob(str(ROOT / "datasets/samples/*" / split)))
    train_seeds = sample_seeds(train_dirs)
    if not seeds or set(seeds) & set(train_seeds):
        raise SystemExit(f"run_all.py: --seeds must name seeds never recorded for training (the samples are seeds "
                         f"{', '.join(map(str, train_seeds))}); got {seeds_text}")
    return {"train_seeds": train_seeds, "eval_seeds": seeds, "train_traces": train_dirs}


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="benchmarks: " + ", ".join(BENCHMARKS) + "; opt-in (--only): " + ", ".join(OPT_IN))
    ap.add_argument("--quick", action="store_true",
                    help="fewer steps/repeats/events; live runs: gpt2 and moe with replay and learned, 8 steps")
    ap.add_argument("--only", default=None, metavar="NAMES", help="run only these benchmarks (comma-separated)")
    ap.add_argument("--skip", default=None, metavar="NAMES", help="skip these benchmarks (comma-separated)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--models", type=Path, default=None,
                    help="model folder for the learned policy (default OUT/models; trained if empty)")
    ap.add_argument("--retrain", action="store_true", help="train the models even if the folder has some")
    ap.add_argument("--workloads", default=None,
                    help="workloads for the live runs (and --quick's record overhead); default gpt2,moe")
    ap.add_argument("--policies", default=None,
                    help="policies for the live runs; default none,replay,learned:MODELS (--quick: replay,learned:MODELS)")
    ap.add_argument("--steps", type=int, default=None, help="steps per live run (default 12; --quick 8)")
    ap.add_argument("--seeds", default=",".join(map(str, EVAL_SEEDS)),
                    help="unseen evaluation seeds of the live and offline runs (default 2,3,4; not 0 or 1, the "
                         "samples' training seeds)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds allowed to each benchmark command (default 900; --quick 300)")
    ap.add_argument("--omp-threads", default="1", help="OMP/MKL/OpenBLAS threads for every child (default 1)")
    args = ap.parse_args(argv)
    args.argv = argv
    return args


def _names(text: str | None, flag: str) -> list[str]:
    if not text:
        return []
    names = [n.strip().replace("-", "_") for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in (*BENCHMARKS, *OPT_IN)]
    if bad:
        raise SystemExit(f"run_all.py: {flag}: unknown benchmark(s) {', '.join(bad)}; choose from "
                         f"{', '.join((*BENCHMARKS, *OPT_IN))}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    only, skip = _names(args.only, "--only"), _names(args.skip, "--skip")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.omp_threads)  # before torch is imported here: the header shows the children's
    from prefetch.demo import QUICK_WORKLOADS
    from prefetch.machine import machine_info
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    out = args.out if args.out.is_absolute() else (ROOT / args.out)
    out_rel = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out  # commands read as typed from ROOT
    models = args.models or (out_rel / "models")
    models_abs = models if models.is_absolute() else ROOT / models
    steps = args.steps or (8 if args.quick else 12)
    timeout = args.timeout or (300.0 if args.quick else 900.0)
    workloads = args.workloads.split(",") if args.workloads else list(QUICK_WORKLOADS)
    learned = f"learned:{models}"
    if args.policies:
        policies = [learned if p.strip() == "learned" else p.strip() for p in args.policies.split(",") if p.strip()]
    else:
        policies = ["replay", learned] if args.quick else ["none", "replay", learned]
    protocol = eval_protocol(args.seeds)
    seeds, train_dirs = tuple(protocol["eval_seeds"]), protocol["train_traces"]
    plan = Plan(out=out_rel, models=models, quick=args.quick, workloads=workloads, policies=policies, steps=steps,
                seeds=seeds)

    machine = machine_info(str(args.omp_threads))
    say(f"threads: OMP_NUM_THREADS={env['OMP_NUM_THREADS']} MKL_NUM_THREADS={env['MKL_NUM_THREADS']} "
        f"OPENBLAS_NUM_THREADS={env['OPENBLAS_NUM_THREADS']}; torch threads per process {machine['torch_threads']} "
        f"(prefetch run --threads 1); {machine['cpu_count']} CPUs")
    say(f"device: {machine['device']}")
    out.mkdir(parents=True, exist_ok=True)
    log_dir = out / "logs"

    selected = [n for n in (only or BENCHMARKS) if n not in skip]
    old: dict[str, Any] = {}
    if (out / "results.json").exists():
        try:
            old = json.loads((out / "results.json").read_text())
        except json.JSONDecodeError:
            old = {}

    pre: list[Command] = []
    stamp = models_abs / "trained_on.json"  # which traces the models came from: others are retrained
    stale = not stamp.exists() or json.loads(stamp.read_text()) != train_dirs
    if any(needs_models(n, plan) for n in selected) and (args.retrain or not has_models(models_abs) or stale):
        cmd = Command([sys.executable, "-m", "prefetch", "train", *train_dirs, "--out", str(models), "--no-progress"],
                      label="models")
        pre.append(run_command(cmd, env, timeout, log_dir, "train"))
        if cmd.status != "ok":
            say("training failed: the benchmarks that need models will fail too")
        else:
            stamp.write_text(json.dumps(train_dirs))

    import torch

    sections: dict[str, Section] = {}
    for name in (*BENCHMARKS, *OPT_IN):
        if name not in selected:
            kept = kept_section(name, old) if (only or skip or name in OPT_IN) else None
            note = f"opt-in: --only {name}" if name in OPT_IN else "not selected (--only/--skip)"
            sections[name] = kept or Section(name, status="skipped", note=note)
            continue
        s = Section(name, ran_at=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M"))
        s.data["protocol"] = protocol
        sections[name] = s
        if name == "cuda" and not torch.cuda.is_available():
            s.status = "no device"
            s.note = ("No CUDA device was available on this machine (torch.cuda.is_available() is False); the live "
                      "figures above are on the simulated device.")
            say("cuda: no CUDA device; skipped")
            continue
        if name == "cuda":
            s.data["gpu"] = torch.cuda.get_device_name(0)
        say(f"== {name}")
        t0 = time.monotonic()
        for cmd in PLANS[name](plan):
            s.commands.append(run_command(cmd, env, timeout * TIMEOUT_SCALE.get(name, 1.0), log_dir, name))
        s.elapsed_s = time.monotonic() - t0
        states = {c.status for c in s.commands}
        s.status = "ok" if states == {"ok"} else ("timeout" if "timeout" in states else "failed")
        if s.status != "ok" and any(c.status == "ok" for c in s.commands):
            s.status = "partial"
        say(f"== {name}: {s.status} in {s.elapsed_s:.1f} s")
        write_results(sections, machine, args, out, pre, time.monotonic() - _T0)  # progress survives a crash

    md_path, json_path = write_results(sections, machine, args, out, pre, time.monotonic() - _T0)
    say(f"wrote {md_path} and {json_path} in {time.monotonic() - _T0:.0f} s")
    failed = [n for n, s in sections.items() if s.status in ("failed", "timeout", "partial") and n in selected]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

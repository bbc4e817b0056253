"""Run a reference workload with prefetching, against the same job all resident.

    prefetch run --workload gpt2 --steps 12 --policy replay --budget 0.4 --json out/run.json

Three passes of the same seeded job, in one process:
  1. all resident: the baseline step time and losses;
  2. recorded: the trace (its tensor table fixes tensor ids and managed bytes, and
     `--trace-out` keeps it; the simulator replays it for the live-vs-simulated check);
  3. prefetched: managed tensors offloaded, the policy prefetching, the report; an
     all-resident twin is stepped alternately with it (see `run_policies`).
Bit-identical means the whole training state: `losses_identical` (pass 3 against pass 1
and the twin), `params_identical` and `optimizer_state_identical` (the final model and
optimizer state against the twin's, every tensor and param_groups scalar, bit for bit;
runtime.state_compare), with `state_mismatches` naming the first few that differ.

Bad input is refused before any pass runs: the policy, the device, the budget (parsed,
then checked against the largest managed tensor seen in one recorded probe step).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from runtime.budget import parse_budget
from runtime.defaults import AHEAD_SHARE, LIVE_LOOKAHEAD
from runtime.device import SIMULATED, work_clock_ns
from runtime.host_stepping import host_stepping
from runtime.link import DEFAULT_LINK_RATIO
from runtime.policy_spec import check_policy_spec
from runtime.prefetcher import PrefetchConfig, Prefetcher, compute_device
from runtime.recorder import Recorder
from runtime.state_compare import identity_report, losses_identical, snapshot
from runtime.trace_format import is_managed, load_trace

IDENTITY_KEYS = ("losses_identical", "params_identical", "optimizer_state_identical")
"""The report's bit-identity flags: all True, or the run changed what training computes."""


def _resident(workload, seed: int, dev: torch.device, placement: str = "host"):
    """The job all resident on `dev`. On CUDA its managed parameters step on host masters
    (runtime.host_stepping), as in the prefetched job, unless that job steps on the device
    (placement "device"): the CPU and GPU AdamW kernels round differently, and bit-identity
    is about prefetching, not the optimizer's placement. ("auto" on CUDA is compared with
    host stepping: a run whose cost model picked the device reports the rounding.)"""
    job = workload.build(seed, device=dev)
    if dev.type == "cuda" and placement != "device":
        host_stepping(job.model, job.optimizer)
    return job


def timed_steps(job: Any, steps: int, after: Callable[[], Any] | None = None) -> tuple[list[Any], list[float], list[float]]:
    """Step `job` `steps` times: what each step returned, its wall seconds and its seconds on
    the work clock (runtime.device.work_clock_ns, the clock the simulated link is timed on).
    `after` runs after each step, outside its times (a progress bar)."""
    out, wall, work = [], [], []
    for i in range(steps):
        t0, c0 = time.perf_counter(), work_clock_ns()
        out.append(job.step(i))
        wall.append(time.perf_counter() - t0)
        work.append((work_clock_ns() - c0) / 1e9)
        if after is not None:
            after()
    return out, wall, work


def _device_optimizer_times(workload, seed: int, steps: int, dev: torch.device, bar) -> list[float]:
    """CUDA only: step times of the job all resident with its optimizer on the GPU too,
    the job a user whose model fits would run (for `slowdown_vs_device_optimizer`). Each
    step returns the loss as a float: a sync, so the time is the GPU's too."""
    return timed_steps(workload.build(seed, device=dev), steps, lambda: bar.update(1))[1]


def _plain(workload, seed: int, steps: int, bar,
           dev: torch.device = torch.device("cpu")) -> tuple[list[float], list[float], list[float]]:
    """Losses, wall step times and work-clock step times of the job all resident."""
    return timed_steps(_resident(workload, seed, dev), steps, lambda: bar.update(1))


def run_workload(name: str, *, policy: str = "replay", **kwargs: Any) -> dict[str, Any]:
    """The JSON report of DESIGN.md for one workload and policy (see module doc)."""
    return run_policies(name, [policy], **kwargs)[0]


def run_policies(name: str, policies: list[str], *, steps: int = 12, budget: float | int | str = 0.4,
                 seed: int = 0, link_ratio: float = DEFAULT_LINK_RATIO, lookahead: int = LIVE_LOOKAHEAD, warmup_steps: int = 1,
                 device: str = "auto", daemon: str | None = None, trace_out: str | Path | None = None,
                 timeline_dir: str | Path | None = None, progress: bool = True,
                 guard: bool = True, optimizer_placement: str = "auto",
                 ahead_share: float = AHEAD_SHARE, routers: str | None = "auto",
                 early_step: bool = True) -> list[dict[str, Any]]:
    """One report per policy; the all-resident and recorded passes are shared."""
    from prefetch.workloads import get_workload

    if warmup_steps < 0:
        raise ValueError(f"--warmup must be >= 0, got {warmup_steps}")
    if steps <= warmup_steps:
        raise ValueError(f"--steps ({steps}) must exceed the warm-up steps ({warmup_steps})")
    workload = get_workload(name)
    # validate everything before the first step runs: flags, then the budget on one probe step
    try:
        parse_budget(budget)
    except ValueError as exc:
        raise ValueError(f"--{exc}") from None  # "--budget '2.0' is ambiguous: ..."
    check_device(device)
    for policy in policies:
        check_policy_spec(policy, daemon=daemon)
        PrefetchConfig(policy=policy, budget=budget, link_ratio=link_ratio, lookahead=lookahead, device=device,
                       optimizer_placement=optimizer_placement, ahead_share=ahead_share, routers=routers)
    check_budget_fits(workload, seed, budget, routers)
    dev = compute_device(device)  # where the model, its inputs and all compute live
    bar = tqdm(total=(2 + 2 * len(policies) + (dev.type == "cuda")) * steps, desc=f"run {name}", unit="step",
               file=sys.stderr, disable=not progress)
    reports = []
    tmp = None
    try:
        base_losses, base_times, base_cpu = _plain(workload, seed, steps, bar, dev)
        baseline_step = statistics.median(base_times[warmup_steps:])
        gpu_times = _device_optimizer_times(workload, seed, steps, dev, bar) if dev.type == "cuda" else None

        if trace_out is None:
            tmp = tempfile.TemporaryDirectory(prefix="prefetch-run-")
        job = workload.build(seed, device=dev)
        rec = Recorder(job.model, job.optimizer, trace_out or tmp.name, workload=name, seed=seed,
                       config=job.config, routers=routers).start()  # the hints its simulation gives, as the run's
        try:
            for i in range(steps):
                job.step(i)
                bar.update(1)
        finally:
            rec.close()
        trace = load_trace(rec.stem)
        reference = trace.tensors.to_pylist()

        for policy in policies:
            bar.set_description(f"run {name} {policy}")
            job = workload.build(seed, device=dev)
            cfg = PrefetchConfig(policy=policy, budget=budget, link_ratio=link_ratio, lookahead=lookahead,
                                 warmup_steps=warmup_steps, device=device, daemon=daemon,
                                 baseline_step_time_s=baseline_step, reference_tensors=reference,
                                 baseline_step_cpu_s=statistics.median(base_cpu[warmup_steps:]),
                                 timeline=timeline_dir is not None, seed=seed, workload=name, guard=guard,
                                 optimizer_placement=optimizer_placement, ahead_share=ahead_share, routers=routers,
                                 early_step=early_step)
            pf = Prefetcher(job.model, job.optimizer, cfg)
            # The slowdown is measured against a twin all-resident job stepped alternately
            # (resident i, prefetched i, resident i+1, ...): both do identical work at step i,
            # so machine drift between passes cannot pass for a slowdown.
            twin = _resident(workload, seed, dev, optimizer_placement)
            twin.step = pf.outside_compute(twin.step)  # simulated: its time gives copies none
            losses, twin_losses, t_twin, t_pf = [], [], [], []
            try:
                for i in range(steps):
                    first, second = (twin, job) if i % 2 == 0 else (job, twin)  # ABBA: neither always goes first
                    t0 = time.perf_counter()
                    out_first = first.step(i)
                    t1 = time.perf_counter()
                    out_second = second.step(i)
                    t2 = time.perf_counter()
                    if first is twin:
                        t_twin.append(t1 - t0), t_pf.append(t2 - t1), losses.append(out_second)
                        twin_losses.append(out_first)
                    else:
                        t_pf.append(t1 - t0), t_twin.append(t2 - t1), losses.append(out_first)
                        twin_losses.append(out_second)
                    bar.update(2)
            finally:
                pf.close()
            # the whole final state against the twin's, bit for bit (live tensors: no copies)
            identity = identity_report(snapshot(twin.model, twin.optimizer, copy=False),
                                       snapshot(job.model, job.optimizer, copy=False),
                                       losses=losses, reference_losses=twin_losses)
            identity["losses_identical"] = identity["losses_identical"] and losses_identical(losses, base_losses)
            del twin
            report = pf.report()
            measured = slice(warmup_steps, None)
            ratios = [p / b for p, b in zip(t_pf, t_twin)]
            slowdown = statistics.median(ratios[measured])
            base_step = statistics.median(t_twin[measured])
            decided = getattr(pf.store.policy, "decided_step", None)  # a guarded learned policy's decision
            report.update(
                # the split's extra time is the headline slowdown's: (slowdown - 1) x the twin's median step
                overhead=pf.overhead(slowdown * base_step, base_step).as_dict(),
                step_time_s=statistics.median(t_pf[measured]),
                baseline_step_time_s=base_step,
                slowdown=slowdown,
                slowdown_note="median over measured steps of (prefetched step / all-resident twin step), "
                              "stepped alternately",
                step_slowdowns=[round(r, 4) for r in ratios],
                **_after_guard(ratios, decided, warmup_steps),
            )
            if gpu_times is not None:  # CUDA: the twin steps on host masters too; this is the full cost
                report.update(device_optimizer_step_time_s=statistics.median(gpu_times[measured]),
                              slowdown_vs_device_optimizer=statistics.median(t_pf[measured])
                              / statistics.median(gpu_times[measured]))
            if timeline_dir is not None:
                path = Path(timeline_dir) / f"{name}-{policy.partition(':')[0]}.trace.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(pf.chrome_trace()))
                report["timeline"] = str(path)
            report.update(
                workload=name,
                seed=seed,
                **identity,
                losses=losses,
                baseline_losses=base_losses,
                trace=str(rec.stem) if tmp is None else None,
                threads=torch.get_num_threads(),
                architecture=trace.architecture,
            )
            reports.append(report)
    finally:
        bar.close()
        if tmp is not None:
            tmp.cleanup()
    return reports


def bit_identical(r: dict[str, Any]) -> bool:
    """True when losses, parameters and optimizer state all matched the all-resident run."""
    return all(r.get(k) is True for k in IDENTITY_KEYS)


def summary_line(r: dict[str, Any]) -> str:
    slow = f"{r['slowdown']:.3f}x" if r.get("slowdown") else "n/a"
    ident = "bit-identical" if bit_identical(r) else "identity not compared (--compare)" if all(
        r.get(k) is None for k in IDENTITY_KEYS) else (
        "NOT bit-identical: " + ", ".join(k.removesuffix("_identical") for k in IDENTITY_KEYS if r.get(k) is not True)
        + (f" ({', '.join(r['state_mismatches'])})" if r.get("state_mismatches") else ""))
    line = (f"{r['workload']:<15} {r['policy']:<22} hit {r['hit_rate']:7.2%}  late {r['late']:>5}  miss {r['misses']:>5}  "
            f"stall {r['stall_s']:.3f}s  slowdown {slow}  copied {r['bytes_copied'] / 2**20:8.1f} MiB  "
            f"{ident}  [{r['device']}{', no real copies' if (r.get('link') or {}).get('copies') == 'alias' else ''}]")
    return line + ("\n" + overhead_line(r["overhead"]) if r.get("overhead") else "")


def overhead_line(o: dict[str, Any]) -> str:
    """The report's `overhead` (runtime.overhead) as one line, in ms per measured step."""
    ms = lambda v: "n/a" if v is None else f"{1e3 * v:.2f}"  # noqa: E731
    per = o.get("bookkeeping_us_per_access")
    return (f"  per step: extra {ms(o.get('extra_s'))} ms = stall {ms(o.get('stall_s'))} + bookkeeping "
            f"{ms(o.get('bookkeeping_s'))}" + (f" ({per:.1f} us/managed access)" if per is not None else "")
            + f" + emulation {ms(o.get('emulation_s'))} + unattributed {ms(o.get('unattributed_s'))} "
            f"(docs/overhead.md)")


def _after_guard(ratios: list[float], decided: int | None, warmup_steps: int) -> dict[str, Any]:
    """A guarded learned run: the step its guard decided at, and the median slowdown of the
    measured steps from then on, when at least 3 steps are left: the steady state of a long
    run (the guard's shadows have stopped, and once a rival serves the daemon is not asked)."""
    if decided is None:
        return {}
    rest = ratios[max(decided, warmup_steps):]
    return {"guard_decided_step": decided,
            "slowdown_after_guard": statistics.median(rest) if len(rest) >= 3 else None}


# -- validation: every refusal happens before a training step runs ----------------------------
def check_device(spec: str) -> None:
    """ValueError unless `spec` is auto, simulated (or simulated:alias), or a CUDA device this machine has."""
    if spec in ("auto", *SIMULATED):
        return
    name, sep, index = spec.partition(":")
    if name != "cuda" or (sep and not index.isdigit()):
        raise ValueError(f"--device {spec!r}: use auto, simulated, simulated:alias, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: CUDA is not available here (torch.cuda.is_available() is False); "
                         "use --device simulated")
    if sep and int(index) >= torch.cuda.device_count():
        raise ValueError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def check_budget_fits(workload, seed: int, budget: float | int | str, routers: str | None = "auto") -> None:
    """ValueError if the budget is below the largest managed tensor of the job's first step
    (or a named router is not one: runtime.routers.RouterError).

    One step is recorded (a fresh job, a temporary trace) to learn the managed tensors'
    sizes: saved activations are only known once a step has run. The store checks again
    against the whole run's tensor table before the prefetched pass."""
    job = workload.build(seed)
    with tempfile.TemporaryDirectory(prefix="prefetch-probe-") as tmp:
        rec = Recorder(job.model, job.optimizer, tmp, workload=workload.name, seed=seed, config=job.config,
                       routers=routers).start()
        try:
            job.step(0)
        finally:
            rec.close()
        rows = [r for r in load_trace(rec.stem).tensors.to_pylist() if is_managed(r["kind"], r["nbytes"])]
    if rows:
        largest = max(rows, key=lambda r: r["nbytes"])
        try:
            parse_budget(budget).resolve(sum(r["nbytes"] for r in rows), largest["nbytes"], largest["key"])
        except ValueError as exc:
            raise ValueError(f"--budget {budget}: {exc}") from None

"""Where the optimizer runs: host or device stepping, measured, against the cost model's pick (issue 15).

    python benchmarks/optimizer_placement.py [--workloads gpt2,vit] [--link-ratios 0.5,8] [--repeats 3]
        [--steps 5] [--threads 1] [--json out/benchmarks/optimizer_placement.json]
    python benchmarks/optimizer_placement.py --quick      # gpt2 only, 2 repeats, 6 steps

`prefetch run`'s measurement (prefetch.run.run_policies: policy replay, budget 0.4, seed 2,
1 warm-up step, on the simulated device) is run per workload and link ratio with the
optimizer placed on the host (`host`: ZeRO-Offload style stepping of the host masters),
on the device (`device`: runtime.device_stepping streams gradient and state in and the
updated parameter and state out) and as the cost model picks (`auto`: runtime.placement
`choose`, from the first step's measurement). The three placements are interleaved per
repeat (host, device, auto, host, device, auto, ...) so load drift spreads over all three.

Printed: one row per workload x ratio x placement (median slowdown [min-max] over repeats,
median stall, the optimizer's copy wait where the report has one, MiB to the device and to
the host with the optimizer_state part, bit-identity in every repeat, the placement that
ran), then one verdict per workload x ratio: auto's pick against the measured faster of host
and device (lower median slowdown), with the cost model's per-step estimates. Where each of
the two medians lies inside the other's [min-max] the verdict is "tie (within spread)":
the repeats do not say which is faster. The default is 5 steps (not 8): the default set took
6.5 minutes on 2 cores at 6 steps (at ratio 8 a device-stepped gpt2 step takes ~4 s, most
of it simulated copy time); 5 keeps it under 6. --quick keeps 6 steps, gpt2 only.

The slowdown is the prefetched step over an all-resident twin stepped alternately (prefetch
run's own figure), so it is CPU time on this machine: noisy where the machine is loaded
(the load average is printed with the tables).
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from common import load_average, machine_info, markdown_table, write_json  # noqa: E402

PLACEMENTS = ("host", "device", "auto")
"""Run in this order within each repeat."""
POLICY, BUDGET, SEED, WARMUP = "replay", 0.4, 2, 1
PROG = "optimizer_placement.py"
STATE = "optimizer_state"


def _list(text: str, flag: str, conv: type, what: str) -> list[Any]:
    try:
        vals = [conv(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{PROG}: {flag} takes comma-separated {what}, got {text!r}") from None
    if not vals or min(vals) <= 0:
        raise SystemExit(f"{PROG}: {flag} takes positive {what}, got {text!r}")
    return vals


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The flags, validated: a bad value is a one-line SystemExit naming the flag."""
    from prefetch.workloads import WORKLOADS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default=None, help="comma-separated (default gpt2,vit; --quick gpt2)")
    ap.add_argument("--link-ratios", default="0.5,8", help="comma-separated link ratios (runtime.link)")
    ap.add_argument("--repeats", default=None, help="runs per placement (default 3; --quick 2)")
    ap.add_argument("--steps", default=None, help=f"steps per run, {WARMUP} of them warm-up (default 5; --quick 6)")
    ap.add_argument("--threads", default="1", help="torch intra-op threads (default 1)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default="out/benchmarks/optimizer_placement.json")
    args = ap.parse_args(argv)
    args.workloads = [w.strip() for w in (args.workloads or ("gpt2" if args.quick else "gpt2,vit")).split(",") if w.strip()]
    bad = [w for w in args.workloads if w not in WORKLOADS]
    if not args.workloads or bad:
        raise SystemExit(f"{PROG}: --workloads: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(WORKLOADS)}")
    args.link_ratios = _list(args.link_ratios, "--link-ratios", float, "numbers")
    args.repeats = _list(args.repeats or ("2" if args.quick else "3"), "--repeats", int, "integer")
    args.steps = _list(args.steps or ("6" if args.quick else "5"), "--steps", int, "integer")
    args.threads = _list(args.threads, "--threads", int, "integer")
    for flag in ("repeats", "steps", "threads"):
        vals = getattr(args, flag)
        if len(vals) != 1:
            raise SystemExit(f"{PROG}: --{flag} takes one integer, got {','.join(map(str, vals))}")
        setattr(args, flag, vals[0])
    if args.steps <= WARMUP:
        raise SystemExit(f"{PROG}: --steps must exceed the {WARMUP} warm-up step, got {args.steps}")
    return args


def figures(r: dict[str, Any]) -> dict[str, Any]:
    """One report's key figures (the JSON keeps these per repeat, not the whole report)."""
    from prefetch.run import IDENTITY_KEYS

    h2d, d2h = r.get("bytes_h2d") or {}, r.get("bytes_d2h") or {}
    opt = r.get("optimizer") or {}
    est = opt.get("estimate") or {}
    return {"slowdown": r.get("slowdown"), "step_time_s": r.get("step_time_s"),
            "baseline_step_time_s": r.get("baseline_step_time_s"), "hit_rate": r.get("hit_rate"),
            "stall_s": r.get("stall_s"), "optimizer_wait_s": r.get("optimizer_wait_s"),
            "bytes_h2d": dict(h2d), "bytes_d2h": dict(d2h),
            "identity": {k: r.get(k) for k in IDENTITY_KEYS},
            "asked": opt.get("asked"), "ran": opt.get("ran"), "why": opt.get("why"), "from_step": opt.get("from_step"),
            "estimate_host_ns": est.get("host_ns"), "estimate_device_ns": est.get("device_ns"),
            "estimate": est or None, "device_stepping": opt.get("device_stepping")}


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def faster(host: list[float], device: list[float]) -> str:
    """`host`, `device` (lower median slowdown), or `tie` where each median lies inside the other's [min-max]."""
    (hm, hlo, hhi), (dm, dlo, dhi) = spread(host), spread(device)
    if dlo <= hm <= dhi and hlo <= dm <= hhi:
        return "tie"
    return "device" if dm < hm else "host"


def picks(ran: list[str | None]) -> tuple[str, bool]:
    """(auto's pick, whether every repeat agreed): the pick is the most frequent one."""
    counts = {p: ran.count(p) for p in dict.fromkeys(ran)}
    top = max(counts, key=lambda p: counts[p])
    return str(top), len(counts) == 1


def verdict(pick: str, agreed: bool, measured: str) -> str:
    if measured == "tie":
        return "tie (within spread)"
    if not agreed:
        return "**miss** (auto's repeats picked differently)"
    return "ok" if pick == measured else "**miss**"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def _med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from prefetch.run import run_policies

    before_threads = torch.get_num_threads()
    load_before = load_average()
    t_start = time.perf_counter()
    runs: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    torch.set_num_threads(args.threads)
    try:
        for w in args.workloads:
            for ratio in args.link_ratios:
                for rep in range(args.repeats):
                    for pl in PLACEMENTS:
                        t0 = time.perf_counter()
                        try:
                            r = run_policies(w, [POLICY], steps=args.steps, budget=BUDGET, seed=SEED, link_ratio=ratio,
                                             warmup_steps=WARMUP, progress=False, optimizer_placement=pl)[0]
                        except ValueError as exc:
                            raise SystemExit(f"{PROG}: {w} at link ratio {ratio:g}: {exc}") from None
                        f = figures(r)
                        del r
                        gc.collect()  # the run's job and prefetcher sit in reference cycles: ~0.2 GB a run otherwise
                        f.update(repeat=rep, wall_s=time.perf_counter() - t0)
                        runs.setdefault((w, ratio, pl), []).append(f)
                        print(f"  {w} ratio {ratio:g} {pl} #{rep + 1}: slowdown {f['slowdown']:.3f}x, ran {f['ran']} "
                              f"({f['wall_s']:.0f} s)", file=sys.stderr)
    finally:
        torch.set_num_threads(before_threads)
    wall = time.perf_counter() - t_start
    load_after = load_average()
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    rows, table = [], []
    for (w, ratio, pl), fs in runs.items():
        slow = spread([f["slowdown"] for f in fs])
        up = [sum(f["bytes_h2d"].values()) for f in fs]
        down = [sum(f["bytes_d2h"].values()) for f in fs]
        up_s = [f["bytes_h2d"].get(STATE, 0) for f in fs]
        down_s = [f["bytes_d2h"].get(STATE, 0) for f in fs]
        ident = all(all(v is True for v in f["identity"].values()) for f in fs)
        bad = sorted({k.removesuffix("_identical") for f in fs for k, v in f["identity"].items() if v is not True})
        pick, agreed = picks([f["ran"] for f in fs])
        ran = pick if agreed else "mixed: " + ", ".join(f"{p} {[f['ran'] for f in fs].count(p)}"
                                                        for p in dict.fromkeys(f["ran"] for f in fs))
        if pl == "auto" and agreed:
            ran += f" (all {len(fs)})"
        wait = _med([f["optimizer_wait_s"] for f in fs])
        row = {"workload": w, "link_ratio": ratio, "placement": pl, "repeats": len(fs),
               "slowdown_median": slow[0], "slowdown_min": slow[1], "slowdown_max": slow[2],
               "stall_s_median": _med([f["stall_s"] for f in fs]), "optimizer_wait_s_median": wait,
               "h2d_bytes_median": _med(up), "h2d_optimizer_state_bytes_median": _med(up_s),
               "d2h_bytes_median": _med(down), "d2h_optimizer_state_bytes_median": _med(down_s),
               "identical": ident, "not_identical": bad, "ran": pick, "ran_agreed": agreed}
        rows.append(row)
        table.append([w, f"{ratio:g}", pl, f"{slow[0]:.3f} [{slow[1]:.3f}-{slow[2]:.3f}]",
                      f"{row['stall_s_median']:.3f}", "n/a" if wait is None else f"{wait:.3f}",
                      f"{_mib(row['h2d_bytes_median'])} ({_mib(row['h2d_optimizer_state_bytes_median'])})",
                      f"{_mib(row['d2h_bytes_median'])} ({_mib(row['d2h_optimizer_state_bytes_median'])})",
                      "yes" if ident else "no (" + ", ".join(bad) + ")", ran])

    verdicts, vtable = [], []
    for w in args.workloads:
        for ratio in args.link_ratios:
            host = [f["slowdown"] for f in runs[(w, ratio, "host")]]
            dev = [f["slowdown"] for f in runs[(w, ratio, "device")]]
            auto = runs[(w, ratio, "auto")]
            pick, agreed = picks([f["ran"] for f in auto])
            measured = faster(host, dev)
            eh, ed = _med([f["estimate_host_ns"] for f in auto]), _med([f["estimate_device_ns"] for f in auto])
            v = verdict(pick, agreed, measured)
            verdicts.append({"workload": w, "link_ratio": ratio, "auto_pick": pick, "auto_agreed": agreed,
                             "measured_faster": measured, "host_slowdown_median": statistics.median(host),
                             "device_slowdown_median": statistics.median(dev),
                             "estimate_host_ns_median": eh, "estimate_device_ns_median": ed, "verdict": v})
            ms = lambda ns: "n/a" if ns is None else f"{ns / 1e6:.1f}"  # noqa: E731
            vtable.append([w, f"{ratio:g}", pick if agreed else f"{pick} (repeats disagreed)",
                           {"tie": "neither (within spread)"}.get(measured, measured),
                           f"{statistics.median(host):.3f} / {statistics.median(dev):.3f}",
                           f"{ms(eh)} / {ms(ed)}", v])

    print(f"Optimizer placement on the simulated device: prefetch run, policy {POLICY}, budget {BUDGET}, seed {SEED}, "
          f"{args.steps} steps ({WARMUP} warm-up), {args.repeats} repeat{'s' if args.repeats > 1 else ''} per placement interleaved "
          f"({', '.join(PLACEMENTS)}, ...); torch threads {args.threads}; load average before {load_before}, "
          f"after {load_after}; {wall:.0f} s in all, peak RSS {peak_rss_mib:.0f} MiB. Slowdown: prefetched step / all-resident twin step, median "
          "[min-max] over repeats; stall s: total over the run (median); MiB: all kinds (optimizer_state part).")
    print()
    print(markdown_table(["workload", "link ratio", "placement", "slowdown [min-max]", "stall s", "optimizer wait s",
                          "MiB to device (state)", "MiB to host (state)", "identical", "ran"], table))
    print()
    print("Verdict: auto's pick against the measured faster placement (lower median slowdown; a tie where each "
          "median lies inside the other's [min-max]); the cost model's per-step estimates from auto's reports.")
    print()
    print(markdown_table(["workload", "link ratio", "auto picked", "measured faster", "median slowdown host / device",
                          "model ms/step host / device", "verdict"], vtable))
    if any(r["optimizer_wait_s_median"] is None for r in rows):
        print()
        print("optimizer wait s: n/a where the report has no optimizer_wait_s (prefetch run's live report "
              "does not carry it; the simulator's does).")
    write_json(args.json, {"machine": machine_info(), "load_before": load_before, "load_after": load_after,
                           "wall_s": wall, "peak_rss_mib": peak_rss_mib, "policy": POLICY, "budget": BUDGET, "seed": SEED, "steps": args.steps,
                           "warmup_steps": WARMUP, "repeats": args.repeats, "threads": args.threads,
                           "workloads": args.workloads, "link_ratios": args.link_ratios, "rows": rows,
                           "verdicts": verdicts,
                           "runs": [{"workload": w, "link_ratio": ratio, "placement": pl, **f}
                                    for (w, ratio, pl), fs in runs.items() for f in fs]})
    return 0


if __name__ == "__main__":
    sys.exit(main())

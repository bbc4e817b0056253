"""`prefetch simulate TRACE_DIR... --policy P [--budget B] [--json F] [--sweep]`: offline hit rates.

    prefetch simulate datasets/samples/gpt2 --policy replay --budget 0.4 --json out.json
    prefetch simulate datasets/samples/moe --sweep --sweep-policies none,replay,markov,oracle --plot moe.png
    prefetch simulate datasets/samples/gpt2 --policy learned:models/ --via-daemon   # as live runs serve it
    prefetch simulate datasets/samples/gpt2 --policy replay --gpu-model   # optimizer on the host, baseline on the device
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from predictor.policies import ORACLE, baseline_names, spec_help
from prefetch.cli import nonnegative_float, nonnegative_int, positive_float, positive_int
from runtime.defaults import AHEAD_SHARE, DAEMON_BATCH_EVENTS, DAEMON_ROUND_TRIP_NS, LIVE_LOOKAHEAD
from runtime.link import DEFAULT_LATENCY_S, DEFAULT_LINK_RATIO, LinkModel

DEFAULT_SWEEP_BUDGETS = "0.2,0.3,0.4,0.5,0.6,0.8,1.0"
DEFAULT_SWEEP_POLICIES = ",".join((*baseline_names(), ORACLE))
DEFAULT_PLOT = "simulate-sweep.png"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="replay traces through a simulated device: hit rate, stalls, slowdown per policy and budget",
        description=(
            "Replay recorded traces through a model of the live tensor store (a byte budget over "
            "parameters and saved activations) and its copy engine (a link model), with a prefetch "
            "policy deciding what to copy ahead. Reports hit rate, late and missed accesses, stall "
            "time and the slowdown against everything resident. The model is described in "
            "prefetch/simulate.py."
        ),
    )
    p.add_argument("traces", nargs="+", metavar="TRACE_DIR", help="trace files or folders of traces")
    p.add_argument("--policy", default=None,
                   help=f"{spec_help()} | oracle; NAME:key=value sets a parameter (required unless --sweep)")
    p.add_argument("--budget", default="0.4",
                   help="device budget: a fraction of the managed bytes (0.4, 40%%) or a size (2GiB, 1.5e9); "
                        "default 0.4")
    link = p.add_mutually_exclusive_group()
    link.add_argument("--link-ratio", type=positive_float, default=None,
                      help="link speed as the time to copy every managed byte once over the mean step compute "
                           f"time (default {DEFAULT_LINK_RATIO})")
    link.add_argument("--bandwidth", type=positive_float, default=None, metavar="GBPS",
                      help="explicit link bandwidth in GB/s (1e9 bytes/s), instead of a ratio")
    p.add_argument("--latency-us", type=nonnegative_float, default=None, help=f"per-copy latency in microseconds (default {DEFAULT_LATENCY_S * 1e6:g})")
    p.add_argument("--warmup", type=nonnegative_int, default=1, metavar="N", help="steps of each trace left out (default 1)")
    p.add_argument("--lookahead", type=positive_int, default=LIVE_LOOKAHEAD, metavar="N",
                   help=f"future reads a named policy keeps requested (default {LIVE_LOOKAHEAD}, as `prefetch run`)")
    p.add_argument("--ahead-share", type=float, default=AHEAD_SHARE, metavar="S",
                   help="prefetch window: prefetches issued and not yet read hold at most this share of the "
                        f"budget, 0 for none (default {AHEAD_SHARE}, as `prefetch run`; runtime.defaults.AHEAD_SHARE)")
    p.add_argument("--optimizer", default="auto", choices=("auto", "host", "device"),
                   help="the run's optimizer placement (runtime.placement): host stepping is simulated, and with "
                        "auto or device a budget holding the whole footprint keeps everything resident after the "
                        "first step, as a live run does (default auto)")
    p.add_argument("--no-guard", action="store_true",
                   help="learned:MODEL_DIR alone, without the guard live runs have (predictor.guard)")
    p.add_argument("--no-early-step", action="store_true",
                   help="host stepping without stepping first what the next step reads first (as `prefetch run "
                        "--no-early-step`)")
    daemon = p.add_argument_group(
        "daemon path", "a live run serves learned:MODEL_DIR through the prefetch daemon; without --via-daemon "
                       "the simulator calls the policy in process, with no latency")
    daemon.add_argument("--via-daemon", action="store_true",
                        help="serve the policy as the live daemon does: batched events, replies a round trip late, "
                             "a local fallback's next use between them (docs/predictor.md)")
    daemon.add_argument("--daemon-batch-events", type=positive_int, default=None, metavar="N",
                        help=f"events per message (default {DAEMON_BATCH_EVENTS}, as live runs)")
    daemon.add_argument("--daemon-round-trip-us", type=nonnegative_float, default=None, metavar="US",
                        help=f"send to readable reply (default {DAEMON_ROUND_TRIP_NS / 1000:g}, measured by "
                             "benchmarks/daemon_latency.py)")
    daemon.add_argument("--daemon-fallback", default=None, metavar="SPEC",
                        help="local policy answering next use where the daemon has no fresh prediction "
                             "(default replay, as live runs; none: no local view)")
    gpu = p.add_argument_group(
        "a GPU run", "the prefetched job steps its optimizer on the host (host masters), the all-resident baseline "
                     "on the device; without --gpu-model both take the trace's optimizer time (prefetch/gpu_model.py)")
    gpu.add_argument("--gpu-model", action="store_true",
                     help="model the optimizer's placement of a GPU run: host optimizer time for the managed "
                          "parameters' bytes in the prefetched run, the device's in the baseline")
    gpu.add_argument("--host-optimizer", default=None, metavar="VARIANT|FILE",
                     help="the host AdamW figure: single, foreach or fused (measured now, ~1 s; default fused), "
                          "or FILE[:VARIANT] written by benchmarks/host_optimizer.py")
    gpu.add_argument("--device-optimizer-ns-per-byte", type=positive_float, default=None, metavar="X",
                     help="the baseline's device optimizer per parameter byte (default: the trace's optimizer time)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the report (or the sweep) as JSON")
    p.add_argument("--sweep", action="store_true", help="simulate every policy x budget, print a table, plot it")
    p.add_argument("--sweep-budgets", default=DEFAULT_SWEEP_BUDGETS, help=f"default {DEFAULT_SWEEP_BUDGETS}")
    p.add_argument("--sweep-policies", default=DEFAULT_SWEEP_POLICIES, help=f"default {DEFAULT_SWEEP_POLICIES}")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help=f"where --sweep writes its plot (default {DEFAULT_PLOT})")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.set_defaults(func=run)


def _link(args: argparse.Namespace):
    latency_s = DEFAULT_LATENCY_S if args.latency_us is None else args.latency_us * 1e-6
    if args.bandwidth is not None:
        return LinkModel(bandwidth_bytes_per_s=args.bandwidth * 1e9, latency_s=latency_s), DEFAULT_LINK_RATIO, latency_s
    ratio = DEFAULT_LINK_RATIO if args.link_ratio is None else args.link_ratio
    if not ratio > 0:
        raise ValueError(f"--link-ratio must be > 0, got {ratio}")
    return None, ratio, latency_s


def _daemon(args: argparse.Namespace):
    """False, or the DaemonPath of --via-daemon and its options (which need it)."""
    given = [f for f, v in (("--daemon-batch-events", args.daemon_batch_events),
                            ("--daemon-round-trip-us", args.daemon_round_trip_us),
                            ("--daemon-fallback", args.daemon_fallback)) if v is not None]
    if not args.via_daemon:
        if given:
            raise ValueError(f"{given[0]} goes with --via-daemon")
        return False
    from predictor.daemon_path import DaemonPath

    try:
        return DaemonPath(
            batch_events=args.daemon_batch_events or DAEMON_BATCH_EVENTS,
            round_trip_ns=DAEMON_ROUND_TRIP_NS if args.daemon_round_trip_us is None else round(args.daemon_round_trip_us * 1000),
            fallback="replay" if args.daemon_fallback is None else args.daemon_fallback,
        )
    except ValueError as exc:  # the only free-form option is the fallback spec
        raise ValueError(f"--daemon-fallback: {exc}") from None


def _gpu_model(args: argparse.Namespace):
    """None, or the GpuModel of --gpu-model and its options (which need it)."""
    given = [f for f, v in (("--host-optimizer", args.host_optimizer),
                            ("--device-optimizer-ns-per-byte", args.device_optimizer_ns_per_byte)) if v is not None]
    if not args.gpu_model:
        if given:
            raise ValueError(f"{given[0]} goes with --gpu-model")
        return None
    from prefetch.gpu_model import GpuModel

    return GpuModel.from_spec(args.host_optimizer, device_ns_per_byte=args.device_optimizer_ns_per_byte)


def _split(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ValueError(f"{what} is empty")
    return items


def run(args: argparse.Namespace) -> int:
    from runtime.budget import parse_budget
    from prefetch.simulate import format_table, simulate
    from runtime.trace_format import load_traces

    link, ratio, latency_s = _link(args)
    if not args.sweep and args.policy is None:
        raise ValueError(f"--policy is required ({spec_help()} | oracle), or use --sweep")
    if args.plot is not None and not args.sweep:
        raise ValueError("--plot goes with --sweep")
    traces = load_traces(args.traces)
    if args.lookahead < 1:
        raise ValueError(f"--lookahead must be >= 1, got {args.lookahead}")
    common = dict(link=link, link_ratio=ratio, latency_s=latency_s, warmup_steps=args.warmup,
                  lookahead=args.lookahead, daemon=_daemon(args), guard=not args.no_guard, gpu_model=_gpu_model(args),
                  optimizer_placement=args.optimizer, ahead_share=args.ahead_share, early_step=not args.no_early_step)

    if not args.sweep:
        report = simulate(traces, args.policy, budget=args.budget, **common)
        for sub in report.traces:
            print(sub.summary())
        print(report.summary())
        if args.json:
            _write_json(args.json, report.as_dict())
        return 0

    budgets = [parse_budget(b) for b in _split(args.sweep_budgets, "--sweep-budgets")]
    policies = _split(args.sweep_policies, "--sweep-policies")
    if args.policy is not None and args.policy not in policies:
        policies.append(args.policy)
    reports = []
    for policy in policies:
        for budget in budgets:
            kw = common if policy != ORACLE else {**common, "daemon": False}  # the oracle never goes through it
            reports.append(simulate(traces, policy, budget=budget, **kw))
    print(f"{len(traces)} trace(s); link {_describe_link(reports[0].link)}; warm-up {args.warmup} step(s)")
    if reports[0].gpu_model is not None:  # the same for every policy and budget
        from runtime.run_report import gpu_model_line

        print(gpu_model_line(reports[0].gpu_model))
    print(format_table(reports))
    plot = args.plot or Path(DEFAULT_PLOT)
    plot_sweep(reports, plot, title=", ".join(sorted({t.stem.name for t in traces}))[:90])
    print(f"plot: {plot}")
    if args.json:
        _write_json(args.json, {"sweep": [r.as_dict() for r in reports]})
    return 0


def _describe_link(link: dict) -> str:
    bw = link.get("bandwidth_GBps")
    parts = [f"ratio {link['ratio']:g}" if link.get("ratio") is not None else None,
             f"{bw:.3g} GB/s" if bw is not None else "bandwidth per trace",
             f"latency {link.get('latency_us', 0):g} us"]
    return ", ".join(p for p in parts if p)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
    print(f"wrote {path}")


def plot_sweep(reports, path: Path, *, title: str = "") -> None:
    """Hit rate and slowdown over the budget, one line per policy, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_policy: dict[str, list] = {}
    for r in reports:
        by_policy.setdefault(r.policy, []).append(r)
    fig, (ax_hit, ax_slow) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rs in by_policy.items():
        rs = sorted(rs, key=lambda r: r.budget_bytes / max(r.managed_bytes, 1))
        x = [100 * r.budget_bytes / max(r.managed_bytes, 1) for r in rs]
        ax_hit.plot(x, [100 * r.hit_rate for r in rs], marker="o", label=name)
        ax_slow.plot(x, [r.slowdown if r.slowdown is not None else float("nan") for r in rs], marker="o", label=name)
    ax_hit.set(xlabel="device budget (% of managed bytes)", ylabel="hit rate (%)", ylim=(0, 101), title="hit rate")
    ax_slow.set(xlabel="device budget (% of managed bytes)", ylabel="step time / all resident", title="slowdown")
    ax_slow.axhline(1.0, color="grey", lw=0.8, ls="--")
    for ax in (ax_hit, ax_slow):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

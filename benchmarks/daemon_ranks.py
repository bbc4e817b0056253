"""One daemon serving 1, 2 and 4 local ranks: round trip per rank and the daemon's CPU time.

    python benchmarks/daemon_ranks.py                          # replay served, gpt2 sample trace
    python benchmarks/daemon_ranks.py --ranks 1,2,4 --events 2000 --json out/bench/daemon_ranks.json

What `prefetch run --policy learned:... -- torchrun --nproc-per-node R ...` does on one
node: one daemon process (`python -m prefetch daemon`), one client process per rank, each
a session. Every rank replays a recorded trace through runtime.daemon_client, one event per
EVENTS message, waiting for its COMMANDS (the round trip a rank's policy sees), all ranks at
once. The daemon's CPU time (user + system, from /proc) is read before and after each
round. With R ranks on a machine of C cores, R > C - 1 means ranks and daemon share cores.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, markdown_table, write_json  # noqa: E402
from benchmarks.daemon_latency import DEFAULT_TRACE, bench_round_trip, connect, load_events  # noqa: E402


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rank(endpoint: str, trace: str, policy: str, n: int, warmup: int, start, out) -> None:
    events, tensors, arch = load_events(Path(trace), n + warmup)
    client = connect(endpoint, tensors, arch, policy)
    try:
        start.wait()  # every rank connected: start together
        out.put(bench_round_trip(client, events, n, warmup))
    finally:
        client.close()


def bench_ranks(endpoint: str, daemon_pid: int, ranks: int, trace: str, policy: str, n: int, warmup: int) -> dict:
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(ranks + 1), ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(endpoint, trace, policy, n, warmup, start, out)) for _ in range(ranks)]
    for p in procs:
        p.start()
    start.wait(timeout=120)
    cpu0, t0 = _cpu_s(daemon_pid), time.perf_counter()
    results = [out.get(timeout=600) for _ in procs]
    wall, cpu = time.perf_counter() - t0, _cpu_s(daemon_pid) - cpu0
    for p in procs:
        p.join(30)
    total = ranks * (n + warmup)
    return {
        "ranks": ranks,
        "round_trip_median_us": sorted(r["median_us"] for r in results)[len(results) // 2],
        "round_trip_p99_us": max(r["p99_us"] for r in results),
        "per_rank": results,
        "daemon_cpu_s": cpu,
        "wall_s": wall,
        "daemon_cpu_share": cpu / wall if wall else None,
        "daemon_cpu_us_per_event": 1e6 * cpu / total,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", default="1,2,4", help="comma-separated rank counts (default 1,2,4)")
    parser.add_argument("--events", type=int, default=2000, help="round trips per rank (default 2000)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--trace", default=str(DEFAULT_TRACE))
    parser.add_argument("--policy", default="replay", help="served policy: replay | markov | learned (with --models)")
    parser.add_argument("--models", default=None, help="MODEL_DIR for --policy learned")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from runtime.daemon_launch import start_local_daemon

    counts = [int(x) for x in args.ranks.split(",") if x.strip()]
    endpoint, daemon = start_local_daemon(args.models)
    try:
        rows = [bench_ranks(endpoint, daemon.process.pid, r, args.trace, args.policy, args.events, args.warmup)
                for r in counts]
    finally:
        daemon.stop()
    load = os.getloadavg()
    print(f"one daemon ({args.policy}), {args.events} round trips per rank, {os.cpu_count()} cores, "
          f"load average {load[0]:.1f} (a busy machine inflates every figure)")
    print(markdown_table(["ranks", "round trip median (us)", "p99 (us)", "daemon CPU (s)", "daemon CPU share",
                          "daemon CPU per event (us)"],
                         [[r["ranks"], f"{r['round_trip_median_us']:.0f}", f"{r['round_trip_p99_us']:.0f}",
                           f"{r['daemon_cpu_s']:.2f}", f"{r['daemon_cpu_share']:.0%}",
                           f"{r['daemon_cpu_us_per_event']:.1f}"] for r in rows]))
    write_json(args.json, {"benchmark": "daemon_ranks", "policy": args.policy, "events_per_rank": args.events,
                           "load_average": load, "machine": machine_info(), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Daemon round trip and throughput: event in -> command out, over loopback tcp and ipc.

    python benchmarks/daemon_latency.py                                 # replay, gpt2 sample trace
    python benchmarks/daemon_latency.py --policy learned --models models/ --json out/bench/daemon.json

The daemon runs as its own process (`python -m prefetch daemon`, what the runtime
starts); the client is runtime.daemon_client.DaemonClient, the code the training
thread runs. Events replay a recorded trace (steps renumbered so it keeps going), so
the policy does its real work. Four measurements:

  echo        a bare pyzmq DEALER/ROUTER echo of the same frames: the floor of this box
  round trip  one event per EVENTS message, wait for its COMMANDS (median, p99, p99.9)
  throughput  batches of B events, up to 64 batches in flight, until all are answered
  overhead    a stand-in training loop (~50 us of GIL-free matmuls and ~5 us of Python per access) with
              the client inline (I/O on the training thread, the shipped design) or
              behind a helper I/O thread (deques + a pipe wake-up): time added per access

Targets (issue 5): round trip median <= 200 us and p99 <= 1 ms; >= 200k events/s batched.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread: 2-core box
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import multiprocessing as mp  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import zmq  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, markdown_table, write_json  # noqa: E402
from predictor.interface import TensorInfo  # noqa: E402
from predictor.policies import baseline_names  # noqa: E402
from runtime import wire  # noqa: E402
from runtime.daemon_client import DaemonClient, DaemonClientConfig  # noqa: E402
from runtime.daemon_launch import start_local_daemon  # noqa: E402
from runtime.trace_format import load_traces  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT / "datasets" / "samples" / "gpt2" / "train"


# -- inputs --------------------------------------------------------------------------------


def load_events(path: Path, repeat_to: int) -> tuple[np.ndarray, TensorInfo, str]:
    """The trace's events as EVENT_DTYPE, repeated (steps renumbered) to >= repeat_to rows."""
    trace = load_traces([path])[0]
    one = np.zeros(trace.num_events, dtype=wire.EVENT_DTYPE)
    for name in wire.EVENT_FIELDS:
        one[name] = trace.column(name)
    steps = int(one["step"].max()) + 1
    reps = max(1, -(-repeat_to // len(one)))
    out = np.concatenate([one] * reps)
    out["step"] += np.repeat(np.arange(reps, dtype=np.int32) * steps, len(one))
    return out, TensorInfo.from_table(trace.tensors), trace.architecture


def free_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def percentiles(ns: list[int] | np.ndarray) -> dict[str, float]:
    a = np.asarray(ns, dtype=np.float64) / 1000.0
    return {
        "n": int(a.size),
        "median_us": float(np.median(a)),
        "p99_us": float(np.percentile(a, 99)),
        "p999_us": float(np.percentile(a, 99.9)),
        "max_us": float(a.max()),
    }


def thread_settings(ctx: zmq.Context) -> dict[str, object]:
    info = {
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python_switch_interval_s": sys.getswitchinterval(),
        "zmq_io_threads_per_process": ctx.get(zmq.IO_THREADS),
        "zmq": zmq.zmq_version(),
        "pyzmq": zmq.__version__,
        "client_io": "inline on the caller's thread (libzmq's own I/O thread does the socket work)",
        "daemon_threads": "1 Python thread + 1 libzmq I/O thread (separate process)",
    }
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        info[var] = os.environ.get(var)
    return info


# -- bare echo (the floor) -----------------------------------------------------------------


def _echo_server(endpoint: str, ready) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    ready.set()
    while True:
        frames = sock.recv_multipart()
        if frames[1] == b"stop":
            break
        sock.send_multipart(frames)
    sock.close(linger=0)
    ctx.term()


def bench_echo(endpoint: str, n: int, warmup: int) -> dict[str, float]:
    mpctx = mp.get_context("spawn")
    ready = mpctx.Event()
    proc = mpctx.Process(target=_echo_server, args=(endpoint, ready), daemon=True)
    proc.start()
    ready.wait(30)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    frames = wire.Events(session=1, seq=1, events=np.zeros(1, wire.EVENT_DTYPE)).encode()
    frames = [bytes(memoryview(f)) for f in frames]
    lat = []
    clock = time.perf_counter_ns
    for i in range(n + warmup):
        t0 = clock()
        sock.send_multipart(frames)
        if not sock.poll(5000):
            raise TimeoutError("echo server silent")
        sock.recv_multipart()
        if i >= warmup:
            lat.append(clock() - t0)
    sock.send_multipart([b"x", b"stop"])
    proc.join(5)
    sock.close(linger=0)
    ctx.term()
    if endpoint.startswith("ipc://"):
        Path(endpoint[len("ipc://"):]).unlink(missing_ok=True)
    return percentiles(lat)


# -- through the daemon ----------------------------------------------------------------------


def connect(endpoint: str, tensors: TensorInfo, architecture: str, policy: str, **kw) -> DaemonClient:
    cfg = DaemonClientConfig(endpoint=endpoint, architecture=architecture, policy=policy, timeout_ms=5000, **kw)
    client = DaemonClient(cfg, tensors).start()
    if not client.wait_connected(30.0):
        raise RuntimeError(f"daemon at {endpoint} did not answer HELLO: {client.last_error}")
    return client


def bench_round_trip(client: DaemonClient, events: np.ndarray, n: int, warmup: int) -> dict[str, float]:
    """One event per message; wait (blocking poll) for its COMMANDS before the next."""
    lat = []
    ids = 0
    clock = time.perf_counter_ns
    for i in range(n + warmup):
        ev = events[i % len(events): i % len(events) + 1]
        t0 = clock()
        if not client.send_events(ev):
            raise RuntimeError("send dropped")
        while client.outstanding:
            if not client.wait(5000):
                raise TimeoutError("daemon silent")
            for cmd in client.poll_commands():
                ids += len(cmd.tensor_ids)
        if i >= warmup:
            lat.append(clock() - t0)
    out = percentiles(lat)
    out["ids_per_event"] = ids / (n + warmup)
    return out


def bench_throughput(client: DaemonClient, events: np.ndarray, batch: int, total: int, window: int = 64) -> dict:
    """Batches of `batch` events, up to `window` in flight, until `total` events are answered."""
    batches = [events[i: i + batch] for i in range(0, min(total, len(events)) - batch + 1, batch)]
    from prefetch.daemon_config import DaemonConfig

    # the daemon answers `busy` (and drops the batch) past this many queued events per client
    window = max(1, min(window, DaemonConfig().max_queued_events // batch // 2))
    sent = answered = ids = 0
    t0 = time.perf_counter()
    i = 0
    while answered < len(batches):
        while i < len(batches) and client.outstanding < window:
            if not client.send_events(batches[i]):
                raise RuntimeError("send dropped")
            i += 1
            sent += 1
        client.wait(5000)
        for cmd in client.poll_commands():
            answered += 1
            ids += len(cmd.tensor_ids)
    dt = time.perf_counter() - t0
    n_events = len(batches) * batch
    return {"batch": batch, "events": n_events, "seconds": dt, "events_per_s": n_events / dt,
            "batches_per_s": len(batches) / dt, "ids": ids}


# -- training-thread overhead: inline vs a helper I/O thread ---------------------------------


class ThreadedClient:
    """The alternative design, measured here only: the training thread touches deques and,
    once per batch, a pipe; a helper thread owns the DaemonClient and sleeps in zmq poll."""

    def __init__(self, client: DaemonClient, batch: int):
        self.client = client
        self.batch = batch
        self._pending: list[tuple[int, int, int, int, int]] = []
        self._to_io: collections.deque = collections.deque()
        self._from_io: collections.deque = collections.deque()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="daemon-io", daemon=True)
        self._thread.start()

    def record(self, step: int, micro: int, phase: int, access: int, tid: int) -> None:
        self._pending.append((step, micro, phase, access, tid))
        if len(self._pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            rows, self._pending = self._pending, []
            self._to_io.append(rows)
            os.write(self._wfd, b"x")  # wake the I/O thread: one syscall per batch

    def poll_commands(self) -> list:
        out = []
        while self._from_io:
            out.append(self._from_io.popleft())
        return out

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._rfd, zmq.POLLIN)
        poller.register(self.client._sock, zmq.POLLIN)  # no reconnects in a benchmark
        while not self._stop:
            poller.poll(100)  # sleeps; wakes on a batch to send or a reply
            try:
                os.read(self._rfd, 4096)
            except BlockingIOError:
                pass
            while self._to_io:
                self.client.send_events(self._to_io.popleft())
            self._from_io.extend(self.client.poll_commands())

    def close(self) -> None:
        self._stop = True
        os.write(self._wfd, b"x")
        self._thread.join(5)
        os.close(self._rfd)
        os.close(self._wfd)


def calibrate_compute(target_us: float) -> tuple[np.ndarray, int]:
    """A float32 matmul (releases the GIL, like a torch op) repeated to take ~target_us."""
    a = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    for _ in range(200):
        a @ a
    t0 = time.perf_counter()
    for _ in range(2000):
        a @ a
    one_us = (time.perf_counter() - t0) / 2000 * 1e6
    return a, max(1, round(target_us / one_us))


def calibrate_python(target_us: float) -> int:
    """Length of a pure-Python loop (holds the GIL, like the runtime's hooks) taking ~target_us."""
    t0 = time.perf_counter()
    for _ in range(200):
        sum(range(1000))
    per_1000 = (time.perf_counter() - t0) / 200 * 1e6
    return max(0, round(1000 * target_us / per_1000)) if target_us > 0 else 0


def bench_overhead(make_client, events: np.ndarray, batch: int, n: int, compute_us: float, python_us: float,
                   rounds: int = 5) -> dict:
    """A stand-in training loop with no client, the inline client, and the helper-thread
    client, interleaved `rounds` times. Per access, the median over rounds of what each adds
    to the training thread's CPU time (robust on a shared box) and to the loop's wall time
    (includes GIL waits; noisy when other processes compete for the two cores)."""
    a, reps = calibrate_compute(compute_us)
    py = calibrate_python(python_us)
    rows = events[:n].tolist()

    def loop(client) -> tuple[float, float]:
        w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        for i, (s, m, p, acc, tid) in enumerate(rows):
            for _ in range(reps):
                a @ a  # the "kernel" (releases the GIL, like a torch op)
            sum(range(py))  # the hooks' Python work (holds the GIL)
            if client is not None:
                client.record(s, m, p, acc, tid)
                if i % batch == batch - 1:
                    client.flush()
                    client.poll_commands()
        return (time.perf_counter_ns() - w0) / len(rows) / 1000, (time.thread_time_ns() - c0) / len(rows) / 1000

    inline = make_client(batch)
    threaded = ThreadedClient(make_client(batch), batch)
    runs: dict[str, list[tuple[float, float]]] = {"base": [], "inline": [], "threaded": []}
    try:
        for _ in range(rounds):
            runs["base"].append(loop(None))
            runs["inline"].append(loop(inline))
            runs["threaded"].append(loop(threaded))
    finally:
        dropped = (inline.stats.events_dropped_full, threaded.client.stats.events_dropped_full)
        inline.close()
        threaded.close()
        threaded.client.close()
    wall = {k: float(np.median([r[0] for r in v])) for k, v in runs.items()}
    cpu = {k: float(np.median([r[1] for r in v])) for k, v in runs.items()}
    return {
        "batch": batch,
        "compute_us_per_access": wall["base"],
        "inline_cpu_us": cpu["inline"] - cpu["base"],
        "inline_wall_us": wall["inline"] - wall["base"],
        "threaded_cpu_us": cpu["threaded"] - cpu["base"],
        "threaded_wall_us": wall["threaded"] - wall["base"],
        "dropped_inline": dropped[0],
        "dropped_threaded": dropped[1],
    }


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="trace whose events are replayed")
    ap.add_argument("--policy", default="replay", help="policy asked of the daemon (default replay)")
    ap.add_argument("--models", type=Path, default=None, help="MODEL_DIR for --policy learned")
    ap.add_argument("--round-trips", type=int, default=20000)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--throughput-events", type=int, default=400_000)
    ap.add_argument("--batches", default="1,16,64,256,1024,4096")
    ap.add_argument("--overhead-events", type=int, default=20000)
    ap.add_argument("--compute-us", type=float, default=50.0, help="stand-in GIL-free compute per access")
    ap.add_argument("--python-us", type=float, default=5.0, help="stand-in Python (GIL-held) work per access")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the overhead measure")
    ap.add_argument("--only", choices=("all", "overhead"), default="all", help="skip echo/round trip/throughput")
    ap.add_argument("--json", type=Path, default=ROOT / "out" / "bench" / "daemon_latency.json")
    args = ap.parse_args(argv)

    ctx = zmq.Context.instance()
    events, tensors, architecture = load_events(args.trace, max(args.throughput_events, args.round_trips + args.warmup))
    settings = thread_settings(ctx)
    print("thread settings:", ", ".join(f"{k}={v}" for k, v in settings.items()))
    print(f"trace {args.trace} ({architecture}, {tensors.num_tensors} tensors), policy {args.policy}")
    results: dict[str, object] = {"settings": settings, "machine": machine_info(), "policy": args.policy,
                                  "trace": str(args.trace), "architecture": architecture}

    endpoints = {"tcp": free_tcp_endpoint(),
                 "ipc": f"ipc:///tmp/prefetch-bench-{os.getpid()}.sock"}
    rows = []
    results["echo"] = {}
    results["round_trip"] = {}
    for transport, ep in endpoints.items() if args.only == "all" else ():
        echo_ep = free_tcp_endpoint() if transport == "tcp" else ep + ".echo"
        echo = bench_echo(echo_ep, args.round_trips, args.warmup)
        results["echo"][transport] = echo
        rows.append(["bare pyzmq echo", transport, 1, echo["median_us"], echo["p99_us"], echo["p999_us"], "", ""])

    results["throughput"] = {}
    daemons = {}
    served = None
    try:
        for transport, ep in endpoints.items():
            _, daemons[transport] = start_local_daemon(args.models, endpoint=ep)
            if args.only != "all":
                continue
            client = connect(ep, tensors, architecture, args.policy)
            served = client.served_policy
            rt = bench_round_trip(client, events, args.round_trips, args.warmup)
            results["round_trip"][transport] = rt
            rt_ok = rt["median_us"] <= 200 and rt["p99_us"] <= 1000
            rows.append([f"round trip ({served})", transport, 1, rt["median_us"], rt["p99_us"], rt["p999_us"], "",
                         "ok" if rt_ok else "MISS"])
            results["throughput"][transport] = []
            batches = [int(b) for b in args.batches.split(",")] if transport == "ipc" else [1024]
            for b in batches:
                total = min(args.throughput_events, 20000 * b)  # batch 1: 20k messages is plenty
                tp = bench_throughput(client, events, b, total)
                results["throughput"][transport].append(tp)
                ok = "ok" if tp["events_per_s"] >= 200_000 else ("MISS" if b >= 256 else "")
                rows.append([f"throughput ({served})", transport, b, "", "", "", f"{tp['events_per_s']:,.0f}", ok])
            client.close()
        results["served_policy"] = served
        if args.only == "all":  # what bounds batched throughput: the wire, or the policy's observe()?
            results["throughput_by_policy"] = []
            specs = [*baseline_names()] + (["learned"] if args.models else [])  # every registered policy
            for spec in specs:
                for next_use in (True, False):
                    client = connect(endpoints["ipc"], tensors, architecture, spec, next_use=next_use)
                    tp = bench_throughput(client, events, 1024, args.throughput_events)
                    served_by = client.served_policy
                    tp.update(policy=spec if served_by == spec else f"{spec} -> {served_by}", next_use=next_use)
                    client.close()
                    results["throughput_by_policy"].append(tp)
                    ok = "ok" if tp["events_per_s"] >= 200_000 else "MISS"
                    rows.append([f"throughput ({tp['policy']}, next_use {'on' if next_use else 'off'})", "ipc",
                                 1024, "", "", "", f"{tp['events_per_s']:,.0f}", ok])

        def make_client(batch: int) -> DaemonClient:
            return connect(endpoints["ipc"], tensors, architecture, args.policy, batch_events=batch)

        overhead = [bench_overhead(make_client, events, b, args.overhead_events, args.compute_us, args.python_us,
                                   args.rounds) for b in (16, 64, 256)]
        results["overhead"] = overhead
    finally:
        for d in daemons.values():
            d.stop()

    print()
    if rows:
        print(markdown_table(["measure", "transport", "events/msg", "median us", "p99 us", "p99.9 us", "events/s",
                              "target"], rows))
        print()
    print(f"added per access on the training thread (us), median of {args.rounds} interleaved rounds:")
    print(markdown_table(
        ["events/batch", "compute (wall)", "inline: CPU", "inline: wall", "helper thread: CPU",
         "helper thread: wall"],
        [[o["batch"], o["compute_us_per_access"], o["inline_cpu_us"], o["inline_wall_us"],
          o["threaded_cpu_us"], o["threaded_wall_us"]] for o in overhead]))
    results["load_average"] = os.getloadavg()
    print(f"load average during the run: {results['load_average']}")
    write_json(args.json, results)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

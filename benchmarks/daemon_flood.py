"""One client floods the daemon; how long does another client wait? (issue 14, F4)

    python benchmarks/daemon_flood.py                          # learned, trained here on the gpt2 sample
    python benchmarks/daemon_flood.py --policy replay --seconds 5
    python benchmarks/daemon_flood.py --chunk-events 100000000 # no round robin: one batch at a time, whole
    python benchmarks/daemon_flood.py --daemon-root /old/checkout   # the daemon of another checkout ("before")

The daemon runs as its own process (`python -m prefetch daemon`). A "victim" client
(this process) says HELLO and sends one-event EVENTS batches, waiting for each COMMANDS
reply: its round trip is what a training job feels. First alone, then while a "flood"
process sends the largest EVENTS batches the wire allows (wire.MAX_EVENTS_PER_BATCH
events each, the gpt2 trace replayed, up to 4 in flight), and in a third phase while
the flood process sends HELLOs with the largest table allowed. Prints the victim's
median / p99 / max round trip per phase, and what the flood got through.

Figures are only comparable on one machine at one time: on a shared, busy box they
are noisy, and the report says how many cores were busy.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread: 2-core box
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import zmq  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, markdown_table, write_json  # noqa: E402
from benchmarks.daemon_latency import free_tcp_endpoint, load_events  # noqa: E402
from predictor.interface import TensorInfo  # noqa: E402
from runtime import wire, wire_decode  # noqa: E402
from runtime.daemon_launch import ping  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT / "datasets" / "samples" / "gpt2" / "train"


def big_table(n: int) -> TensorInfo:
    return TensorInfo(keys=tuple(f"param:flood.{i}" for i in range(n)), kinds=np.zeros(n, np.int8),
                      nbytes=np.full(n, 1 << 20, np.int64), layers=np.full(n, -1, np.int16),
                      modules=("flood",) * n)


def recv(sock: zmq.Socket, timeout_ms: int):
    if not sock.poll(timeout_ms):
        return None
    return wire_decode.decode(sock.recv_multipart())


# -- the flooding process --------------------------------------------------------------------


def flood(endpoint: str, trace: str, policy: str, mode: str, ready, stop, out) -> None:
    """Send max-size EVENTS batches (mode "events") or max-size HELLOs (mode "hello") until `stop`
    is set; `ready` is set once everything is loaded and the flood is about to start."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sent = answered = busy = events = 0
    if mode == "hello":
        hello = wire.Hello(architecture="Flood-0", policy="replay", tensors=big_table(wire.MAX_TENSORS)).encode()
        ready.set()
        while not stop.is_set():
            sock.send_multipart(hello, copy=False)
            sent += 1
            if recv(sock, 30_000) is not None:
                answered += 1
    else:
        ev, info, arch = load_events(Path(trace), wire.MAX_EVENTS_PER_BATCH * 4)
        sock.send_multipart(wire.Hello(architecture=arch, policy=policy, tensors=info).encode(), copy=False)
        ok = recv(sock, 60_000)
        assert isinstance(ok, wire.HelloOk), ok
        batch = wire.MAX_EVENTS_PER_BATCH
        outstanding, pos = 0, 0
        ready.set()
        while not stop.is_set():
            while outstanding < 4:
                chunk = ev[pos:pos + batch]
                pos = (pos + batch) % (len(ev) - batch)
                sent += 1
                sock.send_multipart(wire.Events(session=ok.session, seq=sent, events=chunk).encode(), copy=False)
                outstanding += 1
            msg = recv(sock, 100)
            if msg is None:
                continue
            outstanding -= 1
            if isinstance(msg, wire.Commands):
                answered += 1
                events += batch
            elif isinstance(msg, wire.Error) and msg.code == "busy":
                busy += 1
    out.put({"mode": mode, "sent": sent, "answered": answered, "busy": busy, "events_answered": events})
    sock.close(linger=0)
    ctx.term()


# -- the victim ------------------------------------------------------------------------------


def victim_phase(sock: zmq.Socket, session: int, ev: np.ndarray, seconds: float, seq0: int) -> tuple[list[float], int]:
    """One-event batches, each waited for, for `seconds`: round trips in ms, and timeouts."""
    rtts: list[float] = []
    timeouts = 0
    seq = seq0
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        seq += 1
        frames = wire.Events(session=session, seq=seq, events=ev[seq % len(ev):seq % len(ev) + 1]).encode()
        t0 = time.perf_counter()
        sock.send_multipart(frames, copy=False)
        while True:
            msg = recv(sock, 30_000)
            if msg is None:
                timeouts += 1
                break
            if isinstance(msg, (wire.Commands, wire.Error)) and msg.seq == seq:
                rtts.append((time.perf_counter() - t0) * 1000)
                break
        time.sleep(0.002)  # a training step between accesses; also leaves the CPU to the others
    return rtts, timeouts


def stats(rtts: list[float]) -> dict[str, float]:
    a = np.asarray(rtts or [float("nan")])
    return {"n": len(rtts), "median_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max())}


def train_models(trace: Path, out: Path) -> None:
    from predictor.train import TrainConfig, train

    train([trace], out, TrainConfig(num_threads=1), progress=False, log=lambda *a: None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="learned", help="learned | replay | markov (default learned)")
    ap.add_argument("--models", type=Path, default=None, help="MODEL_DIR for learned (default: train one here)")
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each phase")
    ap.add_argument("--chunk-events", type=int, default=None, help="passed to the daemon (default: its own)")
    ap.add_argument("--daemon-root", type=Path, default=ROOT, help="checkout whose `prefetch daemon` runs")
    ap.add_argument("--phases", default="alone,events,hello", help="which phases to run, comma-separated")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="flood-"))
    models = args.models
    if args.policy == "learned" and models is None:
        models = tmp / "models"
        t = time.perf_counter()
        train_models(args.trace, models)
        print(f"trained a predictor on {args.trace} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    endpoint = free_tcp_endpoint()
    cmd = [sys.executable, "-m", "prefetch", "daemon", "--bind", endpoint]
    if models is not None:
        cmd += ["--models", str(models.resolve())]
    if args.chunk_events is not None:
        cmd += ["--chunk-events", str(args.chunk_events)]
    env = dict(os.environ, PYTHONPATH=str(args.daemon_root.resolve()))
    daemon = subprocess.Popen(cmd, cwd=args.daemon_root, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ctx = zmq.Context()
    results: dict[str, object] = {"machine": machine_info(), "policy": args.policy, "endpoint": endpoint,
                                  "daemon_root": str(args.daemon_root), "chunk_events": args.chunk_events,
                                  "max_events_per_batch": wire.MAX_EVENTS_PER_BATCH, "phases": {}}
    try:
        deadline = time.monotonic() + 60
        while ping(endpoint, timeout_ms=300, context=ctx) is None:
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit("daemon did not start")
        ev, info, arch = load_events(args.trace, 10_000)
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send_multipart(wire.Hello(architecture=arch, policy=args.policy, tensors=info).encode(), copy=False)
        ok = recv(sock, 60_000)
        assert isinstance(ok, wire.HelloOk), ok
        results["served"] = ok.policy
        seq = 0
        rows = []
        for phase in args.phases.split(","):
            proc = None
            mpc = mp.get_context("spawn")
            q, ready, stop = mpc.Queue(), mpc.Event(), mpc.Event()
            if phase != "alone":
                proc = mpc.Process(target=flood, args=(endpoint, str(args.trace), args.policy, phase, ready, stop, q))
                proc.start()
                if not ready.wait(120):
                    raise SystemExit("the flood process did not start")
                time.sleep(0.5)  # the flood is on before we measure
            load0 = os.getloadavg()[0]
            rtts, timeouts = victim_phase(sock, ok.session, ev, args.seconds, seq)
            seq += len(rtts) + timeouts + 1
            fl = None
            if proc is not None:
                stop.set()
                fl = q.get(timeout=120)
                proc.join(60)
            s = stats(rtts)
            results["phases"][phase] = {"victim": s, "victim_timeouts": timeouts, "flood": fl,
                                        "loadavg_1min": load0}
            rows.append([phase, s["n"], f"{s['median_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['max_ms']:.1f}", timeouts,
                         "" if fl is None else f"{fl['answered']}/{fl['sent']} answered, {fl['busy']} busy",
                         f"{load0:.1f}"])
            # drain anything late (e.g. a reply after a timeout)
            while recv(sock, 50) is not None:
                pass
        print(markdown_table(["phase", "victim round trips", "median ms", "p99 ms", "max ms", "timeouts",
                              "flood", "load avg"], rows))
        print(f"\npolicy {args.policy} (served {results['served']}), daemon from {args.daemon_root}, "
              f"chunk_events {args.chunk_events or 'default'}; {os.cpu_count()} cores. "
              "A busy shared machine makes these figures noisy.")
        write_json(args.json, results)
        sock.close(linger=0)
    finally:
        daemon.terminate()
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
        ctx.destroy(linger=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

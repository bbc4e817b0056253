"""The fault suite at benchmark size: hostile messages, damaged files, daemon faults.

    python benchmarks/fault_suite.py                                  # 10k messages, 3 faulted runs
    python benchmarks/fault_suite.py --messages 20000 --fault-runs 5 --json out/bench/faults.json

Four parts, each the tests/faults/ property at a larger size:

  wire       Hypothesis-generated wire messages (valid, damaged, noise: tests/faults/
             wire_strategies.py), each decoded here and sent to a live daemon. A crash is
             any exception other than WireError, a daemon that exits, or one that stops
             answering PING. Daemon RSS is read before and after.
  traces     a sample trace cut at random offsets or with flipped bytes: loads (a prefix,
             or values all in range) or a one-line TraceError; anything else is a crash.
  artifacts  a trained artifact's files cut or flipped (checksums updated so the damage
             reaches the parsers), loaded in a child: a PolicyError or a load; a dead
             child is a crash.
  daemon     learned runs through a daemon that is stopped (SIGSTOP/SIGCONT), killed and
             restarted mid-run (tests/faults/test_fault_daemon.py): each run must equal the
             same job all resident, bit for bit (losses, parameters, optimizer state).

Must hold: crashes 0 everywhere, every faulted run bit-identical.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread: 2-core box
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "faults"))  # the fault suite's strategies and helpers

import torch  # noqa: E402
import zmq  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from benchmarks.common import machine_info, markdown_table, write_json  # noqa: E402
from prefetch.trace_summary import summarize  # noqa: E402
from runtime import wire, wire_decode  # noqa: E402
from runtime.daemon_launch import ping, start_local_daemon  # noqa: E402
from runtime.trace_format import TraceError, load_trace  # noqa: E402

DEFAULT_TRACE = ROOT / "datasets" / "samples" / "gpt2" / "train" / "gpt2-train"
SUFFIXES = (".events.arrow", ".tensors.arrow", ".manifest.json")


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process (Linux /proc), None where unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# -- wire ----------------------------------------------------------------------------------


def fuzz_wire(models: Path, n: int, seed_value: int) -> dict[str, Any]:
    from wire_strategies import any_messages

    endpoint, daemon = start_local_daemon(models)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    out: dict[str, Any] = {"messages": 0, "decoded": 0, "wire_errors": 0, "decoder_crashes": 0,
                           "replies": 0, "daemon_unresponsive": 0, "send_stalls": 0, "examples": []}
    time.sleep(0.5)
    out["daemon_rss_before_bytes"] = rss_bytes(daemon.process.pid)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLOUT)

    def drain() -> None:
        while sock.poll(0, zmq.POLLIN):
            sock.recv_multipart()
            out["replies"] += 1

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @seed(seed_value)
    @given(any_messages(), st.none() | st.integers(0, 40))
    def one(frames: list[bytes], num_tensors: int | None) -> None:
        out["messages"] += 1
        try:
            wire_decode.decode(frames, num_tensors=num_tensors)
            out["decoded"] += 1
        except wire.WireError:
            out["wire_errors"] += 1
        except Exception as exc:  # noqa: BLE001 - the figure this benchmark exists for
            out["decoder_crashes"] += 1
            if len(out["examples"]) < 5:
                out["examples"].append({"frames": [f.hex()[:200] for f in frames], "error": repr(exc),
                                        "where": traceback.format_exc().splitlines()[-3:]})
        if not sock.poll(5000, zmq.POLLOUT):
            out["send_stalls"] += 1
            return
        sock.send_multipart(frames or [b""])
        drain()
        if out["messages"] % 1000 == 0 and ping(endpoint, timeout_ms=3000) is None:
            out["daemon_unresponsive"] += 1

    t0 = time.perf_counter()
    try:
        one()
        time.sleep(0.5)
        drain()
        alive = daemon.alive and ping(endpoint, timeout_ms=3000) is not None
        out["daemon_rss_after_bytes"] = rss_bytes(daemon.process.pid)
    finally:
        sock.close(0)
        ctx.term()
        daemon.stop()
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["daemon_alive_after"] = alive
    out["crashes"] = out["decoder_crashes"] + (0 if alive else 1) + out["daemon_unresponsive"]
    return out


# -- traces --------------------------------------------------------------------------------


def damage_traces(stem: Path, trials: int, seed_value: int) -> dict[str, Any]:
    files = {s: Path(str(stem) + s).read_bytes() for s in SUFFIXES}
    rng = random.Random(seed_value)
    out: dict[str, Any] = {"trials": trials, "loaded": 0, "trace_errors": 0, "crashes": 0, "examples": []}
    work = Path(tempfile.mkdtemp(prefix="fault-traces-"))
    t0 = time.perf_counter()
    try:
        for _ in range(trials):
            which = rng.choice(SUFFIXES)
            data = bytearray(files[which])
            if rng.random() < 0.3:
                data = data[: rng.randrange(len(data))]
            else:
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] ^= rng.randint(1, 255)
            for s, b in files.items():
                (work / ("t" + s)).write_bytes(bytes(data) if s == which else b)
            try:
                trace = load_trace(work / "t")
                summarize(trace)
                trace.managed()
                out["loaded"] += 1
            except TraceError as exc:
                out["trace_errors"] += 1
                if "\n" in str(exc):
                    out["crashes"] += 1
            except Exception as exc:  # noqa: BLE001
                out["crashes"] += 1
                if len(out["examples"]) < 5:
                    out["examples"].append({"file": which, "error": repr(exc)[:300]})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


# -- artifacts -----------------------------------------------------------------------------


def damage_artifacts(models: Path, trials: int, seed_value: int) -> dict[str, Any]:
    from predictor.artifact import META_FILE, MODEL_FILE, TABLE_FILE
    from test_fault_artifacts import LOADER, artifact_dir, damaged_copy, damages

    src = artifact_dir(models)
    rng = random.Random(seed_value)
    work = Path(tempfile.mkdtemp(prefix="fault-artifacts-"))
    folders = []
    share = {MODEL_FILE: trials // 2, TABLE_FILE: trials // 4, META_FILE: trials - trials // 2 - trials // 4}
    for name, n in share.items():
        for i, data in enumerate(damages((src / name).read_bytes(), rng, n)):
            folders.append(damaged_copy(src, work / f"{name}-{i}", name, data))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", LOADER, *map(str, folders)], cwd=ROOT, capture_output=True, errors="replace",
                              text=True, timeout=1200)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    one_line = all("\n" not in r.get("message", "") for r in results)
    return {
        "trials": len(folders),
        "loaded": sum(r["ok"] for r in results),
        "policy_errors": sum(not r["ok"] for r in results),
        "child_exit_code": proc.returncode,
        "crashes": (0 if proc.returncode == 0 else 1) + (len(folders) - len(results)) + (0 if one_line else 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }


# -- daemon faults -------------------------------------------------------------------------


def daemon_faults(models: Path, runs: int) -> dict[str, Any]:
    from test_fault_daemon import FAULTS, all_resident, num_steps, run_with_faults

    want_losses, want_state = all_resident(num_steps(FAULTS))
    work = Path(tempfile.mkdtemp(prefix="fault-daemon-"))
    rows = []
    t0 = time.perf_counter()
    try:
        for rep in range(runs):
            faults = FAULTS[rep % 3:] + FAULTS[:rep % 3]
            losses, state, served = run_with_faults(models, f"ipc://{work}/d{rep}.sock", faults)
            identical = (losses == want_losses and state.keys() == want_state.keys()
                         and all(torch.equal(state[k], want_state[k]) for k in state))
            rows.append({"faults": list(faults), "learned_served_before": served, "bit_identical": identical})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"runs": runs, "faults_per_run": len(FAULTS), "bit_identical": sum(r["bit_identical"] for r in rows),
            "seconds": round(time.perf_counter() - t0, 1), "per_run": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10_000, help="wire messages to generate (default 10000)")
    ap.add_argument("--trace-trials", type=int, default=500, help="damaged traces to load (default 500)")
    ap.add_argument("--artifact-trials", type=int, default=24, help="damaged artifacts to load (default 24)")
    ap.add_argument("--fault-runs", type=int, default=3, help="learned runs with daemon faults (default 3)")
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="trace stem to damage (default: gpt2 sample)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="fault-suite-"))
    try:
        from tests.fixtures.residual_job import train_models

        models = train_models(root)
        results = {
            "wire": fuzz_wire(models, args.messages, args.seed),
            "traces": damage_traces(args.trace, args.trace_trials, args.seed),
            "artifacts": damage_artifacts(models, args.artifact_trials, args.seed),
            "daemon": daemon_faults(models, args.fault_runs),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    w, tr, ar, d = results["wire"], results["traces"], results["artifacts"], results["daemon"]
    mib = lambda b: f"{b / 2**20:.1f}" if b else "?"  # noqa: E731
    print(markdown_table(
        ["part", "tried", "crashes", "detail", "seconds"],
        [
            ["wire messages", w["messages"], w["crashes"],
             f"{w['decoded']} decoded, {w['wire_errors']} WireError, {w['replies']} daemon replies; daemon RSS "
             f"{mib(w['daemon_rss_before_bytes'])} -> {mib(w['daemon_rss_after_bytes'])} MiB", w["seconds"]],
            ["damaged traces", tr["trials"], tr["crashes"], f"{tr['loaded']} loaded, {tr['trace_errors']} TraceError",
             tr["seconds"]],
            ["damaged artifacts", ar["trials"], ar["crashes"], f"{ar['loaded']} loaded, {ar['policy_errors']} PolicyError",
             ar["seconds"]],
            ["daemon faults (runs)", d["runs"], 0 if d["bit_identical"] == d["runs"] else d["runs"] - d["bit_identical"],
             f"{d['bit_identical']}/{d['runs']} bit-identical to all resident; each run: "
             f"{', '.join(d['per_run'][0]['faults']) if d['per_run'] else '-'} (order rotates)", d["seconds"]],
        ],
    ))
    ok = (w["crashes"] == tr["crashes"] == ar["crashes"] == 0 and w["messages"] >= min(args.messages, 10_000)
          and d["bit_identical"] == d["runs"])
    print(f"\n{'PASS' if ok else 'FAIL'}: crashes {w['crashes'] + tr['crashes'] + ar['crashes']}, "
          f"bit-identical runs {d['bit_identical']}/{d['runs']}")
    write_json(args.json, {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
                           "ok": ok, **results})
    if args.json:
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

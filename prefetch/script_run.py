"""The parent side of `prefetch record|run -- COMMAND`: a user's command, launched under our hooks.

    prefetch run --compare --json out/tiny.json -- python examples/train_tiny.py
    prefetch run --policy learned:models/ -- torchrun --nproc-per-node 2 examples/train_ddp.py

`python SCRIPT ARGS` (or `python -m MODULE ARGS`) runs as `python -m LAUNCHER OPTS -- SCRIPT
ARGS`; `torchrun TORCHRUN_OPTS SCRIPT ARGS` runs as `python -m torch.distributed.run
TORCHRUN_OPTS -m LAUNCHER OPTS -- SCRIPT ARGS`, so every rank gets the launcher and the
script's own arguments are untouched. The launcher (runtime.launch to record,
runtime.run_launch to run) writes one file per rank (`.r<rank>` when there are several).

For a learned policy the parent starts one daemon for the node before the ranks, and
passes its ipc endpoint in $PREFETCH_DAEMON_ENDPOINT: every local rank is one session of
it, and a rank whose daemon dies goes on with its local replay (runtime.daemon_policy).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefetch.cli import CommandError
from runtime.defaults import AHEAD_SHARE

TORCHRUN = ("torchrun", "torch.distributed.run")
INTERRUPT_GRACE_S = 60.0
"""How long the parent waits for the ranks to write their reports after a Ctrl-C."""


@dataclass(slots=True)
class LaunchCommand:
    """A user's command split into the launcher prefix it needs and the script part."""

    torchrun_opts: list[str] | None
    """torchrun's own options (None: a plain `python` command, one process)."""
    target: list[str] = field(default_factory=list)
    """SCRIPT ARGS, or -m MODULE ARGS."""

    def argv(self, launcher: str, opts: list[str]) -> list[str]:
        """The command line that runs `target` under `launcher` (a module) with `opts`."""
        if self.torchrun_opts is None:
            return [sys.executable, "-m", launcher, *opts, "--", *self.target]
        return [sys.executable, "-m", "torch.distributed.run", *self.torchrun_opts, "-m", launcher, *opts,
                "--", *self.target]

    @property
    def script(self) -> str:
        return self.target[1] if self.target[0] == "-m" else self.target[0]


def parse_command(command: list[str], verb: str) -> LaunchCommand:
    """CommandError for anything but `python SCRIPT|-m MODULE ...` or `torchrun ... SCRIPT ...`."""
    if not command:
        raise CommandError("nothing to run after --")
    exe = os.path.basename(command[0])
    rest = command[1:]
    if exe.startswith("python") and rest[:2] == ["-m", "torch.distributed.run"]:
        exe, rest = "torchrun", rest[2:]
    if exe == "torchrun":
        return _parse_torchrun(rest, verb)
    if not exe.startswith("python"):
        raise CommandError(f"can only {verb} Python scripts: expected `python SCRIPT ...` or "
                           f"`torchrun ... SCRIPT ...`, got {command[0]!r}")
    if not rest:
        raise CommandError("no script given after python")
    if rest[0] == "-m":
        if len(rest) < 2:
            raise CommandError("python -m needs a module name")
    elif not Path(rest[0]).is_file():
        raise CommandError(f"script {rest[0]} not found")
    return LaunchCommand(None, rest)


def _parse_torchrun(args: list[str], verb: str) -> LaunchCommand:
    from torch.distributed.run import get_args_parser

    actions = get_args_parser()._option_string_actions  # which of torchrun's options take a value
    opts: list[str] = []
    module = False
    i = 0
    while i < len(args) and args[i].startswith("-"):
        tok = args[i]
        name = tok.split("=", 1)[0]
        action = actions.get(name)
        if action is None:
            raise CommandError(f"torchrun option {tok!r} is not one torchrun knows")
        if name in ("-m", "--module"):
            module = True
            i += 1
            continue
        if name in ("--no-python", "--no_python"):
            raise CommandError(f"can only {verb} Python scripts: torchrun {name} runs a non-Python program")
        takes_value = action.nargs != 0 and "=" not in tok
        opts.extend(args[i:i + 1 + takes_value])
        i += 1 + takes_value
    target = args[i:]
    if not target:
        raise CommandError("no training script given to torchrun")
    if module:
        return LaunchCommand(opts, ["-m", *target])
    if not Path(target[0]).is_file():
        raise CommandError(f"script {target[0]} not found")
    return LaunchCommand(opts, target)


def run_child(argv: list[str], env: dict[str, str]) -> int:
    """Run one launch, passing a Ctrl-C on and waiting for the ranks to write their
    reports (subprocess.run would kill them a quarter second later)."""
    proc = subprocess.Popen(argv, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            proc.send_signal(signal.SIGINT)  # usually already had it from the terminal
            return proc.wait(timeout=INTERRUPT_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


def rank_files(path: Path) -> list[Path]:
    """`path` (one process) or its per-rank files `stem.r<N>.suffix`, in rank order."""
    if path.exists():
        return [path]
    found = list(path.parent.glob(f"{path.stem}.r*{path.suffix}"))
    ranked = []
    for p in found:
        tail = p.name[len(path.stem) + 2:len(p.name) - len(path.suffix)]
        if tail.isdigit():
            ranked.append((int(tail), p))
    return [p for _, p in sorted(ranked)]


def compare_states(reference: dict[str, Any], other: dict[str, Any], max_mismatches: int = 5) -> dict[str, Any]:
    """The bit-identity keys of `prefetch run` from two `--state-out` files of one rank."""
    ref, got = reference["state"], other["state"]
    diff = [k for k in ref if got.get(k) != ref[k]] + [k for k in got if k not in ref]
    return {
        "losses_identical": reference["loss_digests"] == other["loss_digests"] and bool(other["loss_digests"]),
        "params_identical": bool(ref) and not any(k.startswith("model:") for k in diff),
        "optimizer_state_identical": bool(ref) and not any(k.startswith("optimizer:") for k in diff),
        "state_mismatches": diff[:max_mismatches],
    }


def run_script(command: list[str], *, policy: str, budget: str, lookahead: int, link_ratio: float, warmup: int,
               device: str, daemon: str | None, json_out: Path | None, timeline: Path | None, compare: bool,
               threads: int, seed: int | None = None, name: str | None = None,
               guard: bool = True, optimizer_placement: str = "auto",
               ahead_share: float = AHEAD_SHARE, routers: str = "auto",
               early_step: bool = True) -> tuple[int, list[dict[str, Any]]]:
    """Run `command` prefetched (and all resident first with `compare`); (exit code, per-rank reports)."""
    cmd = parse_command(command, "run")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    root = str(Path(__file__).resolve().parent.parent)  # the launcher importable in every rank
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    local_daemon = None
    if policy.startswith("learned:") and daemon is None:
        from runtime.daemon_launch import start_local_daemon

        daemon, local_daemon = start_local_daemon(policy.partition(":")[2])  # one per node, for every rank
    if daemon is not None:
        env["PREFETCH_DAEMON_ENDPOINT"] = daemon
    opts = ["--policy", policy, "--budget", str(budget), "--lookahead", str(lookahead), "--link-ratio",
            str(link_ratio), "--warmup", str(warmup), "--device", device, "--optimizer", optimizer_placement,
            "--ahead-share", str(ahead_share), "--routers", routers]
    if seed is not None:
        opts += ["--seed", str(seed)]
    if not guard:
        opts += ["--no-guard"]
    if not early_step:
        opts += ["--no-early-step"]
    if name:
        opts += ["--name", name]
    if timeline is not None:
        opts += ["--timeline", str(timeline)]
    try:
        with tempfile.TemporaryDirectory(prefix="prefetch-run-") as tmp:
            report_path, state_path, ref_path = Path(tmp, "report.json"), Path(tmp, "state.json"), Path(tmp, "ref.json")
            if compare:
                code = run_child(cmd.argv("runtime.run_launch", [*opts, "--resident", "--state-out", str(ref_path)]), env)
                if code != 0:
                    print(f"prefetch run: the all-resident run of {cmd.script} exited with code {code}; "
                          "not running it prefetched", file=sys.stderr)
                    return code, []
            extra = ["--json", str(report_path)] + (["--state-out", str(state_path)] if compare else [])
            code = run_child(cmd.argv("runtime.run_launch", [*opts, *extra]), env)
            reports = [json.loads(p.read_text()) for p in rank_files(report_path)]
            if compare:
                refs = {json.loads(p.read_text())["rank"]: json.loads(p.read_text()) for p in rank_files(ref_path)}
                states = {json.loads(p.read_text())["rank"]: json.loads(p.read_text()) for p in rank_files(state_path)}
                for r in reports:
                    ref, got = refs.get(r["rank"]), states.get(r["rank"])
                    if ref is None or got is None:
                        r.update(losses_identical=None, params_identical=None, optimizer_state_identical=None)
                        continue
                    r.update(compare_states(ref, got))
                    times = ref["step_times_s"][warmup:]
                    if times and r.get("step_time_s"):
                        import statistics

                        r["baseline_step_time_s"] = statistics.median(times)
                        r["slowdown"] = r["step_time_s"] / r["baseline_step_time_s"]
                        r["slowdown_note"] = "median prefetched step / median step of a separate all-resident run"
    finally:
        if local_daemon is not None:
            local_daemon.stop()
    if json_out is not None:
        from runtime.run_launch import per_rank

        for r in reports:
            out = per_rank(json_out, r["rank"], r["world_size"])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(r, indent=2, default=str))
    return code, reports

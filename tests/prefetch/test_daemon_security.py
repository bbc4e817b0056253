"""Daemon security: CURVE for remote binds, escaped logs, replies that reveal nothing, bad artifacts.

    python -m pytest tests/prefetch/test_daemon_security.py -q

Real sockets on loopback with random ports, linger=0 and receive timeouts throughout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zmq

from predictor.interface import NO_PREDICTION, BasePolicy, TensorInfo
from prefetch.daemon_config import DaemonConfig, generate_keys
from prefetch.daemon_sessions import PolicyChoice
from prefetch.daemon_thread import run_daemon_in_thread
from runtime import wire, wire_decode
from runtime.daemon_client import DaemonClient, DaemonClientConfig
from runtime.daemon_launch import (
    AUTHORIZED_CLIENTS,
    CLIENT_SECRET,
    SERVER_PUBLIC,
    SERVER_SECRET,
    check_endpoint,
    ping,
)
from runtime.wire import EVENT_DTYPE, log_field

RECV_TIMEOUT_MS = 3000
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


class NextId(BasePolicy):
    name = "next"

    def start(self, tensors: TensorInfo) -> None:
        self.n = tensors.num_tensors

    def observe(self, step, micro_step, phase, access, tensor_id):
        return [(tensor_id + 1) % self.n]

    def predicted_next_use(self, tensor_id):
        return NO_PREDICTION


def factory(spec, *, architecture, tensors, lookahead):
    policy = NextId()
    policy.start(tensors)
    return PolicyChoice(policy, served="next", fallback_reason=None if spec == "next" else "because",
                        detail=None if spec == "next" else f"{spec} for {architecture} unavailable")


def table(n: int) -> TensorInfo:
    return TensorInfo(keys=tuple(f"param:w{i}" for i in range(n)), kinds=np.zeros(n, np.int8),
                      nbytes=np.full(n, 64, np.int64), layers=np.full(n, -1, np.int16), modules=("m",) * n)


def dealer(ctx, endpoint, curve=None):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    for opt, value in (curve or {}).items():
        setattr(s, opt, value)
    s.connect(endpoint)
    return s


def recv(sock, timeout_ms=RECV_TIMEOUT_MS):
    if not sock.poll(timeout_ms):
        return None
    return wire_decode.decode(sock.recv_multipart())


def hello(sock, architecture="Arch-A", policy="next", n=4):
    sock.send_multipart(wire.Hello(architecture=architecture, policy=policy, tensors=table(n)).encode(), copy=False)
    return recv(sock)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A --gen-keys folder, and a client folder holding only what a client gets (server.key, client.key_secret)."""
    root = tmp_path_factory.mktemp("keys")
    generate_keys(root / "daemon")
    client = root / "client"
    client.mkdir()
    for name in (SERVER_PUBLIC, CLIENT_SECRET):
        shutil.copy(root / "daemon" / name, client / name)
    return root / "daemon", client


# -- remote mode requires CURVE ---------------------------------------------------------------


def test_allow_remote_without_curve_keys_is_refused():
    """--allow-remote without --curve-keys: ValueError naming both flags (no socket opened)."""
    with pytest.raises(ValueError, match="--allow-remote requires --curve-keys"):
        DaemonConfig(bind="tcp://0.0.0.0:5555", allow_remote=True)


def test_cli_refuses_remote_without_keys_in_one_line():
    """`prefetch daemon --allow-remote` without keys exits non-zero with one line, no traceback."""
    out = subprocess.run([sys.executable, "-m", "prefetch", "daemon", "--bind", "tcp://0.0.0.0:0", "--allow-remote"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "--curve-keys" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_gen_keys_writes_private_secrets_and_refuses_to_overwrite(tmp_path):
    """--gen-keys: secret files 0600, folder 0700, one authorized client; a second run refuses."""
    paths = generate_keys(tmp_path / "k")
    assert (paths["server_secret"].stat().st_mode & 0o777) == 0o600
    assert (paths["client_secret"].stat().st_mode & 0o777) == 0o600
    assert ((tmp_path / "k").stat().st_mode & 0o777) == 0o700
    assert [p.name for p in (tmp_path / "k" / AUTHORIZED_CLIENTS).iterdir()] == ["client.key"]
    with pytest.raises(ValueError, match="exists already"):
        generate_keys(tmp_path / "k")


def test_curve_keys_folder_is_checked_up_front(tmp_path):
    """A world-readable secret key or no authorized client refuses the config, naming the file."""
    generate_keys(tmp_path / "k")
    secret = tmp_path / "k" / SERVER_SECRET
    os.chmod(secret, 0o644)
    with pytest.raises(ValueError, match=f"{SERVER_SECRET}: the secret key is readable by other users"):
        DaemonConfig(bind="tcp://127.0.0.1:*", curve_keys=str(tmp_path / "k"))
    os.chmod(secret, 0o600)
    for p in (tmp_path / "k" / AUTHORIZED_CLIENTS).iterdir():
        p.unlink()
    with pytest.raises(ValueError, match="no client public keys"):
        DaemonConfig(bind="tcp://127.0.0.1:*", curve_keys=str(tmp_path / "k"))
    with pytest.raises(ValueError, match="no such folder"):
        DaemonConfig(bind="tcp://127.0.0.1:*", curve_keys=str(tmp_path / "nope"))


def test_curve_daemon_serves_authorized_clients_only(ctx, keys, tmp_path):
    """With CURVE: a client holding an authorized keypair gets served; one without keys, or with a
    keypair the daemon does not list, gets no answer at all (not even PONG)."""
    daemon_dir, client_dir = keys
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=10, curve_keys=str(daemon_dir)),
                             policy_factory=factory, context=ctx)
    try:
        info = ping(d.endpoint, timeout_ms=RECV_TIMEOUT_MS, context=ctx, curve_keys=client_dir)
        assert info is not None and info["service"] == "prefetch-daemon"
        assert ping(d.endpoint, timeout_ms=300, context=ctx) is None  # plain client: no handshake
        stranger = tmp_path / "stranger"
        generate_keys(stranger)  # a valid keypair, but not in the daemon's authorized_clients
        shutil.copy(daemon_dir / SERVER_PUBLIC, stranger / SERVER_PUBLIC)
        assert ping(d.endpoint, timeout_ms=300, context=ctx, curve_keys=stranger) is None
        c = DaemonClient(DaemonClientConfig(endpoint=d.endpoint, architecture="Arch-A", policy="next",
                                            curve_keys=str(client_dir)), table(4), context=ctx).start()
        try:
            assert c.wait_connected(5.0) and c.served_policy == "next"
            c.send_events([(0, 0, 0, 0, 1)])
            assert c.wait(RECV_TIMEOUT_MS)
            cmds = c.poll_commands()
            assert [cmd.tensor_ids.tolist() for cmd in cmds] == [[2]]
        finally:
            c.close()
    finally:
        d.stop()


def test_client_config_names_a_missing_key_file(tmp_path):
    """A client curve_keys folder without client.key_secret: ValueError naming the file."""
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match=SERVER_PUBLIC):
        DaemonClientConfig(endpoint="tcp://10.0.0.1:5555", architecture="A", curve_keys=str(tmp_path / "c"))


@pytest.mark.parametrize("endpoint", ["ipc://@prefetch-abstract", "ipc://@x"])
def test_abstract_ipc_is_refused_without_curve(endpoint):
    """ipc://@NAME (no file permissions: any local user could connect) is refused unless authenticated."""
    with pytest.raises(ValueError, match="abstract ipc"):
        DaemonConfig(bind=endpoint)
    check_endpoint(endpoint, authenticated=True)


def test_ipc_socket_file_is_private(ctx, tmp_path):
    """The daemon's ipc socket file is mode 0600 whatever the umask: other users cannot connect."""
    old = os.umask(0)
    try:
        d = run_daemon_in_thread(DaemonConfig(bind=f"ipc://{tmp_path}/d.sock", poll_ms=10), policy_factory=factory,
                                 context=ctx)
    finally:
        os.umask(old)
    try:
        assert ((tmp_path / "d.sock").stat().st_mode & 0o777) == 0o600
    finally:
        d.stop()


# -- logs and replies ------------------------------------------------------------------------


def test_log_field_escapes_newlines_and_ansi():
    """log_field turns control characters into visible escapes and cuts long values."""
    assert log_field("a\nb\x1b[31mc\r") == "a\\nb\\x1b[31mc\\r"
    assert log_field("x" * 1000).endswith("...[cut]") and len(log_field("x" * 1000)) < 220


def test_architecture_string_cannot_forge_a_log_line(ctx, caplog):
    """An architecture with a newline and ANSI escapes is logged escaped, on one line."""
    evil = "Arch\n2026-01-01 00:00:00 prefetch.daemon WARNING all good \x1b[2J\x1b[31m"
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=10), policy_factory=factory,
                             context=ctx)
    try:
        with caplog.at_level(logging.WARNING, logger="prefetch.daemon"):
            s = dealer(ctx, d.endpoint)
            ok = hello(s, architecture=evil, policy="learned\n\x1b[0m")
            assert isinstance(ok, wire.HelloOk)
    finally:
        d.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "prefetch.daemon"]
    assert any("Arch\\n2026" in line for line in lines)  # logged, escaped
    for line in lines:
        assert "\n" not in line and "\x1b" not in line and "\r" not in line


def test_fallback_detail_is_logged_and_only_the_public_reason_sent(ctx, caplog):
    """HELLO_OK carries the factory's public reason; its detail (paths, names) stays in the log."""
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=10), policy_factory=factory,
                             context=ctx)
    try:
        with caplog.at_level(logging.WARNING, logger="prefetch.daemon"):
            ok = hello(dealer(ctx, d.endpoint), policy="learned")
    finally:
        d.stop()
    assert ok.fallback_reason == "because"
    assert any("learned for Arch-A unavailable" in r.getMessage() for r in caplog.records)


# -- bad artifacts: fallback with a reason, never ERROR internal ------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A MODEL_DIR trained on a small synthetic static trace, and that trace."""
    from tests.fixtures.synthetic_traces import SyntheticConfig, write_synthetic_trace
    from predictor.train import TrainConfig, train
    from runtime.trace_format import load_trace

    root = tmp_path_factory.mktemp("learned")
    stem = write_synthetic_trace(root / "trace", SyntheticConfig.of_kind("static"), steps=4, seed=0, name="static")
    train([root / "trace"], root / "models", TrainConfig(num_threads=1), progress=False, log=lambda *a: None)
    return root / "models", load_trace(stem)


def _damage(folder: Path, how: str) -> None:
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    if how == "truncated":
        data = (folder / "model.txt").read_bytes()
        data = data[: len(data) // 2]
        (folder / "model.txt").write_bytes(data)
        meta["files"]["model.txt"]["sha256"] = hashlib.sha256(data).hexdigest()
    elif how == "files-list":
        meta["files"] = [1]
    elif how == "features-null":
        meta["features"] = None
    elif how == "nan-threshold":
        meta["threshold"] = float("nan")
    elif how == "no-files":
        del meta["files"]
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("how,file", [("truncated", "model.txt"), ("files-list", "meta.json"),
                                      ("features-null", "meta.json"), ("nan-threshold", "meta.json"),
                                      ("no-files", "meta.json")])
def test_damaged_artifact_means_fallback_with_a_named_reason(ctx, trained, tmp_path, how, file):
    """A damaged artifact: HELLO_OK with the fallback and a reason naming the file, no path, no crash;
    the session then serves events."""
    models, trace = trained
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    _damage(next(copy.iterdir()), how)
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=10, models_dir=str(copy)), context=ctx)
    try:
        info = TensorInfo.from_table(trace.tensors)
        s = dealer(ctx, d.endpoint)
        s.send_multipart(wire.Hello(architecture=trace.architecture, policy="learned", tensors=info).encode(),
                         copy=False)
        ok = recv(s)
        assert isinstance(ok, wire.HelloOk), ok
        assert ok.policy == "replay" and f"failed validation ({file}: " in ok.fallback_reason
        assert str(tmp_path) not in ok.fallback_reason
        ev = np.zeros(4, dtype=EVENT_DTYPE)
        s.send_multipart(wire.Events(session=ok.session, seq=1, events=ev).encode(), copy=False)
        assert isinstance(recv(s), wire.Commands)
    finally:
        d.stop()


def test_two_artifacts_for_one_architecture_fall_back_naming_the_problem(ctx, trained, tmp_path):
    """Two folders for the client's architecture: fallback, the reason says so (the log names both)."""
    models, trace = trained
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    folder = next(copy.iterdir())
    shutil.copytree(folder, copy / "twin")
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=10, models_dir=str(copy)), context=ctx)
    try:
        s = dealer(ctx, d.endpoint)
        s.send_multipart(wire.Hello(architecture=trace.architecture, policy="learned",
                                    tensors=TensorInfo.from_table(trace.tensors)).encode(), copy=False)
        ok = recv(s)
        assert ok.policy == "replay" and "2 folders hold a predictor for this architecture" in ok.fallback_reason
        assert "twin" not in ok.fallback_reason
    finally:
        d.stop()


def test_any_loader_failure_falls_back_without_details(trained, tmp_path, monkeypatch):
    """Not only PolicyError: a loader that raises anything (a bug) still means fallback, a public reason."""
    import predictor.artifact
    from prefetch.daemon_sessions import make_policy_factory

    models, trace = trained
    copy = tmp_path / "models"
    shutil.copytree(models, copy)

    def broken(*args, **kwargs):
        raise IndexError(f"secret detail {copy}")

    monkeypatch.setattr(predictor.artifact, "load_artifact", broken)  # stands in for a bug in the loader
    choice = make_policy_factory(copy)("learned", architecture=trace.architecture,
                                       tensors=TensorInfo.from_table(trace.tensors), lookahead=8)
    assert choice.served == "replay" and "IndexError" in choice.fallback_reason
    assert str(copy) not in choice.fallback_reason and "secret detail" in choice.detail


def test_client_escapes_what_a_daemon_says_in_its_log(ctx, caplog):
    """A hostile daemon's fallback_reason (newline, ANSI) reaches the training job's log escaped."""
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    c = DaemonClient(DaemonClientConfig(endpoint=f"tcp://127.0.0.1:{port}", architecture="A", policy="learned"),
                     table(4), context=ctx).start()
    try:
        assert router.poll(RECV_TIMEOUT_MS)
        ident = router.recv_multipart()[0]
        evil = "ok\n2026-01-01 runtime WARNING forged \x1b[2J"
        router.send_multipart([ident, *wire.HelloOk(session=7, policy="replay\x1b[31m", requested="learned",
                                                    fallback_reason=evil, num_tensors=4).encode()])
        with caplog.at_level(logging.WARNING, logger="runtime.daemon_client"):
            assert c.wait_connected(5.0)
        lines = [r.getMessage() for r in caplog.records if r.name == "runtime.daemon_client"]
        assert any("forged" in line for line in lines)
        assert all("\n" not in line and "\x1b" not in line for line in lines)
    finally:
        c.close()
        router.close(linger=0)


def test_daemon_policy_reaches_a_curve_daemon_with_keys_from_the_environment(ctx, keys, monkeypatch):
    """runtime's DaemonPolicy (what PrefetchConfig(daemon=..., daemon_keys=...) builds) connects to a
    CURVE daemon with PREFETCH_DAEMON_KEYS; without keys it falls back to its local replay."""
    from runtime.daemon_policy import DaemonPolicy

    daemon_dir, client_dir = keys
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=10, curve_keys=str(daemon_dir)),
                             policy_factory=factory)
    try:
        monkeypatch.setenv("PREFETCH_DAEMON_KEYS", str(client_dir))
        pol = DaemonPolicy("learned:unused", architecture="Arch-A", endpoint=d.endpoint, lookahead=8,
                           tensors_fn=lambda: table(4), connect_timeout_s=5.0)
        try:
            assert pol.served_by == "next" and pol.client.connected
        finally:
            pol.close()
        monkeypatch.delenv("PREFETCH_DAEMON_KEYS")
        plain = DaemonPolicy("learned:unused", architecture="Arch-A", endpoint=d.endpoint, lookahead=8,
                             tensors_fn=lambda: table(4), connect_timeout_s=0.5)
        try:
            assert not plain.client.connected and "local" in plain.served_by
        finally:
            plain.close()
    finally:
        d.stop()

"""The training process's side of the daemon: check an endpoint, load client keys, ping,
and start a local daemon.

    endpoint, handle = start_local_daemon("models/")   # `python -m prefetch daemon ...`, PONG awaited
    ...
    handle.stop()

The daemon itself (prefetch/daemon.py) sits a floor above the runtime (docs/architecture.md,
"Floors"): the runtime reaches it only through the wire format (runtime/wire.py) and, to
start one, a subprocess (`python -m prefetch daemon`), never an import. The daemon imports
what it shares with its clients from here: the endpoint rule, the key files of
`prefetch daemon --gen-keys DIR` and how a certificate is read, the default fallback policy.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from runtime import wire, wire_decode
from runtime.wire import WireError

DEFAULT_FALLBACK = "replay"
IPC_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
SERVER_SECRET = "server.key_secret"  # files of `prefetch daemon --gen-keys DIR` (zmq.auth certificates)
SERVER_PUBLIC = "server.key"
CLIENT_SECRET = "client.key_secret"
AUTHORIZED_CLIENTS = "authorized_clients"


def check_endpoint(endpoint: str, *, allow_remote: bool = False, authenticated: bool = False) -> None:
    """Raise ValueError unless `endpoint` is an ipc:// path, inproc:// or a loopback tcp://
    address (any tcp address with allow_remote). Without CURVE (`authenticated`) the
    daemon takes no credentials, so it must stay reachable by this user only: an
    abstract ipc endpoint (ipc://@NAME, Linux) has no file permissions, any local user
    could connect, and is refused unless authenticated."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or not rest:
        raise ValueError(f"endpoint {endpoint!r}: expected ipc://PATH, inproc://NAME or tcp://HOST:PORT")
    if scheme == "ipc" and len(rest.encode()) > IPC_PATH_MAX:
        raise ValueError(f"endpoint {endpoint!r}: ipc paths are limited to {IPC_PATH_MAX} bytes; use a shorter "
                         "folder (e.g. TMPDIR=/tmp)")
    if scheme == "ipc" and rest.startswith("@") and not authenticated:
        raise ValueError(f"endpoint {endpoint!r}: an abstract ipc socket has no file permissions (any local user "
                         "could connect); use an ipc:// path, or --curve-keys DIR")
    if scheme in ("ipc", "inproc"):
        return
    if scheme != "tcp":
        raise ValueError(f"endpoint {endpoint!r}: transport {scheme!r} not supported (use ipc, tcp or inproc)")
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not port:
        raise ValueError(f"endpoint {endpoint!r}: expected tcp://HOST:PORT")
    if allow_remote:
        return
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False  # '*', an interface name or a host name
    if not loopback:
        raise ValueError(
            f"endpoint {endpoint!r} is not loopback: the daemon binds only to 127.0.0.1, [::1], localhost or "
            "ipc:// unless you pass --allow-remote (which requires --curve-keys DIR)"
        )


# -- CURVE keys ---------------------------------------------------------------------------


def load_cert(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret or None) of a ZeroMQ certificate file, with a one-line ValueError naming
    it when it is missing, not a certificate, or (`secret`) holds no secret key."""
    import zmq.auth

    if not path.is_file():
        raise ValueError(f"{path}: no such key file (make keys with `prefetch daemon --gen-keys DIR`)")
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a ZeroMQ certificate ({exc})") from None
    if secret and not secret_key:
        raise ValueError(f"{path}: holds no secret key")
    return public, secret_key


def load_client_keys(folder: str | os.PathLike[str]) -> dict[str, bytes]:
    """The keys a client needs from a folder holding server.key (the daemon's public key)
    and client.key_secret (this client's keypair): curve_serverkey, curve_publickey,
    curve_secretkey (Z85 bytes)."""
    root = Path(folder)
    server_public, _ = load_cert(root / SERVER_PUBLIC, secret=False)
    client_public, client_secret = load_cert(root / CLIENT_SECRET, secret=True)
    assert client_secret is not None
    return {"curve_serverkey": server_public, "curve_publickey": client_public, "curve_secretkey": client_secret}


# -- reaching and starting a daemon -------------------------------------------------------


def ping(endpoint: str, *, timeout_ms: int = 500, context: zmq.Context | None = None,
         curve_keys: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The daemon's PONG info, or None if nothing answers within timeout_ms.
    `curve_keys`: a folder with server.key and client.key_secret, for a CURVE daemon."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve_keys is not None:
        for opt, value in load_client_keys(curve_keys).items():
            setattr(sock, opt, value)
    try:
        sock.connect(endpoint)
        sock.send_multipart(wire.Ping(seq=1).encode())
        deadline = time.monotonic() + timeout_ms / 1000
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(max(1, int(left * 1000))):
                return None
            try:
                msg = wire_decode.decode(sock.recv_multipart(zmq.NOBLOCK))
            except WireError:
                continue
            if isinstance(msg, wire.Pong):
                return msg.info
        return None
    finally:
        sock.close(linger=0)


class LocalDaemon:
    """A daemon subprocess (`python -m prefetch daemon ...`) started by start_local_daemon."""

    def __init__(self, process: subprocess.Popen, endpoint: str):
        self.process = process
        self.endpoint = endpoint

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, wait, then SIGKILL if needed. Idempotent; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        if self.endpoint.startswith("ipc://"):
            try:
                os.unlink(self.endpoint[len("ipc://"):])
            except OSError:
                pass
        return self.process.returncode

    def __enter__(self) -> "LocalDaemon":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_ipc_endpoint() -> str:
    """A fresh ipc endpoint in the temp folder, unique to this process and call."""
    return f"ipc://{tempfile.gettempdir()}/prefetch-{os.getpid()}-{secrets.token_hex(4)}.sock"


def start_local_daemon(
    models_dir: str | os.PathLike[str] | None,
    *,
    endpoint: str | None = None,
    policy_fallback: str = DEFAULT_FALLBACK,
    timeout_s: float = 20.0,
    extra_args: tuple[str, ...] = (),
) -> tuple[str, LocalDaemon]:
    """Spawn `python -m prefetch daemon --bind ENDPOINT --models DIR` and wait until it
    answers PING. Returns (endpoint, handle); `handle.stop()` ends it (call it at exit)."""
    endpoint = endpoint or local_ipc_endpoint()
    check_endpoint(endpoint)
    cmd = [sys.executable, "-m", "prefetch", "daemon", "--bind", endpoint, "--policy-fallback", policy_fallback]
    if models_dir is not None:
        cmd += ["--models", str(Path(models_dir).resolve())]
    cmd += list(extra_args)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)  # the project root: `prefetch` importable as-is
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    handle = LocalDaemon(proc, endpoint)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise RuntimeError(f"prefetch daemon exited with code {proc.returncode} before answering: {err[-2000:]}")
        if ping(endpoint, timeout_ms=200) is not None:
            _drain_stderr(proc)
            return endpoint, handle
    handle.stop()
    raise TimeoutError(f"prefetch daemon on {endpoint} did not answer within {timeout_s:g} s")


def _drain_stderr(proc: subprocess.Popen) -> None:
    """Forward the daemon's stderr to ours on a daemon thread, so a full pipe never blocks it."""
    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write("[prefetch daemon] " + line.decode(errors="replace"))

    threading.Thread(target=pump, name="prefetch-daemon-stderr", daemon=True).start()

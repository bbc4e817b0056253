"""The daemon's configuration: its limits (`DaemonConfig`, checked when made), its default
endpoint, and its CURVE keys (made by `prefetch daemon --gen-keys`, checked before bind)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from predictor.policies import baseline_names
from runtime import wire
from runtime.daemon_launch import AUTHORIZED_CLIENTS, DEFAULT_FALLBACK, SERVER_SECRET, check_endpoint, load_cert


FALLBACK_CHOICES = (*baseline_names(), "error")  # the registry's policies without a model; "error": refuse


def default_endpoint() -> str:
    """A per-user ipc endpoint in the temp folder (loopback by construction)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return f"ipc://{tempfile.gettempdir()}/prefetch-daemon-{uid}.sock"


# -- the configuration --------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class DaemonConfig:
    """Where and how the daemon serves, and the bounds that keep it small and fair."""

    bind: str = field(default_factory=default_endpoint)
    """ZeroMQ endpoint: ipc://PATH, tcp://127.0.0.1:PORT (PORT * picks a free one), inproc://NAME."""
    models_dir: str | None = None
    """MODEL_DIR of `prefetch train`, for `learned` policies."""
    policy_fallback: str = DEFAULT_FALLBACK
    """Served when a learned predictor is missing for a client's architecture; "error" refuses."""
    allow_remote: bool = False
    """Allow a non-loopback tcp bind; requires `curve_keys`."""
    curve_keys: str | None = None
    """Folder of `prefetch daemon --gen-keys`: server.key_secret, and authorized_clients/*.key
    (the public keys of the clients let in). Sets ZeroMQ CURVE on the socket."""
    session_idle_s: float = 600.0
    """A session with no message for this long is dropped (the client re-HELLOs)."""
    max_sessions: int = 64
    """More sessions evict the least recently active one."""
    max_total_tensors: int = 1 << 20
    """Tensor-table rows over all sessions (each costs a policy some tens of bytes); a HELLO
    or TENSORS past it evicts the least recently active other sessions."""
    max_queued_events: int = 2 * wire.MAX_EVENTS_PER_BATCH
    """Events one session may have waiting to be worked off; beyond it a batch gets ERROR busy."""
    chunk_events: int = 128
    """Events worked off per busy session per round: bounds how long one client delays another."""
    max_message_bytes: int = 32 << 20
    """Larger messages are refused by the socket (zmq MAXMSGSIZE)."""
    rcvhwm: int = 64
    """Messages libzmq buffers per connection before it stops reading from it (back pressure)."""
    poll_ms: int = 100
    """Longest sleep in poll: bounds how late a stop request or an idle sweep is noticed."""

    def __post_init__(self) -> None:
        check_endpoint(self.bind, allow_remote=self.allow_remote, authenticated=self.curve_keys is not None)
        if self.allow_remote and self.curve_keys is None:
            raise ValueError("--allow-remote requires --curve-keys DIR: a remote daemon must authenticate its "
                             "clients (make keys with `prefetch daemon --gen-keys DIR`)")
        if self.curve_keys is not None:
            if not zmq.has("curve"):
                raise ValueError("--curve-keys: this libzmq was built without CURVE support (zmq.has('curve') is "
                                 "False); install a pyzmq wheel with libsodium/tweetnacl")
            load_server_keys(self.curve_keys)  # fails now, with the file's name, rather than at bind
        if self.policy_fallback not in FALLBACK_CHOICES:
            raise ValueError(f"policy_fallback {self.policy_fallback!r}: choose from {', '.join(FALLBACK_CHOICES)}")
        if not self.session_idle_s > 0:
            raise ValueError(f"session_idle_s must be > 0, got {self.session_idle_s}")
        for name in ("max_sessions", "max_total_tensors", "max_queued_events", "chunk_events", "rcvhwm"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if not 1 <= self.poll_ms <= 10_000:
            raise ValueError(f"poll_ms must be in [1, 10000], got {self.poll_ms}")


# -- CURVE keys ----------------------------------------------------------------------------


def generate_keys(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Write a server keypair, one client keypair, and authorize that client, under
    `folder` (created, mode 0700; secret files 0600). Refuses to overwrite a server key.
    Copy server.key (public) and client.key_secret to the machine of the training job."""
    import zmq.auth

    root = Path(folder)
    if (root / SERVER_SECRET).exists():
        raise ValueError(f"--gen-keys {root}: {SERVER_SECRET} exists already; not overwriting keys")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    server_public, server_secret = zmq.auth.create_certificates(str(root), "server")
    client_public, client_secret = zmq.auth.create_certificates(str(root), "client")
    for secret in (server_secret, client_secret):
        os.chmod(secret, 0o600)
    authorized = root / AUTHORIZED_CLIENTS
    authorized.mkdir(exist_ok=True)
    (authorized / "client.key").write_bytes(Path(client_public).read_bytes())
    return {"server_public": Path(server_public), "server_secret": Path(server_secret),
            "client_public": Path(client_public), "client_secret": Path(client_secret), "authorized": authorized}


def load_server_keys(folder: str | os.PathLike[str]) -> tuple[bytes, bytes, Path]:
    """(public, secret, authorized_clients folder) of a --curve-keys folder, checked: the
    secret key file must not be readable by others, and at least one client is authorized."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--curve-keys {root}: no such folder (make one with `prefetch daemon --gen-keys DIR`)")
    path = root / SERVER_SECRET
    public, secret = load_cert(path, secret=True)
    if hasattr(os, "getuid") and path.stat().st_mode & 0o077:
        raise ValueError(f"{path}: the secret key is readable by other users; chmod 600 it")
    authorized = root / AUTHORIZED_CLIENTS
    if not authorized.is_dir() or not any(authorized.glob("*.key")):
        raise ValueError(f"--curve-keys {root}: no client public keys in {AUTHORIZED_CLIENTS}/ (*.key); without "
                         "them nobody could connect")
    assert secret is not None
    return public, secret, authorized

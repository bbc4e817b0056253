"""`prefetch daemon`: serve prefetch commands to training jobs over ZeroMQ.

    prefetch daemon --bind ipc:///tmp/prefetch.sock --models models/
    prefetch daemon --gen-keys keys/                  # CURVE keys for a remote daemon
    prefetch daemon --bind tcp://0.0.0.0:5555 --allow-remote --curve-keys keys/ --models models/
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from prefetch.daemon_config import FALLBACK_CHOICES, DaemonConfig, default_endpoint
    from runtime.daemon_launch import DEFAULT_FALLBACK

    defaults = DaemonConfig.__dataclass_fields__  # one place for the defaults: the config
    p = sub.add_parser(
        "daemon",
        help="serve prefetch commands to training jobs (ZeroMQ, one session per client)",
        description="Serve prefetch commands to training jobs: each client says hello with its architecture and "
        "tensor table, streams access events, and gets the ids to prefetch. Binds to loopback or ipc only "
        "unless --allow-remote, which requires ZeroMQ CURVE keys (--curve-keys; make them with --gen-keys). "
        "Stops cleanly on SIGINT/SIGTERM.",
    )
    p.add_argument("--bind", default=default_endpoint(),
                   help="ZeroMQ endpoint: ipc://PATH or tcp://127.0.0.1:PORT (default %(default)s)")
    p.add_argument("--models", default=None, metavar="DIR", help="MODEL_DIR of `prefetch train` for learned policies")
    p.add_argument("--policy-fallback", default=DEFAULT_FALLBACK, choices=FALLBACK_CHOICES,
                   help="served when no usable predictor matches a client's architecture; 'error' refuses "
                        "(default %(default)s)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback tcp bind (requires --curve-keys)")
    p.add_argument("--curve-keys", default=None, metavar="DIR",
                   help="ZeroMQ CURVE: DIR/server.key_secret is the daemon's keypair, DIR/authorized_clients/*.key "
                        "the clients let in (clients need server.key and their client.key_secret)")
    p.add_argument("--gen-keys", default=None, metavar="DIR",
                   help="write a server keypair, a client keypair and DIR/authorized_clients/client.key, then exit")
    p.add_argument("--idle-timeout", type=float, default=defaults["session_idle_s"].default, metavar="SECONDS",
                   help="drop a session after this long without a message (default %(default)s)")
    p.add_argument("--max-sessions", type=int, default=defaults["max_sessions"].default,
                   help="sessions kept at most; more evict the least recently active (default %(default)s)")
    p.add_argument("--max-total-tensors", type=int, default=defaults["max_total_tensors"].default,
                   help="tensor-table rows kept over all sessions (default %(default)s)")
    p.add_argument("--chunk-events", type=int, default=defaults["chunk_events"].default,
                   help="events worked off per busy client per round: how long one client may delay another "
                        "(default %(default)s)")
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prefetch.daemon import Daemon
    from prefetch.daemon_config import DaemonConfig, generate_keys

    if args.gen_keys:
        paths = generate_keys(args.gen_keys)
        print(f"prefetch daemon: keys written to {args.gen_keys}\n"
              f"  daemon:  --curve-keys {args.gen_keys}   (server.key_secret, {paths['authorized'].name}/)\n"
              f"  clients: copy {paths['server_public'].name} and {paths['client_secret'].name} into a folder and "
              "pass it as `prefetch run --daemon-keys DIR`, PrefetchConfig(daemon_keys=...) or PREFETCH_DAEMON_KEYS", file=sys.stderr)
        return 0
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = DaemonConfig(
        bind=args.bind,
        models_dir=args.models,
        policy_fallback=args.policy_fallback,
        allow_remote=args.allow_remote,
        curve_keys=args.curve_keys,
        session_idle_s=args.idle_timeout,
        max_sessions=args.max_sessions,
        max_total_tensors=args.max_total_tensors,
        chunk_events=args.chunk_events,
    )
    daemon = Daemon(config)
    daemon.start()
    print(f"prefetch daemon: serving on {daemon.endpoint} (pid {os.getpid()}"
          f"{', CURVE' if config.curve_keys else ''}); Ctrl-C stops", file=sys.stderr, flush=True)
    daemon.serve_until_signal()
    print(f"prefetch daemon: stopped; {daemon.stats.as_dict()}", file=sys.stderr, flush=True)
    return 0

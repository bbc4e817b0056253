"""`prefetch daemon`: serve prefetch commands to training jobs over ZeroMQ.

    prefetch daemon --bind ipc:///tmp/prefetch.sock --models models/
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from prefetch.daemon import DEFAULT_FALLBACK, FALLBACK_CHOICES, default_endpoint

    p = sub.add_parser(
        "daemon",
        help="serve prefetch commands to training jobs (ZeroMQ, one session per client)",
        description="Serve prefetch commands to training jobs: each client says hello with its architecture and "
        "tensor table, streams access events, and gets the ids to prefetch. Binds to loopback or ipc only "
        "unless --allow-remote. Stops cleanly on SIGINT/SIGTERM.",
    )
    p.add_argument("--bind", default=default_endpoint(),
                   help="ZeroMQ endpoint: ipc://PATH or tcp://127.0.0.1:PORT (default %(default)s)")
    p.add_argument("--models", default=None, metavar="DIR", help="MODEL_DIR of `prefetch train` for learned policies")
    p.add_argument("--policy-fallback", default=DEFAULT_FALLBACK, choices=FALLBACK_CHOICES,
                   help="served when no predictor matches a client's architecture; 'error' refuses "
                        "(default %(default)s)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback tcp bind (the daemon has no authentication)")
    p.add_argument("--idle-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="drop a session after this long without a message (default %(default)s)")
    p.add_argument("--max-sessions", type=int, default=256, help="sessions kept at most (default %(default)s)")
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prefetch.daemon import Daemon, DaemonConfig

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = DaemonConfig(
        bind=args.bind,
        models_dir=args.models,
        policy_fallback=args.policy_fallback,
        allow_remote=args.allow_remote,
        session_idle_s=args.idle_timeout,
        max_sessions=args.max_sessions,
    )
    daemon = Daemon(config)
    daemon.start()
    print(f"prefetch daemon: serving on {daemon.endpoint} (pid {os.getpid()}); Ctrl-C stops",
          file=sys.stderr, flush=True)
    daemon.serve_until_signal()
    print(f"prefetch daemon: stopped; {daemon.stats.as_dict()}", file=sys.stderr, flush=True)
    return 0

"""A daemon serving on a background thread of this process: what tests, benchmarks and
in-process users start instead of `prefetch daemon`."""

from __future__ import annotations

import threading

import zmq

from prefetch.daemon import Daemon
from prefetch.daemon_config import DaemonConfig
from prefetch.daemon_sessions import PolicyFactory


class DaemonThread:
    """A daemon serving on a background thread (tests, in-process use). Stop with stop()."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="prefetch-daemon", daemon=True)

    def _run(self) -> None:
        try:
            self.daemon.start()
        except BaseException as exc:  # noqa: BLE001 - surfaced in start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self.daemon.serve()
        finally:
            self.daemon.close()

    def start(self, timeout_s: float = 10.0) -> "DaemonThread":
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("daemon thread did not start")
        if self._error is not None:
            raise self._error
        return self

    @property
    def endpoint(self) -> str:
        assert self.daemon.endpoint is not None
        return self.daemon.endpoint

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and close (BYE to every session). Idempotent."""
        self.daemon.stop()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def __enter__(self) -> "DaemonThread":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_daemon_in_thread(
    config: DaemonConfig,
    *,
    policy_factory: PolicyFactory | None = None,
    context: zmq.Context | None = None,
) -> DaemonThread:
    """A started DaemonThread (bound and serving when this returns)."""
    return DaemonThread(Daemon(config, policy_factory=policy_factory, context=context)).start()

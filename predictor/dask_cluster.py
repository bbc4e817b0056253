"""The Dask cluster a training run uses: its address (`DaskTarget`, checked when parsed), the
client connected to it (a LocalCluster for `local:N`), and the workers' versions checked."""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator


DEFAULT_CONNECT_TIMEOUT_S = 10.0
_ADDRESS = re.compile(r"^(?:(tcp|tls|ws|wss)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


class DaskError(RuntimeError):
    """The cluster cannot be started or reached; the message is one line for the CLI."""


@dataclass(frozen=True, slots=True)
class DaskTarget:
    """Where to train: a LocalCluster of `workers` processes, or a running scheduler at `address`."""

    workers: int | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        if (self.workers is None) == (self.address is None):
            raise ValueError("a DaskTarget is either local (workers) or remote (address)")
        if self.workers is not None and not 1 <= self.workers <= 256:
            raise ValueError(f"local:N needs 1 <= N <= 256, got {self.workers}")

    @classmethod
    def parse(cls, text: str) -> "DaskTarget":
        """`local:N` or a scheduler address (`tcp://host:8786`, `host:8786`, tls/ws/wss)."""
        text = text.strip()
        if text.startswith("local"):
            n = text[len("local") :]
            if not re.fullmatch(r":\d{1,4}", n):
                raise ValueError(f"{text!r}: expected local:N with N workers, e.g. local:2")
            return cls(workers=int(n[1:]))
        m = _ADDRESS.match(text)
        if not m:
            raise ValueError(f"{text!r}: expected local:N or a scheduler address like tcp://host:8786")
        if not 1 <= int(m.group(3)) <= 65535:
            raise ValueError(f"{text!r}: port must be in 1..65535")
        return cls(address=text if m.group(1) else f"tcp://{text}")

    def __str__(self) -> str:
        return f"local:{self.workers}" if self.workers is not None else str(self.address)


@contextmanager
def dask_client(target: DaskTarget, *, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> Iterator[Any]:
    """A distributed.Client on `target`; a LocalCluster (processes, one thread each,
    loopback, no dashboard) is started and stopped here."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise DaskError("--dask needs the dask extra: pip install 'learned-prefetch[dask]'") from None
    if target.workers is not None:
        cluster = LocalCluster(n_workers=target.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=logging.ERROR,
                               # its HTTP routes (health, metrics) on a free loopback port, not 0.0.0.0:8787
                               scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})  # fmt: skip
        try:
            with Client(cluster) as client:
                check_workers(client, target)
                yield client
        finally:
            cluster.close()
        return
    try:
        client = Client(target.address, timeout=connect_timeout_s)
    except (OSError, TimeoutError) as exc:
        raise DaskError(f"--dask {target}: no scheduler answered within {connect_timeout_s:g} s "
                        f"({' '.join(str(exc).split())[:160]})") from None  # fmt: skip
    try:
        if not client.scheduler_info().get("workers"):
            client.wait_for_workers(1, timeout=connect_timeout_s)
    except (OSError, TimeoutError):
        client.close()
        raise DaskError(f"--dask {target}: the scheduler has no workers (waited {connect_timeout_s:g} s)") from None
    try:
        check_workers(client, target)
        yield client
    finally:
        client.close()


def _versions() -> dict[str, str]:
    """What must match between the client and every worker: the tasks are pickled code of
    this project, and the rows, tables and models they exchange are numpy, Arrow and LightGBM objects."""
    import platform

    import dask
    import distributed

    from predictor.artifact import versions

    v = dict(versions())
    v["python"] = ".".join(platform.python_version_tuple()[:2])  # pickles need the same minor version
    v.update(dask=dask.__version__, distributed=distributed.__version__)
    return v


def check_workers(client, target: DaskTarget) -> None:
    """Every worker runs this project with the client's versions (else DaskError, one line)."""
    try:
        theirs = client.run(_versions)
    except Exception as exc:  # a worker that cannot import this module fails here, with its own error type
        raise DaskError(f"--dask {target}: the workers cannot run this project's code (install learned-prefetch[dask] "
                        f"in the workers' environment): {' '.join(str(exc).split())[:160]}") from None  # fmt: skip
    ours = _versions()
    for worker, v in sorted(theirs.items()):
        for name, mine in ours.items():
            if v.get(name) != mine:
                raise DaskError(f"--dask {target}: worker {worker} has {name} {v.get(name)}, this client {mine}; "
                                "install the same versions on the client and every worker")  # fmt: skip

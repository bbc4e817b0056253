"""prefetch train on Dask: the same table and artifact format as local training, quality within a point."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from predictor.evaluate import evaluate  # noqa: E402
from predictor.candidates import build_table  # noqa: E402
from predictor.features import KeyInfo  # noqa: E402
from predictor.read_sequence import read_sequence, sequence_context  # noqa: E402
from tests.fixtures.synthetic_traces import SyntheticConfig, write_synthetic_trace  # noqa: E402
from predictor.train import TrainConfig, train  # noqa: E402
from predictor.dask_cluster import DaskError, DaskTarget, check_workers, dask_client  # noqa: E402
from predictor.dask_tasks import TableCounts  # noqa: E402
from predictor.train_dask import train_on_client  # noqa: E402
from prefetch.cli import main  # noqa: E402
from runtime.trace_format import TraceError, load_trace, load_traces  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "datasets" / "samples"
WORKLOADS = ("moe", "layerdrop", "accum-eval")  # the samples where the learned model has something to learn
CONFIG = TrainConfig(num_threads=1)
FIT_TIMEOUT_S = 90.0
"""Each distributed fit here takes seconds; one that hangs (LightGBM issue 4942) is retried once."""


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of two worker processes (one thread each), shared by this module."""
    with dask_client(DaskTarget(workers=2)) as c:
        yield c


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Two training runs of one synthetic MoE architecture (seeds 0, 1) and an unseen run (seed 2)."""
    root = tmp_path_factory.mktemp("dask-traces")
    moe = SyntheticConfig.of_kind("moe")
    for seed in (0, 1):
        write_synthetic_trace(root / "train", moe, steps=8, seed=seed, name="moe")
    write_synthetic_trace(root / "run", moe, steps=6, seed=2, name="moe")
    return root


def _learned(report: dict) -> dict[str, dict[str, float]]:
    return {s["architecture"]: s["policies"]["learned"] for s in report["summary"]}


def _tables_equal(a, b) -> None:
    for name in ("ctx", "start", "n", "cand", "p", "off", "rank"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_merged_counts_equal_build_table():
    """Per-trace table counts, added up, give exactly build_table's table over the same reads."""
    traces = [load_trace(next((SAMPLES / "moe" / p).glob("*.events.arrow"))).managed() for p in ("train", "heldout")]
    keys = list(dict.fromkeys(k for t in traces for k in t.keys))
    keyinfo = KeyInfo.from_keys(keys)
    vocab = {k: i for i, k in enumerate(keys)}
    for steps_of in (lambda t: None, lambda t: [int(s) for s in t.steps()[1:-2]]):
        seqs = []
        for t in traces:
            seq = read_sequence(t, vocab, steps_of(t))
            seqs.append((seq, sequence_context(seq, keyinfo)))
        for lookahead, max_cand in ((16, 48), (4, 5)):
            local = build_table(seqs, keyinfo.size, lookahead, max_cand)
            parts = [TableCounts.of(s, sc, keyinfo.size, lookahead) for s, sc in seqs]
            merged = TableCounts.merge(parts, keyinfo.size, lookahead)
            assert merged.reads == sum(len(s) for s, _ in seqs)
            _tables_equal(merged.table(max_cand), local)


@pytest.mark.slow
def test_dask_training_matches_local_on_samples(client, tmp_path):
    """On the sample traces: same tables, same artifact files (text + JSON), held-out recall/top-1 within 1 pt."""
    paths = [SAMPLES / w / "train" for w in WORKLOADS]
    local_dir, dask_dir = tmp_path / "local", tmp_path / "dask"
    train(paths, local_dir, CONFIG, progress=False, log=lambda *a: None)
    written = train_on_client(client, paths, dask_dir, CONFIG, log=lambda *a: None, fit_timeout_s=FIT_TIMEOUT_S)
    assert len(written) == len(WORKLOADS)
    for folder in written:
        twin = local_dir / folder.name
        assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in twin.iterdir())
        assert (folder / "table.json").read_text() == (twin / "table.json").read_text()
        model_text = (folder / "model.txt").read_text()
        assert model_text.startswith("tree") and "feature_names=micro_step" in model_text
        meta, local_meta = (json.loads((f / "meta.json").read_text()) for f in (folder, twin))
        assert set(meta) == set(local_meta)
        assert set(meta["training"]) - {"dask"} == set(local_meta["training"])
        for key in ("training_data", "train_seeds", "model_class"):
            assert meta[key] == local_meta[key], key
        for key in ("reads", "contexts", "deterministic_contexts", "rows", "positives"):
            assert meta["training"][key] == local_meta["training"][key], key
    heldout = load_traces([SAMPLES / w / "heldout" for w in WORKLOADS], managed_only=True)
    local, dask = (_learned(evaluate(str(d), heldout, baselines=())) for d in (local_dir, dask_dir))
    assert local.keys() == dask.keys() and len(local) == len(WORKLOADS)
    for arch in local:
        for metric in ("recall", "top1"):
            assert abs(dask[arch][metric] - local[arch][metric]) <= 0.01, (arch, metric, dask[arch], local[arch])


def test_dask_training_across_two_workers(client, synthetic, tmp_path):
    """Two traces of one architecture: rows on both workers, one distributed LightGBM fit, quality within 1 pt."""
    local_dir, dask_dir = tmp_path / "local", tmp_path / "dask"
    train([synthetic / "train"], local_dir, CONFIG, progress=False, log=lambda *a: None)
    [folder] = train_on_client(client, [synthetic / "train"], dask_dir, CONFIG, log=lambda *a: None,
                               fit_timeout_s=FIT_TIMEOUT_S)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["training"]["dask"]["partitions"] == 2 and meta["training"]["dask"]["workers"] == 2
    assert meta["train_seeds"] == [0, 1]
    assert (folder / "table.json").read_text() == (local_dir / folder.name / "table.json").read_text()
    run = load_traces([synthetic / "run"], managed_only=True)
    [(arch, local)], [(_, dask)] = (_learned(evaluate(str(d), run, baselines=())).items() for d in (local_dir, dask_dir))
    for metric in ("recall", "top1"):
        assert abs(dask[metric] - local[metric]) <= 0.01, (metric, dask, local)


def test_the_watchdogs_name_the_step_that_hung(client):
    """The fit's watchdog and the gathers' each raise a one-line FitHung naming what did not finish."""
    import time

    from predictor.train_dask import FitHung, _fit, _gather

    class SlowModel:
        def fit(self, X, y, feature_name=None):
            time.sleep(2.0)

    with pytest.raises(FitHung, match=r"^the distributed LightGBM fit did not finish within 0.05 s$"):
        _fit(SlowModel(), None, None, 0.05)
    slow = client.submit(time.sleep, 3.0, pure=False)
    with pytest.raises(FitHung, match=r"^scoring the thresholds did not finish within 0.2 s on the dask workers$"):
        _gather(client, [slow], 0.2, "scoring the thresholds")
    assert _gather(client, client.submit(sum, [1, 2], pure=False), 30.0, "a sum") == 3


def test_a_hung_fit_restarts_the_workers_and_trains_once_more(client, synthetic, tmp_path):
    """The watchdog: a step not done within its time (here a timeout nothing can meet) is
    taken as hung, the workers restart and the training runs once more; hung again, it fails
    with a one-line FitHung naming the timeout, and the client still works afterwards."""
    from predictor.train_dask import FitHung

    said: list[str] = []
    with pytest.raises(FitHung, match=r"did not finish within 0.001 s"):
        train_on_client(client, [synthetic / "train"], tmp_path / "hung", CONFIG, log=said.append,
                        fit_timeout_s=0.001)
    assert any("restarting the dask workers" in s for s in said)
    client.wait_for_workers(2, timeout=60)
    [folder] = train_on_client(client, [synthetic / "train"], tmp_path / "ok", CONFIG, log=lambda *a: None,
                               fit_timeout_s=FIT_TIMEOUT_S)
    assert (folder / "meta.json").exists()


def test_row_cap_draws_local_subset(client, synthetic, tmp_path):
    """With max_rows below the row count, the Dask run keeps as many rows as local training."""
    config = TrainConfig(num_threads=1, max_rows=5000)
    train([synthetic / "train"], tmp_path / "local", config, progress=False, log=lambda *a: None)
    [folder] = train_on_client(client, [synthetic / "train"], tmp_path / "dask", config, log=lambda *a: None,
                               fit_timeout_s=FIT_TIMEOUT_S)
    meta, local_meta = (json.loads((d / folder.name / "meta.json").read_text()) for d in (tmp_path / "dask", tmp_path / "local"))
    assert meta["training"]["rows"] == local_meta["training"]["rows"] == 5000
    assert meta["training"]["positives"] == local_meta["training"]["positives"]


@pytest.mark.slow
def test_cli_dask_local(tmp_path, capsys):
    """`prefetch train --dask local:2` starts its own LocalCluster, writes an artifact, one line per architecture."""
    out = tmp_path / "models"
    rc = main(["train", str(SAMPLES / "vit" / "train"), "--out", str(out), "--dask", "local:2", "--no-progress"])
    assert rc == 0
    [folder] = list(out.iterdir())
    assert {"model.txt", "meta.json", "table.json"} <= {p.name for p in folder.iterdir()}
    stdout = capsys.readouterr().out
    assert "on 2 dask worker(s)" in stdout and folder.name in stdout
    assert json.loads((folder / "meta.json").read_text())["training"]["dask"]["workers"] == 2


@pytest.mark.parametrize("spec", ["local:0", "local:x", "local", "local:2:3", "tcp://host", "tcp://host:99999",
                                  "http://host:8786", "two words:1"])  # fmt: skip
def test_bad_dask_value_is_one_line(spec, tmp_path, capsys):
    """A malformed --dask value is refused before anything starts, with one line naming the flag."""
    with pytest.raises(SystemExit) as exc:
        main(["train", str(SAMPLES / "vit" / "train"), "--out", str(tmp_path / "m"), "--dask", spec])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--dask" in err and "Traceback" not in err


def test_unreachable_scheduler_is_one_line(tmp_path, capsys):
    """A scheduler that does not answer: one line after the --dask-timeout, exit 2."""
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    rc = main(["train", str(SAMPLES / "vit" / "train"), "--out", str(tmp_path / "m"),
               "--dask", f"tcp://127.0.0.1:{port}", "--dask-timeout", "1"])  # fmt: skip
    assert rc == 2 and time.monotonic() - t0 < 15
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no scheduler answered" in err and f"127.0.0.1:{port}" in err
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_traces_by_uri(client, synthetic, tmp_path):
    """Trace folders given as pyarrow filesystem URIs (file:// here, s3:// on a cluster) train the same table."""
    [by_path] = train_on_client(client, [synthetic / "train"], tmp_path / "path", CONFIG, log=lambda *a: None,
                                fit_timeout_s=FIT_TIMEOUT_S)
    uri = (synthetic / "train").as_uri()
    assert uri.startswith("file:///")
    [by_uri] = train_on_client(client, [uri], tmp_path / "uri", CONFIG, log=lambda *a: None,
                               fit_timeout_s=FIT_TIMEOUT_S)
    assert (by_uri / "table.json").read_text() == (by_path / "table.json").read_text()
    meta = json.loads((by_uri / "meta.json").read_text())
    assert [d["trace"] for d in meta["training_data"]] == ["moe-s0", "moe-s1"]
    with pytest.raises(TraceError, match="no such trace file or directory"):
        train_on_client(client, [uri + "/missing"], tmp_path / "none", CONFIG, log=lambda *a: None,
                        fit_timeout_s=FIT_TIMEOUT_S)


def test_scheduler_without_workers_is_one_line(tmp_path, capsys):
    """A scheduler that answers but has no workers: one line after the --dask-timeout, exit 2."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None,
                      scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"}) as cluster:  # fmt: skip
        rc = main(["train", str(SAMPLES / "vit" / "train"), "--out", str(tmp_path / "m"),
                   "--dask", cluster.scheduler_address, "--dask-timeout", "1"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no workers" in err


@pytest.mark.parametrize(("text", "target"), [
    ("local:3", DaskTarget(workers=3)),
    ("tcp://10.0.0.5:8786", DaskTarget(address="tcp://10.0.0.5:8786")),
    ("sched.example:8786", DaskTarget(address="tcp://sched.example:8786")),
    ("tls://[::1]:8786", DaskTarget(address="tls://[::1]:8786")),
])  # fmt: skip
def test_dask_values_parsed(text, target):
    """local:N and scheduler addresses (a bare host:port means tcp) parse to their target."""
    assert DaskTarget.parse(text) == target


def _set_format_version(value):
    import predictor.artifact as artifact

    old, artifact.FORMAT_VERSION = artifact.FORMAT_VERSION, value
    return old


def test_worker_with_other_versions_is_refused(client):
    """A worker whose artifact format (or any checked version) differs from the client's is refused, naming both."""
    worker = sorted(client.scheduler_info()["workers"])[1]
    old = client.run(_set_format_version, 999, workers=[worker])[worker]
    try:
        with pytest.raises(DaskError) as exc:
            check_workers(client, DaskTarget(workers=2))
    finally:
        client.run(_set_format_version, old, workers=[worker])
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1 and worker in msg and "format 999" in msg and f"this client {old}" in msg
    check_workers(client, DaskTarget(workers=2))  # restored: accepted again

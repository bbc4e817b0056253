"""Damaged traces: cut at any offset or with flipped bytes, a trace loads or fails with one line.

A cut events file is what a killed recording leaves: it must still load, up to its last
complete batch, as a prefix of the intact events. Anything else (a cut tensor table,
garbled bytes, a manifest that is not an object) is a TraceError naming the file, or a
trace whose values are all in range; `prefetch trace info` prints one line, never a
traceback.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtime
from prefetch.cli import main as cli_main
from prefetch.trace_summary import summarize
from runtime.trace_format import EVENTS_SUFFIX, MANIFEST_SUFFIX, TENSORS_SUFFIX, Kind, Phase, Trace, TraceError, load_trace

SUFFIXES = (EVENTS_SUFFIX, TENSORS_SUFFIX, MANIFEST_SUFFIX)
FUZZ = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def intact(tmp_path_factory) -> tuple[Path, dict[str, bytes], Trace]:
    """A real recording of a small model, 5 steps: its stem, its files' bytes, its loaded trace."""
    out = tmp_path_factory.mktemp("intact")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with runtime.record(model, opt, out=out, workload="faults") as rec:
        for _ in range(5):
            opt.zero_grad()
            model(torch.randn(32, 64)).pow(2).mean().backward()
            opt.step()
    stem = rec.stem
    return stem, {s: Path(str(stem) + s).read_bytes() for s in SUFFIXES}, load_trace(stem)


def _damaged_copy(intact, tmp: Path, suffix: str, data: bytes) -> Path:
    stem, files, _ = intact
    for s, b in files.items():
        (tmp / (stem.name + s)).write_bytes(data if s == suffix else b)
    return tmp / stem.name


def _load_or_trace_error(stem: Path) -> Trace | None:
    """The trace, or None after a one-line TraceError naming one of its files."""
    try:
        trace = load_trace(stem)
    except TraceError as exc:
        msg = str(exc)
        assert "\n" not in msg and stem.name in msg, msg
        return None
    # whatever loads is safe to use: values in range, summaries and the managed view work
    n = trace.num_tensors
    if trace.num_events:
        tid = trace.column("tensor_id")
        assert tid.min() >= 0 and tid.max() < n
        assert trace.column("phase").max() <= max(Phase) and trace.column("kind").max() <= max(Kind)
    summarize(trace)
    trace.managed()
    return trace


def _trace_info(stem: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = cli_main(["trace", "info", str(stem)])
    return rc, err.getvalue()


def _fresh(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    return d


@FUZZ
@given(cut=st.floats(0, 1))
def test_events_cut_anywhere_loads_a_prefix_or_fails_cleanly(intact, tmp_path, cut):
    """An events file cut at any offset (a killed recording): a prefix of the intact events, or a TraceError."""
    _, files, whole = intact
    data = files[EVENTS_SUFFIX]
    stem = _damaged_copy(intact, _fresh(tmp_path, "ev"), EVENTS_SUFFIX, data[: int(cut * len(data))])
    trace = _load_or_trace_error(stem)
    if trace is not None:
        n = trace.num_events
        assert trace.events.equals(whole.events.slice(0, n))
        assert trace.truncated or n == whole.num_events


@FUZZ
@given(which=st.sampled_from([TENSORS_SUFFIX, MANIFEST_SUFFIX]), cut=st.floats(0, 0.999))
def test_tensors_or_manifest_cut_anywhere_fails_cleanly(intact, tmp_path, which, cut):
    """A cut tensor table or manifest: TraceError naming the file (or, for the manifest, nothing missing)."""
    _, files, _ = intact
    data = files[which]
    stem = _damaged_copy(intact, _fresh(tmp_path, "cut"), which, data[: int(cut * len(data))])
    trace = _load_or_trace_error(stem)
    if which == TENSORS_SUFFIX and trace is not None:
        # a cut at a batch boundary may keep every row the events use; never fewer than they need
        assert trace.num_tensors and trace.column("tensor_id").max() < trace.num_tensors


@FUZZ
@given(which=st.sampled_from(SUFFIXES), flips=st.lists(st.tuples(st.floats(0, 0.9999), st.integers(1, 255)),
                                                        min_size=1, max_size=4))
def test_flipped_bytes_load_in_range_or_fail_cleanly(intact, tmp_path, which, flips):
    """Garbled bytes in any file: a TraceError naming the file, or a trace whose values are in range."""
    _, files, _ = intact
    data = bytearray(files[which])
    for where, xor in flips:
        data[int(where * len(data))] ^= xor
    _load_or_trace_error(_damaged_copy(intact, _fresh(tmp_path, "flip"), which, bytes(data)))


@pytest.mark.parametrize(
    "which, damage, expected",
    [
        (TENSORS_SUFFIX, lambda b: b[:300], "tensors.arrow"),
        (TENSORS_SUFFIX, lambda b: b"", "tensors.arrow"),
        (MANIFEST_SUFFIX, lambda b: b"[1, 2]", "expected a JSON object"),
        (MANIFEST_SUFFIX, lambda b: b'{"architecture": 7}', "'architecture' must be string"),
        (MANIFEST_SUFFIX, lambda b: b"\xff\xfe{", "manifest.json"),
        (EVENTS_SUFFIX, lambda b: b"garbage", "events.arrow"),
    ],
)
def test_trace_info_on_a_damaged_trace_is_one_line(intact, tmp_path, which, damage, expected):
    """`prefetch trace info` on a damaged trace: exit 2 and one stderr line naming what is wrong."""
    stem = _damaged_copy(intact, tmp_path, which, damage(intact[1][which]))
    rc, err = _trace_info(stem)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("prefetch trace: error: ") and expected in err, err

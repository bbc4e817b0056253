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

import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtime
from predictor.interface import TensorInfo
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
    TensorInfo.from_table(trace.tensors)  # keys and modules as str: what every policy reads
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


def _rewrite_events(stem: Path, column: str, row: int, value: int) -> None:
    """Set one event value, keeping the file a valid Arrow stream (so only validation can object)."""
    path = Path(str(stem) + EVENTS_SUFFIX)
    table = pa.ipc.open_stream(pa.OSFile(str(path))).read_all()
    values = table.column(column).to_numpy().copy()
    values[row] = value
    field = table.schema.field(column)
    table = table.set_column(table.schema.get_field_index(column), field, pa.array(values, type=field.type))
    with pa.ipc.new_stream(pa.OSFile(str(path), "wb"), table.schema) as w:
        for batch in table.to_batches():
            w.write_batch(batch)


@pytest.mark.parametrize(
    "column, value, expected",
    [
        ("tensor_id", -5, "tensor_id=-5, must be >= 0"),
        ("phase", 99, "phase=99, must be in [0, 4]"),
        ("kind", 42, "kind=42, must be in [0, 3]"),
        ("access", 7, "access=7, must be in [0, 1]"),
        ("nbytes", -1, "nbytes=-1, must be >= 0"),
        ("tensor_id", 10_000, "tensor_id=10000; the tensor file is cut or does not belong"),
        ("step", 2**30, "step=1073741824 after step="),  # garbled, in range: order gives it away
        ("seq", 0, "seq=0 after seq="),
    ],
)
def test_out_of_range_events_are_refused_naming_file_column_value(intact, tmp_path, column, value, expected):
    """A forged event value: TraceError naming the events file, the column and the value; train refuses it."""
    stem = _damaged_copy(intact, tmp_path, EVENTS_SUFFIX, intact[1][EVENTS_SUFFIX])
    _rewrite_events(stem, column, 7, value)
    with pytest.raises(TraceError) as info:
        load_trace(stem)
    msg = str(info.value)
    assert str(stem) + EVENTS_SUFFIX in msg or str(stem) + TENSORS_SUFFIX in msg, msg
    assert expected in msg, msg
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = cli_main(["train", str(stem), "--out", str(tmp_path / "models"), "--no-progress"])
    assert rc == 2 and err.getvalue().count("\n") == 1 and expected in err.getvalue()
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_a_damaged_middle_batch_is_an_error_not_a_cut(tmp_path):
    """Garbage between two batches is damage (TraceError), not a killed recording read as a prefix."""
    schema = pa.schema([("x", pa.int32())], metadata={b"k": b"v"})
    sink = pa.OSFile(str(tmp_path / "s.arrow"), "wb")
    ends = []
    with pa.ipc.new_stream(sink, schema) as w:
        for i in range(3):
            w.write_batch(pa.RecordBatch.from_pylist([{"x": i}] * 100, schema=schema))
            ends.append(sink.tell())
    intact_bytes = (tmp_path / "s.arrow").read_bytes()
    data = bytearray(intact_bytes)
    data[ends[0] + 4: ends[0] + 12] = b"\xff" * 8  # the second batch's metadata length and flatbuffer
    (tmp_path / "s.arrow").write_bytes(bytes(data))
    from runtime.trace_format import _read_stream

    with pytest.raises(TraceError, match="record batch 1 is damaged"):
        _read_stream(tmp_path / "s.arrow")
    (tmp_path / "s.arrow").write_bytes(intact_bytes[: ends[1] - 10])  # cut inside batch 2: a crash, read batch 1
    table, truncated, _ = _read_stream(tmp_path / "s.arrow")
    assert truncated and table.num_rows == 100


def test_garbled_string_offsets_are_refused_before_anything_reads_them(tmp_path):
    """A key column whose offsets point past its data: TraceError, never a read out of bounds."""
    import struct

    from runtime.trace_writer import TraceWriter

    w = TraceWriter(tmp_path / "t", {"architecture": "toy"})
    for i, key in enumerate(("k" * 7, "q" * 9)):
        w.add_tensor(dict(tensor_id=i, key=key, kind=0, shape=[4], dtype="float32", nbytes=16, module="m", layer=-1))
    w.add_event((0, 0, 0, 0, 0, 0, 0, 16, 0, 0, -1))
    w.close()
    path = tmp_path / ("t" + TENSORS_SUFFIX)
    data = path.read_bytes()
    offsets = struct.pack("<3i", 0, 7, 16)
    assert data.count(offsets) == 1
    path.write_bytes(data.replace(offsets, struct.pack("<3i", 0, 7, 1 << 30)))
    with pytest.raises(TraceError, match=r"t\.tensors\.arrow: damaged"):
        load_trace(tmp_path / "t")

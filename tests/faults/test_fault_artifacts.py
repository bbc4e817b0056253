"""Damaged model artifacts: cut or garbled files load or fail with one line; nothing aborts.

The damage is applied with meta.json's checksums updated to match, so it reaches the
parsers (LightGBM's included) instead of stopping at the checksum. The loads run in a
child process: a LightGBM abort there fails the test instead of killing the suite.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from predictor.artifact import META_FILE, MODEL_FILE, TABLE_FILE
from prefetch.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
LOADER = """
import json, sys
from predictor.artifact import load_artifact
from predictor.interface import PolicyError
for folder in sys.argv[1:]:
    try:
        load_artifact(folder)
        print(json.dumps({"folder": folder, "ok": True}), flush=True)
    except PolicyError as exc:
        print(json.dumps({"folder": folder, "ok": False, "error": type(exc).__name__, "message": str(exc)}), flush=True)
"""


def artifact_dir(models: Path) -> Path:
    (folder,) = [p for p in models.iterdir() if (p / META_FILE).exists()]
    return folder


def damaged_copy(src: Path, dst: Path, name: str, data: bytes, *, fix_checksum: bool = True) -> Path:
    shutil.copytree(src, dst)
    (dst / name).write_bytes(data)
    if fix_checksum and name != META_FILE:
        meta = json.loads((dst / META_FILE).read_text())
        meta["files"][name]["sha256"] = hashlib.sha256(data).hexdigest()
        (dst / META_FILE).write_text(json.dumps(meta))
    return dst


def damages(data: bytes, rng: random.Random, n: int) -> list[bytes]:
    """n/2 cuts at random offsets and n/2 copies with 1-4 flipped bytes."""
    out = [data[: rng.randrange(len(data))] for _ in range(n // 2)]
    for _ in range(n - n // 2):
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= rng.randint(1, 255)
        out.append(bytes(b))
    return out


def test_damaged_artifacts_fail_cleanly_in_a_child(fault_models, tmp_path):
    """Cut/flipped model.txt, table.json, meta.json: each loads or raises a one-line PolicyError; no abort."""
    src = artifact_dir(fault_models)
    rng = random.Random(14)
    folders = []
    for name, n in ((MODEL_FILE, 10), (TABLE_FILE, 6), (META_FILE, 6)):
        for i, data in enumerate(damages((src / name).read_bytes(), rng, n)):
            folders.append(damaged_copy(src, tmp_path / f"{name}-{i}", name, data))
    proc = subprocess.run([sys.executable, "-c", LOADER, *map(str, folders)], cwd=ROOT, capture_output=True, errors="replace",
                          text=True, timeout=240)
    done = len(proc.stdout.splitlines())
    assert proc.returncode == 0, (f"loader died with {proc.returncode} loading {folders[min(done, len(folders) - 1)]}: "
                                  f"{proc.stderr[-2000:]}")
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(folders)
    for r in results:
        if not r["ok"]:
            assert "\n" not in r["message"] and r["error"] in ("CorruptModelError", "PolicyError",
                                                               "ArchitectureMismatchError"), r
    # cut model files never load: LightGBM must not be handed half a model
    assert not any(r["ok"] for r in results[:5]), results[:5]


@pytest.mark.parametrize(
    "name, data",
    [
        (META_FILE, b"[1, 2]"),
        (MODEL_FILE, b"tree\nversion=v4\n"),
        (TABLE_FILE, b"{"),
    ],
)
def test_simulate_with_a_damaged_artifact_is_one_line(fault_models, tmp_path, name, data):
    """`prefetch simulate --policy learned:DIR` with a damaged artifact: exit 2, one line naming the file."""
    folder = damaged_copy(artifact_dir(fault_models), tmp_path / "models" / "a", name, data)
    traces = fault_models.parent / "traces"
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = cli_main(["simulate", str(traces), "--policy", f"learned:{folder.parent}"])
    assert rc == 2
    assert err.getvalue().count("\n") == 1 and name in err.getvalue(), err.getvalue()

"""Artifact validation: no model file can crash the loader; bad meta.json is a one-line error.

    python -m pytest tests/predictor/test_artifact_validation.py -q

The damaged files here have their sha256 in meta.json updated to match, as a careless
or hostile edit would: the checksum passes and the content itself must be refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from predictor.artifact import (
    MODEL_FILE,
    TABLE_FILE,
    CorruptModelError,
    artifact_dirname,
    find_artifact,
    load_artifact,
)
from predictor.features import FEATURES
from predictor.model_check import check_model_text, probe_model_text

ROOT = Path(__file__).resolve().parents[2]


def _copy(model_dir: Path, arch: str, dst_root: Path) -> Path:
    src = model_dir / artifact_dirname(arch)
    dst = dst_root / "m" / src.name
    shutil.copytree(src, dst)
    return dst


def _rewrite(folder: Path, name: str, data: bytes) -> None:
    """Replace a file and update its checksum in meta.json to match (the checksum passes)."""
    (folder / name).write_bytes(data)
    meta = json.loads((folder / "meta.json").read_text())
    meta["files"][name]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "meta.json").write_text(json.dumps(meta))


def _edit_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    for k, v in changes.items():
        if v is _DELETE:
            del meta[k]
        else:
            meta[k] = v
    (folder / "meta.json").write_text(json.dumps(meta))  # NaN is written as NaN (Python's json allows it)


_DELETE = object()


def _load_in_child(folder: Path, arch: str) -> subprocess.CompletedProcess:
    """load_artifact in a fresh process: a LightGBM abort shows as a negative return code."""
    code = ("import sys\nfrom predictor.artifact import load_artifact\nfrom predictor.interface import PolicyError\n"
            f"try:\n    load_artifact({str(folder)!r}, {arch!r})\nexcept PolicyError as e:\n"
            "    print(e); sys.exit(2)\nprint('loaded')\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_truncated_model_with_matching_checksum_is_refused_not_a_crash(model_dir, moe_train, tmp_path):
    """A model.txt cut in half, checksum updated: a one-line CorruptModelError, the process lives."""
    folder = _copy(model_dir, moe_train.architecture, tmp_path)
    data = (folder / MODEL_FILE).read_bytes()
    _rewrite(folder, MODEL_FILE, data[: len(data) // 2])
    out = _load_in_child(folder, moe_train.architecture)
    assert out.returncode == 2, out.stderr[-500:]  # not -6 (SIGABRT) or -11 (SIGSEGV)
    line = out.stdout.strip()
    assert "\n" not in line and MODEL_FILE in line and "end of trees" in line


@pytest.mark.parametrize("old,new,what", [
    (b"left_child=", b"left_child=9 ", "tree 0"),  # tree block changes size: tree_sizes no longer match
    (b"tree_sizes=", b"tree_sizes=1", "tree_sizes says"),
    (b"split_feature=", b"split_feature=99", "tree 0"),
    (b"max_feature_idx=", b"max_feature_idx=4", "features"),
])
def test_garbled_model_with_matching_checksum_is_refused(model_dir, moe_train, tmp_path, old, new, what):
    """Garbled model.txt (checksum updated) -> CorruptModelError naming model.txt and the problem."""
    folder = _copy(model_dir, moe_train.architecture, tmp_path)
    data = (folder / MODEL_FILE).read_bytes()
    assert old in data
    _rewrite(folder, MODEL_FILE, data.replace(old, new, 1))
    with pytest.raises(CorruptModelError, match=f"{MODEL_FILE}: not a valid LightGBM model: .*{what}") as info:
        load_artifact(folder, moe_train.architecture)
    assert "\n" not in str(info.value) and info.value.file == MODEL_FILE


def test_parser_accepts_what_train_writes_and_refuses_cut_or_cyclic_trees(model_dir, moe_train):
    """check_model_text passes a trained model; cuts, cycles and bad indices each get a named problem."""
    text = (model_dir / artifact_dirname(moe_train.architecture) / MODEL_FILE).read_text()
    assert check_model_text(text, len(FEATURES)) is None
    assert "end of trees" in check_model_text(text[: len(text) // 2], len(FEATURES))
    no_sizes = "\n".join(line for line in text.split("\n") if not line.startswith("tree_sizes="))
    assert check_model_text(no_sizes, len(FEATURES)) is None  # tree_sizes is optional in LightGBM's format
    start = no_sizes.index("left_child=")
    line = no_sizes[start:no_sizes.index("\n", start)]
    n_nodes = len(line.split("=")[1].split())
    cyclic = no_sizes.replace(line, "left_child=" + " ".join(["0"] * n_nodes), 1)  # the root as a child
    assert "child index 0" in check_model_text(cyclic, len(FEATURES))
    if n_nodes >= 3:
        twice = no_sizes.replace(line, "left_child=" + " ".join(["1"] * n_nodes), 1)
        assert "not a tree" in check_model_text(twice, len(FEATURES))
    assert "ASCII" in check_model_text(text.replace("tree", "tr\u00e9e", 1))
    assert "binary" in check_model_text(text.replace("num_class=1", "num_class=3", 1))


def test_parser_accepts_single_leaf_trees():
    """A tree with one leaf (LightGBM writes it with an empty leaf_weight; short traces give one) passes
    the parser and the probe: a valid model from `prefetch train` on little data is not refused."""
    import lightgbm as lgb
    import numpy as np

    rng = np.random.default_rng(0)
    x, y = rng.random((50, len(FEATURES))), np.zeros(50)
    y[:2] = 1
    booster = lgb.train({"objective": "binary", "verbose": -1, "min_data_in_leaf": 100}, lgb.Dataset(x, y),
                        num_boost_round=2)
    text = booster.model_to_string()
    assert "num_leaves=1" in text and "leaf_weight=\n" in text
    assert check_model_text(text, len(FEATURES)) is None
    no_sizes = "\n".join(line for line in text.split("\n") if not line.startswith("tree_sizes="))
    two_values = no_sizes.replace("leaf_value=", "leaf_value=0.5 ", 1)  # one leaf, two values
    assert "leaf_value has 2 values" in check_model_text(two_values, len(FEATURES))


def test_parser_refuses_control_characters():
    """A NUL (or other control byte) in model.txt is refused: LightGBM's C parser stops at a NUL and then
    follows tree_sizes past the end of the string into heap memory (undefined behaviour a probe can miss)."""
    import lightgbm as lgb
    import numpy as np

    rng = np.random.default_rng(1)
    x = rng.random((200, len(FEATURES)))
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, (x[:, 0] > 0.5).astype(float)),
                        num_boost_round=3)
    text = booster.model_to_string()
    assert check_model_text(text, len(FEATURES)) is None
    for bad in ("\x00", "\x1b", "\r"):
        cut = text.replace("Tree=1", "Tree=" + bad + "1", 1)
        assert "control character" in check_model_text(cut, len(FEATURES)), repr(bad)


def test_probe_survives_what_kills_lightgbm(model_dir, moe_train, tmp_path, monkeypatch):
    """The child-process probe reports a LightGBM crash as a problem; a good model passes and is cached."""
    import predictor.model_check

    monkeypatch.setenv("PREFETCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(predictor.model_check, "_verified", set())  # forget what earlier tests verified
    text = (model_dir / artifact_dirname(moe_train.architecture) / MODEL_FILE).read_text()
    bad = text.replace("tree_sizes=", "tree_sizes=1", 1)  # LightGBM aborts on this in-process
    problem = probe_model_text(bad, len(FEATURES), use_cache=False)
    assert problem is not None and ("crashed" in problem or "refused" in problem)
    assert probe_model_text(text, len(FEATURES)) is None
    markers = list((tmp_path / "cache" / "verified-models").iterdir())
    assert len(markers) == 1  # the next process skips the child for this file
    assert "features" in probe_model_text(text, len(FEATURES) + 1, use_cache=False)


@pytest.mark.parametrize("change,what", [
    ({"files": [1]}, "'files' must map"),
    ({"files": {MODEL_FILE: "abc", TABLE_FILE: "abc"}}, "'files'.model.txt"),
    ({"files": _DELETE}, "no 'files' checksums"),
    ({"features": None}, "'features' must be"),
    ({"threshold": math.nan}, "'threshold' must be a number in \\[0, 1\\], got nan"),
    ({"threshold": "0.5"}, "'threshold'"),
    ({"vocabulary": {"a": 1}}, "'vocabulary'"),
    ({"module_types": [1, 2]}, "'module_types'"),
])
def test_malformed_meta_is_a_one_line_error_naming_meta_json(model_dir, moe_train, tmp_path, change, what):
    """Each malformed meta.json field is a CorruptModelError naming meta.json and the field."""
    folder = _copy(model_dir, moe_train.architecture, tmp_path)
    _edit_meta(folder, **change)
    with pytest.raises(CorruptModelError, match=f"meta.json: {what}") as info:
        load_artifact(folder, moe_train.architecture)
    assert "\n" not in str(info.value) and info.value.file == "meta.json"


def test_provenance_keys_in_meta_are_tolerated(model_dir, moe_train, tmp_path):
    """training_data / train_seeds (written by predictor.train) do not stop a load."""
    folder = _copy(model_dir, moe_train.architecture, tmp_path)
    _edit_meta(folder, train_seeds=[0, 1], training_data=[{"trace": "t", "workload": "moe", "seed": 0, "steps": 8,
                                                           "step_order_hashes": ["ab"]}])
    assert load_artifact(folder, moe_train.architecture).meta["train_seeds"] == [0, 1]


def test_two_folders_for_one_architecture_is_an_error_naming_both(model_dir, moe_train, tmp_path):
    """Two folders holding the same architecture: refused, naming both, never one chosen silently."""
    folder = _copy(model_dir, moe_train.architecture, tmp_path)
    twin = folder.parent / "copy-of-it"
    shutil.copytree(folder, twin)
    with pytest.raises(CorruptModelError, match=f"{folder.name}.*copy-of-it|copy-of-it.*{folder.name}"):
        find_artifact(folder.parent, moe_train.architecture)
    shutil.rmtree(twin)
    assert find_artifact(folder.parent, moe_train.architecture) == folder


def test_a_damaged_folder_of_another_architecture_does_not_hide_this_one(model_dir, moe_train, static_train,
                                                                          tmp_path):
    """One unreadable meta.json in MODEL_DIR does not stop another architecture's predictor loading."""
    moe = _copy(model_dir, moe_train.architecture, tmp_path)
    static = _copy(model_dir, static_train.architecture, tmp_path)
    (static / "meta.json").write_text("{cut")
    assert load_artifact(moe.parent, moe_train.architecture).architecture == moe_train.architecture
    with pytest.raises(CorruptModelError, match="meta.json: not a readable JSON"):
        load_artifact(moe.parent, static_train.architecture)


def test_simulate_with_a_corrupt_model_exits_with_one_line(model_dir, moe_train, traces, tmp_path):
    """`prefetch simulate --policy learned:DIR` on a damaged model: exit code >0, no abort, one line."""
    folder = _copy(model_dir, moe_train.architecture, tmp_path)
    data = (folder / MODEL_FILE).read_bytes()
    _rewrite(folder, MODEL_FILE, data[: len(data) // 2])
    out = subprocess.run([sys.executable, "-m", "prefetch", "simulate", str(traces / "moe-run"), "--policy",
                          f"learned:{folder.parent}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode > 0, out.stderr[-800:]  # negative: killed by a signal
    assert "Traceback" not in out.stderr and MODEL_FILE in out.stderr


def test_list_artifacts_names_a_damaged_folder(model_dir, moe_train, tmp_path):
    """list_artifacts (every architecture in MODEL_DIR) refuses a folder whose meta.json is unreadable."""
    from predictor.artifact import list_artifacts

    folder = _copy(model_dir, moe_train.architecture, tmp_path)
    assert list_artifacts(folder.parent) == {moe_train.architecture: folder}
    (folder / "meta.json").write_text("[]")
    with pytest.raises(CorruptModelError, match="meta.json: not a prefetch.predictor model description"):
        list_artifacts(folder.parent)

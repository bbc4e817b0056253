"""The model artifact: text files round-trip; wrong architecture and damaged files are clear errors."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from predictor.artifact import (
    MODEL_FILE,
    ArchitectureMismatchError,
    CorruptModelError,
    artifact_dirname,
    load_artifact,
    save_artifact,
)
from predictor.candidates import static_columns
from predictor.features import FEATURES
from predictor.interface import PolicyError, TensorInfo
from predictor.policies import make_policy


def test_artifact_round_trip(model_dir, moe_train, tmp_path):
    """Saving and loading keeps the vocabulary, table, threshold, metadata and the model's scores."""
    a = load_artifact(model_dir, moe_train.architecture)
    folder = save_artifact(a, tmp_path)
    assert folder.name == artifact_dirname(moe_train.architecture)
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.txt", "table.json"]
    b = load_artifact(tmp_path, moe_train.architecture)
    assert b.keyinfo.keys == a.keyinfo.keys and b.keyinfo.mtypes == a.keyinfo.mtypes
    assert b.threshold == a.threshold and b.architecture == a.architecture
    for field in ("ctx", "start", "n", "cand", "p", "off", "rank"):
        assert np.array_equal(getattr(a.table, field), getattr(b.table, field))
    X = static_columns(a.table, a.keyinfo)[:200]
    assert np.allclose(a.booster.predict(X), b.booster.predict(X))
    meta = b.meta
    assert meta["features"]["names"] == list(FEATURES)
    for key in ("training", "metrics", "versions", "vocabulary", "lookahead"):
        assert key in meta
    assert meta["training"]["traces"][0]["train_steps"] and meta["training"]["traces"][0]["holdout_steps"]
    for p in folder.iterdir():
        p.read_text(encoding="utf-8")  # text only: LightGBM's model format and JSON


def test_two_architectures_two_artifacts(model_dir, moe_train, static_train):
    """Training on traces of two architectures writes one artifact for each."""
    assert {p.name for p in model_dir.iterdir()} == {artifact_dirname(moe_train.architecture),
                                                     artifact_dirname(static_train.architecture)}  # fmt: skip
    with pytest.raises(PolicyError, match="2 architectures"):
        load_artifact(model_dir)  # ambiguous without an architecture


def test_wrong_architecture_is_a_clear_error(model_dir, moe_train, static_train):
    """Another architecture's signature raises ArchitectureMismatchError naming what the folder has."""
    with pytest.raises(ArchitectureMismatchError, match="no predictor for architecture 'OtherModel-1'") as e:
        make_policy(f"learned:{model_dir}", architecture="OtherModel-1")
    assert moe_train.architecture in str(e.value)
    one = model_dir / artifact_dirname(moe_train.architecture)
    with pytest.raises(ArchitectureMismatchError, match="OtherModel-1"):
        load_artifact(one, "OtherModel-1")
    # a session of another model (no architecture given) is caught by its keys
    policy = make_policy(f"learned:{one}")
    info = TensorInfo(keys=("param:x.weight", "param:y.weight"), kinds=np.zeros(2, np.int8), nbytes=np.ones(2, np.int64),
                      layers=np.full(2, -1, np.int16), modules=("x", "y"))  # fmt: skip
    with pytest.raises(ArchitectureMismatchError, match="another model"):
        policy.start(info)


def _copy(model_dir, arch, tmp_path):
    src = model_dir / artifact_dirname(arch)
    dst = tmp_path / "m" / src.name
    shutil.copytree(src, dst)
    return dst


def test_corrupt_model_file_names_the_file(model_dir, moe_train, tmp_path):
    """A damaged model.txt raises CorruptModelError naming it, with or without its checksum."""
    folder = _copy(model_dir, moe_train.architecture, tmp_path)
    text = (folder / MODEL_FILE).read_text()
    (folder / MODEL_FILE).write_text(text[: len(text) // 3])  # truncated
    with pytest.raises(CorruptModelError, match=f"{MODEL_FILE}: checksum"):
        load_artifact(folder, moe_train.architecture)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / MODEL_FILE).write_text("tree\nnot a model at all\n")  # checksum updated to match: parsed, refused
    meta["files"][MODEL_FILE]["sha256"] = hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest()
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptModelError, match=f"{MODEL_FILE}: not a valid LightGBM model"):
        make_policy(f"learned:{folder.parent}", architecture=moe_train.architecture)


def test_missing_or_damaged_metadata_is_a_clear_error(model_dir, moe_train, tmp_path):
    """A folder without meta.json is not a model; an unreadable one names meta.json."""
    with pytest.raises(PolicyError, match="no trained predictor"):
        load_artifact(tmp_path)
    folder = _copy(model_dir, moe_train.architecture, tmp_path)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(CorruptModelError, match="meta.json"):
        load_artifact(folder)
    (folder / "table.json").unlink()
    with pytest.raises(CorruptModelError):
        load_artifact(folder)

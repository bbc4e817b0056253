"""The model artifact: one folder per architecture, text only, no pickle.

    MODEL_DIR/
      GPT2LMHeadModel-20d580eb22a0c016/
        meta.json     architecture, vocabulary (tensor keys), module types, feature spec,
                      threshold, training summary, metrics, versions, file checksums
        table.json    the candidate table (context -> candidates with their statistics)
        model.txt     LightGBM's text model

`load_artifact(MODEL_DIR, architecture=SIG)` finds the folder whose meta.json names
SIG; another architecture is an ArchitectureMismatchError, a damaged file a
CorruptModelError naming it (checksums in meta.json catch silent edits too).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from predictor.features import FEATURE_VERSION, FEATURES, CandidateTable, KeyInfo
from predictor.interface import PolicyError

FORMAT = "prefetch.predictor"
FORMAT_VERSION = 1
META_FILE = "meta.json"
TABLE_FILE = "table.json"
MODEL_FILE = "model.txt"


class ArchitectureMismatchError(PolicyError):
    """The model folder holds no predictor for the job's architecture."""


class CorruptModelError(PolicyError):
    """A model file is missing, unreadable or altered since training."""


@dataclass
class Artifact:
    """A trained predictor for one architecture, in memory."""

    architecture: str
    keyinfo: KeyInfo
    table: CandidateTable
    booster: lgb.Booster
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def lookahead(self) -> int:
        return self.table.lookahead


def artifact_dirname(architecture: str) -> str:
    """A folder name for an architecture signature: readable, filesystem-safe, unique."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", architecture).strip("._") or "arch"
    if safe == architecture and len(safe) <= 100:
        return safe
    return f"{safe[:80]}-{hashlib.sha1(architecture.encode()).hexdigest()[:10]}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def versions() -> dict[str, str]:
    import pyarrow
    import sklearn

    return {
        "python": platform.python_version(),
        "lightgbm": lgb.__version__,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "scikit-learn": sklearn.__version__,
        "format": str(FORMAT_VERSION),
        "features": str(FEATURE_VERSION),
    }


def save_artifact(artifact: Artifact, model_dir: str | os.PathLike[str]) -> Path:
    """Write `artifact` under model_dir/<architecture folder>/ and return that folder."""
    out = Path(model_dir) / artifact_dirname(artifact.architecture)
    out.mkdir(parents=True, exist_ok=True)
    model_path, table_path = out / MODEL_FILE, out / TABLE_FILE
    artifact.booster.save_model(str(model_path))
    table_path.write_text(json.dumps(artifact.table.to_json(), separators=(",", ":")))
    meta = dict(artifact.meta)
    meta.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        architecture=artifact.architecture,
        vocabulary=list(artifact.keyinfo.keys),
        module_types=list(artifact.keyinfo.mtypes),
        features={"version": FEATURE_VERSION, "names": list(FEATURES)},
        lookahead=artifact.table.lookahead,
        max_candidates=artifact.table.max_candidates,
        threshold=artifact.threshold,
        files={MODEL_FILE: {"sha256": _sha256(model_path)}, TABLE_FILE: {"sha256": _sha256(table_path)}},
        versions=versions(),
    )
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, out / META_FILE)
    artifact.meta, artifact.path = meta, out
    return out


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptModelError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptModelError(f"{path}: not a readable JSON model description ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptModelError(f"{path}: not a {FORMAT} model description")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CorruptModelError(
            f"{path}: model format version {meta.get('format_version')}, this build reads {FORMAT_VERSION}; retrain"
        )
    return meta


def list_artifacts(model_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """architecture -> artifact folder, for model_dir itself or its immediate subfolders."""
    root = Path(model_dir)
    if not root.is_dir():
        raise PolicyError(f"{root}: model folder not found")
    candidates = [root] if (root / META_FILE).exists() else sorted(p for p in root.iterdir() if (p / META_FILE).exists())
    found: dict[str, Path] = {}
    for folder in candidates:
        found[str(_read_meta(folder / META_FILE).get("architecture", ""))] = folder
    return found


def find_artifact(model_dir: str | os.PathLike[str], architecture: str | None) -> Path:
    """The folder under model_dir holding the predictor for `architecture`.

    With architecture=None the folder must hold exactly one predictor."""
    found = list_artifacts(model_dir)
    if not found:
        raise PolicyError(f"{model_dir}: no trained predictor here (no */{META_FILE}); run `prefetch train`")
    if architecture is None:
        if len(found) == 1:
            return next(iter(found.values()))
        raise PolicyError(
            f"{model_dir} holds predictors for {len(found)} architectures ({', '.join(sorted(found))}); "
            "say which (the trace manifest's or the daemon hello's `architecture`)"
        )
    if architecture in found:
        return found[architecture]
    raise ArchitectureMismatchError(
        f"{model_dir}: no predictor for architecture {architecture!r}; it has: {', '.join(sorted(found))}. "
        "Record traces of this model and run `prefetch train`."
    )


def load_artifact(model_dir: str | os.PathLike[str], architecture: str | None = None) -> Artifact:
    """Load the predictor for `architecture` from model_dir (a MODEL_DIR or one artifact folder)."""
    folder = find_artifact(model_dir, architecture)
    meta = _read_meta(folder / META_FILE)
    if architecture is not None and meta.get("architecture") != architecture:
        raise ArchitectureMismatchError(
            f"{folder}: trained for architecture {meta.get('architecture')!r}, not {architecture!r}"
        )
    files = meta.get("files", {})
    for name in (MODEL_FILE, TABLE_FILE):
        path = folder / name
        if not path.exists():
            raise CorruptModelError(f"{path}: file not found")
        expected = files.get(name, {}).get("sha256")
        if expected and _sha256(path) != expected:
            raise CorruptModelError(f"{path}: checksum differs from {META_FILE}; the file was altered or damaged, retrain")
    model_path = folder / MODEL_FILE
    try:
        booster = lgb.Booster(model_str=model_path.read_text())
    except (lgb.basic.LightGBMError, UnicodeDecodeError, OSError) as exc:
        raise CorruptModelError(f"{model_path}: not a readable LightGBM model ({exc})") from None
    names = meta.get("features", {}).get("names")
    if names != list(FEATURES) or booster.num_feature() != len(FEATURES):
        raise CorruptModelError(
            f"{model_path}: trained on another feature set (feature version "
            f"{meta.get('features', {}).get('version')}, {booster.num_feature()} features) than this build computes "
            f"(version {FEATURE_VERSION}, {len(FEATURES)} features); retrain with `prefetch train`"
        )
    table_path = folder / TABLE_FILE
    try:
        table = CandidateTable.from_json(json.loads(table_path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptModelError(f"{table_path}: not a readable candidate table ({exc})") from None
    try:
        keyinfo = KeyInfo.from_keys(list(meta["vocabulary"]), meta.get("module_types"))
        threshold = float(meta.get("threshold", 0.5))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptModelError(f"{folder / META_FILE}: missing or malformed field ({exc!r})") from None
    if len(table.cand) and int(table.cand.max()) >= keyinfo.size:
        raise CorruptModelError(f"{table_path}: refers to tensors beyond the vocabulary in {META_FILE}")
    return Artifact(
        architecture=str(meta.get("architecture", "")),
        keyinfo=keyinfo,
        table=table,
        booster=booster,
        threshold=threshold,
        meta=meta,
        path=folder,
    )

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

from predictor.candidates import CandidateTable
from predictor.features import FEATURE_VERSION, FEATURES, KeyInfo
from predictor.interface import PolicyError

FORMAT = "prefetch.predictor"
FORMAT_VERSION = 1
META_FILE = "meta.json"
TABLE_FILE = "table.json"
MODEL_FILE = "model.txt"


class ArchitectureMismatchError(PolicyError):
    """The model folder holds no predictor for the job's architecture."""


class CorruptModelError(PolicyError):
    """A model file is missing, unreadable or altered since training.

    `file` (a file name, no folder) and `problem` (what is wrong) travel separately, so
    the daemon can tell a remote client what failed without revealing its paths."""

    def __init__(self, message: str, *, file: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.file = file
        self.problem = problem


def _corrupt(path: Path, problem: str) -> CorruptModelError:
    """The one-line error for `path`: "PATH: PROBLEM"."""
    return CorruptModelError(f"{path}: {problem}", file=path.name, problem=problem)


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


def update_meta(folder: str | os.PathLike[str], key: str, value: Any) -> None:
    """Set one key of an artifact folder's meta.json (what is measured after training, such as
    the guard's prior), atomically; the model and table files and their checksums are untouched."""
    path = Path(folder) / META_FILE
    meta = _read_meta(path)
    meta[key] = value
    tmp = path.with_name(META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise _corrupt(path, "file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _corrupt(path, f"not a readable JSON model description ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _corrupt(path, f"not a {FORMAT} model description")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _corrupt(path, f"model format version {meta.get('format_version')!r}, this build reads "
                             f"{FORMAT_VERSION}; retrain")
    if not isinstance(meta.get("architecture"), str) or not meta["architecture"]:
        raise _corrupt(path, "'architecture' must be a non-empty string")
    return meta


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    """Every field load_artifact uses has the type it needs, so a bad meta.json is a
    one-line CorruptModelError, not an AttributeError. Keys it does not use (training
    provenance such as `training_data`, `train_seeds`) are left alone."""
    files = meta.get("files")
    if files is None:
        raise _corrupt(path, f"no 'files' checksums (every artifact of `prefetch train` has them); retrain")
    if not isinstance(files, dict):
        raise _corrupt(path, f"'files' must map file names to {{\"sha256\": ...}}, got {type(files).__name__}")
    for name in (MODEL_FILE, TABLE_FILE):
        entry = files.get(name)
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise _corrupt(path, f"'files'.{name} must be {{\"sha256\": 64 hex digits}}, got {entry!r:.80}")
    vocab = meta.get("vocabulary")
    if not isinstance(vocab, list) or not all(isinstance(k, str) for k in vocab):
        raise _corrupt(path, "'vocabulary' must be a list of tensor keys (strings)")
    mtypes = meta.get("module_types")
    if mtypes is not None and (not isinstance(mtypes, list) or not all(isinstance(m, str) for m in mtypes)):
        raise _corrupt(path, "'module_types' must be a list of strings")
    features = meta.get("features")
    if not isinstance(features, dict) or not isinstance(features.get("names"), list):
        raise _corrupt(path, f"'features' must be {{\"version\", \"names\": [...]}}, got {features!r:.80}")
    threshold = meta.get("threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise _corrupt(path, f"'threshold' must be a number in [0, 1], got {threshold!r}")  # NaN fails too


def list_artifacts(model_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """architecture -> artifact folder, for model_dir itself or its immediate subfolders.

    Two folders for one architecture are an error naming both (which one serves must
    never be a silent choice); so is a folder whose meta.json cannot be read."""
    found, duplicates, broken = _scan(model_dir)
    if broken:
        raise broken[0]
    if duplicates:
        arch, folders = next(iter(duplicates.items()))
        raise _duplicate_error(model_dir, arch, folders)
    return found


def _scan(model_dir: str | os.PathLike[str]) -> tuple[dict[str, Path], dict[str, list[Path]], list[CorruptModelError]]:
    root = Path(model_dir)
    if not root.is_dir():
        raise PolicyError(f"{root}: model folder not found")
    candidates = [root] if (root / META_FILE).exists() else sorted(p for p in root.iterdir() if (p / META_FILE).exists())
    found: dict[str, Path] = {}
    duplicates: dict[str, list[Path]] = {}
    broken: list[CorruptModelError] = []
    for folder in candidates:
        try:
            arch = _read_meta(folder / META_FILE)["architecture"]
        except CorruptModelError as exc:
            broken.append(exc)
            continue
        if arch in found:
            duplicates.setdefault(arch, [found[arch]]).append(folder)
        else:
            found[arch] = folder
    return found, duplicates, broken


def _duplicate_error(model_dir: str | os.PathLike[str], arch: str, folders: list[Path]) -> CorruptModelError:
    names = " and ".join(str(f) for f in folders)
    return CorruptModelError(
        f"{model_dir}: {names} both hold a predictor for architecture {arch!r}; remove all but one",
        file=META_FILE, problem=f"{len(folders)} folders hold a predictor for this architecture; remove all but one")


def find_artifact(model_dir: str | os.PathLike[str], architecture: str | None) -> Path:
    """The folder under model_dir holding the predictor for `architecture`.

    With architecture=None the folder must hold exactly one predictor. A damaged
    folder of another architecture does not stop this one from being found."""
    found, duplicates, broken = _scan(model_dir)
    if architecture is not None and architecture in duplicates:
        raise _duplicate_error(model_dir, architecture, duplicates[architecture])
    if architecture is not None and architecture in found:
        return found[architecture]
    if broken:  # perhaps the wanted one: say what is damaged rather than "not found"
        raise broken[0]
    if not found:
        raise PolicyError(f"{model_dir}: no trained predictor here (no */{META_FILE}); run `prefetch train`")
    if architecture is None:
        if duplicates:
            arch, folders = next(iter(duplicates.items()))
            raise _duplicate_error(model_dir, arch, folders)
        if len(found) == 1:
            return next(iter(found.values()))
        raise PolicyError(
            f"{model_dir} holds predictors for {len(found)} architectures ({', '.join(sorted(found))}); "
            "say which (the trace manifest's or the daemon hello's `architecture`)"
        )
    raise ArchitectureMismatchError(
        f"{model_dir}: no predictor for architecture {architecture!r}; it has: {', '.join(sorted(found))}. "
        "Record traces of this model and run `prefetch train`."
    )


def _read_checked(path: Path, expected: str) -> bytes:
    """The file's bytes, read once, after checking them against meta.json's sha256 (the
    same bytes are then parsed: no window for a swap between check and use)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _corrupt(path, "file not found") from None
    except OSError as exc:
        raise _corrupt(path, f"unreadable ({exc.strerror})") from None
    if hashlib.sha256(data).hexdigest() != expected:
        raise _corrupt(path, f"checksum differs from {META_FILE}; the file was altered or damaged, retrain")
    return data


def load_booster(model_path: Path, data: bytes) -> lgb.Booster:
    """A LightGBM booster from a model file's bytes, checked first (predictor.model_check):
    a file LightGBM would abort or misread on is a CorruptModelError, never a crash."""
    from predictor.model_check import MAX_MODEL_BYTES, check_model_text, probe_model_text

    if len(data) > MAX_MODEL_BYTES:
        raise _corrupt(model_path, f"{len(data)} bytes, more than any model `prefetch train` writes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise _corrupt(model_path, "not a LightGBM text model (not ASCII)") from None
    problem = check_model_text(text, len(FEATURES)) or probe_model_text(text, len(FEATURES))
    if problem:
        raise _corrupt(model_path, f"not a valid LightGBM model: {problem}")
    try:
        return lgb.Booster(model_str=text)
    except (lgb.basic.LightGBMError, ValueError) as exc:
        raise _corrupt(model_path, f"not a readable LightGBM model ({exc})") from None


def load_artifact(model_dir: str | os.PathLike[str], architecture: str | None = None) -> Artifact:
    """Load the predictor for `architecture` from model_dir (a MODEL_DIR or one artifact folder)."""
    folder = find_artifact(model_dir, architecture)
    meta_path = folder / META_FILE
    meta = _read_meta(meta_path)
    if architecture is not None and meta.get("architecture") != architecture:
        raise ArchitectureMismatchError(
            f"{folder}: trained for architecture {meta.get('architecture')!r}, not {architecture!r}"
        )
    _check_meta(meta, meta_path)
    files = meta["files"]
    model_path, table_path = folder / MODEL_FILE, folder / TABLE_FILE
    model_bytes = _read_checked(model_path, files[MODEL_FILE]["sha256"])
    table_bytes = _read_checked(table_path, files[TABLE_FILE]["sha256"])
    names = meta["features"]["names"]
    if names != list(FEATURES):
        raise _corrupt(model_path, f"trained on another feature set (feature version "
                                   f"{meta['features'].get('version')!r}, {len(names)} features) than this build "
                                   f"computes (version {FEATURE_VERSION}, {len(FEATURES)} features); retrain with "
                                   "`prefetch train`")
    booster = load_booster(model_path, model_bytes)
    try:
        table = CandidateTable.from_json(json.loads(table_bytes.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError, ValueError,
            AttributeError, OverflowError) as exc:
        raise _corrupt(table_path, f"not a readable candidate table ({type(exc).__name__}: {exc})") from None
    try:
        keyinfo = KeyInfo.from_keys(list(meta["vocabulary"]), meta.get("module_types"))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise _corrupt(meta_path, f"'vocabulary' holds a key this build cannot parse ({exc!r})") from None
    if len(table.cand) and (int(table.cand.min()) < 0 or int(table.cand.max()) >= keyinfo.size):
        raise _corrupt(table_path, f"refers to tensors outside the vocabulary in {META_FILE}")
    if len(table.start) and (int(table.start[0]) != 0 or bool(np.any(np.diff(table.start) < 0))):
        raise _corrupt(table_path, "inconsistent candidate table offsets")
    if table.lookahead < 1 or table.max_candidates < 1:
        raise _corrupt(table_path, "lookahead and max_candidates must be >= 1")
    return Artifact(
        architecture=meta["architecture"],
        keyinfo=keyinfo,
        table=table,
        booster=booster,
        threshold=float(meta.get("threshold", 0.5)),
        meta=meta,
        path=folder,
    )

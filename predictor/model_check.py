"""Check a LightGBM text model before LightGBM sees it: no file may abort the process.

    problem = check_model_text(text, num_features=31)   # None, or what is wrong (one line)
    problem = probe_model_text(text, num_features=31)   # the same question, asked of LightGBM
                                                         # in a throw-away child process

Why: LightGBM parses a model's trees inside an OpenMP loop, where its format errors
cannot become Python exceptions: a truncated or garbled model.txt ends the whole
process with SIGABRT ("terminate called without an active exception"), and a tree
whose child or feature indices point outside its arrays reads memory it does not own
when it predicts. Whoever loads an artifact (the daemon, `prefetch simulate`, a
training process through `runtime.prefetching`) would die with it.

Two independent checks, both before the parent process calls LightGBM:
1. `check_model_text`: a parser for the subset of LightGBM's text format that
   `prefetch train` writes (binary objective, numerical splits, no linear trees):
   header fields, every tree's array lengths, a proper tree topology (each node and
   leaf reached exactly once, so prediction terminates inside the arrays), feature
   indices below the feature count, `tree_sizes` matching the tree blocks (LightGBM
   jumps by them), and the `end of trees` line (a cut file lacks it).
2. `probe_model_text`: loads the same bytes with lib_lightgbm in a child process
   (ctypes only: no numpy or lightgbm import, ~0.1 s) and predicts a few rows; a
   child killed by a signal or failing means the file is refused. A passing checksum
   is remembered in this process and in a small cache folder
   ($PREFETCH_CACHE_DIR, else $XDG_CACHE_HOME/learned-prefetch, else ~/.cache/...),
   so each model file costs one child process per machine and LightGBM version.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

MAX_MODEL_BYTES = 256 << 20  # larger than any model `prefetch train` writes by orders of magnitude
PROBE_TIMEOUT_S = 60.0

_NODE_ARRAYS = ("split_feature", "split_gain", "threshold", "decision_type", "left_child", "right_child",
                "internal_value", "internal_weight", "internal_count")
_LEAF_ARRAYS = ("leaf_value", "leaf_weight", "leaf_count")
_REQUIRED_NODE = ("split_feature", "threshold", "decision_type", "left_child", "right_child")
_HEADER_REQUIRED = ("version", "num_class", "num_tree_per_iteration", "max_feature_idx", "feature_names")

_verified: set[str] = set()  # sha256 of model texts that passed the probe in this process


_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def check_model_text(text: str, num_features: int | None = None) -> str | None:
    """None when `text` is a model LightGBM loads and predicts with safely, else a one-line
    description of the first problem found (no path: the caller names the file)."""
    if not text.isascii():
        return "not ASCII text (LightGBM writes ASCII)"
    bad = _CONTROL.search(text)
    if bad:  # a NUL ends LightGBM's C string early and its tree_sizes offsets then read past it
        return f"control character {bad.group()!r} at offset {bad.start()} (LightGBM writes none)"
    lines = text.split("\n")
    if not lines or lines[0].strip() != "tree":
        return "does not start with LightGBM's 'tree' line"
    header: dict[str, str] = {}
    i = 1
    while i < len(lines) and not lines[i].startswith("Tree="):
        key, sep, value = lines[i].partition("=")
        if sep:
            header[key.strip()] = value.strip()
        if lines[i].startswith("end of trees"):
            break
        i += 1
    missing = [k for k in _HEADER_REQUIRED if k not in header]
    if missing:
        return f"header lacks {', '.join(missing)}"
    try:
        num_class = int(header["num_class"])
        per_iter = int(header["num_tree_per_iteration"])
        max_feature_idx = int(header["max_feature_idx"])
    except ValueError:
        return "header: num_class, num_tree_per_iteration or max_feature_idx is not an integer"
    if num_class != 1 or per_iter != 1:
        return f"num_class={num_class}, num_tree_per_iteration={per_iter}: expected a binary model (1, 1)"
    if not 0 <= max_feature_idx < 1 << 16:
        return f"max_feature_idx={max_feature_idx} out of range"
    if num_features is not None and max_feature_idx + 1 != num_features:
        return f"{max_feature_idx + 1} features, this build computes {num_features}"
    if len(header["feature_names"].split()) != max_feature_idx + 1:
        return f"feature_names has {len(header['feature_names'].split())} names for {max_feature_idx + 1} features"
    sizes: list[int] | None = None
    if "tree_sizes" in header:
        try:
            sizes = [int(s) for s in header["tree_sizes"].split()]
        except ValueError:
            return "tree_sizes is not a list of integers"
    # Tree blocks: "Tree=k" lines, in order, up to "end of trees".
    starts = [n for n, line in enumerate(lines) if line.startswith("Tree=")]
    ends = [n for n, line in enumerate(lines) if line.startswith("end of trees")]
    if not ends:
        return "no 'end of trees' line (the file is cut short)"
    end = ends[0]
    if "parameters:" in lines[end:] and not any(ln.startswith("end of parameters") for ln in lines[end:]):
        return "a 'parameters:' section with no 'end of parameters' line (the file is cut short)"
    starts = [s for s in starts if s < end]
    if not starts:
        return "holds no trees"
    if sizes is not None and len(sizes) != len(starts):
        return f"tree_sizes lists {len(sizes)} trees, the file holds {len(starts)}"
    offsets = _line_offsets(lines)
    for k, s in enumerate(starts):
        stop = starts[k + 1] if k + 1 < len(starts) else end
        if lines[s] != f"Tree={k}":
            return f"tree {k} is headed {lines[s][:40]!r}"
        if sizes is not None and offsets[stop] - offsets[s] != sizes[k]:
            return f"tree {k} is {offsets[stop] - offsets[s]} bytes, tree_sizes says {sizes[k]}"
        problem = _check_tree(lines[s + 1:stop], max_feature_idx)
        if problem:
            return f"tree {k}: {problem}"
    return None


def _line_offsets(lines: list[str]) -> list[int]:
    """Byte offset of the start of every line (ASCII: one byte per character)."""
    out, pos = [], 0
    for line in lines:
        out.append(pos)
        pos += len(line) + 1
    out.append(pos)
    return out


def _check_tree(block: list[str], max_feature_idx: int) -> str | None:
    kv: dict[str, str] = {}
    for line in block:
        key, sep, value = line.partition("=")
        if sep:
            kv[key] = value
        elif line.strip():
            return f"unexpected line {line[:40]!r}"
    try:
        n = int(kv.get("num_leaves", ""))
    except ValueError:
        return "num_leaves missing or not an integer"
    if not 1 <= n <= 1 << 20:
        return f"num_leaves={n} out of range"
    if kv.get("num_cat", "0").strip() != "0":
        return "categorical splits (num_cat != 0): `prefetch train` never writes them"
    if kv.get("is_linear", "0").strip() != "0":
        return "linear trees: `prefetch train` never writes them"
    if "leaf_value" not in kv:
        return "no leaf_value"
    if n > 1 and any(k not in kv for k in _REQUIRED_NODE):
        return f"lacks one of {', '.join(_REQUIRED_NODE)}"
    arrays: dict[str, list[float]] = {}
    for name, length in [(a, n - 1) for a in _NODE_ARRAYS] + [(a, n) for a in _LEAF_ARRAYS]:
        if name not in kv or (length == 0 and name in _NODE_ARRAYS):
            continue
        parts = kv[name].split()
        if n == 1 and not parts and name != "leaf_value":
            continue  # LightGBM writes a single-leaf tree's leaf_weight empty
        if len(parts) != length:
            return f"{name} has {len(parts)} values, expected {length}"
        try:
            arrays[name] = [float(p) for p in parts]
        except ValueError:
            return f"{name} holds a non-number"
    if not all(math.isfinite(v) for v in arrays["leaf_value"]):
        return "leaf_value holds NaN or inf"
    if "shrinkage" in kv:
        try:
            float(kv["shrinkage"])
        except ValueError:
            return "shrinkage is not a number"
    if n == 1:
        return None
    ints = {}
    for name in ("split_feature", "decision_type", "left_child", "right_child"):
        vals = arrays[name]
        if not all(v.is_integer() for v in vals):
            return f"{name} holds a non-integer"
        ints[name] = [int(v) for v in vals]
    if any(not 0 <= f <= max_feature_idx for f in ints["split_feature"]):
        return f"split_feature outside [0, {max_feature_idx}]"
    if any(not 0 <= d <= 255 or d & 1 or (d >> 2) & 3 > 2 for d in ints["decision_type"]):
        return "decision_type holds a categorical or unknown split"
    if any(math.isnan(t) for t in arrays["threshold"]):
        return "threshold holds NaN"
    # Topology: internal nodes 1..n-2 and leaves 0..n-1 each reached exactly once; the
    # root (0) never is. Then traversal from the root ends in a leaf within n-1 moves.
    seen_nodes, seen_leaves = [0] * (n - 1), [0] * n
    for c in ints["left_child"] + ints["right_child"]:
        if 1 <= c <= n - 2:
            seen_nodes[c] += 1
        elif -n <= c <= -1:
            seen_leaves[~c] += 1
        else:
            return f"child index {c} outside the tree of {n} leaves"
    if not all(v == 1 for v in seen_nodes[1:]) or not all(v == 1 for v in seen_leaves):
        return "nodes or leaves are not each reached exactly once (not a tree)"
    return None


# -- the child-process probe -----------------------------------------------------------------

_PROBE = r"""
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
nfeat = int(sys.argv[2])
lib.LGBM_GetLastError.restype = ctypes.c_char_p
text = sys.stdin.buffer.read()
handle, iters = ctypes.c_void_p(), ctypes.c_int()
if lib.LGBM_BoosterLoadModelFromString(ctypes.c_char_p(text), ctypes.byref(iters), ctypes.byref(handle)) != 0:
    sys.stderr.write("load: " + lib.LGBM_GetLastError().decode(errors="replace") + "\n"); sys.exit(3)
got = ctypes.c_int()
if lib.LGBM_BoosterGetNumFeature(handle, ctypes.byref(got)) != 0 or (nfeat >= 0 and got.value != nfeat):
    sys.stderr.write("features: %d, expected %d\n" % (got.value, nfeat)); sys.exit(4)
n = got.value
rows = [[0.0] * n, [1.0] * n, [-1.0] * n, [1e30] * n, [float("nan")] * n, [float(j % 7) for j in range(n)]]
data = (ctypes.c_double * (n * len(rows)))(*[v for r in rows for v in r])
out = (ctypes.c_double * len(rows))()
out_len = ctypes.c_int64()
rc = lib.LGBM_BoosterPredictForMat(handle, data, 1, len(rows), n, 1, 0, 0, -1, b"num_threads=1",
                                   ctypes.byref(out_len), out)
if rc != 0 or out_len.value != len(rows):
    sys.stderr.write("predict: " + lib.LGBM_GetLastError().decode(errors="replace") + "\n"); sys.exit(5)
buf, buf_len = ctypes.create_string_buffer(1 << 20), ctypes.c_int64()  # lightgbm.Booster(model_str=) reads these
if lib.LGBM_BoosterGetLoadedParam(handle, ctypes.c_int64(1 << 20), ctypes.byref(buf_len), buf) != 0:
    sys.stderr.write("params: " + lib.LGBM_GetLastError().decode(errors="replace") + "\n"); sys.exit(6)
lib.LGBM_BoosterFree(handle)
sys.stdout.write("ok\n")
"""


def _cache_dir() -> Path | None:
    base = os.environ.get("PREFETCH_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "learned-prefetch"


def _marker(digest: str) -> Path | None:
    import lightgbm

    folder = _cache_dir()
    return None if folder is None else folder / "verified-models" / f"{digest}-lightgbm-{lightgbm.__version__}"


def probe_model_text(text: str, num_features: int | None = None, *, use_cache: bool = True) -> str | None:
    """None when lib_lightgbm, in a child process, loads `text` and predicts with it; else
    what went wrong (a signal that killed the child, or LightGBM's own error)."""
    data = text.encode("ascii", errors="replace")
    digest = hashlib.sha256(data + f"|{num_features}".encode()).hexdigest()
    if use_cache and digest in _verified:
        return None
    marker = _marker(digest) if use_cache else None
    if marker is not None and marker.exists():
        _verified.add(digest)
        return None
    from lightgbm.basic import _LIB  # the library this process would load the model with

    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LD_LIBRARY_PATH", "SYSTEMROOT", "HOME")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-I", "-S", "-c", _PROBE, str(_LIB._name), str(-1 if num_features is None else num_features)]
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, env=env, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"LightGBM did not load it within {PROBE_TIMEOUT_S:g} s"
    except OSError as exc:  # no child processes allowed here: the parser's verdict stands
        import logging

        logging.getLogger("predictor.model_check").warning("model probe not run (%s); relying on the parser", exc)
        return None
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return f"LightGBM crashed loading it ({name})"
    if proc.returncode != 0 or proc.stdout.strip() != b"ok":
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        return f"LightGBM refused it ({last[:200]})"
    _verified.add(digest)
    if marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("ok\n")
        except OSError:
            pass  # a read-only home: verified again next time
    return None

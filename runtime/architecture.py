"""The architecture signature: how a job finds its predictor without naming it.

Derived from the model itself (class name, parameter names, shapes and dtypes), so two
runs of the same architecture with different seeds or data share it, and any change to
the parameter layout (another depth, width, or expert split) gives another one.
"""

from __future__ import annotations

import hashlib
import re

import torch

_LAYER_RE = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def architecture_signature(model: torch.nn.Module) -> str:
    """`<ModelClass>-<16 hex>`: readable, and exact about the parameter layout."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, p in model.named_parameters():
        h.update(f"|{name}:{tuple(p.shape)}:{p.dtype}".encode())
    return f"{type(model).__name__}-{h.hexdigest()[:16]}"


def layer_of(path: str) -> int:
    """The first integer component of a module path (the block index), -1 if none."""
    m = _LAYER_RE.search(path)
    return int(m.group(1)) if m else -1


def model_config_dict(model: torch.nn.Module) -> dict:
    """A JSON-safe view of a Hugging Face config, if the model has one."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        return {}
    out = {}
    for k, v in cfg.to_dict().items():
        if isinstance(v, (str, int, float, bool, type(None))):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in v):
            out[k] = list(v)
    return out

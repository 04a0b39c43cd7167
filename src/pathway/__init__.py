"""Cross-modal re-parameterization (Multimodal Pathway, arXiv 2401.14405) for transformer backbones.

The names below load on first use, so that importing a submodule that needs no torch (``pathway.entry``, which sets
the CPU-thread environment before torch loads) does not load it.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "CheckpointError": "pathway.checkpoint",
    "load_state_dict": "pathway.checkpoint",
    "load_weights": "pathway.checkpoint",
    "PathwayLinear": "pathway.layers",
    "fuse_pathway": "pathway.merge",
    "merge_pathway_": "pathway.merge",
    "plain_state_dict": "pathway.merge",
    "unmerge_pathway_": "pathway.merge",
    "DEFAULT_LAYER_NAMES": "pathway.surgery",
    "lambda_table": "pathway.surgery",
    "pathway_layers": "pathway.surgery",
    "reparameterize_aux_into_target_model": "pathway.surgery",
    "set_lambdas": "pathway.surgery",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'pathway' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

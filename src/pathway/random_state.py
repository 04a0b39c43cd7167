"""The global random state of one process (torch, CUDA, numpy, Python), in a form checkpoints can hold.

Lightning's ``_collect_rng_states`` keeps numpy's state as a numpy array, which a checkpoint loaded with
``weights_only=True`` (how every checkpoint is read here: no file runs code) refuses; here it is a tensor.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def get_random_state(include_cuda: bool = True) -> dict[str, Any]:
    """This process's random state: torch CPU (and every CUDA device's), numpy's global and Python's."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }
    if include_cuda and torch.cuda.is_available():
        state["torch.cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict[str, Any]) -> None:
    """Restore what ``get_random_state`` returned."""
    torch.set_rng_state(state["torch"])
    if "torch.cuda" in state:
        torch.cuda.set_rng_state_all(state["torch.cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))

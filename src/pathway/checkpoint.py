"""Reading target/aux checkpoints in the formats people actually have, and loading them with clear errors.

Released M2PT checkpoints are pickled timm modules, MAE/VideoMAE/AudioMAE ones nest their weights under
'model'/'module', Lightning ones under 'state_dict' with the LightningModule's attribute prefix.  All end up
as one flat ``{name: tensor}`` dict with the usual wrapper prefixes stripped.
"""
from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model", "module", "model_state", "base_model", "net")
STRIP_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "encoder.", "backbone.", "model.")

PathLike = Union[str, os.PathLike]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def _unwrap(obj: Any, path: PathLike) -> Mapping[str, Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict or a pickled nn.Module, found {type(obj).__name__}")
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, nn.Module):
            return inner.state_dict()
        if isinstance(inner, Mapping) and any(isinstance(v, Tensor) for v in inner.values()):
            return inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{path}: no tensors found at the top level or under any of {list(WRAPPER_KEYS)}; "
            f"top-level keys are {sorted(map(str, obj))[:20]}"
        )
    return tensors


def strip_prefixes(state_dict: Mapping[str, Tensor], prefixes: tuple[str, ...] = STRIP_PREFIXES) -> dict[str, Tensor]:
    """Strip wrapper prefixes shared by every key (repeatedly: 'module._orig_mod.x' -> 'x')."""
    state = dict(state_dict)
    changed = True
    while changed and state:
        changed = False
        for prefix in prefixes:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def load_state_dict(path: PathLike, trust_pickle: bool = False) -> dict[str, Tensor]:
    """Read any supported checkpoint file into a flat ``{name: tensor}`` dict on the CPU.

    Files are read with ``weights_only=True`` unless ``trust_pickle`` is set: a pickled ``nn.Module`` (the
    released M2PT checkpoints) runs arbitrary code when unpickled, so the caller has to opt in.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return strip_prefixes(load_file(str(path), device="cpu"))
        except Exception as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        if trust_pickle:
            raise CheckpointError(f"{path}: cannot unpickle ({err})") from err
        raise CheckpointError(
            f"{path}: holds pickled Python objects (e.g. a whole nn.Module), which only load with "
            f"trust_pickle=True (runs pickle: only for files you trust). Detail: {str(err).splitlines()[0]}"
        ) from err
    except Exception as err:  # a corrupt/foreign file fails anywhere inside the unpickler (IndexError, KeyError ...)
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from err
    state = _unwrap(obj, path)
    if isinstance(obj, Mapping) and "pytorch-lightning_version" in obj:
        # A LightningModule checkpoint also holds metrics/EMA state: the model is what lives under `backbone.`.
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        state = backbone or state
    return strip_prefixes(state)


def _resize_pos_embed(value: Tensor, target: Tensor, num_prefix_tokens: int) -> Tensor:
    """Interpolate an absolute position embedding to the model's grid (square or given by ``grid_size``)."""
    from timm.layers import resample_abs_pos_embed

    def grid(n: int) -> list[int]:
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f"cannot infer a square grid from {n} position tokens")
        return [side, side]

    src_tokens = value.shape[1] - num_prefix_tokens
    dst_tokens = target.shape[1] - num_prefix_tokens
    return resample_abs_pos_embed(
        value, new_size=grid(dst_tokens), old_size=grid(src_tokens), num_prefix_tokens=num_prefix_tokens
    )


def load_weights(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    source: str = "<state dict>",
    strict: bool = False,
    ignore: Callable[[str], bool] = lambda key: False,
    num_prefix_tokens: Optional[int] = None,
) -> tuple[list[str], list[str]]:
    """Load ``state_dict`` into ``model``: position embeddings are interpolated, everything else must fit.

    A shape mismatch is always an error (naming the file, key and both shapes); missing/unexpected keys are an
    error under ``strict`` and otherwise logged and returned.  ``ignore`` drops keys that are expected not to fit
    (a new classifier head when fine-tuning on other classes).
    """
    own = model.state_dict()
    state = {k: v for k, v in state_dict.items() if not ignore(k)}
    prefix_tokens = num_prefix_tokens if num_prefix_tokens is not None else getattr(model, "num_prefix_tokens", 1)
    mismatched = []
    for key, value in state.items():
        if key not in own or tuple(value.shape) == tuple(own[key].shape):
            continue
        if key.endswith("pos_embed") and value.ndim == 3 and own[key].ndim == 3 and value.shape[-1] == own[key].shape[-1]:
            try:
                state[key] = _resize_pos_embed(value, own[key], prefix_tokens)
                log.info("%s: interpolated %s from %s to %s", source, key, tuple(value.shape), tuple(own[key].shape))
                continue
            except ValueError as err:
                mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)} ({err})")
                continue
        mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}")
    if mismatched:
        raise CheckpointError(f"{source}: {len(mismatched)} shape mismatch(es): " + "; ".join(mismatched[:10]))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{source}: does not match the model: missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
            f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
        )
    if not own.keys() & state.keys():
        raise CheckpointError(
            f"{source}: none of its {len(state)} keys match the model (first keys: {list(state)[:5]}, "
            f"model expects e.g. {list(own)[:5]}): wrong architecture or an unknown key prefix"
        )
    model.load_state_dict(state, strict=False)
    if missing:
        log.warning("%s: %d model keys not in checkpoint (kept at init): %s", source, len(missing), missing[:10])
    if unexpected:
        log.warning("%s: %d checkpoint keys unused: %s", source, len(unexpected), unexpected[:10])
    return missing, unexpected

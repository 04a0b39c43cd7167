"""Reading target/aux checkpoints in the formats people actually have, and loading them with clear errors.

Released M2PT checkpoints are pickled modules, MAE/VideoMAE/AudioMAE ones nest their weights under
'model'/'module', Lightning ones under 'state_dict' with the LightningModule's attribute prefix.  All end up
as one flat ``{name: tensor}`` dict with the usual wrapper prefixes stripped, and with any pathway still in it
(ours or the reference code's) folded into the plain weights: a pathway dropped on loading would silently
compute another function.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import types
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from pathway.layers import LAMBDAS, aux_weight_name, parse_aux_weight_key

log = logging.getLogger(__name__)

WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model", "module", "model_state", "base_model", "net")
STRIP_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "encoder.", "backbone.", "model.")

PathLike = Union[str, os.PathLike]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def file_sha256(path: PathLike) -> str:
    """Content hash recorded for auxiliary files, so a resumed or exported run can tell it got the same weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _MissingClass(Exception):
    def __init__(self, qualname: str) -> None:
        super().__init__(qualname)
        self.qualname = qualname


class _ClassNamingUnpickler(pickle.Unpickler):
    """Reports which class a pickled module needs, and finds timm layers pickled before timm moved them.

    timm < 0.9 pickles name ``timm.models.layers.<file>.<Class>``; timm 1.x keeps those classes in
    ``timm.layers.<file>``.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError) as err:
            if module.startswith("timm.models.layers."):
                try:
                    return super().find_class("timm.layers." + module[len("timm.models.layers."):], name)
                except (ImportError, AttributeError):
                    pass
            raise _MissingClass(f"{module}.{name}") from err


_NAMING_PICKLE = types.SimpleNamespace(
    __name__="pickle", Unpickler=_ClassNamingUnpickler,
    load=lambda fh, **kwargs: _ClassNamingUnpickler(fh, **kwargs).load(),
)


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


def is_url(path: Union[PathLike, str]) -> bool:
    """``scheme://...`` (http, https, s3, ...): this project reads local files only, and downloads nothing."""
    return "://" in str(path)


def refuse_url(path: Union[PathLike, str]) -> None:
    """Stop before any network access: Lightning would fetch an ``http(s)://`` checkpoint and unpickle it with
    ``weights_only=False`` (arbitrary code)."""
    if is_url(path):
        raise CheckpointError(
            f"{path}: is a URL; checkpoints are read from local files only (nothing is downloaded, and a remote file "
            f"would be unpickled). Download it yourself, check it, and pass the local path"
        )


def checkpoint_safe_globals() -> list[Any]:
    """numpy arrays, scalars and numeric dtypes: the RNG states (``np.random.get_state()``) that Lightning and the
    resume machinery keep in checkpoints.  Rebuilding them calls no function outside numpy's array constructors,
    and anything stored inside still goes through the weights-only unpickler."""
    import numpy as np
    from numpy._core.multiarray import _reconstruct, scalar

    kinds = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
             np.float16, np.float32, np.float64)
    return [_reconstruct, scalar, np.ndarray, np.dtype, *(type(np.dtype(kind)) for kind in kinds)]


def torch_load(path: PathLike, trust_pickle: bool = False, mmap: bool = False, what: str = "torch checkpoint") -> Any:
    """``torch.load`` of a local file on the CPU, weights-only unless ``trust_pickle``.

    Weights-only loading still reads everything a training checkpoint holds (tensors, containers, numbers,
    strings, numpy RNG states) but never imports or calls anything else, so an untrusted file cannot run code.
    Errors are ``CheckpointError``s naming the file.
    """
    refuse_url(path)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: is empty (0 bytes), not a {what}: a write that never finished?")
    mmap = mmap and zipfile.is_zipfile(path)  # files from torch < 1.6 are not zip archives and cannot be mapped
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_NAMING_PICKLE, mmap=mmap)
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except _MissingClass as err:
        raise CheckpointError(
            f"{path}: is a pickled object that needs the class '{err.qualname}', which cannot be imported here. "
            f"Put the code that defines it on PYTHONPATH (e.g. the repository the file was trained with), or, where "
            f"it loads, re-save only the weights: torch.save(torch.load(f, weights_only=False).state_dict(), "
            f"'weights.pth'), and use that file"
        ) from err
    except Exception as err:  # a corrupt/foreign file fails anywhere inside the unpickler (EOFError, KeyError ...)
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        needs = next((line for line in lines if "Unsupported global" in line), None)
        if isinstance(err, pickle.UnpicklingError) and needs and not trust_pickle:
            raise CheckpointError(
                f"{path}: holds pickled Python objects (e.g. a whole nn.Module), which only load with "
                f"trust_pickle=True (runs pickle: only for files you trust). Detail: {needs}"
            ) from err
        detail = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else "")
        raise CheckpointError(
            f"{path}: not a readable {what} ({path.stat().st_size} bytes; {type(err).__name__}: {detail}): "
            f"truncated, corrupt, or not written by torch.save"
        ) from err


def load_state_dict(path: PathLike, trust_pickle: bool = False) -> dict[str, Tensor]:
    """Read any supported checkpoint file into a flat ``{name: tensor}`` dict on the CPU, any pathway folded in.

    Files are read with ``weights_only=True`` unless ``trust_pickle`` is set: a pickled ``nn.Module`` (the
    released M2PT checkpoints) runs arbitrary code when unpickled, so the caller has to opt in.  A pathway still
    in the file is folded (``fold_pathway_state_dict``), so every caller gets the function the file computes.
    """
    refuse_url(path)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path), device="cpu")
        except Exception as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
        return fold_pathway_state_dict(strip_prefixes(tensors), source=str(path))
    obj = torch_load(path, trust_pickle=trust_pickle)
    state = _unwrap(obj, path)
    aux_files = None
    if isinstance(obj, Mapping) and "pytorch-lightning_version" in obj:
        # A LightningModule checkpoint also holds metrics/EMA state: the model is what lives under `backbone.`.
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        state = backbone or state
        aux_files = obj.get("pathway_aux_sha256") or (obj.get("hyper_parameters") or {}).get("aux_ckpts")
    return fold_pathway_state_dict(strip_prefixes(state), source=str(path), aux_files=aux_files)


# A layer's λ key suffix -> the name of its i-th aux weight: ours, and the reference code's (one aux per layer).
_AUX_NAMES: dict[str, Callable[[int], str]] = {
    "." + LAMBDAS: aux_weight_name, ".cross_modal_scale": lambda i: "aux_weight",
}
# Left over after folding, these would be aux weights (or pre-merge bookkeeping) without a λ to scale them.
_LEFTOVER_SUFFIXES = (".aux_weight", ".merged", ".merged_lambdas")


def fold_pathway_state_dict(
    state_dict: Mapping[str, Tensor], source: str = "<state dict>",
    aux_files: Optional[Union[Mapping[str, str], Sequence[str]]] = None,
) -> dict[str, Tensor]:
    """``state_dict`` with every pathway folded into its layer: ``W ← W + Σ λ_i·W_aux_i``, accumulated in fp32.

    Reads our keys (``<layer>.lambdas`` + ``<layer>.aux_weight_<i>``) and the reference code's
    (``<layer>.cross_modal_scale`` + ``<layer>.aux_weight``).  A λ whose aux weight is not in the file (a Lightning
    checkpoint that stores its frozen aux models by reference, ``aux_files`` names them) is an error, never a
    silent drop.  Pre-merged checkpoints (``merged``/``merged_lambdas`` buffers) fold only the part not yet in ``W``.
    """
    state = dict(state_dict)
    folded = []
    for key in list(state):
        suffix = next((s for s in _AUX_NAMES if key.endswith(s)), None)
        if suffix is None:
            continue
        layer = key[: -len(suffix)]
        lambdas = state.pop(key).detach().float().reshape(-1)
        aux_keys = [f"{layer}.{_AUX_NAMES[suffix](i)}" for i in range(len(lambdas))]
        if suffix == ".cross_modal_scale" and len(lambdas) != 1:
            raise CheckpointError(f"{source}: '{key}' holds {len(lambdas)} values, the reference code has one")
        missing = [k for k in aux_keys if k not in state]
        if f"{layer}.weight" not in state:
            missing.insert(0, f"{layer}.weight")
        if missing:
            raise CheckpointError(_unfoldable_message(source, layer, lambdas, missing, aux_files))
        merged, merged_lambdas = state.pop(f"{layer}.merged", None), state.pop(f"{layer}.merged_lambdas", None)
        if merged is not None and bool(merged) and merged_lambdas is not None:
            lambdas = lambdas - merged_lambdas.float().reshape(-1)
        weight = state[f"{layer}.weight"]
        total = weight.detach().float()
        for lam, aux_key in zip(lambdas, aux_keys):
            aux = state.pop(aux_key)
            if tuple(aux.shape) != tuple(weight.shape):
                raise CheckpointError(
                    f"{source}: '{aux_key}' has shape {tuple(aux.shape)}, its layer's weight {tuple(weight.shape)}"
                )
            total = total + lam * aux.detach().float()
        if not torch.isfinite(total).all():
            raise CheckpointError(f"{source}: folding λ·W_aux into '{layer}.weight' gives non-finite values")
        state[f"{layer}.weight"] = total.to(weight.dtype)
        folded.append(layer)
    leftover = [k for k in state if k.endswith(_LEFTOVER_SUFFIXES) or parse_aux_weight_key(k) is not None]
    if leftover:
        raise CheckpointError(
            f"{source}: pathway keys without a λ ('lambdas' or 'cross_modal_scale') next to them: {leftover[:5]}; "
            f"cannot tell how much of each auxiliary weight to fold in"
        )
    if folded:
        log.info("%s: folded λ·W_aux of %d pathway layers into their weights (e.g. %s)", source, len(folded),
                 folded[0])
    return state


def _unfoldable_message(source: str, layer: str, lambdas: Tensor, missing: list[str], aux_files: Any) -> str:
    message = (
        f"{source}: pathway layer '{layer}' has λ = {[round(v, 6) for v in lambdas.tolist()]} but the file lacks "
        f"{missing}, so it cannot be folded to the function it was trained as."
    )
    if isinstance(aux_files, Mapping) and aux_files:
        recorded = ", ".join(f"{p} (sha256 {str(d)[:12]}…)" for p, d in aux_files.items())
        message += f" The checkpoint stores its frozen auxiliary models by reference: {recorded}."
    elif aux_files:
        message += f" It was trained with auxiliary models {list(aux_files)}, not stored in it."
    return message + (
        f" Fold it into a plain model first: `python -m pathway export {source} --out <dir>` writes "
        f"<dir>/model.safetensors (a training run's `merged.safetensors` is the same), and use that file"
    )


# Where each known format keeps its encoder blocks (decoders are never aux): timm/MAE/AudioMAE/our exports and
# Lightning checkpoints, VideoMAE pre-training, Point-MAE fine-tuning, Point-MAE pre-training.
AUX_BLOCK_LAYOUTS: tuple[str, ...] = ("blocks.", "encoder.blocks.", "blocks.blocks.", "MAE_encoder.blocks.blocks.")


def _block_list_prefix(state: Mapping[str, Tensor], main_body_name: str, source: str) -> str:
    """The one prefix under which ``state`` keeps its (encoder) transformer blocks as ``<prefix><i>.``."""
    layouts = list(dict.fromkeys((main_body_name + ".",) + AUX_BLOCK_LAYOUTS))
    with_blocks = [p for p in layouts
                   if any(k.startswith(p) and k[len(p):].split(".", 1)[0].isdigit() for k in state)]
    if len(with_blocks) == 1:
        return with_blocks[0]
    if not with_blocks:
        raise CheckpointError(
            f"{source}: no transformer blocks found as an auxiliary model: expected keys '<prefix><i>.<layer>.weight' "
            f"with a prefix of {layouts}; first keys are {list(state)[:5]}"
        )
    raise CheckpointError(f"{source}: blocks found under several prefixes {with_blocks}; which are the encoder's?")


def aux_state_dict(
    state_dict: Mapping[str, Tensor], main_body_name: str = "blocks", source: str = "<state dict>"
) -> dict[str, Tensor]:
    """An auxiliary model's block weights as ``<main_body_name>.<i>.<rest>``, whatever format the file is in.

    The pathway only reads the blocks, so an aux checkpoint is converted by its own layout, not by the target
    modality's converter (a VideoMAE aux for an image target must lose its ``encoder.`` prefix, not be read as
    an image checkpoint).  Any pathway still in it is folded first.
    """
    state = fold_pathway_state_dict(state_dict, source=source)
    prefix = _block_list_prefix(state, main_body_name, source)
    blocks = {f"{main_body_name}.{k[len(prefix):]}": v for k, v in state.items()
              if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0].isdigit()}
    integer = [f"{k} ({v.dtype})" for k, v in blocks.items() if not v.is_floating_point()]
    if integer:
        raise CheckpointError(
            f"{source}: auxiliary weights must be floating-point tensors; {len(integer)} are not: {integer[:5]} "
            f"(a cast would turn quantised or index data into weights)"
        )
    return blocks


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

    A shape mismatch, or an integer tensor where the model has a floating-point one, is always an error (naming the
    file, key and both shapes or dtypes); missing/unexpected keys are an
    error under ``strict`` and otherwise logged and returned.  ``ignore`` drops keys that are expected not to fit
    (a new classifier head when fine-tuning on other classes).
    """
    own = model.state_dict()
    state = {k: v for k, v in state_dict.items() if not ignore(k)}
    prefix_tokens = num_prefix_tokens if num_prefix_tokens is not None else getattr(model, "num_prefix_tokens", 1)
    not_float = [f"{k} ({v.dtype})" for k, v in state.items()
                 if k in own and own[k].is_floating_point() and not v.is_floating_point()]
    if not_float:
        raise CheckpointError(
            f"{source}: {len(not_float)} weight(s) are not floating-point tensors: {not_float[:10]}; the model's are "
            f"(a cast would turn quantised or index data into weights)"
        )
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

"""Export a trained pathway checkpoint as the plain backbone: safetensors, a ``torch.export`` program, ONNX.

The LightningModule is rebuilt from the checkpoint alone (its class path and hyper-parameters), the pathway is folded
into the weights (``fuse_pathway``), and every written artefact is run on the same example input and compared with
the unmerged Lightning model: an export that does not reproduce the checkpoint's outputs is an error, not a file.
"""
from __future__ import annotations

import argparse
import importlib
import io
import importlib.util
import json
import logging
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from pathway.atomic import atomic_write
from pathway.checkpoint import CheckpointError
from pathway.merge import fuse_pathway
from pathway.module import PathwayModule, file_sha256
from pathway.surgery import lambda_table, reparameterize_aux_into_target_model

log = logging.getLogger(__name__)

_AUX_KEY = re.compile(r"^backbone\.(.+)\.aux_weight_(\d+)$")


class ExportError(RuntimeError):
    """An exported artefact does not reproduce the checkpoint's outputs (or cannot be written)."""


def _import_class(class_path: str, source: str) -> type:
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise CheckpointError(f"{source}: cannot import the module class '{class_path}' ({err})") from err
    if not (isinstance(cls, type) and issubclass(cls, PathwayModule)):
        raise CheckpointError(f"{source}: '{class_path}' is not a PathwayModule subclass")
    return cls


def _aux_from_state_dict(state_dict: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """Aux weights stored in the checkpoint (``store_aux_in_checkpoint`` or trainable aux), as aux state dicts."""
    auxes: dict[int, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        match = _AUX_KEY.match(key)
        if match:
            auxes.setdefault(int(match.group(2)), {})[f"{match.group(1)}.weight"] = value
    return [auxes[i] for i in sorted(auxes)]


def load_module_from_checkpoint(path: str | Path) -> tuple[PathwayModule, dict[str, Any]]:
    """Rebuild the ``PathwayModule`` a Lightning checkpoint was written by, with its trained weights, in eval mode.

    The target checkpoint is not needed (its weights are in the checkpoint); the aux files are, unless their
    weights were stored in the checkpoint, and they are verified against the hashes recorded at training time.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable Lightning checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint with 'state_dict' and 'hyper_parameters'")
    hparams = dict(checkpoint["hyper_parameters"])
    class_path = checkpoint.get("pathway_module_class") or hparams.get("_class_path")
    if not class_path:
        raise CheckpointError(
            f"{path}: no 'pathway_module_class' entry: not written by a pathway.module.PathwayModule"
        )
    cls = _import_class(class_path, str(path))
    for key in ("_instantiator", "_class_path"):
        hparams.pop(key, None)
    hparams["target_ckpt"] = None  # the trained weights come from this checkpoint
    state_dict = checkpoint["state_dict"]
    stored_aux = _aux_from_state_dict(state_dict)
    if stored_aux and len(stored_aux) == len(hparams.get("aux_ckpts") or ()):
        aux_paths, hparams["aux_ckpts"] = list(hparams["aux_ckpts"]), []
        module = cls(**hparams)
        reparameterize_aux_into_target_model(
            module.backbone, stored_aux, layer_names=hparams["layer_names"], main_body_name=hparams["main_body_name"],
            aux_trainable=hparams["aux_trainable"],
        )
        module.hparams["aux_ckpts"] = aux_paths
    else:
        module = cls(**hparams)
    module.on_load_checkpoint(checkpoint)
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: does not fit {class_path} built from its own hyper-parameters: {err}") from err
    return module.eval(), checkpoint


def lambda_summary(model: nn.Module) -> dict[str, Any]:
    """λ statistics for the sidecar: count, mean, mean |λ|, min, max, and the full table."""
    table = lambda_table(model)
    values = [v for lams in table.values() for v in lams]
    if not values:
        return {"count": 0}
    return {
        "count": len(values), "mean": sum(values) / len(values), "mean_abs": sum(map(abs, values)) / len(values),
        "min": min(values), "max": max(values), "per_layer": table,
    }


def _check(name: str, got: Tensor, expected: Tensor, atol: float, rtol: float) -> float:
    diff = float((got.float() - expected.float()).abs().max())
    if got.shape != expected.shape or not torch.allclose(got.float(), expected.float(), atol=atol, rtol=rtol):
        raise ExportError(
            f"{name}: outputs differ from the Lightning checkpoint's (shape {tuple(got.shape)} vs "
            f"{tuple(expected.shape)}, max |diff| {diff:.3g} > atol {atol:g} + rtol {rtol:g}); nothing exported is valid"
        )
    return diff


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def export_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    onnx: Optional[bool] = None,
    batch_size: int = 2,
) -> dict[str, Any]:
    """Write ``model.safetensors``, ``model.pt2`` (and ``model.onnx`` when ``onnx`` is importable) + ``export.json``.

    Every file is reloaded and checked against the unmerged module on a seeded example batch; ``onnx=None``
    exports ONNX only when the ``onnx`` package is installed, ``True`` requires it.  Returns the sidecar dict.
    """
    from safetensors.torch import load_file, save_file

    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    module, checkpoint = load_module_from_checkpoint(ckpt_path)
    shape = tuple(int(s) for s in module.example_input_shape())
    example = torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module(example)
    plain = fuse_pathway(module.backbone).eval()
    checks: dict[str, float] = {}
    with torch.no_grad():
        checks["fused"] = _check("fused backbone", plain(example), expected, atol, rtol)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}

    state = {k: v.detach().cpu().contiguous() for k, v in plain.state_dict().items()}
    weights_path = out_dir / "model.safetensors"
    atomic_write(weights_path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    reloaded = module.build_backbone().eval()
    reloaded.load_state_dict(load_file(str(weights_path)), strict=True)
    with torch.no_grad():
        checks["safetensors"] = _check(str(weights_path), reloaded(example), expected, atol, rtol)
    files["safetensors"] = weights_path.name

    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        program = torch.export.export(plain, (example,), dynamic_shapes=({0: batch},))
    except Exception as err:
        raise ExportError(f"torch.export of {type(plain).__name__} failed: {type(err).__name__}: {err}") from err
    program_path = out_dir / "model.pt2"
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    atomic_write(program_path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    loaded = torch.export.load(str(program_path)).module()
    with torch.no_grad():
        checks["pt2"] = _check(str(program_path), loaded(example), expected, atol, rtol)
        checks["pt2_batch1"] = _check(f"{program_path} (batch 1)", loaded(example[:1]), expected[:1], atol, rtol)
    files["torch_export"] = program_path.name

    onnx_available = importlib.util.find_spec("onnx") is not None
    if onnx and not onnx_available:
        raise ExportError("ONNX export requested but the 'onnx' package is not installed (pip install onnx)")
    if onnx_available and onnx is not False:
        onnx_path = out_dir / "model.onnx"
        atomic_write(onnx_path, lambda tmp: torch.onnx.export(
            plain, (example,), str(tmp), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        ))
        if importlib.util.find_spec("onnxruntime") is not None:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"input": example.numpy()})[0])
            checks["onnx"] = _check(str(onnx_path), got, expected, atol, rtol)
        files["onnx"] = onnx_path.name

    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not str(k).startswith("_")}
    sidecar = {
        "model_class": checkpoint.get("pathway_module_class"),
        "backbone_class": f"{type(plain).__module__}.{type(plain).__qualname__}",
        "hparams": _json_safe(hparams),
        "num_classes": int(module.hparams.num_classes),
        "input_shape": ["batch", *shape],
        "lambda": lambda_summary(module.backbone),
        "source_checkpoint": str(ckpt_path),
        "source_sha256": file_sha256(str(ckpt_path)),
        "global_step": checkpoint.get("global_step"),
        "files": files,
        "max_abs_diff": checks,
    }
    sidecar_path = out_dir / "export.json"
    atomic_write(sidecar_path, lambda tmp: tmp.write_text(json.dumps(sidecar, indent=2)))
    log.info("exported %s to %s (%s)", ckpt_path, out_dir, ", ".join(files.values()))
    return sidecar


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``CKPT --out DIR [--atol A] [--no-onnx]``: the export command shared by ``python -m pathway export`` and the
    per-modality ``python -m <Modality>.export``."""
    parser = argparse.ArgumentParser(
        prog="export", description="Export a pathway Lightning checkpoint as the plain merged backbone."
    )
    parser.add_argument("ckpt", help="Lightning checkpoint written by a pathway fit (e.g. .../checkpoints/last.ckpt)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--atol", type=float, default=1e-4, help="allowed |difference| to the checkpoint's outputs")
    parser.add_argument("--rtol", type=float, default=1e-4)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--onnx", dest="onnx", action="store_true", default=None, help="require ONNX export")
    group.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip ONNX even when available")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        sidecar = export_checkpoint(args.ckpt, args.out, atol=args.atol, rtol=args.rtol, onnx=args.onnx)
    except (CheckpointError, ExportError) as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"out": str(args.out), "files": sidecar["files"], "max_abs_diff": sidecar["max_abs_diff"]}))
    return 0

"""Export a trained pathway checkpoint as the plain backbone: safetensors, a ``torch.export`` program, ONNX, and
timm's ``config.json`` for timm image backbones.

The module is rebuilt from the checkpoint alone (``PathwayModule.load_from_checkpoint``), the pathway is folded into
the weights (``fuse_pathway``), and every written artefact is run on the same example input and compared with the
unmerged Lightning model: an export that does not reproduce the checkpoint's outputs is an error, not a file.  The
folder is written whole or not at all: a failed export leaves the previous one untouched.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from pathway.atomic import atomic_folder, atomic_write
from pathway.checkpoint import CheckpointError, file_sha256
from pathway.merge import fuse_pathway
from pathway.module import PathwayModule, read_checkpoint
from pathway.surgery import lambda_table

log = logging.getLogger(__name__)

# A writer saves the plain backbone to a path and returns what runs the saved file (None: nothing here can run it).
Runner = Callable[..., Tensor]
Writer = Callable[[nn.Module, PathwayModule, tuple[Tensor, ...], Path], Optional[Runner]]


class ExportError(RuntimeError):
    """An exported artefact does not reproduce the checkpoint's outputs (or cannot be written)."""


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


def write_safetensors(
    plain: nn.Module, module: PathwayModule, inputs: tuple[Tensor, ...], path: Path
) -> Optional[Runner]:
    """The weights alone, reloaded ``strict=True`` into a freshly built plain backbone."""
    from safetensors.torch import load_file, save_file

    state = {k: v.detach().cpu().contiguous() for k, v in plain.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    reloaded = module.build_backbone().eval()
    reloaded.load_state_dict(load_file(str(path)), strict=True)
    return reloaded


def write_torch_export(
    plain: nn.Module, module: PathwayModule, inputs: tuple[Tensor, ...], path: Path
) -> Optional[Runner]:
    """A ``torch.export`` program with a dynamic batch dimension on every input."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        program = torch.export.export(plain, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs))
    except Exception as err:
        raise ExportError(f"torch.export of {type(plain).__name__} failed: {type(err).__name__}: {err}") from err
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    return torch.export.load(str(path)).module()


def _input_names(inputs: tuple[Tensor, ...]) -> list[str]:
    return ["input"] if len(inputs) == 1 else [f"input{i}" for i in range(len(inputs))]


def write_onnx(
    plain: nn.Module, module: PathwayModule, inputs: tuple[Tensor, ...], path: Path
) -> Optional[Runner]:
    """ONNX with a dynamic batch; checked only where ``onnxruntime`` is installed."""
    names = _input_names(inputs)
    atomic_write(path, lambda tmp: torch.onnx.export(
        plain, inputs, str(tmp), input_names=names, output_names=["logits"],
        dynamic_axes={**{n: {0: "batch"} for n in names}, "logits": {0: "batch"}},
    ))
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda *xs: torch.from_numpy(session.run(None, {n: x.numpy() for n, x in zip(names, xs)})[0])


EXPORT_FILES = ("model.safetensors", "model.pt2", "model.onnx", "config.json", "export.json")
# What the Image datamodule (timm's ``create_transform``) normalises and crops with: a checkpoint whose data carried
# these is preprocessed the way timm's own transforms do, so timm can be told how (``config.json``).
TIMM_DATA_KEYS = ("img_size", "mean", "std", "crop_pct", "interpolation")


def _not_an_export(folder: Path) -> Optional[str]:
    others = sorted(p.name for p in folder.iterdir() if p.name not in EXPORT_FILES)
    if others:
        return (f"holds files an export does not write ({', '.join(others[:5])}); export into a new or empty folder, "
                "the old export folder is replaced whole")
    return None


def timm_data_config(
    plain: nn.Module, data_hparams: Optional[dict[str, Any]]
) -> tuple[Optional[dict[str, Any]], str]:
    """The preprocessing of a timm image backbone for timm's ``config.json``, or ``None`` and why timm cannot say it.

    ``None`` when the backbone is not a model timm builds by name, when its inputs were not made by timm's image
    transforms (Audio's fbanks) or when the checkpoint does not record the data settings: a ``config.json`` with
    timm's defaults would then normalise wrongly without an error.
    """
    import timm

    architecture = getattr(plain, "pretrained_cfg", {}).get("architecture")
    if not architecture or not timm.is_model(architecture) or not hasattr(plain, "_model_args"):
        return None, "the backbone is not a model timm builds by name"
    if not data_hparams:
        return None, ("the checkpoint records no data settings (datamodule_hyper_parameters): timm would normalise "
                      "with its defaults, not with what the model was trained on")
    missing = [k for k in TIMM_DATA_KEYS if data_hparams.get(k) is None]
    in_chans = int(getattr(plain, "in_chans", 3))
    if missing or in_chans != 3:
        return None, (f"the inputs are not made by timm's image transforms (data settings lack {missing}, "
                      f"{in_chans} input channels)")
    size = data_hparams["img_size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    return {"input_size": (in_chans, *size), "mean": tuple(data_hparams["mean"]), "std": tuple(data_hparams["std"]),
            "crop_pct": float(data_hparams["crop_pct"]), "interpolation": str(data_hparams["interpolation"])}, ""


def write_timm_config(plain: nn.Module, data_config: dict[str, Any], label_names: Optional[list[str]],
                      path: Path) -> Runner:
    """timm's ``config.json`` (``save_config_for_hf``: architecture, ``num_classes``, ``global_pool``, ``model_args``,
    ``pretrained_cfg`` with the training preprocessing, ``label_names``), so ``timm.create_model("local-dir:<folder>",
    pretrained=True)`` builds the model, loads ``model.safetensors`` beside it and reports the right data config."""
    import timm
    from timm.models._hub import save_config_for_hf

    model_config = {"label_names": list(label_names)} if label_names else None
    try:
        save_config_for_hf(plain, str(path), model_config=model_config, data_config=data_config)
    except ValueError as err:  # e.g. a model argument JSON cannot hold
        raise ExportError(f"timm's config.json for {path.parent}: {err}") from err
    return timm.create_model(f"local-dir:{path.parent.resolve()}", pretrained=True).eval()


def export_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    onnx: Optional[bool] = None,
    batch_size: int = 2,
) -> dict[str, Any]:
    """Write ``model.safetensors``, ``model.pt2`` (and ``model.onnx`` when ``onnx`` is importable), timm's
    ``config.json`` for timm image backbones, and ``export.json``.

    Every file is reloaded and checked against the unmerged module on a seeded example batch (and the program on a
    batch of one); ``onnx=None`` exports ONNX only when the ``onnx`` package is installed, ``True`` requires it.
    The files are written to a temporary folder and swapped in whole (``atomic_folder``): a failure leaves an
    existing ``out_dir`` as it was.  Returns the sidecar dict.
    """
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    checkpoint = read_checkpoint(ckpt_path)
    onnx_available = importlib.util.find_spec("onnx") is not None
    if onnx and not onnx_available:
        raise ExportError("ONNX export requested but the 'onnx' package is not installed (pip install onnx)")
    writers: dict[str, tuple[str, Writer]] = {
        "safetensors": ("model.safetensors", write_safetensors), "torch_export": ("model.pt2", write_torch_export),
    }
    skipped: dict[str, str] = {}
    if onnx is False:
        skipped["onnx"] = "--no-onnx"
    elif onnx_available:
        writers["onnx"] = ("model.onnx", write_onnx)
    else:
        skipped["onnx"] = "the 'onnx' package is not installed (pip install onnx)"
    if "onnx" in writers and importlib.util.find_spec("onnxruntime") is None:
        skipped["onnx check"] = "model.onnx is written but not verified: 'onnxruntime' is not installed"
    for kind, why in skipped.items():
        log.warning("export: %s skipped: %s", kind, why)

    # Eager: export traces the model itself, and a run trained under torch.compile must export where no compiler is.
    module = PathwayModule.load_from_checkpoint(
        ckpt_path, map_location="cpu", compile_backend=None, compile_mode=None).eval()
    inputs = module.example_inputs(batch_size, torch.Generator().manual_seed(0))
    plain = fuse_pathway(module.backbone).eval()
    num_classes = int(module.hparams.num_classes)
    label_names = checkpoint.get("label_names")
    if label_names is not None and len(label_names) != num_classes:
        raise ExportError(f"{ckpt_path}: {len(label_names)} label_names for a model of {num_classes} classes")
    data_hparams = checkpoint.get("datamodule_hyper_parameters")
    data_config, why_not = timm_data_config(plain, data_hparams)
    if data_config is None:
        skipped["config.json"] = why_not
        log.warning("export: timm's config.json skipped: %s", why_not)
    checks: dict[str, float] = {}
    with torch.no_grad():
        expected = module(*inputs)
        checks["fused"] = _check("fused backbone", plain(*inputs), expected, atol, rtol)
    files: dict[str, str] = {}
    with atomic_folder(out_dir, _not_an_export) as stage:
        for kind, (filename, write) in writers.items():
            run = write(plain, module, inputs, stage / filename)
            files[kind] = filename
            if run is None:
                continue
            with torch.no_grad():
                checks[kind] = _check(str(out_dir / filename), run(*inputs), expected, atol, rtol)
                if kind == "torch_export":
                    checks[f"{kind}_batch1"] = _check(f"{out_dir / filename} (batch 1)", run(*(x[:1] for x in inputs)),
                                                      expected[:1], atol, rtol)
        if data_config is not None:
            run = write_timm_config(plain, data_config, label_names, stage / "config.json")
            files["timm_config"] = "config.json"
            with torch.no_grad():
                checks["timm_config"] = _check(f"timm.create_model('local-dir:{out_dir}', pretrained=True)",
                                               run(*inputs), expected, atol, rtol)

        hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not str(k).startswith("_")}
        sidecar = {
            "model_class": f"{type(module).__module__}.{type(module).__qualname__}",
            "backbone_class": f"{type(plain).__module__}.{type(plain).__qualname__}",
            "hparams": _json_safe(hparams),
            "num_classes": num_classes,
            "label_names": label_names,
            "datamodule_hparams": _json_safe(data_hparams),
            "inputs": [{"name": name, "shape": ["batch", *x.shape[1:]], "dtype": str(x.dtype).replace("torch.", "")}
                       for name, x in zip(_input_names(inputs), inputs)],
            "lambda": lambda_summary(module.backbone),
            "source_checkpoint": str(ckpt_path),
            "source_sha256": file_sha256(str(ckpt_path)),
            "global_step": checkpoint.get("global_step"),
            "files": files,
            "skipped": skipped,
            "max_abs_diff": checks,
        }
        (stage / "export.json").write_text(json.dumps(sidecar, indent=2))
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
    except (CheckpointError, ExportError, OSError) as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"out": str(args.out), "files": sidecar["files"], "skipped": sidecar["skipped"],
                      "max_abs_diff": sidecar["max_abs_diff"]}))
    return 0

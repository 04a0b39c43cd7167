"""Export a trained pathway checkpoint as the plain backbone: safetensors, a ``torch.export`` program, ONNX.

The module is rebuilt from the checkpoint alone (``PathwayModule.load_from_checkpoint``), the pathway is folded into
the weights (``fuse_pathway``), and every written artefact is run on the same example input and compared with the
unmerged Lightning model: an export that does not reproduce the checkpoint's outputs is an error, not a file.
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

from pathway.atomic import atomic_write
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


def export_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    onnx: Optional[bool] = None,
    batch_size: int = 2,
) -> dict[str, Any]:
    """Write ``model.safetensors``, ``model.pt2`` (and ``model.onnx`` when ``onnx`` is importable) + ``export.json``.

    Every file is reloaded and checked against the unmerged module on a seeded example batch (and the program on a
    batch of one); ``onnx=None`` exports ONNX only when the ``onnx`` package is installed, ``True`` requires it.
    Returns the sidecar dict.
    """
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    checkpoint = read_checkpoint(ckpt_path)
    onnx_available = importlib.util.find_spec("onnx") is not None
    if onnx and not onnx_available:
        raise ExportError("ONNX export requested but the 'onnx' package is not installed (pip install onnx)")
    writers: dict[str, tuple[str, Writer]] = {
        "safetensors": ("model.safetensors", write_safetensors), "torch_export": ("model.pt2", write_torch_export),
    }
    if onnx_available and onnx is not False:
        writers["onnx"] = ("model.onnx", write_onnx)

    # Eager: export traces the model itself, and a run trained under torch.compile must export where no compiler is.
    module = PathwayModule.load_from_checkpoint(
        ckpt_path, map_location="cpu", compile_backend=None, compile_mode=None).eval()
    inputs = module.example_inputs(batch_size, torch.Generator().manual_seed(0))
    plain = fuse_pathway(module.backbone).eval()
    checks: dict[str, float] = {}
    with torch.no_grad():
        expected = module(*inputs)
        checks["fused"] = _check("fused backbone", plain(*inputs), expected, atol, rtol)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for kind, (filename, write) in writers.items():
        path = out_dir / filename
        run = write(plain, module, inputs, path)
        files[kind] = filename
        if run is None:
            continue
        with torch.no_grad():
            checks[kind] = _check(str(path), run(*inputs), expected, atol, rtol)
            if kind == "torch_export":
                checks[f"{kind}_batch1"] = _check(f"{path} (batch 1)", run(*(x[:1] for x in inputs)), expected[:1],
                                                  atol, rtol)

    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not str(k).startswith("_")}
    sidecar = {
        "model_class": f"{type(module).__module__}.{type(module).__qualname__}",
        "backbone_class": f"{type(plain).__module__}.{type(plain).__qualname__}",
        "hparams": _json_safe(hparams),
        "num_classes": int(module.hparams.num_classes),
        "inputs": [{"name": name, "shape": ["batch", *x.shape[1:]], "dtype": str(x.dtype).replace("torch.", "")}
                   for name, x in zip(_input_names(inputs), inputs)],
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

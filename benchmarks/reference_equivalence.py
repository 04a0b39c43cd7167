"""Same weights, same input: does our model behave like the paper's reference code (AILab-CVC/M2PT)?

For each modality a child process (``reference_equivalence_child.py``) imports the reference code from the user's
checkout with the old timm it pins, writes the pre-trained target and the aux model in the reference's own
checkpoint formats and records the reference's numbers; this process builds our model from the same files through
the public API (the modality's LightningModule with its paper-recipe config, ``target_ckpt`` / ``aux_ckpts``,
``configure_optimizers``, a Lightning ``Trainer`` for the AdamW steps) and compares.  One table per modality:
check, measured, tolerance, PASS / FAIL / DELIBERATE; any FAIL makes the exit status 1.

    python benchmarks/reference_equivalence.py --reference-dir REF/AILab-CVC+M2PT --ref-env ENV

``ENV`` holds ``timm_0.3.2``, ``timm_0.4.12`` and ``timm_0.4.5`` (``pip install --no-deps --target``);
``benchmarks/reference_standins`` holds the stand-ins for CUDA-only ops.  See benchmarks/README.md §7.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STANDINS = HERE / "reference_standins"
STEPS = 3  # AdamW steps compared (reference_equivalence_child.STEPS)
LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")

PASS, FAIL, DELIBERATE = "PASS", "FAIL", "DELIBERATE"


@dataclass
class Row:
    check: str
    measured: str
    tolerance: str
    status: str


def row(check: str, value: float, tolerance: float, fmt: str = "{:.2e}", note: str = "") -> Row:
    ok = math.isfinite(value) and value <= tolerance
    return Row(check, fmt.format(value) + (f" ({note})" if note else ""), f"≤ {tolerance:g}", PASS if ok else FAIL)


def format_table(title: str, rows: Sequence[Row]) -> str:
    header = ("check", "measured", "tolerance", "status")
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cell = lambda text: str(text).replace("|", "\\|")  # a |Δ| inside a cell must not end it
    lines += ["| " + " | ".join(cell(c) for c in (r.check, r.measured, r.tolerance, r.status)) + " |" for r in rows]
    return "\n".join(lines)


def exit_code(tables: dict[str, Sequence[Row]]) -> int:
    """1 when any check failed; DELIBERATE rows are stated differences, not failures."""
    return int(any(r.status == FAIL for rows in tables.values() for r in rows))


def lambda_value(block: int, layer: str) -> float:
    """Must equal reference_equivalence_child.lambda_value (the child imports nothing of ours)."""
    return 0.04 * (block % 4 + 1) * (-1) ** LAYERS.index(layer) + 0.01 * LAYERS.index(layer)


@dataclass
class Modality:
    name: str
    timm: str
    module: str
    cls: str
    configs: tuple[str, ...]
    num_classes: int
    batch: int
    input_shape: tuple[int, ...]
    rename: Callable[[str], str]  # our backbone name -> the reference's
    multilabel: bool = False
    linked: tuple[str, ...] = ()
    size: str = "ViT-B: width 768, depth 12, 12 heads"
    overrides: Optional[dict] = None
    reference_files: Optional[dict] = None  # model arguments that name a file of the reference checkout


def _pathway_names(name: str) -> str:
    name = re.sub(r"\.lambdas$", ".cross_modal_scale", name)
    return re.sub(r"\.aux_weight_0$", ".aux_weight", name)


def _point_names(name: str) -> str:
    name = _pathway_names(name)
    name = re.sub(r"^blocks\.", "blocks.blocks.", name)
    return re.sub(r"^head\.", "cls_head_finetune.", name)


MODALITIES = {
    "image": Modality("image", "0.3.2", "Image.model", "ImageClassifier",
                      ("Image/configs/in1k_vitb.yaml", "Image/configs/in1k_vitb_pathway.yaml"), 1000, 2,
                      (3, 224, 224), _pathway_names, linked=("img_size",)),
    "audio": Modality("audio", "0.3.2", "Audio.model", "AudioClassifier",
                      ("Audio/configs/audioset20k_vitb.yaml", "Audio/configs/audioset20k_vitb_pathway.yaml"), 527, 2,
                      (1, 1024, 128), _pathway_names, multilabel=True, linked=("target_length", "num_mel_bins"),
                      overrides={"mask_t_prob": 0.0, "mask_f_prob": 0.0, "multilabel": True}),
    "video": Modality("video", "0.4.12", "Video.model", "VideoClassifier",
                      ("Video/configs/k400_vitb.yaml", "Video/configs/k400_vitb_pathway.yaml"), 400, 1,
                      (3, 16, 224, 224), _pathway_names, linked=("num_frames", "img_size"),
                      reference_files={"head_label_map": "Video/misc/label_710to400.json"}),
    "point": Modality("point", "0.4.5", "Point.model", "PointClassifier",
                      ("Point/configs/modelnet40.yaml", "Point/configs/modelnet40_pathway.yaml"), 40, 2,
                      (1024, 3), _point_names,
                      size="Point-MAE widened: width 768, depth 12, 6 heads, 64 groups of 32 points"),
}
ZERO_FLOOR = 1e-3  # gradients below this fraction of the largest are compared on that scale (see compare)
STEPS_PER_EPOCH = 4  # the lr schedules keep the recipe's epochs and warmup with 4 optimizer steps per epoch


def load_config(paths: Sequence[str]) -> dict:
    import yaml

    def merge(a: dict, b: dict) -> dict:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    config: dict = {}
    for path in paths:
        config = merge(config, yaml.safe_load((ROOT / path).read_text()))
    return config


def timm_for(mod: Modality, reference_dir: Path, ref_env: Path) -> Path:
    """The folder whose ``timm`` the reference child imports.  AudioMAE runs on timm 0.3.2 patched by its
    ``timm_patch.sh`` (two files copied into timm); that copy is made once, next to the plain one."""
    plain = ref_env / f"timm_{mod.timm}"
    if not (plain / "timm").is_dir():
        raise SystemExit(f"{plain}: no timm {mod.timm} there; install it with "
                         f"`pip install --no-deps --target {plain} timm=={mod.timm}`")
    if mod.name != "audio":
        return plain
    patched = ref_env / f"timm_{mod.timm}+audiomae"
    if not (patched / "timm").is_dir():
        staging = ref_env / f".timm_{mod.timm}+audiomae.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(plain, staging, symlinks=False)
        patch = reference_dir / "Audio" / "timm_patch"
        shutil.copy(patch / "swin_transformer.py", staging / "timm" / "models" / "swin_transformer.py")
        shutil.copy(patch / "helpers.py", staging / "timm" / "models" / "layers" / "helpers.py")
        staging.rename(patched)
    return patched


def run_child(mod: Modality, reference_dir: Path, ref_env: Path, work: Path, log: Path) -> float:
    timm_dir = timm_for(mod, reference_dir, ref_env)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(timm_dir), str(STANDINS)])
    start = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(
            [sys.executable, str(HERE / "reference_equivalence_child.py"), "--modality", mod.name,
             "--reference-dir", str(reference_dir), "--work", str(work)],
            env=env, stdout=handle, stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        raise RuntimeError(f"the reference child for {mod.name} failed (exit {done.returncode}); its log: {log}\n"
                           + log.read_text()[-3000:])
    return time.perf_counter() - start


class _TrainerStandIn:
    """What ``configure_optimizers`` reads of a Trainer, with the recipe's batch, devices and epochs."""

    def __init__(self, config: dict, steps_per_epoch: int) -> None:
        trainer, data = config["trainer"], config["data"]
        self.accumulate_grad_batches = int(trainer.get("accumulate_grad_batches", 1))
        self.num_devices = int(trainer.get("devices", 1))
        self.num_nodes = int(trainer.get("num_nodes", 1))
        self.world_size = self.num_devices * self.num_nodes
        self.current_epoch = 0
        self.max_epochs = int(trainer["max_epochs"])
        self.num_training_batches = steps_per_epoch * self.accumulate_grad_batches
        self.estimated_stepping_batches = steps_per_epoch * self.max_epochs
        self.datamodule = argparse.Namespace(batch_size=int(data["batch_size"]))


def build_ours(mod: Modality, config: dict, work: Path, reference_dir: Path):
    import importlib
    cls = getattr(importlib.import_module(mod.module), mod.cls)
    kwargs = dict(config["model"])
    for name in mod.linked:
        kwargs[name] = config["data"][name]
    kwargs.update(num_classes=mod.num_classes, target_ckpt=str(work / "target.pth"),
                  aux_ckpts=[str(work / "aux.pth")], drop_path_rate=0.0, trust_pickle=False)
    for name in ("mixup", "cutmix"):
        if name in kwargs:
            kwargs[name] = 0.0
    kwargs.update(mod.overrides or {})
    for name, relative in (mod.reference_files or {}).items():
        if name in kwargs:  # the recipe reads this file of the reference's (e.g. VideoMAE V2's K710 → K400 map)
            kwargs[name] = str(reference_dir / relative)
    return cls(**kwargs)


def head_modules(model) -> list:
    """BatchNorm heads stay in eval mode in train-mode comparisons (a batch-2 BN is ill-conditioned)."""
    import torch
    head = getattr(model.backbone, "head", None)
    return [head] if head is not None and any(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules()) else []


def rel_inf(a, b, floor: float) -> float:
    """``‖a − b‖∞ / max(‖b‖∞, floor)``."""
    return float((a.double() - b.double()).abs().max()) / max(float(b.abs().max()), floor, 1e-30)


def compare(mod: Modality, reference_dir: Path, ref_env: Path, work: Path,
            reuse: bool = False) -> tuple[list[Row], dict]:
    import lightning as L
    import torch

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(123)
    config = load_config(mod.configs)
    x = torch.randn(mod.batch, *mod.input_shape, generator=gen)
    if mod.multilabel:
        y = (torch.rand(mod.batch, mod.num_classes, generator=gen) < 0.05).float()
    else:
        y = torch.randint(0, mod.num_classes, (mod.batch,), generator=gen)
    spec = {
        "x": x, "y": y, "batch_size": int(config["data"]["batch_size"]),
        "world_size": int(config["trainer"].get("devices", 1)) * int(config["trainer"].get("num_nodes", 1)),
        "steps_per_epoch": STEPS_PER_EPOCH, "num_frames": config["data"].get("num_frames"),
        "head_weight": torch.randn(mod.num_classes, 768, generator=gen) * 0.02,
        "head_bias": torch.randn(mod.num_classes, generator=gen) * 0.02,
    }
    if reuse and (work / "reference.pt").is_file():
        child_seconds = 0.0
    else:
        torch.save(spec, work / "spec.pt")
        child_seconds = run_child(mod, reference_dir, ref_env, work, work / "reference.log")
    ref = torch.load(work / "reference.pt", weights_only=False)
    info = {"notes": ref["notes"], "timm": ref["timm"], "recipe": ref.get("recipe"), "child_s": child_seconds}
    rows: list[Row] = []

    model = build_ours(mod, config, work, reference_dir)
    backbone = model.backbone
    if mod.name in ("image", "audio"):
        with torch.no_grad():
            backbone.head.weight.copy_(spec["head_weight"])
            backbone.head.bias.copy_(spec["head_bias"])
    ours_state = {mod.rename(k): v for k, v in backbone.state_dict().items()}
    ref_params = set(ref["grads"]) | set(ref["groups"])
    common = [k for k in ref["state"] if k in ours_state and ref["state"][k].shape == ours_state[k].shape]
    missing = sorted(k for k in ref["state"] if k not in ours_state or ref["state"][k].shape != ours_state[k].shape)
    diff = max((float((ours_state[k].double() - ref["state"][k].double()).abs().max()) for k in common), default=0.0)
    note = f"{len(common)} tensors" + (f"; not in ours or other shape: {missing[:4]}" if missing else "")
    rows.append(Row("weights after loading target + aux (max abs diff)", f"{diff:.2e} ({note})", "≤ 1e-07",
                    PASS if diff <= 1e-7 and not [k for k in missing if k in ref_params] else FAIL))
    if mod.name == "video":  # the reference's label-mapped K710 head is checked above; the same head from here on
        with torch.no_grad():
            backbone.head.weight.copy_(ref["state"]["head.weight"])
            backbone.head.bias.copy_(ref["state"]["head.bias"])

    ours_trainable = {mod.rename(n) for n, p in backbone.named_parameters() if p.requires_grad}
    ref_trainable = set(ref["groups"])
    only_ours, only_ref = sorted(ours_trainable - ref_trainable), sorted(ref_trainable - ours_trainable)
    rows.append(Row("trainable parameters (requires_grad): same set", f"{len(ours_trainable)} vs {len(ref_trainable)}"
                    + (f"; only ours: {only_ours[:3]}" if only_ours else "")
                    + (f"; only reference: {only_ref[:3]}" if only_ref else ""),
                    "equal", PASS if not only_ours and not only_ref else FAIL))

    loaded = {k: v.clone() for k, v in backbone.state_dict().items()}
    pathway = [(n, m) for n, m in backbone.named_modules() if hasattr(m, "lambdas")]
    model.eval()
    with torch.no_grad():
        logits0 = model(x)
        for name, module in pathway:
            block, layer = re.search(r"(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)$", name).groups()
            module.lambdas.fill_(lambda_value(int(block), layer))
        logits = model(x)
    rows.append(row("logits, λ = 0 (fp32, max abs diff)", float((logits0 - ref["logits_lambda0"]).abs().max()), 1e-5))
    effect = float((ref["logits_lambda"] - ref["logits_lambda0"]).abs().max())
    rows.append(row("logits, λ ≠ 0, aux ≠ target (max abs diff)", float((logits - ref["logits_lambda"]).abs().max()),
                    1e-5, note=f"λ moves the logits by {effect:.2e}"))
    if "logits_lambda_unpatched" in ref:
        bypass = float((logits - ref["logits_lambda_unpatched"]).abs().max())
        rows.append(Row("logits, λ ≠ 0, against the UNPATCHED reference (max abs diff)",
                        f"{bypass:.2e}: the reference bypasses the qkv pathway (F.linear reads self.qkv.weight), "
                        "ours applies it", "—", DELIBERATE))

    model.train()
    for module in head_modules(model):
        module.eval()
    model.zero_grad(set_to_none=True)
    model.loss(model(x), y, model.hparams.label_smoothing).backward()
    grads = {mod.rename(n): p.grad for n, p in backbone.named_parameters() if p.grad is not None}
    weight_names = [k for k in ref["grads"] if not k.endswith("cross_modal_scale")]
    absent = [k for k in weight_names if k not in grads]
    # relative to max(‖ref‖∞, 1e-3 of the largest): a gradient that is zero by construction (a bias before a
    # BatchNorm) is rounding noise, and dividing by it measures nothing
    floor = ZERO_FLOOR * max(float(ref["grads"][k].abs().max()) for k in weight_names)
    worst, worst_name = 0.0, ""
    for k in weight_names:
        if k in grads:
            err = rel_inf(grads[k], ref["grads"][k], floor)
            if err > worst:
                worst, worst_name = err, k
    note = f"{len(weight_names)} tensors, worst {worst_name}" + (f"; no gradient in ours: {absent[:3]}" if absent else "")
    status = row("", worst, 1e-4).status if not absent else FAIL
    rows.append(Row("every weight gradient (max ‖Δ‖∞ / max(‖ref‖∞, 1e-3·largest))", f"{worst:.2e} ({note})", "≤ 0.0001", status))
    lam_names = [k for k in ref["grads"] if k.endswith("cross_modal_scale")]
    truth_err, ref_err = 0.0, 0.0
    truths = {}
    for k in lam_names:
        layer = k[: -len(".cross_modal_scale")]
        truths[k] = float((ref["grads"][layer + ".weight"].double()
                           * ref["state"][layer + ".aux_weight"].double()).sum())
    lam_floor = ZERO_FLOOR * max(abs(v) for v in truths.values())
    for k, truth in truths.items():
        scale = max(abs(truth), lam_floor, 1e-30)
        ours_lam = float(grads[k]) if k in grads else math.nan
        truth_err = max(truth_err, abs(ours_lam - truth) / scale)
        ref_err = max(ref_err, abs(float(ref["grads"][k]) - truth) / scale)
    rows.append(row("λ gradient vs fp64 ⟨∂L/∂W, W_aux⟩ of the reference's ∂L/∂W (max |Δ| / max(|g|, 1e-3·largest))",
                    truth_err, 1e-4,
                    note=f"{len(lam_names)} layers; the reference's own fp32 autograd: {ref_err:.1e}"))
    model.zero_grad(set_to_none=True)
    backbone.load_state_dict(loaded)

    model._trainer = _TrainerStandIn(config, STEPS_PER_EPOCH)
    conf = model.configure_optimizers()
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    names = {id(p): mod.rename(n) for n, p in backbone.named_parameters()}
    ours_groups = {names[id(p)]: (float(g.get("lr_scale", 1.0)), float(g["weight_decay"]))
                   for g in optimizer.param_groups for p in g["params"]}
    bad = [k for k in set(ours_groups) | set(ref["groups"])
           if k not in ours_groups or k not in ref["groups"]
           or not math.isclose(ours_groups[k][0], ref["groups"][k][0], rel_tol=1e-9)
           or ours_groups[k][1] != ref["groups"][k][1]]
    shown = "; ".join(f"{k}: ours {ours_groups.get(k)} ref {ref['groups'].get(k)}" for k in sorted(bad)[:2])
    rows.append(Row("(lr scale, weight decay) of every parameter", f"{len(bad)} of {len(ref['groups'])} differ"
                    + (f" ({shown})" if bad else ""), "0 differ", PASS if not bad else FAIL))

    ours_group_of = {names[id(p)]: i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    ref_lr = ref["lr"]
    interval = conf["lr_scheduler"]["interval"]
    ours_lr = []
    for index in range(ref_lr.shape[0]):  # as Lightning steps it: after each optimizer step, or each epoch
        ours_lr.append([g["lr"] for g in optimizer.param_groups])
        model.trainer.current_epoch = index if interval == "epoch" else index // STEPS_PER_EPOCH
        model.lr_scheduler_step(scheduler, None)
    ours_lr = torch.tensor(ours_lr, dtype=torch.float64)
    pairs = sorted({(ours_group_of[k], ref["param_group"][k]) for k in ours_group_of if k in ref["param_group"]})
    peak = float(ref_lr.max())
    err, where = 0.0, ""
    for gi, ri in pairs:
        delta = (ours_lr[:, gi] - ref_lr[:, ri]).abs()
        if float(delta.max()) / peak > err:
            err = float(delta.max()) / peak
            step = int(delta.argmax())
            where = f"step {step}: ours {float(ours_lr[step, gi]):.4g}, ref {float(ref_lr[step, ri]):.4g}"
    unit = "epoch" if interval == "epoch" else "step"
    rows.append(row(f"lr of every parameter at every {unit} ({ref_lr.shape[0]} {unit}s, max |Δ|/peak)", err, 1e-6,
                    note=where or f"peak {peak:.4g}"))

    backbone.load_state_dict(loaded)
    our_adamw_steps(model, config, x, y, L)
    lam_ref = ref["lambda_after"]  # reference layer name -> λ
    lam_ours = {mod.rename(n + ".lambdas"): float(m.lambdas.detach()[0]) for n, m in backbone.named_modules()
                if hasattr(m, "lambdas")}
    scale = max(abs(v) for v in lam_ref.values()) or 1.0
    worst = max(abs(lam_ours.get(k + ".cross_modal_scale", math.inf) - v) for k, v in lam_ref.items()) / scale
    rows.append(row(f"λ after {STEPS} AdamW steps (max |Δ| / max |λ_ref|)", worst, 1e-4,
                    note=f"max |λ_ref| {scale:.2e}"))

    fresh = build_ours(mod, config, work, reference_dir)
    try:
        structural = {_structural_only(mod, k): v for k, v in ref["state_after"].items()}
        fresh.backbone.load_state_dict(structural, strict=True)
        fresh.eval()
        with torch.no_grad():
            got = fresh(x)
        rows.append(row("reference state dict (cross_modal_scale / aux_weight) loads into ours: logits",
                        float((got - ref["logits_after"]).abs().max()), 1e-5))
    except Exception as err:  # the check is whether it loads at all
        rows.append(Row("reference state dict (cross_modal_scale / aux_weight) loads into ours: logits",
                        f"does not load: {type(err).__name__}: {str(err).splitlines()[0][:160]}", "loads", FAIL))
    for note in ref["notes"]:
        kind, _, text = note.partition(": ")
        if kind in ("patched", "format"):
            rows.append(Row("reference patched" if kind == "patched" else "reference input format", text, "—",
                            DELIBERATE))
    return rows, info


def _structural_only(mod: Modality, ref_name: str) -> str:
    """The reference's key with our module layout but its own pathway names (cross_modal_scale / aux_weight)."""
    if mod.name == "point":
        ref_name = re.sub(r"^blocks\.blocks\.", "blocks.", ref_name)
        ref_name = re.sub(r"^cls_head_finetune\.", "head.", ref_name)
    return ref_name


def our_adamw_steps(model, config: dict, x, y, L) -> None:
    """Three steps through a real Trainer on the recipe's schedule (4 steps per epoch); the recipe's batch, devices
    and gradient accumulation are folded into the DataModule's batch size, so ``blr`` gives the recipe's lr."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    trainer_cfg = config["trainer"]
    effective = (int(config["data"]["batch_size"]) * int(trainer_cfg.get("accumulate_grad_batches", 1))
                 * int(trainer_cfg.get("devices", 1)) * int(trainer_cfg.get("num_nodes", 1)))

    class Data(L.LightningDataModule):
        batch_size = effective

        def train_dataloader(self):
            n = STEPS_PER_EPOCH
            return DataLoader(TensorDataset(x.repeat(n, *[1] * (x.dim() - 1)), y.repeat(n, *[1] * (y.dim() - 1))),
                              batch_size=x.shape[0], shuffle=False)

    class Stop(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            for module in head_modules(pl_module):
                module.eval()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step >= STEPS:
                trainer.should_stop = True

    model._trainer = None
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=int(trainer_cfg["max_epochs"]), precision="32-true",
                        gradient_clip_val=trainer_cfg.get("gradient_clip_val"), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Stop()], deterministic=False)
    trainer.fit(model, datamodule=Data())
    if trainer.global_step != STEPS:
        raise RuntimeError(f"expected {STEPS} optimizer steps, the Trainer made {trainer.global_step}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-dir", required=True, type=Path, help="checkout of AILab-CVC/M2PT")
    parser.add_argument("--base-dir", type=Path, default=None,
                        help="folder with checkouts of the base repos (mae, VideoMAE, AudioMAE, Point-MAE); the M2PT "
                             "folders carry their own copies of what is run, so these are only listed")
    parser.add_argument("--ref-env", required=True, type=Path,
                        help="folder with timm_0.3.2, timm_0.4.12 and timm_0.4.5 (pip install --no-deps --target)")
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=list(MODALITIES))
    parser.add_argument("--work", type=Path, default=None, help="keep the checkpoints and logs here")
    parser.add_argument("--reuse-reference", action="store_true",
                        help="with --work: reuse the reference's numbers of an earlier run there (same inputs)")
    args = parser.parse_args(argv)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")  # Lightning's and torch's advice on a 3-step CPU run; the tables are the output
    reference = args.reference_dir.resolve()
    if not (reference / "multimodal_pathway.py").is_file():
        raise SystemExit(f"{reference}: not a checkout of AILab-CVC/M2PT (no multimodal_pathway.py)")
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    print(f"reference: {reference} ({_commit(reference)})")
    if args.base_dir:
        for repo in sorted(p for p in args.base_dir.iterdir() if p.is_dir()):
            print(f"base repo: {repo} ({_commit(repo)})")
    print(f"stand-ins (reference child only): {STANDINS}: " + ", ".join(
        sorted(p.name for p in STANDINS.iterdir() if p.name != "README.md" and not p.name.startswith(("_", ".")))) + ", and in the child torch._six and "
          "numpy's removed float/int/bool aliases")
    tables: dict[str, list[Row]] = {}
    with tempfile.TemporaryDirectory(prefix="reference_equivalence_") as tmp:
        for name in args.modalities:
            mod = MODALITIES[name]
            work = (args.work or Path(tmp)) / name
            work.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            rows, info = compare(mod, reference, args.ref_env.resolve(), work, reuse=args.reuse_reference)
            tables[name] = rows
            print()
            print(format_table(f"{name}: batch {mod.batch}, input {mod.input_shape}, {mod.size}, drop path 0, "
                               f"fp32 CPU; reference timm {info['timm'].split(' ')[0]}", rows))
            print(f"\nreference timm: {info['timm']}")
            print(f"configs: {', '.join(mod.configs)}; lr schedules: the recipe's epochs with {STEPS_PER_EPOCH} "
                  f"steps per epoch; reference recipe: {info['recipe']}")
            for note in info["notes"]:
                if not note.startswith(("patched: ", "format: ")):  # those are DELIBERATE rows already
                    print(f"note: {note}")
            print(f"time: {time.perf_counter() - start:.0f} s (reference child {info['child_s']:.0f} s)")
    code = exit_code(tables)
    print(f"\n{'FAIL' if code else 'PASS'}: " + ", ".join(
        f"{n} {sum(r.status == FAIL for r in rows)} failed" for n, rows in tables.items()))
    return code


def _commit(path: Path) -> str:
    stamp = path / ".commit"
    if stamp.is_file():
        return stamp.read_text().strip()
    done = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "commit unknown"


if __name__ == "__main__":
    sys.exit(main())

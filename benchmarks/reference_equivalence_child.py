"""The reference side of ``benchmarks/reference_equivalence.py``: runs in its own process, never in the project's.

The parent starts this script with the old timm the reference pins first on ``sys.path`` (timm 0.3.2 for MAE /
AudioMAE, 0.4.12 for VideoMAE V2, 0.4.5 for Point-MAE) and the stand-ins directory after it.  It imports the
reference code from the user's checkout, writes the pre-trained target and the auxiliary model in the reference's
own checkpoint formats, builds the fine-tuning model with the steps of the reference's ``main``, and records
everything the parent compares: logits at λ = 0 and λ ≠ 0, gradients, per-parameter (lr scale, weight decay),
the lr of every step of the recipe's schedule and the state after three AdamW steps.  Nothing here imports the
project.
"""
from __future__ import annotations

import argparse
import ast
import collections
import json
import math
import os
import re
import shlex
import sys
import types
from pathlib import Path

LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
STEPS = 3


def lambda_value(block: int, layer: str) -> float:
    """The λ both sides set for the λ ≠ 0 checks (a function of block and layer only, so no names are exchanged)."""
    return 0.04 * (block % 4 + 1) * (-1) ** LAYERS.index(layer) + 0.01 * LAYERS.index(layer)


def install_torch_six() -> None:
    """timm 0.3.2 imports ``torch._six`` (removed in torch 2.0): the three names it uses."""
    import collections.abc
    six = types.ModuleType("torch._six")
    six.container_abcs = collections.abc
    six.string_classes = (str, bytes)
    six.int_classes = int
    six.inf = math.inf
    sys.modules["torch._six"] = six


def install_numpy_aliases() -> None:
    """MAE's ``util/pos_embed.py`` uses ``np.float``, removed in NumPy 1.24: the builtin it aliased."""
    import numpy as np
    for name, value in (("float", float), ("int", int), ("bool", bool)):
        if name not in np.__dict__:
            setattr(np, name, value)


def recipe_args(main_file: Path, script: Path, entry: str, extra: dict) -> argparse.Namespace:
    """The reference's own argparse defaults (every ``parser.add_argument`` of ``main_file``), parsed with the
    arguments its launch script passes.  Arguments the script leaves to shell variables come from ``extra``."""
    parser = argparse.ArgumentParser(add_help=False)
    namespace = {"parser": parser, "int": int, "float": float, "str": str, "bool": bool, "tuple": tuple}
    for node in ast.walk(ast.parse(main_file.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("add_argument", "set_defaults")
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "parser"):
            try:
                eval(compile(ast.Expression(node), str(main_file), "eval"), namespace)
            except Exception:  # an option whose type the reference defines elsewhere: not a model/optimizer one
                pass
    text = re.sub(r"\\\s*\n", " ", script.read_text())
    # shell variables as a run without positional arguments sets them (`if [ -z "$1" ]; then blr=1e-3 ...`)
    variables: dict = {}
    for name, value in re.findall(r"^\s*(\w+)=(\S+)\s*$", text, flags=re.M):
        if "$" not in value:
            variables.setdefault(name, value)
    text = re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), text)
    line = next(l for l in text.splitlines() if entry in l and not l.lstrip().startswith("#"))
    tokens = shlex.split(line.rstrip().rstrip("\\"))
    tokens = tokens[tokens.index(next(t for t in tokens if t.endswith(entry))) + 1:]
    argv, i = [], 0
    while i < len(tokens):
        key = tokens[i]
        values = []
        i += 1
        while i < len(tokens) and not tokens[i].startswith("--"):
            values.append(tokens[i])
            i += 1
        name = key[2:]
        if name in extra:
            values = [str(v) for v in (extra[name] if isinstance(extra[name], (list, tuple)) else [extra[name]])]
        if any("$" in v for v in values):
            continue
        argv += [key, *values]
    args, _ = parser.parse_known_args(argv)
    for name, value in extra.items():
        if getattr(args, name, None) is None or f"--{name}" not in argv:
            setattr(args, name, value)
    return args


def perturb(module, seed: int) -> None:
    """Every parameter and float buffer gets noise, so norms, biases and running stats are non-trivial."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            elif tensor.dim() <= 1 or "norm" in name:
                tensor.add_(0.1 * noise)
            else:
                tensor.add_(0.02 * noise)


class Experiments:
    """The checks, written once; a modality supplies the model, its forward, loss, optimizer and lr schedule."""

    def __init__(self, model, forward, loss, spec, eval_modules=()):
        self.model, self.forward, self.loss, self.spec = model, forward, loss, spec
        self.eval_modules = eval_modules

    def train_mode(self) -> None:
        self.model.train()
        for module in self.eval_modules:
            module.eval()

    def pathway_layers(self):
        import multimodal_pathway as mp
        for name, module in self.model.named_modules():
            if isinstance(module, mp.CrossModalReparamLinear):
                match = re.search(r"(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)$", name)
                yield name, int(match.group(1)), match.group(2), module

    def set_lambdas(self) -> None:
        for name, block, layer, module in self.pathway_layers():
            module.cross_modal_scale.data.fill_(lambda_value(block, layer))

    def run(self, make_optimizer, lr_rows, clip=None, per_epoch: bool = False) -> dict:
        """``lr_rows(optimizer)``: every group's lr at every optimizer step, or at every epoch (``per_epoch``)."""
        import torch
        model, x, y = self.model, self.spec["x"], self.spec["y"]
        out: dict = {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        loaded = {k: v.clone() for k, v in out["state"].items()}
        model.eval()
        with torch.no_grad():
            out["logits_lambda0"] = self.forward(x).detach()
            self.set_lambdas()
            out["logits_lambda"] = self.forward(x).detach()
        self.train_mode()
        model.zero_grad(set_to_none=True)
        self.loss(self.forward(x), y).backward()
        out["grads"] = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        model.load_state_dict(loaded)

        optimizer = make_optimizer()
        names = {id(p): n for n, p in model.named_parameters()}
        out["groups"] = {names[id(p)]: (float(g.get("lr_scale", 1.0)), float(g["weight_decay"]))
                         for g in optimizer.param_groups for p in g["params"]}
        out["param_group"] = {names[id(p)]: i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
        out["lr"] = torch.tensor(lr_rows(optimizer), dtype=torch.float64)  # steps x groups

        optimizer = make_optimizer()
        for step in range(STEPS):
            row = step // self.spec["steps_per_epoch"] if per_epoch else step
            for group, lr in zip(optimizer.param_groups, out["lr"][row].tolist()):
                group["lr"] = lr
            self.train_mode()
            optimizer.zero_grad()
            self.loss(self.forward(x), y).backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip, norm_type=2)
            optimizer.step()
        out["lambda_after"] = {name: float(m.cross_modal_scale.detach()) for name, _, _, m in self.pathway_layers()}
        out["state_after"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.eval()
        with torch.no_grad():
            out["logits_after"] = self.forward(x).detach()
        return out


def load_aux_like_reference(timm, path: str, key: str):
    """The reference's aux loading (a ``timm.create_model('vit_base_patch16_224')`` filled ``strict=True`` from an
    OrderedDict state dict, from its ``key`` entry, or from a pickled module)."""
    import torch
    from torch import nn
    aux_model = timm.create_model("vit_base_patch16_224", pretrained=False)
    pretrained = torch.load(path, weights_only=False)
    if isinstance(pretrained, collections.OrderedDict):
        aux_state_dict = pretrained[key] if key in pretrained else pretrained
    elif isinstance(pretrained, nn.Module):
        aux_state_dict = pretrained.state_dict()
    aux_model.load_state_dict(aux_state_dict, strict=True)
    return aux_model


def patch_bias_free_reparam(notes: list) -> None:
    """The reference's ``CrossModalReparamLinear`` copies ``origin_layer.bias`` unconditionally and so crashes on
    bias-free layers (VideoMAE / Point-MAE ``qkv``): copy the bias only where there is one."""
    import torch
    import multimodal_pathway as mp
    original = mp.CrossModalReparamLinear.__init__

    def init(self, in_features, out_features, bias=True, origin_layer=None, aux_weight=None, is_aux_trainable=True):
        original(self, in_features, out_features, bias, None, aux_weight, is_aux_trainable)
        with torch.no_grad():
            self.weight.copy_(origin_layer.weight)
            if origin_layer.bias is not None:
                self.bias.copy_(origin_layer.bias)

    mp.CrossModalReparamLinear.__init__ = init
    notes.append("patched: CrossModalReparamLinear copies the bias only when the layer has one "
                 "(the reference crashes on bias-free qkv)")


def mae_lr_rows(lr_sched, args, steps_per_epoch: int):
    """MAE / AudioMAE engines: ``adjust_learning_rate(data_iter_step / len(loader) + epoch)`` every optimizer step."""
    def rows(optimizer):
        table = []
        for epoch in range(args.epochs):
            for step in range(steps_per_epoch):
                lr_sched.adjust_learning_rate(optimizer, step / steps_per_epoch + epoch, args)
                table.append([g["lr"] for g in optimizer.param_groups])
        return table
    return rows


def build_image(ref: Path, work: Path, spec: dict, notes: list) -> dict:
    import torch
    import timm
    import models_mae
    import models_vit
    import util.lr_decay as lrd
    import util.lr_sched as lr_sched
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.models.layers import trunc_normal_
    from util.pos_embed import interpolate_pos_embed
    import multimodal_pathway as mp

    args = recipe_args(ref / "Image/main_finetune.py", ref / "Image/ft_pathway.sh", "main_finetune.py",
                       {"pretrained_path": str(work / "aux.pth"), "finetune": str(work / "target.pth")})
    torch.manual_seed(0)
    mae = models_mae.mae_vit_base_patch16(norm_pix_loss=False)
    perturb(mae, 1)
    torch.save({"model": mae.state_dict()}, work / "target.pth")
    aux = timm.create_model("vit_base_patch16_224", pretrained=False)
    perturb(aux, 2)
    torch.save(aux.state_dict(), work / "aux.pth")

    # main_finetune.py, model construction to the pathway (drop path 0: stochastic depth is random)
    model = models_vit.__dict__[args.model](num_classes=args.nb_classes, drop_path_rate=0.0,
                                            global_pool=args.global_pool)
    checkpoint_model = torch.load(args.finetune, map_location="cpu")["model"]
    state_dict = model.state_dict()
    for k in ["head.weight", "head.bias"]:
        if k in checkpoint_model and checkpoint_model[k].shape != state_dict[k].shape:
            del checkpoint_model[k]
    interpolate_pos_embed(model, checkpoint_model)
    msg = model.load_state_dict(checkpoint_model, strict=False)
    assert set(msg.missing_keys) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}, msg
    trunc_normal_(model.head.weight, std=2e-5)
    model.load_state_dict(checkpoint_model, strict=False)  # main_finetune.py loads it a second time
    aux_model = load_aux_like_reference(timm, args.pretrained_path, "module")
    mp.reparameterize_aux_into_target_model(model, aux_model, layer_names=LAYERS)
    set_head(model.head, spec)

    eff_batch_size = args.batch_size * args.accum_iter * spec["world_size"]
    args.lr = args.blr * eff_batch_size / 256
    make_optimizer = lambda: torch.optim.AdamW(lrd.param_groups_lrd(
        model, args.weight_decay, no_weight_decay_list=model.no_weight_decay(), layer_decay=args.layer_decay),
        lr=args.lr)
    criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    exp = Experiments(model, model, criterion, spec)
    out = exp.run(make_optimizer, mae_lr_rows(lr_sched, args, spec["steps_per_epoch"]), clip=args.clip_grad)
    out["recipe"] = recipe_summary(args, ["model", "blr", "lr", "layer_decay", "weight_decay", "epochs",
                                          "warmup_epochs", "min_lr", "smoothing", "batch_size", "accum_iter"])
    return out


def build_audio(ref: Path, work: Path, spec: dict, notes: list) -> dict:
    import torch
    from torch import nn
    import timm
    import models_mae
    import models_vit
    import util.lr_decay as lrd
    import util.lr_sched as lr_sched
    from timm.models.layers import trunc_normal_
    from util.patch_embed import PatchEmbed_new
    import multimodal_pathway as mp

    args = recipe_args(ref / "Audio/main_finetune_as_pathway.py", ref / "Audio/ft_srun_pathway.sh",
                       "main_finetune_as_pathway.py",
                       {"pretrained_path": str(work / "aux.pth"), "finetune": str(work / "target.pth"),
                        "batch_size": spec["batch_size"]})
    args.audio_exp = True
    torch.manual_seed(0)
    mae = models_mae.mae_vit_base_patch16(in_chans=1, audio_exp=True, img_size=(1024, 128))
    perturb(mae, 1)
    torch.save({"model": mae.state_dict()}, work / "target.pth")
    aux = timm.create_model("vit_base_patch16_224", pretrained=False)
    perturb(aux, 2)
    torch.save(aux.state_dict(), work / "aux.pth")

    # main_finetune_as_pathway.py, model construction to the pathway
    model = models_vit.__dict__[args.model](num_classes=args.nb_classes, drop_path_rate=0.0,
                                            global_pool=args.global_pool, mask_2d=args.mask_2d,
                                            use_custom_patch=args.use_custom_patch)
    img_size, emb_dim = (1024, 128), 768
    model.patch_embed = PatchEmbed_new(img_size=img_size, patch_size=(16, 16), in_chans=1, embed_dim=emb_dim,
                                       stride=16)
    num_patches = model.patch_embed.num_patches
    model.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, emb_dim), requires_grad=False)
    checkpoint_model = torch.load(args.finetune, map_location="cpu")["model"]
    state_dict = model.state_dict()
    for k in ["head.weight", "head.bias"]:
        if k in checkpoint_model and checkpoint_model[k].shape != state_dict[k].shape:
            del checkpoint_model[k]
    model.load_state_dict(checkpoint_model, strict=False)
    notes.append("patched: main_finetune_as_pathway.py never loads its target checkpoint (the load is commented "
                 "out); the harness runs that commented-out model.load_state_dict(checkpoint_model, strict=False)")
    trunc_normal_(model.head.weight, std=2e-5)
    aux_model = load_aux_like_reference(timm, args.pretrained_path, "state_dict")
    mp.reparameterize_aux_into_target_model(model, aux_model, layer_names=LAYERS)
    set_head(model.head, spec)

    eff_batch_size = args.batch_size * args.accum_iter * spec["world_size"]
    args.lr = args.blr * eff_batch_size / 256
    make_optimizer = lambda: torch.optim.AdamW(lrd.param_groups_lrd(
        model, args.weight_decay, no_weight_decay_list=model.no_weight_decay(), layer_decay=args.layer_decay),
        lr=args.lr)
    exp = Experiments(model, model, nn.BCEWithLogitsLoss(), spec)
    out = exp.run(make_optimizer, mae_lr_rows(lr_sched, args, spec["steps_per_epoch"]), clip=args.clip_grad)
    out["recipe"] = recipe_summary(args, ["model", "blr", "lr", "layer_decay", "weight_decay", "epochs",
                                          "warmup_epochs", "min_lr", "batch_size", "mask_t_prob", "mask_f_prob"])
    return out


def build_video(ref: Path, work: Path, spec: dict, notes: list) -> dict:
    import torch
    import timm
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.models import create_model
    import models  # noqa: F401  (registers the VideoMAE models, replacing timm's vit_base_patch16_224)
    import utils
    from optim_factory import LayerDecayValueAssigner, create_optimizer
    import multimodal_pathway as mp

    args = recipe_args(ref / "Video/run_class_finetuning.py", ref / "Video/run.sh", "run_class_finetuning.py",
                       {"pretrained_path": str(work / "aux.pth"), "finetune": str(work / "target.pth"),
                        "num_frames": spec["num_frames"]})
    if args.num_frames != 16:
        raise SystemExit(f"{args.num_frames} frames: compare at 16, the reference interpolates its table otherwise")
    torch.manual_seed(0)
    # A VideoMAE V2 model-zoo fine-tuning checkpoint: K710 head, under 'module' (vit_b_k710_dl_from_giant.pth).
    source = create_model(args.model, img_size=args.input_size, num_classes=710, all_frames=16,
                          tubelet_size=args.tubelet_size, use_mean_pooling=args.use_mean_pooling)
    perturb(source, 1)
    torch.save({"module": source.state_dict()}, work / "target.pth")
    aux = timm.create_model("vit_base_patch16_224", pretrained=False)  # the VideoMAE ViT-B (registry replaced)
    perturb(aux, 2)
    torch.save(aux.state_dict(), work / "aux.pth")
    notes.append("format: the aux file is an OrderedDict state dict of a VideoMAE ViT-B, the one format the "
                 "reference reads: after `import models`, timm.create_model('vit_base_patch16_224') is VideoMAE's, "
                 "and a model-zoo {'module': ...} dict (a plain dict) leaves aux_state_dict unbound")

    # run_class_finetuning.py, model construction to the pathway
    model = create_model(args.model, img_size=args.input_size, pretrained=False, num_classes=args.nb_classes,
                         all_frames=args.num_frames * args.num_segments, tubelet_size=args.tubelet_size,
                         drop_rate=args.drop, drop_path_rate=0.0, attn_drop_rate=args.attn_drop_rate,
                         head_drop_rate=args.head_drop_rate, drop_block_rate=None,
                         use_mean_pooling=args.use_mean_pooling, init_scale=args.init_scale,
                         with_cp=args.with_checkpoint)
    checkpoint = torch.load(args.finetune, map_location="cpu")
    checkpoint_model = next(checkpoint[k] for k in args.model_key.split("|") if k in checkpoint)
    state_dict = model.state_dict()
    for k in ["head.weight", "head.bias"]:
        if k in checkpoint_model and checkpoint_model[k].shape != state_dict[k].shape:
            if checkpoint_model[k].shape[0] == 710 and args.data_set.startswith("Kinetics"):
                label_map = json.load(open("misc/label_710to400.json"))
                checkpoint_model[k] = checkpoint_model[k][label_map]
            else:
                del checkpoint_model[k]
    utils.load_state_dict(model, checkpoint_model, prefix=args.model_prefix)
    aux_model = load_aux_like_reference(timm, args.pretrained_path, "module")
    patch_bias_free_reparam(notes)
    mp.reparameterize_aux_into_target_model(model, aux_model, layer_names=LAYERS)
    patch_qkv_bypass(model, notes)

    total_batch_size = args.batch_size * args.update_freq * spec["world_size"]
    args.lr = args.lr * total_batch_size / 256
    args.min_lr = args.min_lr * total_batch_size / 256
    args.warmup_lr = args.warmup_lr * total_batch_size / 256
    num_layers = model.get_num_layers()
    assigner = LayerDecayValueAssigner(list(args.layer_decay ** (num_layers + 1 - i) for i in range(num_layers + 2)))
    make_optimizer = lambda: create_optimizer(args, model, skip_list=model.no_weight_decay(),
                                              get_num_layer=assigner.get_layer_id, get_layer_scale=assigner.get_scale)
    schedule = utils.cosine_scheduler(args.lr, args.min_lr, args.epochs, spec["steps_per_epoch"],
                                      warmup_epochs=args.warmup_epochs, warmup_steps=args.warmup_steps)

    def rows(optimizer):
        return [[lr * g["lr_scale"] for g in optimizer.param_groups] for lr in schedule.tolist()]

    exp = Experiments(model, model, LabelSmoothingCrossEntropy(smoothing=args.smoothing), spec)
    out = exp.run(make_optimizer, rows, clip=args.clip_grad)
    model.load_state_dict(out["state"])
    for block in model.blocks:
        del block.attn.forward  # the reference's own attention again: qkv pathway bypassed
    model.eval()
    with torch.no_grad():
        exp.set_lambdas()
        out["logits_lambda_unpatched"] = model(spec["x"]).detach()
    out["recipe"] = recipe_summary(args, ["model", "lr", "min_lr", "layer_decay", "weight_decay", "epochs",
                                          "warmup_epochs", "smoothing", "batch_size", "opt_betas", "opt_eps"])
    return out


def patch_qkv_bypass(model, notes: list) -> None:
    """VideoMAE's attention reads ``self.qkv.weight`` directly (``F.linear(x, self.qkv.weight, qkv_bias)``), so the
    pathway on qkv is never on the forward path.  The minimum patch: while the reference's own ``forward`` runs,
    ``self.qkv`` answers ``.weight`` with the re-parameterized ``W + λ·W_aux``."""
    import multimodal_pathway as mp
    for block in model.blocks:
        attn = block.attn
        original = type(attn).forward

        def forward(x, attn=attn, original=original):
            layer = attn._modules["qkv"]
            if not isinstance(layer, mp.CrossModalReparamLinear):
                return original(attn, x)
            attn.__dict__["qkv"] = types.SimpleNamespace(
                weight=layer.weight + layer.cross_modal_scale * layer.aux_weight)
            try:
                return original(attn, x)
            finally:
                del attn.__dict__["qkv"]

        attn.forward = forward
    notes.append("patched: VideoMAE attention computes qkv from self.qkv.weight, bypassing the qkv pathway; "
                 "the harness hands its forward W + λ·W_aux instead (DELIBERATE row: the unpatched reference)")


def build_point(ref: Path, work: Path, spec: dict, notes: list) -> dict:
    import torch
    import yaml
    import timm
    from timm.scheduler import CosineLRScheduler
    from models.Point_MAE import PointTransformer
    import multimodal_pathway as mp

    cfg = yaml.safe_load((ref / "Point/cfgs/finetune_modelnet_pathway.yaml").read_text())
    mcfg = _Cfg({**cfg["model"], "drop_path_rate": 0.0})
    torch.manual_seed(0)
    aux = timm.create_model("vit_base_patch16_224", pretrained=False)
    perturb(aux, 2)
    torch.save(aux.state_dict(), work / "aux.pth")
    source = PointTransformer(mcfg)
    perturb(source, 1)
    # Point-MAE checkpoints: {'base_model': {'module.MAE_encoder.<encoder keys>', 'module.<fine-tuning keys>'}}
    encoder = re.compile(r"^(encoder|pos_embed|blocks|norm)\.")
    base = {("module.MAE_encoder." if encoder.match(k) else "module.") + k: v for k, v in source.state_dict().items()}
    torch.save({"base_model": base}, work / "target.pth")

    # runner_finetune_pathway.py run_net, model construction (it reads 'ckpt-epoch-300.pth' from the working dir)
    aux_model = load_aux_like_reference(timm, str(work / "aux.pth"), "state_dict")
    base_model = PointTransformer(mcfg)
    state_dict = torch.load(work / "target.pth")["base_model"]
    new_state_dict = {}
    for k, v in state_dict.items():
        if "module" in k:
            k = k[7:]
        if "MAE_encoder" in k:
            k = k[12:]
        new_state_dict[k] = v
    base_model.load_state_dict(new_state_dict, strict=False)
    patch_bias_free_reparam(notes)
    # one main_body_name serves target and aux: the target's blocks are at blocks.blocks, the timm aux's at blocks
    mp.reparameterize_aux_into_target_model(base_model.blocks, aux_model, layer_names=LAYERS, main_body_name="blocks")
    notes.append("patched: runner_finetune_pathway.py builds the aux model but never calls "
                 "reparameterize_aux_into_target_model; the harness calls it on the encoder (base_model.blocks)")

    wrapped = types.SimpleNamespace(module=base_model)  # build_opti_sche reads model.module (DataParallel)

    # tools/builder.py's build_opti_sche, read from the file (importing the `tools` package pulls in every runner
    # and dataset)
    build_opti_sche = load_function(ref / "Point/tools/builder.py", "build_opti_sche",
                                    {"optim": torch.optim, "CosineLRScheduler": CosineLRScheduler})
    config = _Cfg({"optimizer": _Cfg(cfg["optimizer"]), "scheduler": _Cfg(cfg["scheduler"])})

    built = {}

    def make_optimizer():
        optimizer, built["scheduler"] = build_opti_sche(wrapped, config)
        return optimizer

    def rows(optimizer):
        scheduler = built["scheduler"]  # built on this optimizer by the make_optimizer call just before
        table = []
        for epoch in range(0, cfg["max_epoch"] + 1):  # run_net: `for epoch in range(start_epoch, max_epoch + 1)`
            table.append([g["lr"] for g in optimizer.param_groups])
            scheduler.step(epoch)
        return table

    def loss(logits, y):
        return base_model.get_loss_acc(logits, y)[0]

    exp = Experiments(base_model, base_model, loss, spec, eval_modules=[base_model.cls_head_finetune])
    out = exp.run(make_optimizer, rows, clip=cfg.get("grad_norm_clip"), per_epoch=True)
    out["recipe"] = {"optimizer": cfg["optimizer"], "scheduler": cfg["scheduler"], "max_epoch": cfg["max_epoch"],
                     "grad_norm_clip": cfg.get("grad_norm_clip"), "model": cfg["model"]}
    return out


class _Cfg(dict):
    """What Point-MAE's EasyDict configs give the builder: a dict whose keys read as attributes, nested."""

    def __init__(self, values: dict) -> None:
        super().__init__({k: _Cfg(v) if isinstance(v, dict) else v for k, v in values.items()})

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


def load_function(path: Path, name: str, namespace: dict):
    """One top-level function of a reference file, compiled from its source (without importing its module)."""
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    scope = dict(namespace)
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), scope)
    return scope[name]


def set_head(head, spec) -> None:
    """Both sides re-initialise the classifier randomly (trunc_normal std 2e-5); the harness gives both the same."""
    import torch
    with torch.no_grad():
        head.weight.copy_(spec["head_weight"])
        head.bias.copy_(spec["head_bias"])


def recipe_summary(args, keys) -> dict:
    return {k: getattr(args, k, None) for k in keys}


BUILDERS = {"image": ("Image", build_image), "audio": ("Audio", build_audio), "video": ("Video", build_video),
            "point": ("Point", build_point)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modality", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--reference-dir", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    args = parser.parse_args()
    folder, build = BUILDERS[args.modality]
    ref = args.reference_dir.resolve()
    sys.path[:0] = [str(ref / folder), str(ref)]
    install_torch_six()
    install_numpy_aliases()
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    os.chdir(ref / folder)
    spec = torch.load(args.work / "spec.pt")
    notes: list = []
    out = build(ref, args.work, spec, notes)
    import timm
    out["notes"] = notes
    out["timm"] = f"{timm.__version__} ({Path(timm.__file__).parent})"
    tmp = args.work / "reference.pt.tmp"
    torch.save(out, tmp)
    tmp.replace(args.work / "reference.pt")


if __name__ == "__main__":
    main()

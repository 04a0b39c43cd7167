"""The contract every modality satisfies (README "Adding a modality"), checked over all entry points at once, so a
fifth modality that forgets a piece fails here instead of in a user's run.

Each entry point is the pair its ``__main__`` hands to ``pathway.cli.run_cli``; a tiny model of each runs one
backward pass with a pathway, and every λ and trained aux weight must get a gradient.
"""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
import torch

from pathway import reparameterize_aux_into_target_model, set_lambdas
from pathway.data import SplitDataModule
from pathway.module import PathwayModule

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("Image", "Video", "Point", "Point.seg", "Audio")
TINY = dict(embed_dim=32, depth=2, num_heads=2)
TINY_KWARGS = {
    "Image": dict(model_name="vit_tiny_patch16_224", img_size=32, model_kwargs=dict(patch_size=16, **TINY)),
    "Video": dict(img_size=32, num_frames=4, patch_size=16, **TINY),
    "Point": dict(num_groups=8, group_size=8, **TINY),
    "Point.seg": dict(num_groups=8, group_size=8, feature_levels=(0, 1), propagation_dims=(32, 16),
                      head_dims=(16, 8), **TINY),
    "Audio": dict(model_name="vit_tiny_patch16_224", target_length=64, num_mel_bins=32, **TINY),
}


def _cli_classes(entry: str) -> tuple[type, type]:
    """The (model, datamodule) classes the entry point's ``__main__`` passes to ``run_cli``, read from its source."""
    package, _, sub = entry.partition(".")
    path = REPO / package / (f"{sub}.py" if sub else "__main__.py")
    calls = [node for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run_cli"]
    assert len(calls) == 1, f"{path}: expected one run_cli(...) call, found {len(calls)}"
    module = importlib.import_module(entry if sub else f"{package}.__main__")
    model_cls, data_cls = (getattr(module, arg.id) for arg in calls[0].args[:2])
    return model_cls, data_cls


def _init_params(cls: type) -> set[str]:
    """Constructor arguments of ``cls`` and of the bases its ``**kwargs`` reach (LightningCLI exposes all of them)."""
    return {name for klass in cls.__mro__ if "__init__" in vars(klass)
            for name in inspect.signature(klass.__init__).parameters}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_point_declares_the_contract(entry: str) -> None:
    model_cls, data_cls = _cli_classes(entry)
    assert issubclass(model_cls, PathwayModule) and issubclass(data_cls, SplitDataModule)
    for hook in ("build_backbone", "eval_step"):
        assert getattr(model_cls, hook) is not getattr(PathwayModule, hook), f"{model_cls.__name__} lacks {hook}()"
    has_inputs = (model_cls.example_input_shape is not PathwayModule.example_input_shape
                  or model_cls.example_inputs is not PathwayModule.example_inputs)
    assert has_inputs, f"{model_cls.__name__} says neither example_input_shape() nor example_inputs() (export needs one)"
    assert data_cls.build_split is not SplitDataModule.build_split, f"{data_cls.__name__} lacks build_split()"
    data_params = _init_params(data_cls)
    model_params = _init_params(model_cls)
    for name in ("batch_size", "num_workers", "pin_memory", "on_bad_file", "max_bad_fraction"):
        assert name in data_params, f"{data_cls.__name__} has no '{name}' argument (SplitDataModule reads it)"
    for name, apply_on in getattr(data_cls, "linked_to_model", {}).items():
        assert apply_on in ("parse", "instantiate")
        if apply_on == "parse":  # an 'instantiate' link reads an attribute the DataModule sets in __init__
            assert name in data_params, f"{data_cls.__name__} links '{name}' but has no such argument"
        assert name in model_params, f"{data_cls.__name__} links '{name}' to a model argument {model_cls.__name__} lacks"


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_tiny_model_takes_a_pathway_step(entry: str) -> None:
    model_cls, _ = _cli_classes(entry)
    torch.manual_seed(0)
    kwargs = dict(TINY_KWARGS[entry])
    if entry != "Point.seg":
        kwargs["num_classes"] = 3
    module = model_cls(aux_ckpts=[], **kwargs)
    aux = {k: torch.randn_like(v) for k, v in module.backbone.state_dict().items() if v.is_floating_point()}
    reparameterize_aux_into_target_model(module.backbone, aux)
    set_lambdas(module.backbone, 0.3)
    inputs = module.example_inputs(2, torch.Generator().manual_seed(0))
    if entry == "Point":
        inputs = (inputs[0][:, :64].contiguous(),)
    elif entry == "Point.seg":
        inputs = (inputs[0][:, :64].contiguous(), inputs[1])
    module(*inputs).float().pow(2).mean().backward()
    with_grad = {n for n, p in module.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    lambdas = {n for n, _ in module.named_parameters() if n.endswith(".lambdas")}
    aux = {n for n, _ in module.named_parameters() if ".aux_weight_" in n}
    assert lambdas and lambdas <= with_grad, f"λ without gradient (off the forward path): {sorted(lambdas - with_grad)}"
    assert aux and aux <= with_grad, f"trained aux (the default) without gradient: {sorted(aux - with_grad)}"

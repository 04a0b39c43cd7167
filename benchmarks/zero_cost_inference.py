"""The merged model is a plain ViT: same parameter count, same outputs as the unmerged pathway model, same speed.

Builds a pathway model (target + one aux, λ ≠ 0 on every layer), fuses it (``pathway.fuse_pathway``), loads the
fused state dict ``strict=True`` into a freshly created timm ViT of the same shape, and times inference of the
plain ViT (the baseline), the fused model and the unmerged pathway model, interleaved round by round.
fp32 on CPU, bf16 autocast on CUDA.

    .venv/bin/python benchmarks/zero_cost_inference.py               # tiny + ViT-B
    .venv/bin/python benchmarks/zero_cost_inference.py --quick       # tiny only, seconds
"""
from __future__ import annotations

import os

# Set before torch loads libgomp: spinning OpenMP threads on a CPU shared with other work run up to ~80x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from typing import Callable, Optional

import torch
from torch import nn

from bench_utils import (
    MODELS, autocast_for, build_vit, describe_machine, interleaved_timing, model_benchmark_args,
    precision_name, print_table, ratio_to,
)
from pathway import PathwayLinear, fuse_pathway, pathway_layers, reparameterize_aux_into_target_model
from pathway.layers import is_lambdas_key, parse_aux_weight_key


def pathway_model(model_name: str, device: torch.device) -> nn.Module:
    """Target (seed 0) with a pathway from an aux (seed 1); λ drawn per layer so the fold is not trivial."""
    target = build_vit(model_name, seed=0, device=device)
    aux = build_vit(model_name, seed=1, device=device)
    reparameterize_aux_into_target_model(target, aux)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, layer in pathway_layers(target):
            layer.lambdas.copy_(0.1 * torch.randn(layer.num_aux, generator=generator))
    return target.eval()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run(model_name: str, batch: int, rounds: int, iters: int, device: torch.device) -> dict[str, float]:
    """Prints the table; returns each model's inference time / the plain ViT's."""
    unmerged = pathway_model(model_name, device)
    fused = fuse_pathway(unmerged)
    plain = build_vit(model_name, seed=3, device=device).eval()
    plain.load_state_dict(fused.state_dict(), strict=True)
    leftovers = [n for n, m in fused.named_modules() if isinstance(m, PathwayLinear)]
    leftovers += [k for k in fused.state_dict() if is_lambdas_key(k) or parse_aux_weight_key(k)]
    if leftovers:
        raise RuntimeError(f"fused model still carries the pathway: {leftovers[:3]}")

    x = torch.randn(batch, 3, *plain.patch_embed.img_size, generator=torch.Generator().manual_seed(0)).to(device)
    autocast = autocast_for(device)
    models = {"plain timm ViT (baseline)": plain, "fused pathway model": fused, "unmerged pathway model": unmerged}

    def infer(model: nn.Module) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with torch.inference_mode(), autocast():
                return model(x)
        return call

    runners = {name: infer(model) for name, model in models.items()}
    reference = runners["unmerged pathway model"]().float()
    outputs = {name: run_fn().float() for name, run_fn in runners.items()}
    timings = interleaved_timing(runners, rounds=rounds, iters_per_round=iters, device=device)
    baseline = timings["plain timm ViT (baseline)"]
    rows, ratios = [], {}
    for name, model in models.items():
        t = timings[name]
        ratio, spread = ratio_to(baseline, t)
        ratios[name] = ratio
        median_s = sorted(t.seconds)[len(t.seconds) // 2]
        rows.append([
            name, f"{num_params(model):,}", f"{batch / median_s:.1f}", f"{ratio:.3f} ± {spread:.3f}",
            f"{(outputs[name] - reference).abs().max().item():.2e}",
        ])
    spec = MODELS[model_name]
    print_table(
        f"{model_name} ({spec['name']} {spec['kwargs'] or ''}, {spec['img_size']}px), batch {batch}, inference, "
        f"{precision_name(device)}, {describe_machine(device)}; {rounds} rounds x {iters} calls",
        ["model", "parameters", "images/s", "time vs plain", "max |out − unmerged|"],
        rows,
    )
    return ratios


def main(argv: Optional[list[str]] = None) -> None:
    args, device, batches = model_benchmark_args(
        __doc__, 9, 3, cpu_batches={"tiny": 64, "vitb": 4, "vitb-host": 1},
        cuda_batches={"tiny": 1024, "vitb": 256, "vitb-host": 1}, argv=argv
    )
    for model_name, batch in zip(args.models, batches):
        run(model_name, batch, args.rounds, args.iters, device)


if __name__ == "__main__":
    main()

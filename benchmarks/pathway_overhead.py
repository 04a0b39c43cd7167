"""Training-step cost of the pathway against plain fine-tuning of the same model on the same batch.

One forward + backward + AdamW step per iteration (fp32 on CPU, bf16-mixed on CUDA).  Variants: plain fine-tune
(the baseline), pathway with one frozen aux, one trainable aux, two frozen aux; and, for one frozen aux, two other
ways of computing the layer, kept here only for comparison:

* ``W_eff saved`` - ``F.linear(x, W + Σλ W_aux)`` under plain autograd in every precision (the library's layer
  before this benchmark; today the library's layer under autocast and torch.compile): autograd keeps the summed
  weight of every layer alive until backward, in fp32 when there is no autocast.
* ``x·W_auxᵀ branch`` - ``x Wᵀ + Σ λ (x W_auxᵀ)``: no summed weight at all, but one more matmul per aux.

Targets: frozen-aux step time ≤ 1.10x plain; peak memory above plain ≤ the aux weights themselves.

"aten ops / step" counts the operators one eager step dispatches (forward, backward, AdamW; AdamW's per-tensor
CPU path dispatches more than its CUDA foreach path): where a step is bound by the host issuing kernels rather than
by the device running them, its time grows with this count and with the layers' Python, not with the extra
arithmetic.  ``--as-cuda`` runs the step as CUDA does (bf16 autocast, AdamW's foreach path) on any device; with the
``vitb-host`` model (ViT-B's layers at negligible arithmetic) a CPU then measures the host side of an eager ViT-B
GPU step, and counts the same operators as ViT-B.

    .venv/bin/python benchmarks/pathway_overhead.py                 # tiny + ViT-B
    .venv/bin/python benchmarks/pathway_overhead.py --quick         # tiny only, seconds
    .venv/bin/python benchmarks/pathway_overhead.py --models vitb --compile inductor   # under torch.compile
    .venv/bin/python benchmarks/pathway_overhead.py --models vitb --compile inductor --compile-mode reduce-overhead
    .venv/bin/python benchmarks/pathway_overhead.py --models vitb-host --as-cuda --rounds 15 --iters 5
"""
from __future__ import annotations

import os
import time

# Set before torch loads libgomp: spinning OpenMP threads on a CPU shared with other work run up to ~80x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from bench_utils import (
    MODELS, autocast_for, build_vit, describe_machine, interleaved_timing, mib, model_benchmark_args,
    peak_memory, precision_name, print_table, ratio_to, tensor_bytes,
)
from pathway import PathwayLinear, pathway_layers, reparameterize_aux_into_target_model, set_lambdas


class SavedSumPathwayLinear(PathwayLinear):
    """``F.linear(x, W + Σλ W_aux)`` through plain autograd, which saves the summed weight for backward."""

    def forward(self, x: Tensor) -> Tensor:
        weight = self.effective_weight()
        bias = self.bias
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            weight = weight.to(x.dtype)
            bias = bias.to(x.dtype) if bias is not None else None
        return F.linear(x, weight, bias)


class BranchPathwayLinear(PathwayLinear):
    """``x Wᵀ + b + Σ λ_i (x W_aux_iᵀ)``: no weight-sized temporaries, one extra matmul per aux."""

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        for i, aux in enumerate(self.aux_weights()):
            branch = F.linear(x, aux)
            out = out + self.lambdas[i].to(branch.dtype) * branch
        return out


FORMULATIONS: dict[str, Optional[type[PathwayLinear]]] = {
    "library": None, "W_eff saved": SavedSumPathwayLinear, "x·W_auxᵀ branch": BranchPathwayLinear,
}


@dataclass(frozen=True)
class Variant:
    label: str
    num_aux: int = 0
    aux_trainable: bool = False
    formulation: str = "library"


VARIANTS = (
    Variant("plain fine-tune"),
    Variant("pathway 1 aux frozen", 1),
    Variant("pathway 1 aux frozen [W_eff saved, before]", 1, formulation="W_eff saved"),
    Variant("pathway 1 aux frozen [x·W_auxᵀ branch]", 1, formulation="x·W_auxᵀ branch"),
    Variant("pathway 1 aux trainable", 1, aux_trainable=True),
    Variant("pathway 2 aux frozen", 2),
)


def build_variant(model: str, variant: Variant, device: torch.device) -> nn.Module:
    """The target (same init for every variant), with the variant's pathway; λ ≠ 0 so every term is live."""
    target = build_vit(model, seed=0, device=device)
    if variant.num_aux:
        auxes = [build_vit(model, seed=1 + i, device=device).state_dict() for i in range(variant.num_aux)]
        reparameterize_aux_into_target_model(target, auxes, aux_trainable=variant.aux_trainable)
        del auxes
        set_lambdas(target, 0.05)
        layer_class = FORMULATIONS[variant.formulation]
        if layer_class is not None:
            for _, layer in pathway_layers(target):
                layer.__class__ = layer_class
    return target.train()


def aux_bytes(model: nn.Module) -> int:
    return tensor_bytes([w for _, layer in pathway_layers(model) for w in layer.aux_weights()])


def make_step(model: nn.Module, batch: int, device: torch.device, as_cuda: bool = False) -> Callable[[], None]:
    """One optimisation step on a fixed random batch: what a training loop costs, without the loader.  ``as_cuda``:
    bf16 autocast and AdamW's foreach path on any device, as a CUDA step runs them.  Each step starts with
    ``cudagraph_mark_step_begin``, which tells CUDA graphs (``mode="reduce-overhead"``) that the previous step's
    outputs are done with; elsewhere it only sets a flag."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.05, foreach=True if as_cuda else None)
    size = model.patch_embed.img_size
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, *size, generator=generator).to(device)
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if as_cuda else autocast_for(device)

    def step() -> None:
        torch.compiler.cudagraph_mark_step_begin()
        with autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        self.count += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(step: Callable[[], None]) -> int:
    """aten operators dispatched by one call of ``step`` (after one warm-up call, which creates AdamW's state)."""
    step()
    with _OpCounter() as counter:
        step()
    return counter.count


def compiled(model: nn.Module, backend: Optional[str], mode: Optional[str] = None) -> nn.Module:
    """``torch.compile(model, backend=backend, mode=mode)``, or the model itself when ``backend`` is None."""
    return model if backend is None else torch.compile(model, backend=backend, mode=mode)


def measure_memory(model_name: str, batch: int, device: torch.device, variants: Sequence[Variant] = VARIANTS,
                   compile_backend: Optional[str] = None, as_cuda: bool = False,
                   compile_mode: Optional[str] = None) -> dict[str, tuple[int, int]]:
    """Per variant: (peak bytes of building the model and running 3 steps, aux weight bytes)."""
    def work(variant: Variant) -> Callable[[], int]:
        def build_and_step() -> int:
            model = build_variant(model_name, variant, device)
            step = make_step(compiled(model, compile_backend, compile_mode), batch, device, as_cuda)
            for _ in range(3):
                step()
            return aux_bytes(model)
        return build_and_step

    return {v.label: peak_memory(work(v), device) for v in variants}


def run(model_name: str, batch: int, memory: Optional[dict[str, tuple[int, int]]], rounds: int, iters: int,
        device: torch.device, variants: Sequence[Variant] = VARIANTS,
        compile_backend: Optional[str] = None, as_cuda: bool = False,
        compile_mode: Optional[str] = None) -> dict[str, tuple[float, float]]:
    """Prints the table; returns each variant's (step time / plain, peak memory / plain's; NaN if not measured)."""
    models = {v.label: compiled(build_variant(model_name, v, device), compile_backend, compile_mode) for v in variants}
    runners = {label: make_step(m, batch, device, as_cuda) for label, m in models.items()}
    ops = {label: "—" if compile_backend else str(ops_per_step(step)) for label, step in runners.items()}
    # The host side of a CUDA step, measured on a CPU, is CPU work: time it in the process's CPU time, which other
    # tenants of a shared machine do not inflate as they do wall-clock time.
    host_side = as_cuda and device.type == "cpu"
    timings = interleaved_timing(runners, rounds=rounds, iters_per_round=iters, device=device,
                                 clock=time.process_time if host_side else time.perf_counter)
    plain = timings[variants[0].label]
    rows, ratios = [], {}
    for variant in variants:
        t = timings[variant.label]
        ratio, spread = ratio_to(plain, t)
        median_s = sorted(t.seconds)[len(t.seconds) // 2]
        row = [variant.label, f"{1 / median_s:.3f}", f"{batch / median_s:.1f}", f"{ratio:.3f} ± {spread:.3f}",
               ops[variant.label]]
        if memory is None:
            ratios[variant.label] = (ratio, float("nan"))
            rows.append(row + ["not measured"] * 4)
            continue
        base_peak = memory[variants[0].label][0]
        peak, aux = memory[variant.label]
        extra = peak - base_peak
        ratios[variant.label] = (ratio, peak / base_peak)
        rows.append(row + [f"{mib(peak):.0f}", f"{mib(extra):+.0f}", f"{mib(aux):.0f}",
                           f"{extra / aux:.2f}" if aux else "-"])
    spec = MODELS[model_name]
    mode = f", mode={compile_mode}" if compile_mode else ""
    compile_label = f", torch.compile({compile_backend}{mode})" if compile_backend else ""
    print_table(
        f"{model_name} ({spec['name']} {spec['kwargs'] or ''}, {spec['img_size']}px), batch {batch}, "
        f"{'bf16 autocast + AdamW foreach (as CUDA)' if as_cuda else precision_name(device)}"
        f"{compile_label}, "
        f"{describe_machine(device)}; {rounds} rounds x {iters} steps{', CPU time' if host_side else ''}",
        ["variant", "steps/s", "samples/s", "time vs plain (median ± IQR/2)", "aten ops / step", "peak MiB",
         "Δ peak vs plain MiB", "aux MiB", "Δ / aux"],
        rows,
    )
    return ratios


def main(argv: Optional[list[str]] = None) -> None:
    args, device, batches = model_benchmark_args(
        __doc__, 5, 2, cpu_batches={"tiny": 64, "vitb": 4, "vitb-host": 1},
        cuda_batches={"tiny": 256, "vitb": 64, "vitb-host": 1}, argv=argv, compile_option=True,
        add_arguments=lambda parser: parser.add_argument(
            "--as-cuda", action="store_true",
            help="the step as CUDA runs it on any device: bf16 autocast, AdamW's foreach path"),
    )
    if args.as_cuda and device.type == "cpu":
        torch.set_num_threads(1)  # a CUDA step's host side is one thread issuing kernels
    # Memory before any timing (CPU measures it in forked children, which must not inherit a live thread pool).
    # torch.compile hangs in such a child, so on CPU compiled variants are timed only.
    measure = args.compile is None or device.type == "cuda"
    memory = {m: measure_memory(m, b, device, compile_backend=args.compile, as_cuda=args.as_cuda,
                                compile_mode=args.compile_mode) if measure else None
              for m, b in zip(args.models, batches)}
    for model_name, batch in zip(args.models, batches):
        run(model_name, batch, memory[model_name], args.rounds, args.iters, device, compile_backend=args.compile,
            as_cuda=args.as_cuda, compile_mode=args.compile_mode)


if __name__ == "__main__":
    main()

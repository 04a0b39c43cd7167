"""Shared helpers of the benchmark scripts: model shapes, device/precision choice, peak memory, tables.

Every benchmark measures its variants against a baseline in the same process, so machine load and thermal
drift hit both sides alike; timed loops interleave the variants round by round for the same reason.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import timm
import torch
from torch import nn

# Model shapes used across the benchmarks.  ``tiny`` is the CPU demo configuration (Image/configs/demo.yaml).
# ``vitb-host`` is ViT-B's layers at negligible arithmetic (width 24, 5 tokens): it dispatches the operators a ViT-B
# step does, so on a CPU its step time is what issuing a ViT-B step costs the host, which bounds an eager GPU step.
MODELS: dict[str, dict[str, Any]] = {
    "tiny": dict(name="vit_tiny_patch16_224", img_size=32,
                 kwargs=dict(patch_size=4, embed_dim=64, depth=4, num_heads=4)),
    "vitb": dict(name="vit_base_patch16_224", img_size=224, kwargs={}),
    "vitb-host": dict(name="vit_base_patch16_224", img_size=32, kwargs=dict(embed_dim=24)),
}


def build_vit(model: str, num_classes: int = 10, seed: int = 0, device: torch.device | str = "cpu") -> nn.Module:
    """A timm ViT of one of ``MODELS`` with reproducible random weights (no download)."""
    spec = MODELS[model]
    torch.manual_seed(seed)
    vit = timm.create_model(spec["name"], pretrained=False, num_classes=num_classes, img_size=spec["img_size"],
                            drop_path_rate=0.0, **spec["kwargs"])
    return vit.to(device)


def model_benchmark_args(
    doc: str, rounds: int, iters: int, cpu_batches: dict[str, int], cuda_batches: dict[str, int],
    argv: Optional[list[str]] = None, compile_option: bool = False,
    add_arguments: Optional[Callable[[argparse.ArgumentParser], Any]] = None,
) -> tuple[argparse.Namespace, torch.device, list[int]]:
    """The command line the tiny/ViT-B timing benchmarks share: (args, device, one batch size per model);
    ``add_arguments`` adds a script's own options."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "vitb"])
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help=f"batch size per model (default: CPU {cpu_batches}, CUDA {cuda_batches})")
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds (each variant once per round)")
    parser.add_argument("--iters", type=int, default=iters, help="repetitions per variant per round")
    parser.add_argument("--quick", action="store_true", help="tiny model, small batch, 3 rounds: a smoke run")
    if compile_option:
        parser.add_argument("--compile", metavar="BACKEND", default=None,
                            help="run every variant under torch.compile with this backend (inductor, eager, ...)")
        parser.add_argument("--compile-mode", metavar="MODE", default=None,
                            help="torch.compile's mode: reduce-overhead (CUDA graphs), max-autotune, ...")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    if args.quick:
        args.models, args.batch, args.rounds, args.iters = ["tiny"], [16], 3, 2
    defaults = cuda_batches if device.type == "cuda" else cpu_batches
    batches = args.batch or [defaults[m] for m in args.models]
    if len(batches) != len(args.models):
        parser.error("--batch needs one size per model")
    return args, device, batches


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def autocast_for(device: torch.device) -> Callable[[], AbstractContextManager]:
    """bf16-mixed on CUDA (what the GPU recipes train with), fp32 on CPU."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext


def precision_name(device: torch.device) -> str:
    return "bf16-mixed" if device.type == "cuda" else "fp32"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field} line")


def _run_in_fork(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a forked child; its JSON-able result comes back through a pipe, its errors as RuntimeError."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            payload = {"value": fn()}
        except BaseException as err:  # noqa: BLE001 - everything must reach the parent, then the child exits
            payload = {"error": f"{type(err).__name__}: {err}"}
        with os.fdopen(write_fd, "w") as fh:
            fh.write(json.dumps(payload))
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        text = fh.read()
    os.waitpid(pid, 0)
    payload = json.loads(text) if text else {"error": "the measuring child process died without an answer"}
    if "error" in payload:
        raise RuntimeError(f"memory measurement failed in the child process: {payload['error']}")
    return payload["value"]


def peak_memory(work: Callable[[], Any], device: torch.device) -> tuple[int, Any]:
    """Bytes above the starting level at the highest point of ``work()`` (which builds, steps and drops a model),
    and what ``work`` returned (JSON-able).

    CUDA: the caching allocator's counters, in this process.  CPU: the peak resident set (``VmHWM``) of a child
    forked for this measurement alone, so every variant starts from the same process image with the default
    allocator and no earlier variant's freed-but-kept heap hides its memory.  The child runs single-threaded;
    measure memory before timing anything all the same, so no thread pool is half-alive across the fork.
    """
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = work()
        peak = torch.cuda.max_memory_allocated(device) - base
        gc.collect()
        torch.cuda.empty_cache()
        return peak, result

    def child() -> tuple[int, Any]:
        # libgomp's thread team does not survive fork (two threads run ~50x slower here); one thread changes
        # no tensor sizes, so the peak is the same.
        torch.set_num_threads(1)
        # A fixed mmap threshold: glibc then serves every tensor above 128 KiB with its own mapping and unmaps
        # it when freed, so the resident set follows the live tensors instead of the heap's high-water mark.
        if ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 128 * 1024) != 1:
            raise OSError("mallopt(M_MMAP_THRESHOLD) failed")
        gc.collect()
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current resident set
        base = _status_kib("VmRSS")
        result = work()
        return (_status_kib("VmHWM") - base) * 1024, result

    peak, result = _run_in_fork(child)
    return int(peak), result


@dataclass
class Timing:
    name: str
    seconds: list[float]  # per round, seconds per iteration


def interleaved_timing(
    runners: dict[str, Callable[[], None]],
    rounds: int,
    iters_per_round: int,
    device: torch.device,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Seconds per call of every runner, measured round-robin so slow drift of the machine cancels out."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    synchronize(device)
    timings = {name: Timing(name, []) for name in runners}
    for r in range(rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            synchronize(device)
            t0 = clock()
            for _ in range(iters_per_round):
                runners[name]()
            synchronize(device)
            timings[name].seconds.append((clock() - t0) / iters_per_round)
    return timings


def ratio_to(baseline: Timing, other: Timing) -> tuple[float, float]:
    """Median and spread (half the inter-quartile range) of the per-round time ratio other / baseline."""
    ratios = [o / b for o, b in zip(other.seconds, baseline.seconds)]
    if len(ratios) < 2:
        return ratios[0], 0.0
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [min(ratios), 0.0, max(ratios)]
    return statistics.median(ratios), (q[2] - q[0]) / 2


def mib(num_bytes: float) -> float:
    return num_bytes / 2**20


def tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A GitHub-markdown table, so the output pastes straight into benchmarks/README.md."""
    cells = [[str(c) for c in header]] + [[c if isinstance(c, str) else f"{c}" for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n### {title}\n")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    print(flush=True)

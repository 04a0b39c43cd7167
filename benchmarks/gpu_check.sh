#!/usr/bin/env bash
# One command for a CUDA machine: numerics, demo training steps, overhead, zero-cost inference, targets.
usage() {
    cat <<'TEXT'
usage: benchmarks/gpu_check.sh OUT_DIR [--cpu-smoke]

Runs everything a GPU must confirm about the pathway (under 8 minutes on one GPU) and writes OUT_DIR/report.md:
  1. PathwayLinear forward + gradients (x, W, b, λ, trained aux) under autocast bf16 and fp16 + GradScaler
     against fp32, with stated tolerances;
  2. a few bf16-mixed training steps of each modality's demo model (Image, Video, Point, Audio);
  3. pathway_overhead.py at ViT-B/16 batch 64 bf16-mixed (frozen aux, trained aux, two aux vs plain), eager,
     and peak memory;
  4. zero_cost_inference.py;
  5. the overhead table again under torch.compile (late: compiling takes minutes);
  6. and under torch.compile with CUDA graphs (mode reduce-overhead: no per-kernel host cost);
  7. the targets as ratios of this run: frozen aux <= 1.05x plain, trained aux <= 1.15x (under CUDA graphs, the
     README's GPU setting; the other modes are reported against the same limits), merged inference 1.00x.
Exit status 0 when every check and target passes, 1 otherwise (the report says which).

  --cpu-smoke   the same code on CPU at tiny sizes (seconds to minutes; timings mean nothing)
  -h, --help    this text

Python: $PYTHON if set, else .venv/bin/python of this checkout, else python3.
TEXT
}

set -euo pipefail
out=""
smoke=()
for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        --cpu-smoke) smoke=(--cpu-smoke) ;;
        -*) echo "gpu_check.sh: unknown option '$arg'" >&2; usage >&2; exit 2 ;;
        *) if [[ -n "$out" ]]; then echo "gpu_check.sh: one OUT_DIR only, got '$out' and '$arg'" >&2; exit 2; fi
           out="$arg" ;;
    esac
done
if [[ -z "$out" ]]; then
    echo "gpu_check.sh: missing OUT_DIR" >&2; usage >&2; exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$root/benchmarks"
exec env OMP_WAIT_POLICY=PASSIVE "$python" gpu_check.py "$out" "${smoke[@]}"

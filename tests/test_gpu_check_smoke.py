"""benchmarks/gpu_check.sh cannot rot unnoticed: ``--help`` works anywhere, and ``--cpu-smoke`` runs every
section's code (mixed-precision numerics, demo training steps, overhead with torch.compile, zero-cost inference,
targets) on CPU at tiny sizes and writes a report with no failed check."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=env,
                          check=False)


def test_help_and_bad_arguments() -> None:
    result = _run("--help")
    assert result.returncode == 0 and "usage: benchmarks/gpu_check.sh OUT_DIR [--cpu-smoke]" in result.stdout
    missing = _run()
    assert missing.returncode == 2 and "missing OUT_DIR" in missing.stderr
    unknown = _run("out", "--gpu")
    assert unknown.returncode == 2 and "unknown option '--gpu'" in unknown.stderr


def test_cpu_smoke_writes_a_passing_report(tmp_path: Path) -> None:
    result = _run(str(tmp_path / "report_dir"), "--cpu-smoke")
    report = (tmp_path / "report_dir" / "report.md").read_text()
    assert result.returncode == 0, f"{report}\n{result.stderr[-4000:]}"
    for section in ("## 1. PathwayLinear under mixed precision", "## 2. Demo models, bf16-mixed training steps",
                    "## 3. Training-step overhead and peak memory", "## 4. Zero-cost inference",
                    "## 5. Training-step overhead under torch.compile",
                    "## 6. Training-step overhead under torch.compile with CUDA graphs", "## 7. Targets"):
        assert section in report
    assert "FAIL" not in report and "All correctness checks passed." in report
    for row in ("| fp16 autocast + GradScaler | lambdas.grad |", "| Image |", "| Video |", "| Point |", "| Audio |",
                "torch.compile(eager)", "torch.compile(eager, mode=reduce-overhead)", "pathway 2 aux frozen",
                "fused pathway model", "pathway 1 aux frozen, torch.compile + CUDA graphs: step",
                "(not a target)"):
        assert row in report, row

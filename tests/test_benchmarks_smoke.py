"""The two benchmark scripts that guard library claims still run (``--quick``: tiny model, a few steps).

No timing is asserted (benchmarks are not tests); only that each script finishes and prints its table with every
variant, so a broken benchmark is noticed before someone needs its numbers.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_quick(script: str, *options: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", *options], capture_output=True, text=True, timeout=120,
        check=False, cwd=BENCHMARKS.parent,
    )
    assert result.returncode == 0, f"{script} --quick failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.mark.parametrize(
    ("script", "rows"),
    [
        ("pathway_overhead.py", ["plain fine-tune", "pathway 1 aux frozen", "pathway 1 aux trainable",
                                 "pathway 2 aux frozen", "[W_eff saved, before]", "[x·W_auxᵀ branch]"]),
        ("zero_cost_inference.py", ["plain timm ViT (baseline)", "fused pathway model", "unmerged pathway model"]),
        ("point_ops.py", ["FPS 256 -> 32, batch 2", "8-NN of 32 among 256, batch 2"]),
    ],
)
def test_quick_run_prints_its_table(script: str, rows: list[str]) -> None:
    out = run_quick(script)
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table, f"{script} printed no table:\n{out}"
    for row in rows:
        assert any(row in line for line in table[1:]), f"{script}: no table row for '{row}':\n{out}"


def test_as_cuda_times_and_counts_the_pathway_operators() -> None:
    """``--as-cuda`` (the host-side figures in benchmarks/README §5): every variant, and the pathway's extra
    operators show up in the count."""
    out = run_quick("pathway_overhead.py", "--as-cuda")
    assert "bf16 autocast + AdamW foreach (as CUDA)" in out and "CPU time" in out, out
    rows = {cells[0]: int(cells[4]) for line in out.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]] if cells[4].isdigit()}
    assert set(rows) == {"plain fine-tune", "pathway 1 aux frozen", "pathway 1 aux frozen [W_eff saved, before]",
                         "pathway 1 aux frozen [x·W_auxᵀ branch]", "pathway 1 aux trainable", "pathway 2 aux frozen"}
    assert rows["plain fine-tune"] < rows["pathway 1 aux frozen"] < rows["pathway 1 aux trainable"]

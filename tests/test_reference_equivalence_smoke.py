"""The reference-equivalence harness's own logic, without the reference checkout: tables, statuses, exit codes, and
the pieces the parent and the reference child must agree on."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


harness = _load("reference_equivalence")
child = _load("reference_equivalence_child")


def test_row_status_follows_tolerance_and_rejects_nan():
    assert harness.row("x", 1e-6, 1e-5).status == harness.PASS
    assert harness.row("x", 2e-5, 1e-5).status == harness.FAIL
    assert harness.row("x", math.nan, 1e-5).status == harness.FAIL


def test_exit_code_fails_only_on_a_fail_row():
    ok = harness.Row("a", "0", "≤ 0", harness.PASS)
    stated = harness.Row("b", "patched", "—", harness.DELIBERATE)
    bad = harness.Row("c", "1", "≤ 0", harness.FAIL)
    assert harness.exit_code({"image": [ok, stated]}) == 0
    assert harness.exit_code({"image": [ok], "point": [stated, bad]}) == 1


def test_table_has_one_line_per_row():
    rows = [harness.Row("logits", "1e-7", "≤ 1e-05", harness.PASS), harness.Row("lr", "2", "≤ 1e-06", harness.FAIL)]
    table = harness.format_table("image", rows).splitlines()
    assert table[0] == "### image"
    assert table[2] == "| check | measured | tolerance | status |"
    assert table[-1] == "| lr | 2 | ≤ 1e-06 | FAIL |"
    assert len(table) == 4 + len(rows)


def test_a_pipe_inside_a_cell_does_not_split_it():
    table = harness.format_table("t", [harness.Row("max |Δ|/peak", "1", "≤ 1", harness.PASS)]).splitlines()
    assert table[-1] == "| max \\|Δ\\|/peak | 1 | ≤ 1 | PASS |"


@pytest.mark.parametrize("status, code", [(harness.FAIL, 1), (harness.PASS, 0), (harness.DELIBERATE, 0)])
def test_main_exit_status(tmp_path, monkeypatch, capsys, status, code):
    (tmp_path / "multimodal_pathway.py").write_text("")
    monkeypatch.setattr(harness, "compare", lambda *a, **k: ([harness.Row("check", "m", "t", status)],
                                                             {"notes": ["patched: x"], "timm": "0.3.2",
                                                              "recipe": {}, "child_s": 0.0}))
    assert harness.main(["--reference-dir", str(tmp_path), "--ref-env", str(tmp_path),
                         "--modalities", "image", "--work", str(tmp_path / "work")]) == code
    out = capsys.readouterr().out
    assert f"| check | m | t | {status} |" in out
    assert "note: patched: x" not in out  # a patch is a DELIBERATE row of its table, not repeated as a note


def test_main_refuses_a_folder_that_is_not_the_reference(tmp_path):
    with pytest.raises(SystemExit, match="not a checkout of AILab-CVC/M2PT"):
        harness.main(["--reference-dir", str(tmp_path), "--ref-env", str(tmp_path)])


def test_both_sides_set_the_same_lambdas():
    values = {(b, layer): harness.lambda_value(b, layer) for b in range(12) for layer in harness.LAYERS}
    assert values == {(b, layer): child.lambda_value(b, layer) for b in range(12) for layer in child.LAYERS}
    assert all(v != 0 for v in values.values()) and len(set(values.values())) > 4


def test_name_mapping_to_the_reference():
    assert harness._pathway_names("blocks.3.attn.qkv.lambdas") == "blocks.3.attn.qkv.cross_modal_scale"
    assert harness._pathway_names("blocks.3.mlp.fc1.aux_weight_0") == "blocks.3.mlp.fc1.aux_weight"
    assert harness._point_names("blocks.0.mlp.fc2.lambdas") == "blocks.blocks.0.mlp.fc2.cross_modal_scale"
    assert harness._point_names("head.4.weight") == "cls_head_finetune.4.weight"
    assert harness._point_names("cls_pos") == "cls_pos"


def test_recipe_args_reads_defaults_and_the_launch_script(tmp_path):
    main_file = tmp_path / "main_finetune.py"
    main_file.write_text(
        "import argparse\n"
        "def get_args_parser():\n"
        "    parser = argparse.ArgumentParser()\n"
        "    parser.add_argument('--blr', type=float, default=1e-3)\n"
        "    parser.add_argument('--layer_decay', type=float, default=0.75)\n"
        "    parser.add_argument('--epochs', default=400, type=int)\n"
        "    parser.add_argument('--global_pool', action='store_true')\n"
        "    parser.set_defaults(global_pool=True)\n"
        "    parser.add_argument('--pretrained_path', type=str)\n"
        "    return parser\n"
    )
    script = tmp_path / "ft.sh"
    script.write_text(
        "path=/x\n"
        "OMP_NUM_THREADS=1 python -m torch.distributed.launch --nproc_per_node=8 main_finetune.py \\\n"
        "    --blr 5e-4 --layer_decay 0.65 \\\n"
        "    --pretrained_path $path \\\n"
    )
    args = child.recipe_args(main_file, script, "main_finetune.py", {"pretrained_path": "/aux.pth"})
    assert (args.blr, args.layer_decay, args.epochs, args.global_pool) == (5e-4, 0.65, 400, True)
    assert args.pretrained_path == "/aux.pth"

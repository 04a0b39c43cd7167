"""``python -m pathway export``: merged plain weights (strict timm load), a torch.export program, the sidecar, a
loud failure when an export does not reproduce the checkpoint, and an export folder that is replaced whole or not at
all."""
from __future__ import annotations

import errno
import json
import runpy
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import pathway.export as export
from _scale_utils import TINY_IMAGE_MODEL, save_aux, train_image_checkpoint
from pathway.__main__ import main as pathway_main
from pathway.checkpoint import file_sha256


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("export")
    aux = save_aux(folder / "aux.pt")
    model = train_image_checkpoint(folder / "model.ckpt", aux)
    return folder / "model.ckpt", aux, model.eval()


def test_export_writes_verified_plain_model(trained, tmp_path: Path) -> None:
    ckpt, _, model = trained
    assert pathway_main(["export", str(ckpt), "--out", str(tmp_path)]) == 0
    sidecar = json.loads((tmp_path / "export.json").read_text())
    assert sidecar["model_class"] == "Image.model.ImageClassifier"
    assert sidecar["num_classes"] == 3
    assert sidecar["inputs"] == [{"name": "input", "shape": ["batch", 3, 16, 16], "dtype": "float32"}]
    assert sidecar["source_sha256"] == file_sha256(str(ckpt))
    assert sidecar["lambda"]["count"] == 8 and sidecar["lambda"]["mean_abs"] > 1e-3  # the pathway was trained
    assert sorted(sidecar["files"].values()) == ["model.pt2", "model.safetensors"]  # onnx is not installed here
    assert "'onnx' package is not installed" in sidecar["skipped"]["onnx"]

    hp = TINY_IMAGE_MODEL
    plain = timm.create_model(hp["model_name"], num_classes=3, img_size=hp["img_size"], global_pool="avg",
                              **hp["model_kwargs"]).eval()
    plain.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-5)
        program = torch.export.load(str(tmp_path / "model.pt2")).module()
        torch.testing.assert_close(program(x), expected, atol=1e-5, rtol=1e-5)  # batch size is dynamic
        unmerged_target = {k: v for k, v in model.backbone.state_dict().items() if k.endswith("qkv.weight")}
        assert not torch.allclose(plain.blocks[0].attn.qkv.weight, unmerged_target["blocks.0.attn.qkv.weight"])


def test_python_m_pathway_export_runs(trained, tmp_path: Path, monkeypatch) -> None:
    ckpt, _, _ = trained
    monkeypatch.setattr(sys, "argv", ["pathway", "export", str(ckpt), "--out", str(tmp_path), "--no-onnx"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("pathway", run_name="__main__")
    assert exit_info.value.code == 0 and (tmp_path / "model.pt2").is_file()


def test_export_fails_loudly_on_mismatch(trained, tmp_path: Path, monkeypatch) -> None:
    ckpt, _, _ = trained
    real_fuse = export.fuse_pathway

    def broken_fuse(model):  # e.g. a fold that forgets λ·W_aux on one layer
        plain = real_fuse(model)
        with torch.no_grad():
            plain.blocks[1].mlp.fc2.weight.add_(0.1 * torch.randn_like(plain.blocks[1].mlp.fc2.weight))
        return plain

    monkeypatch.setattr(export, "fuse_pathway", broken_fuse)
    with pytest.raises(export.ExportError, match="outputs differ from the Lightning checkpoint"):
        export.export_checkpoint(ckpt, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()
    assert pathway_main(["export", str(ckpt), "--out", str(tmp_path)]) == 1
    with pytest.raises(export.ExportError, match="'onnx' package is not installed"):
        monkeypatch.setattr(export, "fuse_pathway", real_fuse)
        export.export_checkpoint(ckpt, tmp_path, onnx=True)


def test_export_with_aux_stored_in_checkpoint_needs_no_aux_file(tmp_path: Path) -> None:
    aux = save_aux(tmp_path / "aux.pt")
    model = train_image_checkpoint(tmp_path / "stored.ckpt", aux, store_aux_in_checkpoint=True)
    aux.unlink()
    sidecar = export.export_checkpoint(tmp_path / "stored.ckpt", tmp_path / "out")
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=16, global_pool="avg",
                              **TINY_IMAGE_MODEL["model_kwargs"])
    plain.load_state_dict(load_file(str(tmp_path / "out" / "model.safetensors")), strict=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), model.eval()(x), atol=1e-5, rtol=1e-5)
    assert sidecar["hparams"]["store_aux_in_checkpoint"] is True


def test_base_module_without_example_input_shape_says_what_to_add() -> None:
    from pathway.module import PathwayModule

    with pytest.raises(NotImplementedError, match="example_input_shape"):
        PathwayModule.example_input_shape(object.__new__(PathwayModule))


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_failed_export_leaves_the_old_export_untouched(trained, tmp_path: Path, monkeypatch, capsys) -> None:
    ckpt, _, _ = trained
    out = tmp_path / "export"
    export.export_checkpoint(ckpt, out, onnx=False)
    for path in out.iterdir():  # an old export of other weights: whatever the new one writes differs from it
        path.write_bytes(b"old " + path.name.encode())
    before = _folder_bytes(out)

    def disk_full(plain, module, inputs, path):  # the second file: model.safetensors is already written
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(export, "write_torch_export", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export.export_checkpoint(ckpt, out, onnx=False)
    assert _folder_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary folder left behind
    assert pathway_main(["export", str(ckpt), "--out", str(out), "--no-onnx"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert _folder_bytes(out) == before


def test_export_replaces_an_old_export_whole_and_refuses_other_folders(trained, tmp_path: Path) -> None:
    ckpt, _, _ = trained
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"an old onnx file the new export does not write")
    export.export_checkpoint(ckpt, out, onnx=False)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.pt2", "model.safetensors"]

    run = tmp_path / "run"
    run.mkdir()
    (run / "last.ckpt").write_bytes(b"a checkpoint")
    with pytest.raises(FileExistsError, match=r"holds files an export does not write \(last.ckpt\)"):
        export.export_checkpoint(ckpt, run, onnx=False)
    assert sorted(p.name for p in run.iterdir()) == ["last.ckpt"]

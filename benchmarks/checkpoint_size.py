"""Lightning checkpoint sizes of a ViT-B/16 pathway model: frozen aux stored as path + sha256 (default), frozen aux
stored in the checkpoint, and plain fine-tuning.  Builds the models and saves what Lightning saves (model state,
AdamW state after one step, hyper-parameters) through the same ``on_save_checkpoint`` hook; no training, no data.

    python benchmarks/checkpoint_size.py [--model vit_base_patch16_224] [--num-classes 1000]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from pathway.checkpoint_io import atomic_torch_save


def lightning_like_checkpoint(module, optimizer) -> dict:
    checkpoint = {"state_dict": module.state_dict(), "optimizer_states": [optimizer.state_dict()],
                  "hyper_parameters": dict(module.hparams), "global_step": 1, "epoch": 0}
    module.on_save_checkpoint(checkpoint)
    return checkpoint


def main() -> None:
    from Image.model import ImageClassifier

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--num-classes", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        aux = ImageClassifier(model_name=args.model, num_classes=args.num_classes, drop_path_rate=0.0).backbone
        torch.save(aux.state_dict(), tmp / "aux.pt")
        del aux
        sizes = {}
        for name, kwargs in {
            "plain fine-tuning (no aux)": dict(aux_ckpts=[]),
            "pathway, trained aux (default, the paper's)": dict(aux_ckpts=[str(tmp / "aux.pt")]),
            "pathway, frozen aux as path+sha256": dict(aux_ckpts=[str(tmp / "aux.pt")], aux_trainable=False),
            "pathway, frozen aux stored": dict(aux_ckpts=[str(tmp / "aux.pt")], aux_trainable=False,
                                               store_aux_in_checkpoint=True),
        }.items():
            module = ImageClassifier(model_name=args.model, num_classes=args.num_classes, drop_path_rate=0.0,
                                     lr=1e-4, **kwargs)
            optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
            module(torch.randn(1, 3, 224, 224)).sum().backward()
            optimizer.step()
            path = tmp / "model.ckpt"
            atomic_torch_save(lightning_like_checkpoint(module, optimizer), path)
            sizes[name] = path.stat().st_size
            del module, optimizer
    base = sizes["plain fine-tuning (no aux)"]
    print(f"{args.model}, {args.num_classes} classes, fp32 weights + AdamW state")
    for name, size in sizes.items():
        print(f"  {name:42s} {size / 2**20:9.1f} MiB   x{size / base:.3f} of plain")


if __name__ == "__main__":
    main()

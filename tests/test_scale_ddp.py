"""Two-process DDP on CPU (gloo): the same result as one process on the same global batch, metrics synced across
ranks, multi-view scores gathered when the views of one sample land on different ranks, aux buffers not broadcast."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import lightning as L
import torch
import torch.multiprocessing as mp

from _scale_utils import QUIET_TRAINER, TINY_IMAGE_MODEL, TensorDataModule, random_split, save_aux

NUM_CLASSES, STEPS, PER_RANK_BATCH = 3, 3, 4
# Views of the test samples, in loader order; an unshuffled DistributedSampler gives rank 0 the even positions
# (samples 1, 1, 2, 3) and rank 1 the odd ones (0, 2, 3, 3): sample 0 only on rank 1, sample 1 only on rank 0.
VIEW_IDS = torch.tensor([1, 0, 1, 2, 2, 3, 3, 3])


def build_model(aux: Path):
    from Image.model import ImageClassifier

    torch.manual_seed(0)
    return ImageClassifier(**TINY_IMAGE_MODEL, num_classes=NUM_CLASSES, aux_ckpts=[str(aux)], aux_trainable=False,
                           blr=0.5, warmup_epochs=0.0, label_smoothing=0.1, top_k=1)


class BroadcastBuffers(L.Callback):
    """Records how many buffer elements DDP broadcasts from rank 0 before every forward."""

    numel = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.numel = sum(b.numel() for b in trainer.strategy.model.modules_buffers)


def _ddp_worker(rank: int, folder: str, port: int) -> None:
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    data = torch.load(Path(folder) / "data.pt")
    model = build_model(Path(folder) / "aux.pt")
    buffers = BroadcastBuffers()
    trainer = L.Trainer(devices=2, strategy="ddp", max_steps=STEPS, enable_checkpointing=False, callbacks=[buffers],
                        **QUIET_TRAINER)
    datamodule = TensorDataModule(data["train"], PER_RANK_BATCH, val=data["val"], test=data["test"])
    trainer.fit(model, datamodule)
    val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    trainer.test(model, datamodule)
    if rank == 0:
        torch.save({"state": model.state_dict(), "val": val_metrics, "ddp_buffer_numel": buffers.numel,
                    "test": {k: float(v) for k, v in trainer.callback_metrics.items()},
                    "world_size": trainer.world_size}, Path(folder) / "ddp.pt")
    # A process group still alive at interpreter exit can abort the rank ("terminate called without an active
    # exception" from gloo's threads, seen once in CI under load): end it as a launcher would.
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_matches_single_process_and_syncs_metrics(tmp_path: Path) -> None:
    aux = save_aux(tmp_path / "aux.pt")
    train = random_split(2 * PER_RANK_BATCH * STEPS, NUM_CLASSES, seed=1)  # exactly STEPS global batches
    # Lightning always shuffles training data under DDP (DistributedSampler, seed 0, epoch 0): global batch k is
    # perm[8k:8k+8], split over the ranks; one process sees the same global batches in that order.
    perm = torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(0))
    single = build_model(aux)
    trainer = L.Trainer(devices=1, max_steps=STEPS, enable_checkpointing=False, **QUIET_TRAINER)
    trainer.fit(single, TensorDataModule((train[0][perm], train[1][perm]), 2 * PER_RANK_BATCH))
    single.eval()

    # Labels chosen from the trained model so the true metric is known and a rank-local one would differ.
    val_x = random_split(8, NUM_CLASSES, seed=2)[0]
    test_x = random_split(len(VIEW_IDS), NUM_CLASSES, seed=3)[0]
    with torch.no_grad():
        val_pred = single(val_x).argmax(-1)
        scores = single(test_x).softmax(-1)
    per_sample = torch.stack([scores[VIEW_IDS == i].mean(0) for i in range(4)]).argmax(-1)
    val_y = torch.where(torch.arange(8) % 2 == 0, val_pred, (val_pred + 1) % NUM_CLASSES)  # rank 0 all right
    sample_y = torch.tensor([per_sample[0], per_sample[1], (per_sample[2] + 1) % 3, (per_sample[3] + 1) % 3])
    torch.save({"train": train, "val": (val_x, val_y), "test": (test_x, sample_y[VIEW_IDS], VIEW_IDS)},
               tmp_path / "data.pt")

    mp.start_processes(_ddp_worker, args=(str(tmp_path), _free_port()), nprocs=2, start_method="spawn")
    result = torch.load(tmp_path / "ddp.pt")
    assert result["world_size"] == 2

    for key, value in single.state_dict().items():
        # atol: Adam turns the (mathematically zero) gradient noise of attention key biases into tiny updates
        torch.testing.assert_close(result["state"][key], value, atol=1e-4, rtol=1e-4, msg=key)
    moved = max(float((single.state_dict()[k].float() - v.float()).abs().max())
                for k, v in build_model(aux).state_dict().items())
    assert moved > 1e-3  # the comparison above is not between two untrained models
    lambdas = [v for k, v in result["state"].items() if k.endswith(".lambdas")]
    assert lambdas and all(bool(v.abs().max() > 0) for v in lambdas)

    assert result["val"]["val/acc1"] == 0.5  # synced: rank 0 alone would report 1.0, rank 1 alone 0.0
    assert result["test"]["test/num_samples"] == 4.0  # views gathered across ranks, each sample once
    assert result["test"]["test/acc1"] == 0.5
    aux_numel = sum(v.numel() for k, v in single.named_buffers() if "aux_weight" in k)
    assert 0 <= result["ddp_buffer_numel"] < aux_numel  # frozen aux weights are not broadcast every step

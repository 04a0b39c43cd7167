"""LightningDataModule for AudioSet-style JSON, ESC-50 and folder-per-class audio datasets.

``num_classes`` (linked to the model by the CLI) comes from a cheap read in ``__init__`` — the class CSV, the
ESC-50 meta file or the class folders of the first split that exists; the clip lists themselves are read in
``setup``, only for the splits the stage needs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import torch
from torch.utils.data import Sampler

from Audio.dataset import AudioClipDataset, FbankSettings
from Audio.labels import (
    AudioRecord, class_balanced_weights, read_audioset_classes, read_audioset_json, read_esc50, read_folder_split,
    read_sample_weights,
)
from Audio.synthetic import make_tone_dataset
from pathway.data import (
    DEFAULT_MAX_BAD_FRACTION, DEFAULT_ON_BAD_FILE, BadFilePolicy, SkippingDataset, Split, SplitDataModule,
    WeightedDistributedSampler, class_folders, first_split_folder,
)

DatasetFormat = Literal["audioset", "esc50", "folder"]


class AudioDataModule(SplitDataModule):
    """Kaldi-fbank clips with AudioMAE-style training augmentation.

    Args:
        format: ``audioset`` (``train_json``/``val_json``/``test_json`` + ``label_csv``, multi-label),
            ``esc50`` (``root`` with ``meta/esc50.csv`` and ``audio/``; ``val_fold`` is validation and test) or
            ``folder`` (``root/train|val[|test]/<class>/*.wav|flac|ogg``).
        synthetic: for ``folder``: write the synthetic tone set (``Audio.synthetic``) to ``root`` if it is missing.
        target_length: fbank frames per clip (1024 = 10.24 s at the 10 ms shift); a multiple of the patch size.
        mean / std: the dataset's fbank statistics (``python -m Audio.stats`` computes them); features are
            ``(fbank - mean) / (2 std)``.  Defaults are AudioSet's (AudioMAE).
        freqm / timem: SpecAugment maximum band widths (mel bins / frames) in training; 0 disables.
        wave_mixup: probability of waveform mixup per training clip (AudioMAE style, ``λ ~ Beta(wave_mixup_alpha,
            wave_mixup_alpha)``, labels mixed alike); with wave_mixup > 0 single-label training targets become float
            soft one-hot vectors.  Named apart from ``model.mixup`` (batch mixup on the fbank), which also exists.
        roll: AudioMAE's ``roll_mag_aug``: each training waveform is rolled by a random shift and scaled by a
            random magnitude ``Beta(10, 10) + 0.5``.
        weight_sampler: class-balanced sampling (AudioMAE's AudioSet-2M recipe, ``--weight_sampler``): each epoch
            draws ``epoch_len`` training clips without replacement with probability ∝ their weight, from
            ``weight_csv`` (one weight per training clip, AudioMAE's ``gen_weight.py`` format) or, without it,
            computed from the training labels as ``gen_weight.py`` does (``Audio.labels.class_balanced_weights``).
            Under DDP every rank draws the same list (seeded by the epoch) and takes its own ``1/world`` share
            (``pathway.data.WeightedDistributedSampler``), so ranks see disjoint clips of one draw.
        epoch_len: training clips per epoch with ``weight_sampler`` (AudioMAE: 200000 for AudioSet-2M); default:
            the size of the training split.
        on_bad_file / max_bad_fraction: unreadable clips, see ``pathway.data``.
    """

    # The CLI links these to the model (``pathway.cli``): the fbank grid and the label kind are set once, here.
    linked_to_model = {"target_length": "parse", "num_mel_bins": "parse", "multilabel": "instantiate"}

    def __init__(
        self,
        format: DatasetFormat = "folder",
        root: Optional[str] = None,
        train_json: Optional[str] = None,
        val_json: Optional[str] = None,
        test_json: Optional[str] = None,
        label_csv: Optional[str] = None,
        val_fold: int = 1,
        synthetic: bool = False,
        batch_size: int = 32,
        num_workers: int = 4,
        pin_memory: bool = True,
        sample_rate: int = 16000,
        num_mel_bins: int = 128,
        target_length: int = 1024,
        mean: float = -4.2677393,
        std: float = 4.5689974,
        freqm: int = 48,
        timem: int = 192,
        wave_mixup: float = 0.0,
        wave_mixup_alpha: float = 10.0,
        roll: bool = False,
        weight_sampler: bool = False,
        weight_csv: Optional[str] = None,
        epoch_len: Optional[int] = None,
        on_bad_file: BadFilePolicy = DEFAULT_ON_BAD_FILE,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if (weight_csv or epoch_len) and not weight_sampler:
            raise ValueError("data.weight_csv and data.epoch_len apply only with data.weight_sampler: true")
        self.format = format
        self.batch_size = batch_size
        self.multilabel = format == "audioset"
        if format == "audioset":
            if not label_csv:
                raise ValueError("format 'audioset' needs label_csv (and the json of each split it uses)")
            self._mid_to_index, self.class_names = read_audioset_classes(label_csv)
        elif format == "esc50":
            if not root:
                raise ValueError("format 'esc50' needs root (the folder holding meta/esc50.csv and audio/)")
            self._esc50 = read_esc50(root, val_fold)
            self.class_names = self._esc50[2]
        elif format == "folder":
            if not root:
                raise ValueError("format 'folder' needs root (holding train/<class>/*.wav and val/<class>/*.wav)")
            if synthetic:
                make_tone_dataset(root, sample_rate=sample_rate)
            self.class_names = class_folders(first_split_folder(root, ("train", "val", "test")))
        else:
            raise ValueError(f"format must be 'audioset', 'esc50' or 'folder', got {format!r}")
        self.num_classes = len(self.class_names)

    @property
    def classes(self) -> list[str]:
        """Class names by index (AudioSet: ``label_csv``'s display names), for ``predictions.csv`` and exports."""
        return self.class_names

    def split_records(self, split: Literal["train", "val", "test"]) -> list[AudioRecord]:
        """The clips of one split (ESC-50: test = the validation fold; folder: test/ if present, else val/)."""
        hp = self.hparams
        if self.format == "audioset":
            path = {"train": hp.train_json, "val": hp.val_json, "test": hp.test_json or hp.val_json}[split]
            if not path:
                raise ValueError(f"format 'audioset' needs {split}_json for the {split} split")
            return read_audioset_json(path, self._mid_to_index, hp.label_csv)
        if self.format == "esc50":
            return self._esc50[0] if split == "train" else self._esc50[1]
        root = Path(hp.root)
        folder = root / split
        if split == "test" and not folder.is_dir():
            folder = root / "val"
        return read_folder_split(folder, self.class_names)

    def build_dataset(self, split: Literal["train", "val", "test"], augment: Optional[bool] = None) -> AudioClipDataset:
        """The un-wrapped dataset of ``split``; training augmentation only for ``train`` unless ``augment`` says."""
        hp = self.hparams
        train = split == "train" if augment is None else augment
        fbank = FbankSettings(sample_rate=hp.sample_rate, num_mel_bins=hp.num_mel_bins,
                              target_length=hp.target_length, mean=hp.mean, std=hp.std)
        return AudioClipDataset(
            self.split_records(split), self.num_classes, self.multilabel, fbank=fbank, train=train,
            freqm=hp.freqm, timem=hp.timem, mixup=hp.wave_mixup, mixup_alpha=hp.wave_mixup_alpha, roll=hp.roll,
        )

    def build_split(self, split: Split) -> SkippingDataset:
        dataset = self.build_dataset(split)
        return self.skipping(dataset, lambda i: str(dataset.records[i].path))

    def train_sampler(self) -> Optional[Sampler]:
        hp = self.hparams
        if not hp.weight_sampler:
            return None
        records = self.train_set.records
        weights = (read_sample_weights(hp.weight_csv, len(records)) if hp.weight_csv
                   else class_balanced_weights(records, self.num_classes))
        world, rank = self._world()
        return WeightedDistributedSampler(torch.tensor(weights), hp.epoch_len or len(records), world, rank)

"""LightningDataModule for AudioSet-style JSON, ESC-50 and folder-per-class audio datasets.

``num_classes`` (linked to the model by the CLI) comes from a cheap read in ``__init__`` — the class CSV, the
ESC-50 meta file or the ``train/`` class folders; the clip lists themselves are read in ``setup``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional


from Audio.dataset import AudioClipDataset
from Audio.labels import (
    AudioRecord, folder_classes, read_audioset_classes, read_audioset_json, read_esc50, read_folder_split,
)
from Audio.synthetic import make_tone_dataset
from pathway.data import SkippingDataset, SplitDataModule

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
        roll: random circular time shift of training waveforms.
        on_bad_file: ``skip`` (log, count, drop the clip from its batch) or ``error`` (stop, naming the file).
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
        on_bad_file: Literal["skip", "error"] = "error",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if on_bad_file not in ("skip", "error"):
            raise ValueError(f"on_bad_file must be 'skip' or 'error', got {on_bad_file!r}")
        self.format = format
        self.batch_size = batch_size
        self.multilabel = format == "audioset"
        if format == "audioset":
            if not label_csv or not train_json:
                raise ValueError("format 'audioset' needs label_csv and train_json")
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
            self.class_names = folder_classes(Path(root) / "train")
        else:
            raise ValueError(f"format must be 'audioset', 'esc50' or 'folder', got {format!r}")
        self.num_classes = len(self.class_names)

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
        return AudioClipDataset(
            self.split_records(split), self.num_classes, self.multilabel, sample_rate=hp.sample_rate,
            num_mel_bins=hp.num_mel_bins, target_length=hp.target_length, mean=hp.mean, std=hp.std, train=train,
            freqm=hp.freqm, timem=hp.timem, mixup=hp.wave_mixup, mixup_alpha=hp.wave_mixup_alpha, roll=hp.roll,
        )

    def _wrapped(self, split: Literal["train", "val", "test"]) -> SkippingDataset:
        dataset = self.build_dataset(split)
        return SkippingDataset(dataset, lambda i: str(dataset.records[i].path), on_bad_file=self.hparams.on_bad_file)

    def setup(self, stage: Optional[str] = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage, ("train", "val", "test")):
            if not hasattr(self, f"{split}_set"):
                setattr(self, f"{split}_set", self._wrapped(split))

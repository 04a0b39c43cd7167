"""Audio data path: reading (only the part of a file a clip uses), fbank features, SpecAugment, label formats,
targets, bad files, synthetic set."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from Audio.audio_io import AudioFile, AudioFileError
from Audio.datamodule import AudioDataModule
from Audio.dataset import AudioClipDataset, FbankSettings
from Audio.features import SpecAugment, frames_for, normalize, pad_or_cut, waveform_to_fbank
from Audio.labels import AudioRecord, LabelError, read_audioset_classes, read_audioset_json, read_esc50
from Audio.stats import dataset_fbank_stats, fbank_stats
from Audio.synthetic import SOUNDS, make_tone_dataset
from pathway.data import BadSampleError

RATE = 16000


def read_audio(path: Path, sample_rate: int) -> torch.Tensor:
    with AudioFile(path, sample_rate) as audio:
        return audio.read()


def write_wav(path: Path, seconds: float = 0.5, rate: int = RATE, freq: float = 440.0, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size)
    data = np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else wave
    sf.write(path, data.astype(np.float32), rate)
    return path


def make_audioset(tmp_path: Path, labels: tuple[str, ...] = ("/m/a,/m/c", "/m/b")) -> tuple[Path, Path]:
    csv = tmp_path / "class_labels_indices.csv"
    csv.write_text('index,mid,display_name\n0,/m/a,"Speech"\n1,/m/b,Dog\n2,/m/c,"Music, loud"\n')
    entries = []
    for i, label in enumerate(labels):
        write_wav(tmp_path / "audio" / f"clip{i}.wav", freq=300 + 200 * i)
        entries.append({"wav": f"audio/clip{i}.wav", "labels": label})
    data = tmp_path / "train.json"
    data.write_text(json.dumps({"data": entries}))
    return data, csv


def make_esc50(tmp_path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    root = tmp_path / "ESC-50"
    (root / "meta").mkdir(parents=True)
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    for name, fold, target, category in rows:
        write_wav(root / "audio" / name)
        lines.append(f"{name},{fold},{target},{category},False,1,A")
    (root / "meta" / "esc50.csv").write_text("\n".join(lines) + "\n")
    return root


def test_read_audio_resamples_and_mixes_to_mono(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "stereo8k.wav", seconds=1.0, rate=8000, channels=2)
    wave = read_audio(path, RATE)
    assert wave.shape == (RATE,)
    raw, _ = sf.read(path, dtype="float32")
    assert np.allclose(read_audio(path, 8000).numpy(), raw.mean(axis=1), atol=1e-6)


def test_fbank_shape_and_padding() -> None:
    wave = torch.randn(RATE)
    fbank = waveform_to_fbank(wave, RATE, 128)
    assert fbank.shape == (frames_for(RATE, RATE), 128) == (98, 128)
    padded = pad_or_cut(fbank, 128)
    assert padded.shape == (128, 128) and torch.equal(padded[:98], fbank) and not padded[98:].any()
    assert torch.equal(pad_or_cut(fbank, 64), fbank[:64])
    silent = normalize(pad_or_cut(waveform_to_fbank(torch.zeros(RATE), RATE), 128), -4.27, 4.57)
    assert torch.isfinite(silent).all()


def test_normalisation_with_dataset_stats(tmp_path: Path) -> None:
    records = [AudioRecord(write_wav(tmp_path / f"{f}.wav", freq=f), (0,)) for f in (200, 900, 3000)]
    frames = frames_for(RATE // 2, RATE)
    dataset = AudioClipDataset(records, 1, multilabel=False, fbank=FbankSettings(target_length=frames))
    mean, std = fbank_stats(dataset)
    features = torch.cat([normalize(dataset.raw_fbank(i), mean, std) for i in range(3)])
    assert abs(features.mean().item()) < 1e-4
    assert features.std(unbiased=False).item() == pytest.approx(0.5, abs=1e-4)
    fbank = FbankSettings(target_length=frames, mean=mean, std=std)
    normalised = AudioClipDataset(records, 1, multilabel=False, fbank=fbank)
    assert torch.allclose(normalised[1][0][0], normalize(dataset.raw_fbank(1), mean, std))


def _masked_runs(mask: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool mask."""
    runs, current = [], 0
    for value in mask.tolist() + [False]:
        if value:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs


def test_spec_augment_masks_within_bounds() -> None:
    torch.manual_seed(0)
    fbank = torch.randn(1024, 128).abs() + 0.1
    augment = SpecAugment(freqm=48, timem=192)
    saw_freq = saw_time = False
    for _ in range(20):
        out = augment(fbank)
        zero = out == 0
        freq_runs = _masked_runs(zero.all(dim=0))
        time_runs = _masked_runs(zero.all(dim=1))
        assert len(freq_runs) <= 1 and all(r < 48 for r in freq_runs)
        assert len(time_runs) <= 1 and all(r < 192 for r in time_runs)
        covered = zero.all(dim=0).unsqueeze(0) | zero.all(dim=1).unsqueeze(1)
        assert torch.equal(zero, covered) and torch.equal(out[~zero], fbank[~zero])
        saw_freq |= bool(freq_runs)
        saw_time |= bool(time_runs)
    assert saw_freq and saw_time


def test_audioset_labels(tmp_path: Path) -> None:
    data, csv = make_audioset(tmp_path)
    mid_to_index, names = read_audioset_classes(csv)
    assert names == ["Speech", "Dog", "Music, loud"]
    records = read_audioset_json(data, mid_to_index)
    assert [r.labels for r in records] == [(0, 2), (1,)]
    assert records[0].path == tmp_path / "audio" / "clip0.wav"
    dm = AudioDataModule(format="audioset", train_json=str(data), val_json=str(data), label_csv=str(csv),
                         target_length=64, num_workers=0)
    assert dm.num_classes == 3 and dm.multilabel
    dm.setup("fit")
    fbank, target = dm.train_set[0]
    assert fbank.shape == (1, 64, 128)
    assert target.dtype == torch.float32 and target.tolist() == [1.0, 0.0, 1.0]


def test_audioset_unknown_label_names_file_and_label(tmp_path: Path) -> None:
    data, csv = make_audioset(tmp_path, labels=("/m/a", "/m/b,/m/zzz"))
    mid_to_index, _ = read_audioset_classes(csv)
    with pytest.raises(LabelError, match=r"clip1\.wav.*/m/zzz"):
        read_audioset_json(data, mid_to_index)


def test_audioset_json_missing_or_broken_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json: dataset JSON not found"):
        read_audioset_json(tmp_path / "nowhere.json", {})
    broken = tmp_path / "broken.json"
    broken.write_text('{"data": [')
    with pytest.raises(LabelError, match=r"broken\.json: not valid JSON"):
        read_audioset_json(broken, {})


def test_esc50_fold_split(tmp_path: Path) -> None:
    rows = [("1-a.wav", "1", "0", "dog"), ("2-b.wav", "2", "1", "rain"), ("3-c.wav", "3", "0", "dog"),
            ("2-d.wav", "2", "0", "dog")]
    root = make_esc50(tmp_path, rows)
    train, val, names = read_esc50(root, val_fold=2)
    assert names == ["dog", "rain"]
    assert [(r.path.name, r.labels) for r in val] == [("2-b.wav", (1,)), ("2-d.wav", (0,))]
    assert sorted(r.path.name for r in train) == ["1-a.wav", "3-c.wav"]
    dm = AudioDataModule(format="esc50", root=str(root), val_fold=3, target_length=64, num_workers=0)
    assert dm.num_classes == 2 and not dm.multilabel
    dm.setup("fit")
    assert len(dm.val_set) == 1 and dm.val_set[0][1].dtype == torch.long
    with pytest.raises(LabelError, match="fold 7"):
        read_esc50(root, val_fold=7)


def test_esc50_bad_target_names_file(tmp_path: Path) -> None:
    root = make_esc50(tmp_path, [("1-a.wav", "1", "0", "dog"), ("1-b.wav", "1", "cat", "cat")])
    with pytest.raises(LabelError, match=r"1-b\.wav.*'cat'"):
        read_esc50(root, val_fold=1)


def test_folder_labels_and_unknown_val_class(tmp_path: Path) -> None:
    for split, cls in (("train", "bird"), ("train", "car"), ("val", "car")):
        write_wav(tmp_path / split / cls / "x.flac")
    dm = AudioDataModule(format="folder", root=str(tmp_path), target_length=64, num_workers=0)
    assert dm.num_classes == 2 and dm.class_names == ["bird", "car"]
    assert [r.labels for r in dm.split_records("val")] == [(1,)]
    write_wav(tmp_path / "val" / "boat" / "y.wav")
    with pytest.raises(LabelError, match="boat"):
        dm.split_records("val")


def test_wave_mixup_gives_soft_targets(tmp_path: Path) -> None:
    records = [AudioRecord(write_wav(tmp_path / f"{i}.wav", freq=300 * (i + 1)), (i,)) for i in range(3)]
    np.random.seed(0)
    fbank = FbankSettings(target_length=64)
    dataset = AudioClipDataset(records, 3, multilabel=False, fbank=fbank, train=True, mixup=1.0)
    targets = torch.stack([dataset[i][1] for i in range(3) for _ in range(4)])
    assert targets.dtype == torch.float32
    assert torch.allclose(targets.sum(dim=1), torch.ones(12))
    assert (targets.max(dim=1).values < 1.0).any()
    plain = AudioClipDataset(records, 3, multilabel=False, fbank=fbank, train=False, mixup=1.0)
    assert plain[2][1].dtype == torch.long and plain[2][1].item() == 2


def test_dataset_rejects_label_out_of_range(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav")
    with pytest.raises(ValueError, match=r"a\.wav.*\[5\]"):
        AudioClipDataset([AudioRecord(path, (5,))], 3, multilabel=False)


def _bad_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    garbage = folder / "garbage.wav"
    garbage.write_bytes(b"RIFF not really audio" * 10)
    no_frames = folder / "no_frames.wav"
    sf.write(no_frames, np.zeros(0, dtype=np.float32), RATE)
    too_short = folder / "too_short.wav"
    sf.write(too_short, np.zeros(100, dtype=np.float32), RATE)
    return [empty, garbage, no_frames, too_short]


def test_bad_files_raise_naming_the_file(tmp_path: Path) -> None:
    for path in _bad_files(tmp_path):
        with pytest.raises(AudioFileError, match=path.name):
            read_audio(path, RATE)


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_datamodule_bad_file_policy(tmp_path: Path, policy: str, caplog: pytest.LogCaptureFixture) -> None:
    write_wav(tmp_path / "train" / "a" / "good.wav")
    write_wav(tmp_path / "val" / "a" / "good.wav")
    _bad_files(tmp_path / "train" / "a")
    dm = AudioDataModule(format="folder", root=str(tmp_path), target_length=64, num_workers=0, pin_memory=False,
                         batch_size=5, on_bad_file=policy)  # one full training batch: 1 good + 4 bad files
    dm.setup("fit")
    if policy == "error":
        with pytest.raises(BadSampleError, match=r"(empty|garbage|no_frames|too_short)\.wav: cannot be read"):
            next(iter(dm.train_dataloader()))
        return
    with caplog.at_level(logging.WARNING, logger="pathway.data"):
        fbank, target = next(iter(dm.train_dataloader()))  # training replaces each unreadable clip by a readable one
    assert fbank.shape == (5, 1, 64, 128) and torch.isfinite(fbank).all() and target.tolist() == [0] * 5
    skipped = sorted(Path(r.getMessage().split()[3]).name for r in caplog.records if "skipping" in r.getMessage())
    assert skipped == ["empty.wav", "garbage.wav", "no_frames.wav", "too_short.wav"] and dm.train_set.skipped >= 4


def test_synthetic_set_is_deterministic_and_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    root = make_tone_dataset(tmp_path / "a", per_class=20, val_per_class=5, seed=3)
    elapsed = time.perf_counter() - start
    files = sorted(p.relative_to(root) for p in root.rglob("*.wav"))
    assert len(files) == len(SOUNDS) * 25 and elapsed < 5.0
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(SOUNDS)
    again = make_tone_dataset(tmp_path / "b", per_class=20, val_per_class=5, seed=3)
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = make_tone_dataset(tmp_path / "c", per_class=1, val_per_class=1, seed=4)
    assert (root / files[0]).read_bytes() != (other / files[0]).read_bytes()
    info = sf.info(root / files[0])
    assert info.samplerate == RATE and info.frames == RATE


def test_stats_cli_function(tmp_path: Path) -> None:
    root = make_tone_dataset(tmp_path / "tones", classes=["tone_low", "noise_burst"], per_class=2)
    stats = dataset_fbank_stats(format="folder", root=str(root))
    dm = AudioDataModule(format="folder", root=str(root))
    assert (stats["mean"], stats["std"]) == pytest.approx(fbank_stats(dm.build_dataset("train", augment=False)))
    assert np.isfinite(stats["mean"]) and stats["std"] > 0


def _noise_file(path: Path, seconds: float, rate: int) -> Path:
    data = np.random.default_rng(1).uniform(-0.5, 0.5, size=(int(seconds * rate), 2)).astype(np.float32)
    sf.write(path, data, rate, subtype="FLOAT")
    return path


@pytest.mark.parametrize("rate", [8000, 11025, 12000, 22050, 24000, 44100, 48000])
def test_a_part_of_a_file_resamples_as_the_whole_file_does(tmp_path: Path, rate: int) -> None:
    path = _noise_file(tmp_path / "noise.wav", 3.0, rate)
    whole = read_audio(path, RATE)
    with AudioFile(path, RATE) as audio:
        assert audio.length == whole.numel()
        for start in (0, 12345, audio.length - 3000):  # the last one wraps around the end (the roll)
            part = audio.read(start, 10480)
            torch.testing.assert_close(part, whole.roll(-start)[:10480], atol=2e-6, rtol=0)


@pytest.mark.parametrize("rate", [RATE, 22050])
def test_a_long_file_is_read_only_as_far_as_the_clip_needs(tmp_path: Path, rate: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A clip is its first target_length frames: of a 60-s file only those samples (plus the resampling filter's
    context) are read, and the clip (with the roll: the part a roll of the whole file brings to the front) is what
    reading the whole file gives."""
    path = _noise_file(tmp_path / "long.wav", 60.0, rate)
    whole = read_audio(path, RATE)
    fbank = FbankSettings(target_length=64)
    assert fbank.samples == 10480 and frames_for(fbank.samples, RATE) == 64
    requested: list[int] = []
    read = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, frames=-1, **kw: requested.append(frames) or
                        read(self, frames, **kw))
    plain = AudioClipDataset([AudioRecord(path, (0,))], 1, multilabel=False, fbank=fbank)
    rolled = AudioClipDataset([AudioRecord(path, (0,))], 1, multilabel=False, fbank=fbank, train=True, roll=True)
    np.random.seed(3)
    clip, rolled_clip = plain[0][0][0], rolled[0][0][0]
    limit = 10480 * rate // RATE + 2000  # the clip's samples, and whole resampling blocks of context (441 at 22050)
    assert requested and all(0 < frames <= limit for frames in requested) and sum(requested) <= 2 * limit
    np.random.seed(3)
    shift, magnitude = int(np.random.randint(whole.numel())), float(np.random.beta(10, 10) + 0.5)
    torch.testing.assert_close(clip, fbank(whole[:10480]), atol=1e-4, rtol=0)
    torch.testing.assert_close(rolled_clip, fbank((whole.roll(shift) * magnitude)[:10480]), atol=1e-4, rtol=0)


def test_a_short_file_is_read_whole_and_padded(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "short.wav", seconds=0.5)
    fbank = FbankSettings(target_length=1024)
    clip = AudioClipDataset([AudioRecord(path, (0,))], 1, multilabel=False, fbank=fbank)[0][0][0]
    frames = frames_for(RATE // 2, RATE)
    assert torch.equal(clip, fbank(read_audio(path, RATE))) and clip.shape == (1024, 128)
    assert torch.equal(clip[frames:], torch.full_like(clip[frames:], -fbank.mean / (2 * fbank.std)))

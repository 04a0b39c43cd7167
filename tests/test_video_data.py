"""Video data: PyAV decoding with seeking, list files, clip-consistent augmentation, bad files, multi-view items."""
from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from pathway.data import BadSampleError
from Video.datamodule import VideoDataModule
from Video.dataset import VideoClipDataset, VideoRecord, read_list_file
from Video.decoding import VideoDecodeError, open_video
from Video.synthetic import make_video_dataset, write_video
from Video.transforms import TrainClipTransform

TINY = dict(num_frames=4, sampling_rate=2, img_size=16, test_num_clips=2, test_num_crops=3, num_workers=0,
            pin_memory=False, batch_size=2)


@pytest.fixture(scope="module")
def video_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_video_dataset(root, classes=3, per_class=2, frames=20, size=(24, 32), fps=10, seed=0)
    return root


def all_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_decoded_frames_match_a_full_decode_across_keyframes(tmp_path: Path) -> None:
    video = np.random.default_rng(0).integers(0, 256, size=(50, 16, 24, 3), dtype=np.uint8)
    path = tmp_path / "clip.mp4"
    write_video(path, video, fps=25, gop_size=8)
    reference = all_frames(path)
    assert len(reference) == 50
    reader = open_video(path, backend="pyav")
    assert reader.num_frames == 50
    indices = [41, 3, 17, 17, 49, 8]  # unsorted, repeated, in several GOPs (keyframes every 8 frames)
    frames = reader.frames(indices)
    reader.close()
    assert frames.shape == (6, 16, 24, 3) and frames.dtype == np.uint8
    for row, index in enumerate(indices):
        np.testing.assert_array_equal(frames[row], reference[index])


def test_decoder_scales_the_shorter_side(tmp_path: Path) -> None:
    path = tmp_path / "wide.mp4"
    write_video(path, np.zeros((5, 16, 32, 3), dtype=np.uint8))
    reader = open_video(path, short_side=8, backend="pyav")
    assert reader.frames([0, 4]).shape == (2, 8, 16, 3)


def test_corrupt_and_truncated_files_raise_errors_naming_the_file(tmp_path: Path, video_root: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match="garbage.mp4"):
        open_video(garbage, backend="pyav")
    good = video_root / "train" / "class_0" / "class_0_000.mp4"
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # loses the trailing moov atom
    with pytest.raises(VideoDecodeError, match="truncated.mp4"):
        open_video(truncated, backend="pyav")


def test_list_files_accept_spaces_commas_and_a_header(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("path,label\nx/a.mp4,3\n\n# comment\n/abs/b.mp4 , 1\n")
    records = read_list_file(tmp_path / "a.csv", "/data")
    assert records == [VideoRecord(Path("/data/x/a.mp4"), 3), VideoRecord(Path("/abs/b.mp4"), 1)]
    (tmp_path / "b.csv").write_text("x/a.mp4 3\nx/b.mp4 three\n")
    with pytest.raises(ValueError, match=r"b.csv:2: label 'three'"):
        read_list_file(tmp_path / "b.csv", "/data")


def test_augmentation_applies_identical_ops_to_every_frame() -> None:
    frame = np.random.default_rng(0).integers(0, 256, size=(20, 26, 3), dtype=np.uint8)
    frames = np.stack([frame] * 4)
    transform = TrainClipTransform(img_size=16, auto_augment="rand-m7-n4-mstd0.5-inc1", reprob=1.0)
    clips = [transform(frames) for _ in range(3)]
    for clip in clips:
        assert clip.shape == (3, 4, 16, 16)
        for t in range(1, 4):
            torch.testing.assert_close(clip[:, t], clip[:, 0], rtol=0, atol=0)
    assert not torch.equal(clips[0], clips[1])  # but clips differ from each other


def test_datamodule_formats_and_class_count(video_root: Path) -> None:
    listed = VideoDataModule(str(video_root), **TINY)
    folders = VideoDataModule(str(video_root), format="folder", **TINY)
    assert listed.num_classes == folders.num_classes == 3
    assert folders.classes == ["class_0", "class_1", "class_2"]
    listed.setup("fit")
    clips, labels = next(iter(listed.train_dataloader()))
    assert clips.shape == (2, 3, 4, 16, 16) and labels.dtype == torch.long
    with pytest.raises(ValueError, match="num_classes=2"):
        VideoDataModule(str(video_root), num_classes=2, **TINY)


def test_test_split_yields_every_view_with_its_video_index(video_root: Path) -> None:
    dm = VideoDataModule(str(video_root), **TINY)
    dm.setup("test")
    assert len(dm.test_set) == 6 * 2 * 3
    items = [dm.test_set[i] for i in range(12)]  # the 6 views of videos 0 and 1
    assert [item[2] for item in items] == [0] * 6 + [1] * 6
    assert all(item[1] == 0 for item in items)
    views = [item[0] for item in items[:6]]
    assert all(not torch.equal(views[0], v) for v in views[1:])  # 2 clips x 3 crops: all different


def _with_bad_file(root: Path, tmp_path: Path) -> Path:
    """List files in ``tmp_path`` naming the 6 good videos of ``root`` plus a broken 7th (index 6)."""
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video at all")
    lines = (root / "train.csv").read_text() + f"{bad} 1\n"
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.csv").write_text(lines)
    return bad


def test_unreadable_video_is_skipped_counted_and_logged(video_root: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    bad = _with_bad_file(video_root, tmp_path)
    dm = VideoDataModule(str(video_root), list_dir=str(tmp_path), **{**TINY, "batch_size": 7})
    dm.setup("test")
    with caplog.at_level(logging.WARNING):
        batches = list(dm.test_dataloader())
    ids = torch.cat([b[2] for b in batches])
    assert 6 not in ids.tolist() and len(ids) == 6 * 6  # the 6 views of the broken 7th video are dropped
    assert dm.test_set.skipped == 6
    assert str(bad) in caplog.text
    dm.setup("fit")
    train = dm.train_set
    replacement = train[6]  # training replaces it by the next readable video (index 0), so batches keep their size
    assert replacement is not None and replacement[1] == train.dataset[0][1] and train.skipped == 1


def test_unreadable_video_fails_when_asked_to(video_root: Path, tmp_path: Path) -> None:
    _with_bad_file(video_root, tmp_path)
    dm = VideoDataModule(str(video_root), list_dir=str(tmp_path), on_bad_file="error", **TINY)
    dm.setup("test")
    with pytest.raises(BadSampleError, match="broken.mp4"):
        dm.test_set[6 * 6]
    dm.setup("fit")
    with pytest.raises(BadSampleError, match="broken.mp4"):
        dm.train_set[6]


def test_dataset_rejects_unknown_modes(video_root: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset mode"):
        VideoClipDataset([VideoRecord(video_root / "x.mp4", 0)], mode="eval")  # type: ignore[arg-type]

"""``python -m Point.seg fit|validate|test|predict --config Point/configs/shapenetpart_*.yaml``: part segmentation.

The best checkpoint is picked by instance mIoU (``val/ins_miou``).
"""
import pathway.entry  # first: sets the CPU-thread environment before torch loads

from pathway.cli import run_cli
from Point.datamodule import ShapeNetPartDataModule
from Point.model import PointSegmenter

if __name__ == "__main__":
    with pathway.entry.errors_as_messages():
        run_cli(PointSegmenter, ShapeNetPartDataModule, monitor="val/ins_miou", command="Point.seg")

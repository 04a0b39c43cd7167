"""``python -m pathway <command>``: tools that work on any modality's checkpoints."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

import pathway.entry  # noqa: F401  (first: sets the CPU-thread environment before torch loads)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pathway",
        description="Tools for the checkpoints of every modality. Training, evaluation and prediction run through "
                    "each modality's own CLI: python -m Image|Video|Point|Point.seg|Audio fit|validate|test|predict.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    commands.add_parser(
        "export", add_help=False,
        help="fold the pathway into the weights and write the plain backbone (safetensors, torch.export, ONNX, "
             "timm's config.json), each verified against the checkpoint, into a folder replaced whole; see "
             "`python -m pathway export --help`",
    )
    _, rest = parser.parse_known_args(argv)
    from pathway.export import main as export_main

    return export_main(rest)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m pathway <command>``: tools that work on any modality's checkpoints (``export``)."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Optional

COMMANDS = ("export",)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(f"usage: python -m pathway {{{','.join(COMMANDS)}}} ...  (got {args[:1] or 'nothing'})", file=sys.stderr)
        return 2
    from pathway.export import main as export_main

    return export_main(args[1:])


if __name__ == "__main__":
    sys.exit(main())

"""What every ``python -m <entry point>`` does around its work: CPU-thread defaults set before torch loads, and the
project's own errors printed as one message.

Each ``__main__`` imports this module first.  OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads it; its default
keeps idle threads spinning, which on a CPU shared with other processes (data-loader workers, other jobs) made
``python -m demo`` take 25 minutes instead of about 3 on 2 cores.  ``PASSIVE`` lets them sleep; a value the user set
is kept (``OMP_WAIT_POLICY=ACTIVE`` restores the spinning), and once torch is loaded nothing is changed.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# Set here, at import: the entry points import this module before anything that loads torch.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TRACEBACK_ENV = "PATHWAY_TRACEBACK"


def project_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that describe bad input (a checkpoint, a data file, an export) in words meant for the user."""
    from pathway.checkpoint import CheckpointError
    from pathway.data import BadDataError, BadSampleError
    from pathway.export import ExportError

    return CheckpointError, BadDataError, BadSampleError, ExportError


@contextmanager
def errors_as_messages() -> Iterator[None]:
    """Print one of ``project_errors()`` as ``error: <message>`` on stderr and exit 1, without the traceback
    (Lightning's and torch's frames say nothing about a wrong file); ``PATHWAY_TRACEBACK=1`` keeps it."""
    try:
        yield
    except Exception as error:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0") or not isinstance(error, project_errors()):
            raise
        sys.stderr.write(f"error: {error}\n({type(error).__name__}; {TRACEBACK_ENV}=1 shows the traceback)\n")
        raise SystemExit(1) from None

"""``python -m demo``: the embedded cross-modal demo (see ``demo.cross_modal``)."""
import pathway.entry  # first: sets the CPU-thread environment before torch loads

from demo.cross_modal import main

if __name__ == "__main__":
    with pathway.entry.errors_as_messages():
        main()

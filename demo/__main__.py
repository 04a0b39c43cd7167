"""``python -m demo``: the embedded cross-modal demo (see ``demo.cross_modal``)."""
from demo.cross_modal import main

if __name__ == "__main__":
    main()

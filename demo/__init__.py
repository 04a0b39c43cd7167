"""The demos: ``python -m demo`` (cross-modal, README command one) and ``python -m demo.data`` (the data and aux
that every modality's ``configs/demo*.yaml`` reads).  Not a modality: it imports two of them."""

"""Import-only stand-in: VideoMAE's utils.py imports SummaryWriter at module level."""


class SummaryWriter:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("the tensorboardX stand-in is import-only")

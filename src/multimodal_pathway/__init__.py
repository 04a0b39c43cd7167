"""Alias package so the reference README's ``from multimodal_pathway import ...`` keeps working."""
from pathway import *  # noqa: F401,F403
from pathway import __all__  # noqa: F401

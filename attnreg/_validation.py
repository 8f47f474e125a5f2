"""The old, private name of :mod:`attnreg.validation`, kept so that existing imports keep working."""

from attnreg.validation import *  # noqa: F403
from attnreg.validation import __all__  # noqa: F401

"""attnreg's conformance suite: the checks every registered pattern must pass, on every engine that runs it.

Run it as ``attnreg check [NAME ...]``, from pytest (``pytest --attnreg-conformance=NAME`` or the
``attnreg_conformance`` fixture), or from Python with :func:`run_conformance`. Tolerances are in
:mod:`attnreg.testing.tolerances`.
"""

from attnreg.testing.inputs import Inputs, block_sizes, lengths, make_inputs
from attnreg.testing.results import FAIL, PASS, SKIP, Outcome, Report
from attnreg.testing.suite import ENGINE_CHECKS, SPEC_CHECKS, check_pattern, run_conformance
from attnreg.testing.tolerances import TOLERANCES, Tolerance

__all__ = [
    "ENGINE_CHECKS",
    "FAIL",
    "PASS",
    "SKIP",
    "SPEC_CHECKS",
    "TOLERANCES",
    "Inputs",
    "Outcome",
    "Report",
    "Tolerance",
    "block_sizes",
    "check_pattern",
    "lengths",
    "make_inputs",
    "run_conformance",
]

"""The xformers engine: a plan of layouts and biases built in torch (:mod:`.plan`), run by xformers (:mod:`.kernel`)."""

from attnreg.execution.xformers_engine.engine import XformersEngine, strategy, xformers_attention
from attnreg.execution.xformers_engine.kernel import Features, installed, load_fmha, probe, run_plan
from attnreg.execution.xformers_engine.plan import LocalMask, Part, Plan, build_plan, densify

__all__ = [
    "Features",
    "LocalMask",
    "Part",
    "Plan",
    "XformersEngine",
    "build_plan",
    "densify",
    "installed",
    "load_fmha",
    "probe",
    "run_plan",
    "strategy",
    "xformers_attention",
]

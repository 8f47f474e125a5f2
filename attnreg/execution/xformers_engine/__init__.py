"""The xformers engine: a plan of layouts and biases built in torch (:mod:`.plan`), checked against xformers' own
operators (:mod:`.operators`), run by xformers (:mod:`.kernel`)."""

from attnreg.execution.xformers_engine.engine import XformersEngine, plan_reasons, strategy, xformers_attention
from attnreg.execution.xformers_engine.kernel import installed, kernel_arguments, load_fmha, run_plan
from attnreg.execution.xformers_engine.operators import build_reasons, input_reasons, operator_reasons
from attnreg.execution.xformers_engine.plan import (
    KernelCall,
    KernelShape,
    LocalMask,
    Plan,
    build_plan,
    densify,
    kernel_shapes,
)

__all__ = [
    "KernelCall",
    "KernelShape",
    "LocalMask",
    "Plan",
    "XformersEngine",
    "build_plan",
    "build_reasons",
    "densify",
    "input_reasons",
    "installed",
    "kernel_arguments",
    "kernel_shapes",
    "load_fmha",
    "operator_reasons",
    "plan_reasons",
    "run_plan",
    "strategy",
    "xformers_attention",
]

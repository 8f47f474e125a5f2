"""Running patterns: the checked call, the engines, and the dispatcher that picks one."""

from attnreg.execution.call import AttentionCall, make_call
from attnreg.execution.dispatch import BackendUnavailableError, Verdict, choose, judge
from attnreg.execution.engine import Engine

__all__ = ["AttentionCall", "BackendUnavailableError", "Engine", "Verdict", "choose", "judge", "make_call"]

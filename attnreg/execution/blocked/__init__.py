"""The blocked PyTorch engine: queries in blocks, window and global parts merged by log-sum-exp, any device."""

from attnreg.execution.blocked.engine import BlockedEngine, blocked_attention_call

__all__ = ["BlockedEngine", "blocked_attention_call"]

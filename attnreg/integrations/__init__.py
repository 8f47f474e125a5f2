"""Bridges from attnreg to other libraries, each imported on its own (e.g. ``transformers_bridge``)."""

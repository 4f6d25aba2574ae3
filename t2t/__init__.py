"""t2t: multi-task instruction tuning of T5-style models."""

__version__ = "0.1.0"

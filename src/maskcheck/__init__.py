"""maskcheck: find attention-mask bugs in PyTorch code that run silently."""

__version__ = "0.1.0"

"""fastvar: fast next-scale visual autoregressive generation with FastVAR cached token pruning."""

__version__ = "0.1.0"

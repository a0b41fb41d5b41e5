"""zoo: a benchmark and model-zoo harness for small language models."""

__version__ = "0.1.0"

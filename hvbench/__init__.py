"""hvbench: a benchmark harness for hierarchical variational autoencoders."""

__version__ = "0.1.0"

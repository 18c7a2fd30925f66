"""sbbench: benchmarking and autotuning suite for Scatterbrain attention."""

__version__ = "0.1.0"

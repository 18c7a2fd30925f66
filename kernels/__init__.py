"""Triton kernels of Scatterbrain attention (imported as ``sbbench.kernels``)."""

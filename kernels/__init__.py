"""Triton kernels of fastgrpo (installed as ``fastgrpo.kernels``). Import only where triton is installed."""

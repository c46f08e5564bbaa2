"""fastopt: fused CPU optimizer update kernels in Cython behind torch.optim-shaped classes."""
__version__ = "0.1.0"

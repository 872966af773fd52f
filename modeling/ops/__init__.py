"""Custom ops: PyTorch implementations everywhere and Triton kernels on CUDA."""

from .bev_pool import BACKENDS, BevPoolIndices, bev_pool, pool_indices, resolve_backend, scatter_pool

__all__ = ["BACKENDS", "BevPoolIndices", "bev_pool", "pool_indices", "resolve_backend", "scatter_pool"]

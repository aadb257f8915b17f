"""Compiled Cython kernels (built by CMake)."""

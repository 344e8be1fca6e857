"""Triton pieces shared by the CUDA and ROCm backends: one kernel, per-vendor configs."""

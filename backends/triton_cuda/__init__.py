"""Triton backend for NVIDIA GPUs (installed as ``gdn_dispatch.backends.triton_cuda``)."""

"""Triton backend for AMD Instinct GPUs (installed as ``gdn_dispatch.backends.triton_rocm``)."""

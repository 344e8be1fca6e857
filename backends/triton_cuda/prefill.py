"""Launcher glue of ``chunk_gated_delta_rule`` for the Triton-CUDA backend.

Validation has run; this picks the dtype policy and the pipeline config for the device and
hands over to ``triton_common.chunk_pipeline``.
"""

from __future__ import annotations

import functools

import torch
from gdn_dispatch.backends.triton_common.chunk_pipeline import (
    ChunkConfig,
    config_for,
    run_chunk_pipeline,
)

from gdn_dispatch.dtype_policy import policy_for
from gdn_dispatch.registry import CallMeta

__all__ = ["chunk_gated_delta_rule", "chunk_config"]


_CHOICE = "triton_cuda.chunk_choice"  # (intermediate dtype, ChunkConfig, SM count) in scratch


@functools.lru_cache(maxsize=64)
def chunk_config(arch: str, K: int, V: int) -> ChunkConfig:
    """Pipeline config for an NVIDIA arch and head dims (cached; no autotuning at run time)."""
    return config_for(arch, K, V)


def chunk_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
    beta: torch.Tensor | None, scale: float, initial_state: torch.Tensor | None,
    output_final_state: bool, use_qk_l2norm_in_kernel: bool,
    use_beta_sigmoid_in_kernel: bool, allow_neg_eigval: bool, state_v_first: bool,
    cu_seqlens: torch.Tensor | None, use_gate_in_kernel: bool, A_log: torch.Tensor | None,
    dt_bias: torch.Tensor | None, *, meta: CallMeta,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked gated delta rule on NVIDIA GPUs (three Triton kernels, chunk size 64).

    The pipeline plan for this call metadata lives in ``meta.scratch`` (built on the first
    call, reused by every repeated one)."""
    choice = meta.scratch.get(_CHOICE)
    if choice is None:
        policy = policy_for(meta.dtype, meta.probe, meta.state_dtype)
        choice = meta.scratch[_CHOICE] = (
            policy.intermediate, chunk_config(meta.probe.arch, q.shape[-1], v.shape[-1]),
            meta.probe.multiprocessors or None)
    return run_chunk_pipeline(
        q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
        use_beta_sigmoid_in_kernel, allow_neg_eigval, state_v_first, cu_seqlens,
        use_gate_in_kernel, A_log, dt_bias, inter_dtype=choice[0], config=choice[1],
        num_sms=choice[2], plan_cache=meta.scratch)

"""Reference ``chunk_gated_delta_rule``: the chunked (WY / UT) form of the gated delta rule.

Per sequence and value head the recurrence of API.md is

    S_t = exp(g_t) S_{t-1} + k_t u_t^T,   u_t = beta_t (v_t - exp(g_t) S_{t-1}^T k_t),
    o_t = scale * S_t^T q_t.

Within a chunk of C = 64 tokens starting from state S, with G the in-chunk cumulative sum of
g and D_ij = exp(G_i - G_j) for i >= j (0 above the diagonal; the exponent is masked before
``exp`` so it is never positive and cannot overflow):

    (I + A) U = beta * V - diag(beta * exp(G)) K S,   A_ij = beta_i D_ij k_i.k_j  (i > j)
    => U = u - w S  with  u = (I + A)^-1 (beta V),  w = (I + A)^-1 (beta exp(G) K)
    O = scale * (diag(exp(G)) Q S + (D o Q K^T) U)
    S' = exp(G_C) S + (K * exp(G_C - G))^T U

``A``, ``(I + A)^-1`` (one triangular solve), ``u``, ``w`` and ``D o QK^T`` are computed for
every chunk of every sequence and head at once; only the state hand-off loops over chunks.
Variable-length batches (``cu_seqlens``) are padded per sequence to a multiple of C with
``k = v = beta = 0`` and ``g = 0``, which leaves the state unchanged, so chunks never mix
sequences.
"""

from __future__ import annotations

import torch

from gdn_dispatch.dtype_policy import policy_for
from gdn_dispatch.registry import CallMeta

from .gating import activated_gates, l2_normalize
from .sequences import head_index, sequence_layout

__all__ = ["chunk_gated_delta_rule", "chunked_scan", "CHUNK_SIZE"]

CHUNK_SIZE = 64


def chunked_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                 beta: torch.Tensor, state: torch.Tensor,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the gated delta rule over chunk-major padded sequences.

    q, k ``[nc, N, HV, C, K]``, v ``[nc, N, HV, C, V]``, g, beta ``[nc, N, HV, C]`` (chunk
    index first, so each step of the loop reads contiguous blocks); state ``[N, HV, K, V]``;
    one float dtype throughout.  Returns ``(o [nc, N, HV, C, V], final state [N, HV, K, V])``.
    """
    nc, C = q.shape[0], q.shape[-2]
    G = g.cumsum(-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    exponent = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf"))
    decay = exponent.exp()                                     # D, zero above the diagonal
    A = ((k @ k.transpose(-1, -2)) * decay * beta[..., :, None]).tril(-1)
    eye = torch.eye(C, dtype=q.dtype, device=q.device).expand_as(A).contiguous()
    # (I + A)^-1 once per chunk (a solve against the identity: far cheaper than solving for
    # all K + V right-hand sides), then two matmuls give u and w
    inverse = torch.linalg.solve_triangular(A, eye, upper=False, unitriangular=True)
    u = inverse @ (beta[..., None] * v)
    w = inverse @ ((beta * G.exp())[..., None] * k)
    qk = (q @ k.transpose(-1, -2)) * decay                     # D o QK^T (diagonal included)
    q_decayed = q * G.exp()[..., None]
    G_last = G[..., -1:]
    k_to_end_t = (k * (G_last - G).exp()[..., None]).transpose(-1, -2)
    chunk_decay = G_last.exp()[..., None]                      # [nc, N, HV, 1, 1]

    o = torch.empty(v.shape, dtype=q.dtype, device=q.device)
    S = state
    for c in range(nc):
        U = u[c] - w[c] @ S
        o[c] = scale * (q_decayed[c] @ S + qk[c] @ U)
        S = chunk_decay[c] * S + k_to_end_t[c] @ U
    return o, S


def chunk_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
    beta: torch.Tensor | None, scale: float, initial_state: torch.Tensor | None,
    output_final_state: bool, use_qk_l2norm_in_kernel: bool,
    use_beta_sigmoid_in_kernel: bool, allow_neg_eigval: bool, state_v_first: bool,
    cu_seqlens: torch.Tensor | None, use_gate_in_kernel: bool, A_log: torch.Tensor | None,
    dt_bias: torch.Tensor | None, *, meta: CallMeta,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked gated delta rule: same results as the token recurrence of API.md.

    q, k ``[B, T, H, K]``; v ``[B, T, HV, V]``; g, beta ``[B, T, HV]`` (raw with the
    in-kernel gating flags, see ``gating.activated_gates``); ``initial_state`` ``[N, HV, K,
    V]`` (``[N, HV, V, K]`` with ``state_v_first``), N = B or ``len(cu_seqlens) - 1``.
    Math in float32 (float64 for float64 inputs).  Returns ``o`` in ``v.dtype`` and, with
    ``output_final_state``, a new final state in the initial state's dtype (else float32)
    and layout; otherwise None.
    """
    policy = policy_for(meta.dtype, meta.probe, meta.state_dtype)
    cd = policy.compute
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    dev = q.device
    gate, strength = activated_gates(g, beta, (B, T, HV), cd, dev,
                                     gate_in_kernel=use_gate_in_kernel, A_log=A_log,
                                     dt_bias=dt_bias, beta_sigmoid=use_beta_sigmoid_in_kernel,
                                     neg_eigval=allow_neg_eigval)
    qf, kf = q.to(cd), k.to(cd)
    if use_qk_l2norm_in_kernel:
        qf, kf = l2_normalize(qf), l2_normalize(kf)

    layout = sequence_layout(B, T, cu_seqlens, CHUNK_SIZE, dev)
    N, nc = layout.N, layout.T_pad // CHUNK_SIZE
    heads = head_index(H, HV, dev)

    def chunk_major(x: torch.Tensor) -> torch.Tensor:
        """[B, T, heads, ...] -> padded [nc, N, heads, C, ...]; padding has k = v = beta =
        g = 0, an identity step."""
        x = layout.pack(x)
        x = x.reshape(N, nc, CHUNK_SIZE, *x.shape[2:])
        return x.permute(1, 0, 3, 2, *range(4, x.dim())).contiguous()

    qp = chunk_major(qf).index_select(2, heads)
    kp = chunk_major(kf).index_select(2, heads)
    vp, gp, bp = chunk_major(v.to(cd)), chunk_major(gate), chunk_major(strength)
    if initial_state is None:
        state = torch.zeros(N, HV, K, V, dtype=cd, device=dev)
    else:
        state = initial_state.to(cd)
        if state_v_first:
            state = state.transpose(-1, -2)
    o_pad, final = chunked_scan(qp, kp, vp, gp, bp, state, scale)
    o_pad = o_pad.permute(1, 0, 3, 2, 4).reshape(N, layout.T_pad, HV, V)
    o = layout.unpack(o_pad).to(policy.output).contiguous()
    if not output_final_state:
        return o, None
    if state_v_first:
        final = final.transpose(-1, -2)
    return o, final.to(policy.state).contiguous()

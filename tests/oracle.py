"""Float64 token-by-token oracle and input makers shared by every test file.

The oracle is written independently of ``gdn_dispatch.reference`` (a plain Python loop over
tokens in float64) so that tests of the reference and of the kernels compare against the
recurrence of API.md itself, not against another implementation of ours.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gating64(A_log, a, dt_bias, softplus_beta=1.0, threshold=20.0):
    """g = -exp(A_log) * softplus(a + dt_bias), in float64."""
    x = a.double() + (dt_bias.double() if dt_bias is not None else 0.0)
    sp = F.softplus(x, beta=softplus_beta, threshold=threshold)
    return -torch.exp(A_log.double()) * sp


def recurrence64(q, k, v, g=None, beta=None, scale=None, h0=None, l2norm=False,
                 cu_seqlens=None, state_v_first=False):
    """The API.md recurrence in float64.

    q, k: [B, T, H, K]; v: [B, T, HV, V]; g, beta: [B, T, HV] (already activated);
    h0: [N, HV, K, V] (or [N, HV, V, K] with state_v_first).  Returns (o [B,T,HV,V] float64,
    final states [N, HV, K, V] float64 in the same layout as h0), and the list of per-token
    states if asked through ``recurrence64_states``.
    """
    o, hts, _ = _run(q, k, v, g, beta, scale, h0, l2norm, cu_seqlens, state_v_first, False)
    return o, hts


def recurrence64_states(q, k, v, g=None, beta=None, scale=None, h0=None, l2norm=False,
                        cu_seqlens=None, state_v_first=False):
    """Like ``recurrence64`` but also returns the state after every token [B*T, HV, ., .]."""
    return _run(q, k, v, g, beta, scale, h0, l2norm, cu_seqlens, state_v_first, True)


def _run(q, k, v, g, beta, scale, h0, l2norm, cu_seqlens, v_first, keep):
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    G = HV // H
    scale = K ** -0.5 if scale is None else scale
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    g = torch.zeros(B, T, HV, dtype=torch.float64) if g is None else g.double().cpu()
    beta = torch.ones(B, T, HV, dtype=torch.float64) if beta is None else beta.double().cpu()
    if l2norm:
        q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    if cu_seqlens is not None:
        cu = [int(x) for x in cu_seqlens.tolist()]
        seqs = [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)]
    else:
        seqs = [(b, 0, T) for b in range(B)]
    N = len(seqs)
    o = torch.zeros(B, T, HV, V, dtype=torch.float64)
    hts = torch.zeros(N, HV, K, V, dtype=torch.float64)
    states = torch.zeros(B * T, HV, K, V, dtype=torch.float64) if keep else None
    for n, (b, s, e) in enumerate(seqs):
        for hv in range(HV):
            h = hv // G
            if h0 is not None:
                S = h0[n, hv].double().cpu().clone()
                if v_first:
                    S = S.t().contiguous()
            else:
                S = torch.zeros(K, V, dtype=torch.float64)
            for t in range(s, e):
                S = S * math.exp(float(g[b, t, hv]))
                kt = k[b, t, h]
                u = float(beta[b, t, hv]) * (v[b, t, hv] - kt @ S)
                S = S + torch.outer(kt, u)
                o[b, t, hv] = scale * (q[b, t, h] @ S)
                if keep:
                    states[b * T + t, hv] = S
            hts[n, hv] = S
    if v_first:
        hts = hts.transpose(-1, -2).contiguous()
        if keep:
            states = states.transpose(-1, -2).contiguous()
    return o, hts, states


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64; NaN or Inf anywhere in ``out`` gives inf."""
    out = out.detach().double().cpu()
    ref = ref.detach().double().cpu()
    if not torch.isfinite(out).all():
        return float("inf")
    den = ref.norm().item()
    num = (out - ref).norm().item()
    return num / den if den > 0 else num


# relative-error thresholds by input dtype
TOL = {torch.float64: 1e-9, torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 2.5e-2}


def make_inputs(B, T, H, HV, K, V, dtype=torch.float32, device="cpu", seed=0, gate_scale=1.0,
                normalize_k=True):
    """Random q, k, v, g (log decay <= 0) and beta in (0, 1) of the given shapes."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    if normalize_k:
        k = k / k.norm(dim=-1, keepdim=True)
    v = torch.randn(B, T, HV, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, HV, generator=gen) * gate_scale + 2.0)
    beta = torch.rand(B, T, HV, generator=gen)
    to = lambda x: x.to(device=device, dtype=dtype)  # noqa: E731
    return to(q), to(k), to(v), g.to(device=device, dtype=torch.float32), to(beta)


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN so an element the op forgets to write fails the comparison."""
    return t.fill_(float("nan"))


def chunk_case_inputs(row: tuple, dtype: torch.dtype, device: str, v_first: bool, seed: int = 0,
                      scale_T: int = 1, dims: tuple[int, int] | None = None):
    """Inputs of one chunked-prefill test case and its float64 oracle.

    ``row``: ``(B, T, H, HV, K, V, options)``; options: ``h0``, ``state_dtype`` (of h0),
    ``g`` / ``beta`` = None, ``gate_in_kernel`` (+ ``no_dt_bias``), ``beta_sigmoid``
    (+ ``neg_eigval``), ``l2norm``, ``cu`` (cu_seqlens), ``strided`` (q, k, v as views of one
    packed projection), ``scale``.  ``scale_T`` multiplies T and cu_seqlens; ``dims``
    replaces (K, V).  Returns ``((q, k, v, g, beta), kwargs, o_ref, final_state_ref)``."""
    B, T, H, HV, K, V, opt = row
    if dims is not None:
        K, V = dims
    T = T * scale_T
    cu_list = opt.get("cu")
    if cu_list is not None:
        cu_list = [c * scale_T for c in cu_list]
    q, k, v, g, beta = make_inputs(B, T, H, HV, K, V, dtype=dtype, device=device, seed=seed,
                                   normalize_k=not opt.get("l2norm", False))
    gen = torch.Generator().manual_seed(seed + 1)
    kw: dict = {"state_v_first": v_first, "output_final_state": True}
    g_act, beta_act = g, beta
    if opt.get("gate_in_kernel"):
        a = torch.randn(B, T, HV, generator=gen)
        A_log = torch.rand(HV, generator=gen) - 1.0
        dt_bias = None if opt.get("no_dt_bias") else torch.randn(HV, generator=gen) * 0.5
        g_act = gating64(A_log, a, dt_bias)
        g = a.to(device=device, dtype=dtype)
        kw.update(use_gate_in_kernel=True, A_log=A_log.to(device),
                  dt_bias=None if dt_bias is None else dt_bias.to(device))
    if opt.get("beta_sigmoid"):
        b = torch.randn(B, T, HV, generator=gen)
        beta = b.to(device=device, dtype=dtype)
        beta_act = torch.sigmoid(beta.double()) * (2.0 if opt.get("neg_eigval") else 1.0)
        kw.update(use_beta_sigmoid_in_kernel=True, allow_neg_eigval=bool(opt.get("neg_eigval")))
    if "g" in opt and opt["g"] is None:
        g = g_act = None
    if "beta" in opt and opt["beta"] is None:
        beta = beta_act = None
    if opt.get("l2norm"):
        kw["use_qk_l2norm_in_kernel"] = True
    if opt.get("strided"):
        packed = torch.cat([q.reshape(B, T, -1), k.reshape(B, T, -1), v.reshape(B, T, -1)], -1)
        nq, nk = H * K, 2 * H * K
        q = packed[..., :nq].view(B, T, H, K)
        k = packed[..., nq:nk].view(B, T, H, K)
        v = packed[..., nk:].view(B, T, HV, V)
    cu = None
    N = B
    if cu_list is not None:
        cu = torch.tensor(cu_list, dtype=torch.int32, device=device)
        kw["cu_seqlens"] = cu
        N = len(cu_list) - 1
    h0 = None
    if opt.get("h0"):
        shape = (N, HV, V, K) if v_first else (N, HV, K, V)
        h0 = (torch.randn(*shape, generator=gen) * 0.1).to(
            device=device, dtype=opt.get("state_dtype", torch.float32))
        kw["initial_state"] = h0
    if "scale" in opt:
        kw["scale"] = opt["scale"]
    ref_o, ref_h = recurrence64(q, k, v, g_act, beta_act, scale=opt.get("scale"), h0=h0,
                                l2norm=bool(opt.get("l2norm")), cu_seqlens=cu,
                                state_v_first=v_first)
    return (q, k, v, g, beta), kw, ref_o, ref_h

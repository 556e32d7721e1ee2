"""Importance-aware ranking distillation loss (DLLM2Rec L_d), in two variants (spec §1.1 Eq. 5, §1.2.5, §1.4.2-3).

Inputs are scores, not models: ``pos`` [B, K] student scores of the teacher's top-K candidates, ``w`` [B, K] their
importance weights (``weights.combine``), ``neg`` [B, n_neg] scores of the step's sampled negatives, ``covered``
[B] rows the teacher answered. Rows with ``covered=False`` contribute nothing; the sums are still divided by the
full batch size B, so a covered row weighs exactly what it weighs at full coverage (its plain loss is unchanged).

``paper``     L_d = (1/B) Σ_b Σ_k w_bk · −log σ(ŷ_bk)                      (Eq. 5: positives only)
              optional negative term (``neg_term=True``): + (1/B) Σ_b Σ_k w_bk · −log(1 − σ(ŷ_b,neg))
``official``  L_RD = Σ_k mean_b[ w_bk · −(log σ(ŷ_bk) + log σ(1 − ŷ_b,neg)) ]    (the script's shifted negative)
              L_RD_dro = Σ_k mean_b(w_bk) · mean_b(dro_bk)     (the [B,1]×[B] broadcast of the script)
              total added to the student loss: λ·(L_RD + α·L_RD_dro)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dllm2rec.losses import dros_lse  # a leaf module (torch only)


def _mask(x: torch.Tensor, covered: torch.Tensor | None) -> torch.Tensor:
    if covered is None:
        return x
    return x * covered.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def paper_ranking_loss(pos: torch.Tensor, w: torch.Tensor, covered: torch.Tensor | None = None,
                       neg: torch.Tensor | None = None) -> torch.Tensor:
    """Paper Eq. 5 (mean over the batch); with ``neg`` also the correct negative term −log(1 − σ(ŷ_neg))."""
    B = pos.shape[0]
    ell = F.softplus(-pos)  # −log σ(ŷ)
    if neg is not None:
        ell = ell + F.softplus(neg).mean(dim=1, keepdim=True)  # −log(1 − σ(ŷ_neg))
    return _mask(w * ell, covered).sum() / B


def official_ranking_loss(pos: torch.Tensor, neg: torch.Tensor, w: torch.Tensor,
                          covered: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_k mean_b[w_bk · −(log σ(ŷ_bk) + log σ(1 − ŷ_b,neg))] (official ``main.py``; mean over the n_neg negatives)."""
    B = pos.shape[0]
    neg_part = (-F.logsigmoid(1.0 - neg)).mean(dim=1, keepdim=True)  # −log σ(1 − ŷ_neg), NOT −log(1 − σ(ŷ_neg))
    ell = -F.logsigmoid(pos) + neg_part
    return _mask(w * ell, covered).sum() / B


def dro_candidate_terms(full_scores: torch.Tensor, candidates: torch.Tensor, ps: torch.Tensor,
                        beta: float = 1.0, cand_scores: torch.Tensor | None = None,
                        row_lse: torch.Tensor | None = None) -> torch.Tensor:
    """[B, K]: the DROS loss of each row with candidate c_k as the positive, all K at once.

    dro_bk = log( Σ_j e^{ps_j ŷ_j²/β} − e^{ps_c ŷ_c²/β} + e^{ps_c (ŷ_c−1)²/β} ), c = c_bk  (spec §1.2.4).
    The row's logsumexp is computed once over [B, N] (one fused kernel), then corrected per candidate in float64 on
    [B, K] only: dro = lse + log(1 − e^{a_c − lse} + e^{b_c − lse}). The official script recomputes the full float64
    [B, N] sum once per candidate. ``cand_scores`` ([B, K]) and ``row_lse`` ([B], log Σ_j e^{ps_j ŷ_j²/β}, e.g.
    from ``StepContext.dros``): pass them if the caller has them.
    """
    if row_lse is None:  # the plain row sum does not depend on which column dros_lse swaps
        row_lse = dros_lse(full_scores, candidates[:, 0], ps, beta)[1]
    lse = row_lse[:, None].to(torch.float64)  # [B, 1]
    p64 = ps.to(torch.float64)
    if cand_scores is None:  # the same values; passing them avoids a [B, N] gradient for the gather
        cand_scores = full_scores.gather(1, candidates)
    yc = cand_scores.to(torch.float64)  # [B, K]
    ac = p64[candidates] * yc.pow(2) / beta
    bc = p64[candidates] * (yc - 1.0).pow(2) / beta
    inner = 1.0 - torch.exp(ac - lse) + torch.exp(bc - lse)
    return (lse + torch.log(inner.clamp_min(1e-300))).to(full_scores.dtype)


def official_dro_part(w: torch.Tensor, dro: torch.Tensor, covered: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_k mean(w[:, k:k+1] * dro[:, k]) with the official broadcast: = Σ_k mean_b(w_bk) · mean_b(dro_bk)."""
    w = _mask(w, covered)
    dro = _mask(dro, covered)
    return (w.mean(dim=0) * dro.mean(dim=0)).sum()

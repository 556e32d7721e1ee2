"""Student losses: sampled BCE (paper Eq. 3), the DROS robust term (Yang et al., 2023), full softmax CE.

All are pure functions of scores, so the official-loss reproduction tests can check them by hand.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_negatives(seq: torch.Tensor, target: torch.Tensor, n_items: int, n_neg: int = 1,
                     generator: torch.Generator | None = None, max_rounds: int = 50) -> torch.Tensor:
    """Uniform negatives in 0..N-1 that are neither in the row's history nor its target ([B, n_neg]).

    Rejection sampling, vectorised: redraw only the rejected entries. With histories of ≤ L items out of N ≫ L,
    one or two rounds suffice; ``max_rounds`` guards degenerate catalogues.
    """
    B = target.shape[0]
    neg = torch.randint(0, n_items, (B, n_neg), generator=generator, device=target.device)
    for _ in range(max_rounds):
        bad = (neg == target[:, None]) | (neg[:, :, None] == seq[:, None, :]).any(-1)
        if not bad.any():
            return neg
        neg[bad] = torch.randint(0, n_items, (int(bad.sum()),), generator=generator, device=target.device)
    raise RuntimeError("could not sample negatives outside the history; is the catalogue smaller than L+1?")


def bce_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Official form: BCEWithLogits over the concatenation [pos; neg] (mean over all logits)."""
    logits = torch.cat([pos.reshape(-1), neg.reshape(-1)])
    labels = torch.cat([torch.ones_like(pos.reshape(-1)), torch.zeros_like(neg.reshape(-1))])
    return F.binary_cross_entropy_with_logits(logits, labels)


def ce_loss(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(scores, target)


def dros_propensity(target_counts: torch.Tensor, power: float = 0.05) -> torch.Tensor:
    """ps_j = ((cnt_j + 1) / Σ(cnt + 1)) ** power over training-target counts (DROS / official code)."""
    c = target_counts.double() + 1.0
    return (c / c.sum()) ** power


def dros_term(scores: torch.Tensor, target: torch.Tensor, ps: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Per-row DROS loss: log( Σ_j e^{ps_j ŷ_j²/β} − e^{ps_t ŷ_t²/β} + e^{ps_t (ŷ_t−1)²/β} ).

    Computed as a logsumexp over the row with the target's term swapped for its shifted version: mathematically
    the same sum (the official code adds 1e-24 and uses float64 exp, which overflows for large scores), but stable.
    """
    ps = ps.to(scores.dtype)
    a = ps[None, :] * scores.pow(2) / beta  # [B, N]
    yt = scores.gather(1, target[:, None])
    bt = ps[target][:, None] * (yt - 1.0).pow(2) / beta
    a = a.scatter(1, target[:, None], bt)
    return torch.logsumexp(a, dim=1)

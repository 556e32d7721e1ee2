"""Student losses: sampled BCE (paper Eq. 3), sampled softmax, the DROS robust term (Yang et al., 2023), full
softmax CE.

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


def sampled_softmax_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of the target against its sampled negatives: mean_b −log(e^{pos_b} / (e^{pos_b} +
    Σ_j e^{neg_bj})), pos [B], neg [B, n].

    The sampled-softmax logQ correction subtracts log Q(j) from each logit; ``sample_negatives`` draws uniformly
    (from the items outside the row's history and target), so log Q(j) is the same constant for every logit of a
    row and cancels in the softmax — no correction term is needed. A non-uniform sampler would need one.
    """
    logits = torch.cat([pos.reshape(-1, 1), neg.reshape(pos.numel(), -1)], dim=1)
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def ce_loss(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(scores, target)


def dros_propensity(target_counts: torch.Tensor, power: float = 0.05) -> torch.Tensor:
    """ps_j = ((cnt_j + 1) / Σ(cnt + 1)) ** power over training-target counts (DROS / official code)."""
    c = target_counts.double() + 1.0
    return (c / c.sum()) ** power


def dros_term(scores: torch.Tensor, target: torch.Tensor, ps: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Per-row DROS loss: log( Σ_j e^{ps_j ŷ_j²/β} − e^{ps_t ŷ_t²/β} + e^{ps_t (ŷ_t−1)²/β} ).

    The sum with the target's term swapped for its shifted version, computed stably (the official code adds 1e-24
    and uses float64 exp, which overflows for large scores). See :func:`dros_lse` for how.
    """
    return dros_lse(scores, target, ps, beta)[0]


def dros_lse(scores: torch.Tensor, target: torch.Tensor, ps: torch.Tensor,
             beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Both row sums of the DROS family in one pass: (with the target's term swapped, plain) — each [B].

    A hand-written autograd function: a_j = ps_j ŷ_j²/β, m = max_j a_j, p_j = e^{a_j − m} with the target's entry
    set aside, Z = Σ_{j≠t} p_j, then lse_swapped = logaddexp(m + log Z, b_t) and lse_plain = logaddexp(m + log Z,
    a_t) — no cancellation, no overflow. Forward and backward take a few in-place passes over the [B, N] scores
    (plain autograd makes ~20, most of a DROS step's time), and the student's DROS loss and the official
    distillation's per-candidate DROS terms (``distill.ranking``) share one call through ``StepContext.dros``.
    :func:`dros_term_reference` is the plain-autograd form the tests compare with.
    """
    pob = (ps.to(scores.dtype) / beta).to(scores.device)
    return _DROS.apply(scores, target, pob)


class _DROS(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, target: torch.Tensor, pob: torch.Tensor):
        t = target[:, None]
        st = scores.gather(1, t)  # [B, 1]
        pt = pob[target][:, None]
        a_t = pt * st.square()
        b_t = pt * (st - 1.0).square()
        p = scores.square().mul_(pob)  # [B, N] a_j
        p.scatter_(1, t, -torch.inf)  # the target's term is handled apart
        m = p.amax(dim=1, keepdim=True)
        p.sub_(m).exp_()
        base = m + p.sum(dim=1, keepdim=True).log()  # log Σ_{j≠t} e^{a_j} (−inf if the row has only the target)
        lse_sw = torch.logaddexp(base, b_t)
        lse_un = torch.logaddexp(base, a_t)
        ctx.save_for_backward(scores, target, pob, p, m, lse_sw, lse_un, a_t, b_t)
        return lse_sw.squeeze(1), lse_un.squeeze(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_sw: torch.Tensor | None, g_un: torch.Tensor | None):
        scores, target, pob, p, m, lse_sw, lse_un, a_t, b_t = ctx.saved_tensors
        zero = torch.zeros_like(lse_sw)
        g_sw = zero if g_sw is None else g_sw[:, None]
        g_un = zero if g_un is None else g_un[:, None]
        # d lse / d a_j = e^{a_j − lse} = p_j e^{m − lse}; d a_j / d ŷ_j = 2 ps_j ŷ_j / β
        c = g_sw * (m - lse_sw).exp() + g_un * (m - lse_un).exp()  # [B, 1]
        grad = (p * scores).mul_(pob).mul_(2.0 * c)
        t = target[:, None]
        st, pt = scores.gather(1, t), pob[target][:, None]
        gt = (g_sw * (b_t - lse_sw).exp() * (st - 1.0) + g_un * (a_t - lse_un).exp() * st) * (2.0 * pt)
        grad.scatter_(1, t, gt)
        return grad, None, None


def dros_term_reference(scores: torch.Tensor, target: torch.Tensor, ps: torch.Tensor,
                        beta: float = 1.0) -> torch.Tensor:
    """:func:`dros_term` through plain autograd (the tests compare values and gradients)."""
    ps = ps.to(scores.dtype)
    a = ps[None, :] * scores.pow(2) / beta  # [B, N]
    yt = scores.gather(1, target[:, None])
    bt = ps[target][:, None] * (yt - 1.0).pow(2) / beta
    a = a.scatter(1, target[:, None], bt)
    return torch.logsumexp(a, dim=1)

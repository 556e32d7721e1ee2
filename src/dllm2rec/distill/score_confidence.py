"""DLLM2Rec with confidence taken from the teacher's *scores* (beyond the paper, issue 14).

The shipped llm-emb teachers store d = −log p_teacher(item | history) per candidate, so the teacher's own
probabilities are available, not only its ranks. DLLM2Rec's default confidence (``confidence_norm: minmax``) rescales
each row's distances to [0, 1] first, which throws away how *peaked* the teacher is. ``dllm2rec-score``
(all of ``dllm2rec``'s parameters, plus the ones below) uses the scores directly:

    s_bk = softmax_k(−d_bk / T)                                 T = ``score_temperature``
    replace:  w_bk = norm(γp·w^p_k + γc·s_bk + γo·w^o_bk)       (Eq. 10 with s as w^c; equal to ``dllm2rec`` with
                                                                 confidence_norm=softmax, confidence_temperature=T)
    product:  u_bk = w^p_k·s_bk / Σ_k' w^p_k'·s_bk'             (rank *and* score: a candidate needs both)
              w_bk = norm((γp+γc)·u_bk + γo·w^o_bk)
    row_mass: w_bk ← w_bk · clip(m_b / mean_r m_r, 0, mass_max),  m_b = Σ_k exp(−d_bk)   (the teacher's probability
              on its own top-K: rows where it is sure weigh more; mean over covered training rows, so λ keeps its
              meaning). Only meaningful when d is a negative log-probability (llm-emb); BIGRec's L2 distances are not.

``norm`` = divide by the row sum (official ``row_normalise``).
"""
from __future__ import annotations

from typing import Literal, get_args

import torch
from pydantic import Field

from dllm2rec.distill import weights
from dllm2rec.distill.base import StepContext
from dllm2rec.distill.strategies import DLLM2RecParams, DLLM2RecStrategy
from dllm2rec.registry import register_strategy

Combine = Literal["replace", "product"]
COMBINES = get_args(Combine)


class ScoreParams(DLLM2RecParams):
    score_temperature: float = Field(1.0, gt=0.0, allow_inf_nan=False, description="T of softmax(−d/T) over the K "
                                     "candidates")
    score_combine: Combine = Field("product", description="replace | product (module doc)")
    row_mass: bool = Field(True, description="scale each row by its teacher top-K probability mass (relative to the "
                           "mean)")
    mass_max: float = Field(3.0, gt=0.0, allow_inf_nan=False, description="clip of that scale")


def score_confidence(dist: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[B, K] softmax(−d/T) over the candidates."""
    if temperature <= 0:
        raise ValueError(f"score temperature must be > 0, got {temperature}")
    return torch.softmax(-dist / temperature, dim=-1)


def row_mass_scale(dist: torch.Tensor, covered: torch.Tensor, mass_max: float = 3.0) -> torch.Tensor:
    """[R] clip(m_r / mean m, 0, mass_max) with m_r = Σ_k exp(−d_rk), the mean over covered rows (1 elsewhere).

    Computed in log space (logsumexp) so large distances do not underflow to 0/0.
    """
    out = torch.ones(dist.shape[0], dtype=torch.float32)
    if not bool(covered.any()):
        return out
    lm = torch.logsumexp(-dist[covered].to(torch.float64), dim=1)                 # log m_r
    log_mean = torch.logsumexp(lm, dim=0) - torch.log(torch.tensor(float(lm.numel()), dtype=torch.float64))
    out[covered] = torch.exp(lm - log_mean).clamp(0.0, mass_max).to(torch.float32)
    return out


def score_importance(wp, s, wo, gamma_p: float, gamma_c: float, gamma_o: float, combine: str,
                     row_normalise: bool = True) -> torch.Tensor:
    """The ``replace`` / ``product`` weights of the module doc ([B, K]; ``wp``/``wo`` may be None = ablated)."""
    shape = tuple(s.shape)
    if combine == "replace":
        return weights.combine(wp, s, wo, gamma_p, gamma_c, gamma_o, row_normalise=row_normalise, shape=shape)
    if combine == "product":
        u = s * wp[None, :] if wp is not None else s
        u = u / u.sum(dim=-1, keepdim=True).clamp_min(1e-30)
        return weights.combine(None, u, wo, 0.0, gamma_p + gamma_c, gamma_o, row_normalise=row_normalise,
                               shape=shape)
    raise ValueError(f"unknown score_combine '{combine}'; choose one of {', '.join(COMBINES)}")


@register_strategy("dllm2rec-score")
class ScoreConfidenceStrategy(DLLM2RecStrategy):
    params_cls = ScoreParams

    def __init__(self, params=None, dataset=None, teacher=None):
        super().__init__(params, dataset, teacher)
        p = self.p
        if self.rows is not None and p["row_mass"]:
            self.rows.extra["mass"] = row_mass_scale(self.rows.dist, self.rows.covered, float(p["mass_max"]))

    def importance_weights(self, ctx: StepContext, cand, dist) -> torch.Tensor:
        p = self.p
        B, K = cand.shape
        top = ctx.student_topk(K) if p["use_consistency"] else None  # before no_grad (dense: caches full_scores)
        with torch.no_grad():
            wp = weights.position_weights(K, p["beta"], device=cand.device) if p["use_position"] else None
            wo = weights.consistency_weights(cand, top) if p["use_consistency"] else None
            if p["use_confidence"]:
                s = score_confidence(dist, float(p["score_temperature"]))
                w = score_importance(wp, s, wo, p["gamma_p"], p["gamma_c"], p["gamma_o"], p["score_combine"],
                                     p["row_normalise"])
            else:
                w = weights.combine(wp, None, wo, p["gamma_p"], p["gamma_c"], p["gamma_o"],
                                    row_normalise=p["row_normalise"], shape=(B, K))
            mass = self.rows.extra.get("mass")
            if mass is not None:
                w = w * mass[ctx.row_id][:, None]
            return w.to(ctx.state.dtype)

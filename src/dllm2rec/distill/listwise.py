"""Listwise (softmax) knowledge distillation over the teacher's scored top-K (beyond the paper, issue 14).

DLLM2Rec's L_d treats every teacher candidate as an independent positive (−log σ(ŷ)) with a hand-made weight.
Listwise KD (Hinton et al. 2015, applied to the teacher's candidate list) keeps the teacher's *relative* belief
instead: match the student's softmax over the K candidates to the teacher's, at a temperature τ.

    q_bk = softmax_k(−d_bk / τ)                 teacher, over its own K candidates (d = ``topk_dist``)
    p_bk = softmax_k(ŷ_bk / τ)                  student, over the same K  (+ the step's sampled negatives with
                                                ``use_neg``: they enter the normaliser with q = 0, so they are pushed
                                                down relative to the teacher's list)
    L_list = λ · τ² · (1/B) Σ_b c_b · g_b · KL(q_b ‖ p_b)      c_b: row covered, g_b: row gate (``distill/gating.py``)

The τ² keeps the gradient's size independent of τ (Hinton et al.). For the llm-emb teacher d = −log p_teacher(item |
history), so q at τ = 1 is exactly the teacher's probability renormalised over its top-K; for BIGRec d is an L2
grounding distance and ``dist_norm`` (``zscore``/``minmax`` per row, as DLLM2Rec's confidence) puts it on a usable
scale first. Collaborative embedding distillation (e = b + w·g(z)) is DLLM2Rec's own (``distill/embedding.py``), on
by default with the same ``ed_weight`` 0.3 so that a comparison with ``dllm2rec`` changes the ranking term only.
"""
from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from pydantic import Field

from dllm2rec.distill import gating, weights
from dllm2rec.distill.base import StepContext, Strategy
from dllm2rec.distill.baselines import TeacherRows
from dllm2rec.distill.embedding import EmbeddingParams, attach_from_params
from dllm2rec.errors import ConfigError
from dllm2rec.registry import register_strategy

DistNorm = Literal["raw", "zscore", "minmax"]
DIST_NORMS = get_args(DistNorm)


class ListwiseParams(gating.GateParams, EmbeddingParams):
    lam: float = Field(0.5, ge=0.0, allow_inf_nan=False, description="λ of L_list")
    tau: float = Field(2.0, gt=0.0, allow_inf_nan=False, description="softmax temperature τ (teacher and student); "
                       "the loss is scaled by τ²")
    K: int = Field(10, ge=1, description="teacher candidates per row (<= the artifacts' top_n; ML-100K/LastFM ship "
                   "20)")
    use_neg: bool = Field(False, description="also put the step's sampled negatives into the student's softmax "
                          "(teacher mass 0)")
    dist_norm: DistNorm = Field("raw", description="raw (llm-emb: d = −log p) | zscore | minmax (per row; BIGRec's "
                                "L2 distances)")
    # + the per-row gate (gating.GateParams) and collaborative embedding distillation (embedding.EmbeddingParams)


def teacher_logits(dist: torch.Tensor, norm: str = "raw") -> torch.Tensor:
    """[B, K] teacher logits −d (after the per-row rescaling ``norm``)."""
    if norm not in DIST_NORMS:
        raise ValueError(f"unknown dist_norm '{norm}'; choose one of {', '.join(DIST_NORMS)}")
    return -weights.normalise_distances(dist, norm, dim=-1)


def listwise_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0,
                covered: torch.Tensor | None = None, row_weight: torch.Tensor | None = None) -> torch.Tensor:
    """τ² · (1/B) Σ_b c_b g_b KL(softmax(teacher_b/τ) ‖ softmax(student_b/τ)).

    ``student`` [B, K + n] logits whose first K columns are the teacher's candidates (the n extra columns get teacher
    probability 0); ``teacher`` [B, K] logits. Rows with ``covered`` False add 0; the sum is divided by the full B
    (as every other distillation term), so a covered row weighs the same at any coverage.
    """
    if tau <= 0:
        raise ValueError(f"listwise temperature tau must be > 0, got {tau}")
    B, K = teacher.shape
    if student.shape[0] != B or student.shape[1] < K:
        raise ValueError(f"student logits {tuple(student.shape)} do not cover the teacher's {tuple(teacher.shape)}")
    log_q = F.log_softmax(teacher.detach().to(student.dtype) / tau, dim=1)
    log_p = F.log_softmax(student / tau, dim=1)[:, :K]
    kl = (log_q.exp() * (log_q - log_p)).sum(dim=1)  # [B]; extra columns have q = 0 and add nothing here
    if row_weight is not None:
        kl = kl * row_weight.to(kl.dtype)
    if covered is not None:
        kl = torch.where(covered, kl, torch.zeros_like(kl))  # uncovered rows hold placeholder ids: exactly 0
    return (tau * tau) * kl.sum() / B


@register_strategy("listwise")
class ListwiseStrategy(Strategy):
    needs_teacher = True
    params_cls = ListwiseParams

    def __init__(self, params=None, dataset=None, teacher=None):
        super().__init__(params, dataset, teacher)  # validates distill.params -> self.p
        name, p = self.registry_name, self.p
        if teacher is None:
            raise ConfigError(f"strategy '{name}' needs teacher artifacts (distill.teacher)")
        self.rows = TeacherRows(teacher, int(p["K"]), dataset)
        g = gating.row_gates(p, teacher, dataset, name)
        if g is not None:
            self.rows.extra["gate"] = g

    def attach(self, model) -> None:
        attach_from_params(model, self.teacher.item_emb, self.p)

    def loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        p = self.p
        if float(p["lam"]) == 0:
            return {}
        cand, dist, cov = self.rows.rows(ctx.row_id)
        ids = torch.cat([cand, ctx.neg], dim=1) if p["use_neg"] else cand
        s = ctx.model.score_items(ctx.state, ids)  # a gather of output rows, no [B, N] scores needed
        gate = self.rows.extra.get("gate")
        g = gate[ctx.row_id] if gate is not None else None
        kl = listwise_kl(s, teacher_logits(dist, p["dist_norm"]), float(p["tau"]), cov, g)
        return {"listwise": float(p["lam"]) * kl}

"""Registered distillation strategies. ``distill.strategy`` picks one; ``distill.params`` overrides its defaults.

=============  =================================================================================================
name           what
=============  =================================================================================================
none           the plain student (no-KD)                                                    (distill/base.py)
dllm2rec       importance-aware ranking distillation + collaborative embedding distillation  (DLLM2RecParams)
dllm2rec-paper the same with ``variant: paper`` (Eq. 5, positives only)
rank-only      dllm2rec with ``use_embedding: false`` ("w/o all_e")
embed-only     dllm2rec with ``use_ranking: false``   ("w/o L_d")
rd             Ranking Distillation, Tang & Wang 2018                                      (baselines.RDParams)
hint           FitNets-style embedding regression                                          (baselines.HintParams)
=============  =================================================================================================

Ablations are params of ``dllm2rec`` (no code edits): ``use_position/use_confidence/use_consistency: false``
(w/o one weight), ``use_ranking: false``, ``use_embedding: false``, ``offset: false`` (w/o offset: e = g(z)).
The random-teacher control is a *teacher*, not a strategy: ``distill.teacher: random`` (or ``random:4096``).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from dllm2rec.distill import ranking, weights
from dllm2rec.distill.base import StepContext, Strategy
from dllm2rec.distill.baselines import TeacherRows
from dllm2rec.distill.embedding import EmbeddingParams, attach_from_params
from dllm2rec.errors import ConfigError
from dllm2rec.losses import dros_propensity
from dllm2rec.registry import register_strategy


# The one place the DLLM2Rec defaults live (docs/distillation.md explains each choice).
class DLLM2RecParams(EmbeddingParams):
    """DLLM2Rec: importance-aware ranking distillation L_d (+ the collaborative embedding terms of EmbeddingParams)."""

    use_ranking: bool = Field(True, description="the ranking distillation term L_d ('w/o L_d' when false)")
    variant: Literal["official", "paper"] = Field("official", description="official: the script's loss term by "
                                                  "term | paper: Eq. 5")
    lam: float = Field(0.7, ge=0.0, allow_inf_nan=False, description="λ_d; official README command (code default "
                       "0.8; paper tunes 0.1..1.0)")
    lam_schedule: Literal["constant", "warmup", "decay"] = Field("constant", description="beyond the paper: "
                                                                 "constant | warmup (λ·min(1, e/E)) | decay "
                                                                 "(λ·max(0, 1-(e-1)/E))")
    lam_epochs: int = Field(10, ge=1, description="E of the schedule (epochs)")
    K: int = Field(10, ge=1, description="teacher candidates per row (candidate_topk; <= the artifacts' top_n)")
    beta: float = Field(1.0, gt=0.0, allow_inf_nan=False, description="position temperature β of exp(-r/β) "
                        "(official: hard-coded 1)")
    gamma_p: float = Field(0.3, ge=0.0, allow_inf_nan=False, description="weight of the position weight")
    gamma_c: float = Field(0.5, ge=0.0, allow_inf_nan=False, description="weight of the confidence weight")
    gamma_o: float = Field(0.1, ge=0.0, allow_inf_nan=False, description="weight of the consistency weight")
    use_position: bool = True
    use_confidence: bool = True
    use_consistency: bool = True
    confidence_source: weights.ConfidenceSource = Field("candidate", description="candidate: per-candidate "
                                                        "distances (official) | target: d(gen, true item) (paper)")
    confidence_norm: weights.ConfidenceNorm = Field("minmax", description="raw (official exp(-d), underflows for "
                                                    "LLM L2 distances) | softmax | minmax | zscore")
    confidence_temperature: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    row_normalise: bool = Field(True, description="official: final weights sum to 1 per row")
    neg_term: bool = Field(False, description="paper variant only: add the correct −log(1−σ(ŷ_neg)) term")
    dros_alpha: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="official variant only: α of the DROS "
                              "term inside L_d (default: the student loss's loss.dros_alpha, as the official script)")
    dros_beta: float = Field(1.0, allow_inf_nan=False)
    dros_power: float = Field(0.05, allow_inf_nan=False)


#: The ONE ablation table: each switch of DLLM2RecParams that the paper ablates -> the label suffix of the run with
#: it off. The experiment runner's dllm2rec-wo-* methods and the report's labels are both derived from it.
ABLATION_SWITCHES: dict[str, str] = {
    "use_position": "wo-position",
    "use_confidence": "wo-confidence",
    "use_consistency": "wo-consistency",
    "use_ranking": "wo-ranking",
    "use_embedding": "wo-embedding",
    "offset": "wo-offset",
}


@register_strategy("dllm2rec")
class DLLM2RecStrategy(Strategy):
    needs_teacher = True
    params_cls = DLLM2RecParams

    def __init__(self, params=None, dataset=None, teacher=None):
        super().__init__(params, dataset, teacher)  # validates distill.params against params_cls -> self.p
        name, p = self.registry_name, self.p
        if teacher is None:
            raise ConfigError(f"strategy '{name}' needs teacher artifacts (distill.teacher)")
        self.K = int(p["K"])
        self.rows = TeacherRows(teacher, self.K, dataset) if p["use_ranking"] else None
        self.ps = None
        self._build_ps()
        if self.rows is not None and p["use_confidence"] and p["confidence_source"] == "target":
            if teacher.target_dist is None:
                raise ConfigError(f"{name}: confidence_source=target needs the teacher's target_dist (the distance "
                                  "between its generation and the true item); these artifacts have none — use "
                                  "confidence_source=candidate")
            self.rows.extra["tconf"] = weights.target_confidence(
                torch.as_tensor(teacher.target_dist), p["confidence_norm"], p["confidence_temperature"])

    # ------------------------------------------------------------------ setup
    def _build_ps(self) -> None:
        p = self.p
        self.ps = None
        if p["use_ranking"] and p["variant"] == "official" and p["dros_alpha"]:
            if self.dataset is None:  # the caller sets self.ps (propensities) itself
                return
            self.ps = dros_propensity(torch.from_numpy(self.dataset.item_counts("train")), p["dros_power"])

    def configure(self, run_cfg) -> None:
        """Optional hook for the trainer: inherit the student loss's DROS α/β/power (``loss.dros_*``) for the DROS
        term inside L_d, as the official script does, unless ``distill.params`` sets ``dros_alpha`` itself."""
        if "dros_alpha" in self.params:
            return
        loss = getattr(run_cfg, "loss", None)
        if loss is not None and getattr(loss, "dros_alpha", 0):
            self.p.update(dros_alpha=float(loss.dros_alpha), dros_beta=float(loss.dros_beta),
                          dros_power=float(loss.dros_power))
            self._build_ps()

    def attach(self, model) -> None:
        attach_from_params(model, self.teacher.item_emb, self.p)

    # ------------------------------------------------------------------ per step
    def importance_weights(self, ctx: StepContext, cand, dist) -> torch.Tensor:
        p = self.p
        B, K = cand.shape
        # before no_grad: a dense run's first use of ctx.full_scores must have grad on (cached for the whole step)
        top = ctx.student_topk(K) if p["use_consistency"] else None
        with torch.no_grad():
            wp = weights.position_weights(K, p["beta"], device=cand.device) if p["use_position"] else None
            wc = None
            if p["use_confidence"]:
                if p["confidence_source"] == "target":
                    c = self.rows.extra["tconf"][ctx.row_id]
                    wc = (c / K)[:, None].expand(B, K)
                else:
                    wc = weights.confidence_weights(dist, p["confidence_norm"], p["confidence_temperature"])
            wo = None
            if p["use_consistency"]:
                wo = weights.consistency_weights(cand, top)
            return weights.combine(wp, wc, wo, p["gamma_p"], p["gamma_c"], p["gamma_o"],
                                   row_normalise=p["row_normalise"], shape=(B, K)).to(ctx.state.dtype)

    def lam_at(self, epoch: int) -> float:
        """λ for an epoch (1-based). Why a schedule: a decaying λ lets the student follow the teacher early and its
        own data late (the teacher's knowledge is most useful before the student has learnt the easy patterns)."""
        p, E = self.p, max(1, int(self.p["lam_epochs"]))
        if p["lam_schedule"] == "constant":
            return float(p["lam"])
        if p["lam_schedule"] == "warmup":
            return float(p["lam"]) * min(1.0, max(epoch, 1) / E)
        if p["lam_schedule"] == "decay":
            return float(p["lam"]) * max(0.0, 1.0 - (max(epoch, 1) - 1) / E)
        raise ConfigError(f"{self.registry_name}: lam_schedule must be constant | warmup | decay, "
                          f"got {p['lam_schedule']!r}")

    def loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        p = dict(self.p)
        p["lam"] = self.lam_at(ctx.epoch)
        if self.rows is None or p["lam"] == 0:
            return {}
        cand, dist, cov = self.rows.rows(ctx.row_id)
        official = p["variant"] == "official"
        use_dro = official and bool(p["dros_alpha"])
        if use_dro and self.ps is None:
            raise ConfigError(f"{self.registry_name}: dros_alpha > 0 needs the dataset's item frequencies")
        w = self.importance_weights(ctx, cand, dist)
        # candidate (+ negative) scores by one gather of output rows, not from the [B, N] scores: a gather on
        # those would zero-fill a [B, N] gradient in the backward pass
        K = cand.shape[1]
        with_neg = official or bool(p["neg_term"])
        s = ctx.model.score_items(ctx.state, torch.cat([cand, ctx.neg], dim=1) if with_neg else cand)
        pos, neg = s[:, :K], (s[:, K:] if with_neg else None)
        out: dict[str, torch.Tensor] = {}
        if official:
            out["rd"] = p["lam"] * ranking.official_ranking_loss(pos, neg, w, cov)
            if use_dro:
                if self.ps.device != pos.device:
                    self.ps = self.ps.to(pos.device)
                dro = ranking.dro_candidate_terms(ctx.full_scores, cand, self.ps, p["dros_beta"], cand_scores=pos,
                                                  row_lse=ctx.dros(self.ps, p["dros_beta"])[1])
                out["rd_dro"] = p["lam"] * p["dros_alpha"] * ranking.official_dro_part(w, dro, cov)
        else:
            out["rd"] = p["lam"] * ranking.paper_ranking_loss(pos, w, cov, neg)
        return out


@register_strategy("dllm2rec-paper")
class DLLM2RecPaperStrategy(DLLM2RecStrategy):
    overrides = {"variant": "paper"}


@register_strategy("rank-only")
class RankOnlyStrategy(DLLM2RecStrategy):
    overrides = {"use_embedding": False}


@register_strategy("embed-only")
class EmbedOnlyStrategy(DLLM2RecStrategy):
    overrides = {"use_ranking": False}

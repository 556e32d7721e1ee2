"""Distillation baselines under the same ``Strategy`` interface, plus the shared teacher-row helper.

- **RD** — Tang & Wang, "Ranking Distillation", KDD 2018. The teacher's top-K items of each training row are extra
  positives, L^D = −Σ_r w_r log σ(ŷ_{π_r}), added as λ·L^D to the student's own loss (whose sampled negatives are the
  "negatives" of RD's L^R; RD's distillation term itself has none). Weights: ``position`` w^a_r ∝ exp(−r/τ);
  ``dynamic`` w^b_r = tanh(max(μ·(r̂_r − r), 0)) with r̂_r the student's current rank of the teacher's r-th item
  (RD estimates r̂ by sampling, ε·r̂; we have all scores, so r̂ is exact and ε = 1); ``hybrid`` (RD's best)
  w ∝ w^a·w^b, using w^a alone for the first ``warmup_epochs`` epochs as the paper does before switching.
- **Hint** — FitNets-style (Romero et al., ICLR 2015) embedding regression: a learned regressor maps the student's item
  embeddings b_i (d) to the teacher's z_i (D, standardised per dimension once) — or the teacher's to the student's
  (``direction="teacher"``) — and λ·MSE over the distinct items of the batch (history and target) is added.
  The regressor is not part of the student (``extra_parameters``): serving needs nothing from the teacher.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from dllm2rec.distill.base import StepContext, Strategy, StrategyParams
from dllm2rec.distill.weights import position_weights
from dllm2rec.errors import ConfigError
from dllm2rec.registry import register_strategy


class TeacherRows:
    """The teacher's per-row arrays as torch tensors (first K columns), moved to the step's device on first use."""

    def __init__(self, teacher, K: int, dataset=None):
        if teacher is None:
            raise ConfigError("this strategy needs teacher artifacts (distill.teacher)")
        if K < 1 or K > teacher.top_n:
            raise ConfigError(f"K={K} but the teacher lists only {teacher.top_n} items per row (1 <= K <= top_n)")
        if dataset is not None:
            tr = dataset["train"]
            if len(tr) and (int(tr.row_id.max()) >= teacher.n_rows or int(tr.row_id.min()) < 0):
                raise ConfigError(f"training row ids go up to {int(tr.row_id.max())} but the teacher has "
                                  f"{teacher.n_rows} rows")
        cov = torch.as_tensor(np.asarray(teacher.covered, dtype=bool))
        ids = torch.as_tensor(np.asarray(teacher.topk_ids[:, :K], dtype=np.int64))
        dist = torch.as_tensor(np.asarray(teacher.topk_dist[:, :K], dtype=np.float32))
        self.K = K
        self.covered = cov
        self.ids = torch.where(cov[:, None], ids, torch.zeros_like(ids))  # uncovered rows: id 0, masked later
        self.dist = torch.where(cov[:, None], torch.nan_to_num(dist), torch.zeros_like(dist))
        td = teacher.target_dist
        self.target_dist = None if td is None else torch.as_tensor(np.asarray(td, dtype=np.float32))
        self.extra: dict[str, torch.Tensor] = {}
        self._device: torch.device | None = None

    def to(self, device) -> "TeacherRows":
        device = torch.device(device)
        if self._device != device:
            self.covered, self.ids, self.dist = (t.to(device) for t in (self.covered, self.ids, self.dist))
            self.extra = {k: v.to(device) for k, v in self.extra.items()}
            self._device = device
        return self

    def rows(self, row_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(candidates [B, K], distances [B, K], covered [B]) of the batch rows."""
        self.to(row_id.device)
        return self.ids[row_id], self.dist[row_id], self.covered[row_id]


# ---------------------------------------------------------------------------------------------------- RD
class RDParams(StrategyParams):
    lam: float = Field(0.5, ge=0.0, allow_inf_nan=False, description="weight of L^D added to the student loss")
    K: int = Field(10, ge=1, description="teacher items per row used as positives")
    tau: float = Field(1.0, gt=0.0, allow_inf_nan=False, description="position temperature: w^a_r ∝ exp(-r/tau)")
    weighting: Literal["position", "dynamic", "hybrid"] = "hybrid"
    mu: float = Field(0.1, allow_inf_nan=False, description="slope of the dynamic weight tanh(mu·(r̂ − r))")
    warmup_epochs: int = Field(1, ge=0, description="hybrid: epochs with the position weight alone")


def rd_dynamic_weights(full_scores: torch.Tensor, cand: torch.Tensor, mu: float) -> torch.Tensor:
    """[B, K] tanh(max(μ·(r̂ − r), 0)); r̂ = 1 + number of items the student scores above the candidate."""
    with torch.no_grad():
        sc = full_scores.gather(1, cand)  # [B, K]
        # exact student rank of each candidate: one comparison pass over [B, N] per candidate column
        rank = torch.stack([(full_scores > sc[:, k:k + 1]).sum(1) for k in range(cand.shape[1])], 1) + 1
        r = torch.arange(1, cand.shape[1] + 1, device=cand.device)
        return torch.tanh((mu * (rank - r[None, :]).to(full_scores.dtype)).clamp_min(0))


@register_strategy("rd")
class RDStrategy(Strategy):
    needs_teacher = True
    params_cls = RDParams

    def __init__(self, params=None, dataset=None, teacher=None):
        super().__init__(params, dataset, teacher)
        self.rows = TeacherRows(teacher, int(self.p["K"]), dataset)

    def loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        p = self.p
        cand, _, cov = self.rows.rows(ctx.row_id)
        K = cand.shape[1]
        wa = position_weights(K, p["tau"], device=cand.device)[None, :].expand(cand.shape[0], K)
        mode = p["weighting"]
        if mode == "hybrid" and ctx.epoch <= p["warmup_epochs"]:
            mode = "position"
        if mode == "position":
            w = wa
            pos = ctx.model.score_items(ctx.state, cand)
        else:
            full = ctx.full_scores
            wb = rd_dynamic_weights(full, cand, p["mu"])
            w = wb if mode == "dynamic" else wa * wb
            w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
            pos = full.gather(1, cand)
        ell = nn.functional.softplus(-pos)  # −log σ(ŷ)
        ld = (w * ell * cov.to(ell.dtype)[:, None]).sum() / cand.shape[0]
        return {"rd": p["lam"] * ld}


# ---------------------------------------------------------------------------------------------------- Hint
class HintParams(StrategyParams):
    lam: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="weight of the MSE term")
    direction: Literal["student", "teacher"] = Field("student", description="student: h(b_i) ≈ z_i (FitNets); "
                                                     "teacher: g(z_i) ≈ b_i")
    standardise_teacher: bool = Field(True, description="z-score the teacher embeddings per dimension once (raw "
                                      "LLM states are large)")


@register_strategy("hint")
class HintStrategy(Strategy):
    needs_teacher = True
    params_cls = HintParams

    def __init__(self, params=None, dataset=None, teacher=None):
        super().__init__(params, dataset, teacher)
        if teacher is None:
            raise ConfigError("hint needs teacher artifacts (distill.teacher)")
        z = torch.as_tensor(np.asarray(teacher.item_emb, dtype=np.float32))
        if self.p["standardise_teacher"]:
            z = (z - z.mean(0)) / z.std(0).clamp_min(1e-6)
        self.z = z
        self.reg: nn.Module | None = None

    def attach(self, model) -> None:
        if self.z.shape[0] != model.n_items:
            raise ConfigError(f"teacher has {self.z.shape[0]} item embeddings but the student has {model.n_items}")
        d, D = model.dim, self.z.shape[1]
        self.reg = nn.Linear(d, D) if self.p["direction"] == "student" else nn.Linear(D, d)
        self.pad = model.n_items

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.reg.parameters()) if self.reg is not None else []

    def loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        dev = ctx.state.device
        if self.z.device != dev:
            self.z = self.z.to(dev)
            self.reg.to(dev)
        ids = torch.unique(torch.cat([ctx.seq.reshape(-1), ctx.target]))
        ids = ids[ids != self.pad]
        b = ctx.model.item_emb(ids)
        z = self.z.index_select(0, ids)
        if self.p["direction"] == "student":
            mse = (self.reg(b) - z).pow(2).mean()
        else:
            mse = (self.reg(z) - b).pow(2).mean()
        return {"hint": self.p["lam"] * mse}

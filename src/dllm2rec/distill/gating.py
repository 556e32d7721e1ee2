"""Per-row gating of the distillation term by the teacher's reliability on that row (beyond the paper, issue 14).

DLLM2Rec weighs candidates *within* a row; every row's ranking term has the same total weight, so a row where the
teacher is wrong pulls the student as hard as one where it is right (LastFM: the distilled SASRec loses most on the
rows the teacher misses, README "Reading it"). A gate g_r ≥ 0 per training row scales the row's whole term:
L = λ · (1/B) Σ_b g_b · L_b. Two gates, both computable at train time without touching validation or test targets:

- ``target``   g_r = 1 if the row's own *training* target is in the teacher's top-``gate_k`` for that row, else
               ``gate_floor``. Uses the training label (which the student's own loss sees anyway), nothing else. On
               ML-100K the shipped teacher scored its training rows 2-fold cross-fitted (manifest
               ``train_row_scoring``), so a hit there is an honest held-out signal; on LastFM the rows are scored
               in-sample and the gate is optimistic.
- ``logistic`` g_r = P̂(hit_r | x_r) / mean P̂, clipped to [0, ``gate_max``]: a logistic model of "the teacher's
               top-``gate_k`` holds the target" on *label-free* features of the row — the teacher's top-1 log-score
               −d_1, its margin d_2 − d_1, the entropy of softmax(−d) over its list, log(1 + history length) and
               log(1 + training count of its top-1 item) — standardised, fitted by Newton/IRLS with a small ridge.
               It is fitted on the training rows because the artifacts hold teacher output for training rows only
               (there is none for validation rows to fit on); hits are again cross-fitted on ML-100K. The target's
               own popularity is left out on purpose: it is label information, and the ``target`` gate already is
               the label-using gate. Mean 1 keeps λ comparable with the ungated strategy.

``dllm2rec-gated`` is DLLM2Rec with the gate on L_d (default ``gate: target``); ``listwise`` takes the same ``gate``
parameters. The embedding term (one offset per *item*) is not gated.
"""
from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
from pydantic import Field

from dllm2rec.distill.base import StepContext, StrategyParams
from dllm2rec.distill.strategies import DLLM2RecParams, DLLM2RecStrategy
from dllm2rec.errors import ConfigError
from dllm2rec.registry import register_strategy

Gate = Literal["none", "target", "logistic"]
GATES = get_args(Gate)


class GateParams(StrategyParams):
    """The per-row teacher-reliability gate (module doc), shared by ``dllm2rec-gated`` and ``listwise``."""

    gate: Gate = Field("none", description="none | target | logistic (module doc)")
    gate_k: int = Field(20, ge=1, description="a row is a teacher hit if its training target is in the teacher's "
                        "top-gate_k")
    gate_floor: float = Field(0.2, ge=0.0, le=1.0, description="target gate: weight of rows the teacher misses "
                              "(hits weigh 1)")
    gate_max: float = Field(3.0, gt=0.0, allow_inf_nan=False, description="logistic gate: clip of P̂ / mean P̂")
    gate_ridge: float = Field(1e-3, ge=0.0, allow_inf_nan=False, description="logistic gate: L2 penalty on the "
                              "(standardised) coefficients")


class GatedParams(DLLM2RecParams, GateParams):
    gate: Gate = Field("target", description="none | target | logistic (module doc)")
FEATURES = ("top1_logit", "margin", "entropy", "log_hist_len", "log_top1_pop")


def _check(p: dict, teacher, dataset, name: str) -> int:
    if dataset is None:
        raise ConfigError(f"{name}: gate={p['gate']} needs the dataset (training targets)")
    return min(int(p["gate_k"]), teacher.top_n)  # ranges: GateParams


def teacher_hits(teacher, dataset, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(row ids [n], hit [n] bool): for each covered training row, is its target in the teacher's top-k?"""
    tr = dataset["train"]
    rid = np.asarray(tr.row_id, dtype=np.int64)
    keep = np.asarray(teacher.covered, dtype=bool)[rid]
    rid = rid[keep]
    tgt = np.asarray(tr.target, dtype=np.int64)[keep]
    hit = (np.asarray(teacher.topk_ids)[rid, :k] == tgt[:, None]).any(axis=1)
    return rid, hit


def target_gates(teacher, dataset, k: int, floor: float) -> np.ndarray:
    """[R] g_r = 1 on teacher hits, ``floor`` on misses, 1 on uncovered rows (their term is masked anyway)."""
    g = np.ones(teacher.n_rows, dtype=np.float32)
    rid, hit = teacher_hits(teacher, dataset, k)
    g[rid] = np.where(hit, 1.0, floor).astype(np.float32)
    return g


def row_features(teacher, dataset, rid: np.ndarray) -> np.ndarray:
    """[n, 5] label-free features (``FEATURES``) of training rows ``rid`` (row ids)."""
    tr = dataset["train"]
    pos = np.empty(int(np.max(tr.row_id)) + 1, dtype=np.int64)
    pos[np.asarray(tr.row_id)] = np.arange(len(tr))
    d = np.asarray(teacher.topk_dist, dtype=np.float64)[rid]
    lg = -d
    lg = lg - lg.max(axis=1, keepdims=True)
    q = np.exp(lg)
    q /= q.sum(axis=1, keepdims=True)
    ent = -(q * np.log(np.clip(q, 1e-300, None))).sum(axis=1)
    margin = d[:, 1] - d[:, 0] if d.shape[1] > 1 else np.zeros(len(rid))
    counts = np.asarray(dataset.item_counts("train"), dtype=np.float64)
    top1 = np.asarray(teacher.topk_ids)[rid, 0]
    hist = np.asarray(tr.len, dtype=np.float64)[pos[rid]]
    return np.stack([-d[:, 0], margin, ent, np.log1p(hist), np.log1p(counts[top1])], axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3, iters: int = 50) -> np.ndarray:
    """Coefficients [1 + F] (intercept first) of an L2-penalised logistic regression, by Newton's method (IRLS).

    Minimises mean log-loss + (ridge/2)·|β_{1:}|²; at the optimum Xᵀ(y − σ(Xβ))/n = ridge·β (intercept unpenalised).
    """
    X = np.concatenate([np.ones((len(x), 1)), x], axis=1)
    n, f = X.shape
    beta = np.zeros(f)
    pen = np.full(f, ridge)
    pen[0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(X @ beta, -30, 30)))
        grad = X.T @ (p - y) / n + pen * beta
        hess = (X * (p * (1 - p))[:, None]).T @ X / n + np.diag(pen + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return beta


def logistic_gates(teacher, dataset, k: int, ridge: float, gmax: float) -> tuple[np.ndarray, dict]:
    """[R] g_r = clip(P̂_r / mean P̂, 0, gmax) and a summary (coefficients, base rate) for the run's log."""
    rid, hit = teacher_hits(teacher, dataset, k)
    g = np.ones(teacher.n_rows, dtype=np.float32)
    if len(rid) == 0 or hit.all() or not hit.any():  # nothing to learn: every row alike
        return g, {"fitted": False}
    x = row_features(teacher, dataset, rid)
    mu, sd = x.mean(axis=0), x.std(axis=0)
    xs = (x - mu) / np.where(sd > 0, sd, 1.0)
    beta = fit_logistic(xs, hit.astype(np.float64), ridge)
    X = np.concatenate([np.ones((len(xs), 1)), xs], axis=1)
    p = 1.0 / (1.0 + np.exp(-np.clip(X @ beta, -30, 30)))
    g[rid] = np.clip(p / p.mean(), 0.0, gmax).astype(np.float32)
    return g, {"fitted": True, "base_rate": float(hit.mean()),
               "coef": dict(zip(("intercept",) + FEATURES, (round(float(b), 4) for b in beta)))}


def row_gates(p: dict, teacher, dataset, name: str) -> torch.Tensor | None:
    """[R] float32 gate per teacher row for ``p['gate']`` (``None`` for ``none``)."""
    if p["gate"] == "none":
        return None
    k = _check(p, teacher, dataset, name)
    if p["gate"] == "target":
        g = target_gates(teacher, dataset, k, float(p["gate_floor"]))
    else:
        g, info = logistic_gates(teacher, dataset, k, float(p["gate_ridge"]), float(p["gate_max"]))
        p["gate_fit"] = info  # recorded in describe() -> results.json
    return torch.as_tensor(g)


@register_strategy("dllm2rec-gated")
class GatedDLLM2RecStrategy(DLLM2RecStrategy):
    """DLLM2Rec whose ranking term is scaled per row by a teacher-reliability gate (module doc)."""

    params_cls = GatedParams

    def __init__(self, params=None, dataset=None, teacher=None):
        super().__init__(params, dataset, teacher)
        if self.rows is not None:
            g = row_gates(self.p, teacher, dataset, self.registry_name)
            if g is not None:
                self.rows.extra["gate"] = g

    def importance_weights(self, ctx: StepContext, cand, dist) -> torch.Tensor:
        w = super().importance_weights(ctx, cand, dist)
        g = self.rows.extra.get("gate")
        return w if g is None else w * g[ctx.row_id].to(w.dtype)[:, None]

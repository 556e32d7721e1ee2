"""The three importance weights of DLLM2Rec's ranking distillation, as pure tensor functions (spec §1.1, §1.2.5).

    w_si = γp·w^p_si + γc·w^c_si + γo·w^o_si          (paper Eq. 10), then row-normalised (official code)

- position   w^p_r = exp(-r/β) / Σ_r' exp(-r'/β), r = 1..K                  (Eq. 6; official: β hard-coded 1)
- confidence w^c   = exp(-norm(d)/T) (+1e-8), row-normalised over the K candidates      (Eq. 7)
  * ``source="candidate"`` (official): d = distance of each candidate (``confidence_train.txt``) -> [B, K]
  * ``source="target"`` (paper): d = d_{s,i*}, the distance between the generation and the true target, one per
    row; normalised over *all* training rows once (``target_confidence``), then spread as c_s / K over the row.
  * ``norm``: ``raw`` (official: exp(-d) + 1e-8 — raw L2 distances of LLM states are ≫ 18, so exp(-d) underflows
    and the weight degenerates to uniform, spec §1.4.4), ``softmax`` (softmax(-d/T): what ``raw`` means, computed
    stably), ``minmax`` (per row to [0, 1] as BIGRec's ``adjust_*.py``, then exp(-d'/T)), ``zscore`` (per row
    (d-mean)/std, then exp(-z/T)).
- consistency w^o = 1[candidate ∈ student top-K] + 1e-8 (official: not normalised)                       (Eq. 8)

Nothing here knows about models or teachers; every function is checked by hand in ``tests/unit``.
"""
from __future__ import annotations

from typing import Literal, get_args

import torch

EPS = 1e-8  # the official code's additive epsilon
ConfidenceNorm = Literal["raw", "softmax", "minmax", "zscore"]
ConfidenceSource = Literal["candidate", "target"]
CONFIDENCE_NORMS = get_args(ConfidenceNorm)
CONFIDENCE_SOURCES = get_args(ConfidenceSource)


def position_weights(K: int, beta: float = 1.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """[K] = softmax(-r/β) over ranks r = 1..K (official: exp(-r)/Σ exp(-r), β = 1)."""
    if beta <= 0:
        raise ValueError(f"position temperature beta must be > 0, got {beta}")
    r = torch.arange(1, K + 1, dtype=torch.float64, device=device)
    w = torch.exp(-r / beta)
    return (w / w.sum()).to(dtype)


def normalise_distances(d: torch.Tensor, norm: str = "minmax", dim: int = -1) -> torch.Tensor:
    """Distances rescaled along ``dim`` (``raw``/``softmax``: unchanged)."""
    if norm in ("raw", "softmax"):
        return d
    if norm == "minmax":
        lo = d.amin(dim=dim, keepdim=True)
        hi = d.amax(dim=dim, keepdim=True)
        span = hi - lo
        return torch.where(span > 0, (d - lo) / span.clamp_min(1e-12), torch.zeros_like(d))
    if norm == "zscore":
        mu = d.mean(dim=dim, keepdim=True)
        sd = d.std(dim=dim, keepdim=True, unbiased=False)
        return torch.where(sd > 0, (d - mu) / sd.clamp_min(1e-12), torch.zeros_like(d))
    raise ValueError(f"unknown confidence normalisation '{norm}'; choose one of {', '.join(CONFIDENCE_NORMS)}")


def confidence_weights(dist: torch.Tensor, norm: str = "minmax", temperature: float = 1.0) -> torch.Tensor:
    """[B, K] per-candidate confidence, each row summing to 1 (official form with ``norm="raw"``)."""
    if temperature <= 0:
        raise ValueError(f"confidence temperature must be > 0, got {temperature}")
    if norm == "softmax":
        return torch.softmax(-dist / temperature, dim=-1)
    x = normalise_distances(dist, norm, dim=-1)
    w = torch.exp(-x / temperature) + EPS
    return w / w.sum(dim=-1, keepdim=True)


def target_confidence(target_dist: torch.Tensor, norm: str = "minmax", temperature: float = 1.0) -> torch.Tensor:
    """[R] per-row confidence c_s = exp(-norm(d_{s,i*})/T) in (0, 1], normalised over all rows (paper Eq. 7).

    NaN (unknown) distances get the mean confidence of the known rows. ``softmax`` is treated as ``raw`` here
    (a softmax over rows would make each row's weight depend on the dataset size).
    """
    d = target_dist.to(torch.float64)
    known = torch.isfinite(d)
    out = torch.empty_like(d)
    if not known.any():
        return torch.ones_like(d, dtype=torch.float32)
    x = d[known]
    if norm in ("raw", "softmax"):
        c = torch.exp(-x / temperature)
    else:
        c = torch.exp(-normalise_distances(x, norm, dim=0) / temperature)
    out[known] = c
    out[~known] = c.mean()
    return out.to(torch.float32)


def consistency_weights(candidates: torch.Tensor, student_topk: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """[B, K] = 1 where the teacher's candidate is inside the student's top-K' (+eps), official form (not normalised)."""
    hit = (candidates.unsqueeze(2) == student_topk.unsqueeze(1)).any(dim=2)
    return hit.to(torch.float32) + eps


def student_topk(full_scores: torch.Tensor, K: int) -> torch.Tensor:
    """[B, K] ids of the student's K best items (official: argsort of -scores, train mode, history not masked)."""
    return full_scores.detach().topk(K, dim=1).indices


def combine(w_pos: torch.Tensor | None, w_conf: torch.Tensor | None, w_cons: torch.Tensor | None,
            gamma_p: float = 0.3, gamma_c: float = 0.5, gamma_o: float = 0.1,
            row_normalise: bool = True, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """γp·w^p + γc·w^c + γo·w^o, row-normalised to sum to 1 (official). ``None`` (ablated) terms are left out.

    If every term is ablated (or every γ is 0) the weights are uniform, 1/K.
    """
    parts = [(g, w) for g, w in ((gamma_p, w_pos), (gamma_c, w_conf), (gamma_o, w_cons)) if w is not None and g != 0]
    if shape is None:
        for w in (w_pos, w_conf, w_cons):
            if w is not None and w.dim() == 2:
                shape = tuple(w.shape)
                break
    if shape is None:
        raise ValueError("combine() needs at least one [B, K] weight or an explicit shape")
    if not parts:
        ref = next((w for w in (w_pos, w_conf, w_cons) if w is not None), None)
        dev = ref.device if ref is not None else None
        return torch.full(shape, 1.0 / shape[1], device=dev)
    total = None
    for g, w in parts:
        t = g * w.expand(shape) if w.dim() == 1 else g * w
        total = t if total is None else total + t
    if row_normalise:
        total = total / total.sum(dim=-1, keepdim=True)
    return total

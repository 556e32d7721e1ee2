"""The trainer's optimiser: Adam/AdamW as configured, or, with ``optim.sparse``, row-sparse training.

Why: at 1M items a dense step writes the whole [N, d] item table, the [N, H] output layer, their zero-filled
gradients and both Adam moments — ~16 bytes × N(d + H + 1) × 2 passes per step, while a batch touches only
B × (L + 1 + n_neg) rows. With ``optim.sparse`` the student produces row-sparse gradients for those three tables
(``SequentialStudent.set_sparse``) and :class:`SparseDenseOptimizer` steps them with :class:`LazyAdam` (a
row-wise Adam) and every other parameter with the usual (fused) Adam, behind the one object the trainer steps, zero_grads and
checkpoints.

Semantics (the documented difference to dense Adam): LazyAdam keeps *lazy* moments — a row's first/second
moments are updated, and the row moved, only on steps whose batch touches it; dense Adam decays every row's
moments each step and keeps moving rows with a non-zero first moment. On the first step both give the same
update (tests/unit/test_sparse_training.py); with plain SGD the two are the same at every step.

Memory of the three sparse tables: parameters + two dense moments = 12 bytes × N(d + H + 1) (float32), plus
the per-step sparse gradient of O(B(L + 1 + n_neg)(d + H)) values; dense Adam also holds the dense gradients:
16 bytes × N(d + H + 1).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from dllm2rec.errors import Dllm2recError

SPARSE_TABLES = ("item_emb.weight", "out.weight", "out.bias")


def _dense_adam(cfg, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    opt_cls = torch.optim.AdamW if cfg.optim.name == "adamw" else torch.optim.Adam
    fused = cfg.optim.fused
    if fused is None:
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return opt_cls(params, lr=cfg.optim.lr, eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay,
                   fused=(bool(fused) or None) if params else None)


def check_sparse(cfg, strategy=None) -> None:
    """Refuse, in one line naming the field, what ``optim.sparse`` cannot train correctly."""
    if cfg.loss.kind == "ce":
        raise Dllm2recError("optim.sparse=true needs a sampled loss (loss.kind=bce or sampled_softmax): "
                            "loss.kind=ce back-propagates through all N scores, a dense output-layer gradient")
    if cfg.loss.dros_alpha:
        raise Dllm2recError("optim.sparse=true cannot train loss.dros_alpha > 0: the DROS term sums over all N "
                            "scores (a dense output-layer gradient); set loss.dros_alpha=0 or optim.sparse=false")
    if cfg.optim.weight_decay:
        raise Dllm2recError("optim.sparse=true needs optim.weight_decay=0 (a lazy decay of touched rows only is not weight decay; "
                            f"got {cfg.optim.weight_decay})")
    d = strategy.describe() if strategy is not None else {}
    if d.get("use_ranking", True) and d.get("variant") == "official" and d.get("dros_alpha"):
        raise Dllm2recError(f"optim.sparse=true cannot train distill.params.dros_alpha > 0 ({d['strategy']}: the "
                            "DROS part of L_d sums over all N scores); set it to 0 or optim.sparse=false")
    if d.get("weighting") in ("dynamic", "hybrid"):
        raise Dllm2recError(f"optim.sparse=true cannot train {d['strategy']} with weighting={d['weighting']} "
                            "(its loss reads candidates from all N scores); use weighting=position")


class LazyAdam(torch.optim.Optimizer):
    """Adam for row-sparse gradients, updating only the rows a step's gradient holds ("lazy" Adam).

    On those rows the arithmetic is ``torch.optim.Adam``'s (bias-corrected, ε added after the square root of the
    bias-corrected second moment), with one global step count per table, so a step that touches every row equals
    an Adam step. Why not ``torch.optim.SparseAdam``: it adds ε before the bias correction, i.e. an effective
    ε/√(1−β₂ᵗ) (≈ 32ε on step 1), which changes early updates of rows with small gradients (embedding rows'
    gradients are ~1e-6 here) — the dense and sparse runs would then differ by more than laziness."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.coalesce()  # duplicate rows summed once, in index order
                idx, v = g.indices()[0], g.values()
                st = self.state[p]
                if not st:
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["step"] += 1
                t = float(st["step"])
                m = st["exp_avg"].index_select(0, idx).lerp_(v, 1 - b1)
                s2 = st["exp_avg_sq"].index_select(0, idx).mul_(b2).addcmul_(v, v, value=1 - b2)
                st["exp_avg"].index_copy_(0, idx, m)
                st["exp_avg_sq"].index_copy_(0, idx, s2)
                denom = (s2.sqrt() / math.sqrt(1 - b2 ** t)).add_(eps)
                rows = p.index_select(0, idx).addcdiv_(m, denom, value=-lr / (1 - b1 ** t))
                p.index_copy_(0, idx, rows)


class SparseDenseOptimizer:
    """LazyAdam for the row-sparse tables + Adam/AdamW for the rest, stepped as one optimiser.

    ``state_dict()`` is ``{"dense": ..., "sparse": ...}`` — both optimisers' states, so ``last/trainer_state.pt``
    resumes exactly."""

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer | None,
                 sparse_names: dict[torch.nn.Parameter, str]):
        self.dense, self.sparse = dense, sparse
        self._names = sparse_names

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.dense.param_groups + (self.sparse.param_groups if self.sparse is not None else [])

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        if self.sparse is not None:
            self.sparse.zero_grad(set_to_none=True)  # a sparse gradient is never zeroed in place

    def step(self) -> None:
        for p, name in self._names.items():
            if p.grad is not None and not p.grad.is_sparse:
                raise Dllm2recError(f"optim.sparse=true: {name} got a dense gradient — a loss term back-propagates "
                                    "through all N scores (full softmax, DROS, full-score gathers); use "
                                    "optim.sparse=false for this configuration")
        self.dense.step()
        if self.sparse is not None:
            self.sparse.step()

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(),
                "sparse": self.sparse.state_dict() if self.sparse is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or set(state) != {"dense", "sparse"}:
            raise Dllm2recError("trainer_state.pt: the optimiser state is not a sparse+dense state (was this run "
                                "trained with optim.sparse=false?)")
        self.dense.load_state_dict(state["dense"])
        if self.sparse is not None:
            self.sparse.load_state_dict(state["sparse"])


def build_optimizer(cfg, model: torch.nn.Module, extra: list[torch.nn.Parameter]):
    """The optimiser for ``model`` + ``extra`` parameters: plain Adam/AdamW (``optim.sparse`` off: exactly the
    optimiser every earlier run used), else a :class:`SparseDenseOptimizer`."""
    params = list(model.parameters()) + list(extra)
    if not cfg.optim.sparse:
        return _dense_adam(cfg, params)
    named = dict(model.named_parameters())
    sparse = {named[n]: n for n in SPARSE_TABLES if n in named}
    ids = {id(p) for p in sparse}
    dense = [p for p in params if id(p) not in ids]
    sp = [p for p in sparse if p.requires_grad]  # e.g. "w/o offset" freezes item_emb
    sparse_opt = LazyAdam(sp, lr=cfg.optim.lr, eps=cfg.optim.eps) if sp else None
    return SparseDenseOptimizer(_dense_adam(cfg, dense), sparse_opt, sparse)

"""The distillation strategy interface. A strategy sees each training step through a ``StepContext`` and returns
named loss terms; the trainer adds them to the student's own loss and logs each term.

    strategy = get_strategy(name)(params, dataset, teacher)   # teacher: TeacherArtifacts | None
    strategy.attach(model)            # before the optimiser exists: install hooks / extra modules
    terms = strategy.loss(ctx)        # every step: {"rd": tensor, ...}

``no-kd`` ("none") is the plain student.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from dllm2rec.registry import register_strategy


@dataclass
class StepContext:
    model: Any
    state: torch.Tensor          # [B, H] student state (train mode)
    seq: torch.Tensor            # [B, L]
    lens: torch.Tensor           # [B]
    target: torch.Tensor         # [B]
    row_id: torch.Tensor         # [B] training row ids (index teacher artifacts)
    neg: torch.Tensor            # [B, n_neg] sampled negatives (outside history and target)
    epoch: int = 0
    step: int = 0
    _full: torch.Tensor | None = field(default=None, repr=False)
    _dros: list = field(default_factory=list, repr=False)

    @property
    def full_scores(self) -> torch.Tensor:
        """[B, N] scores of all items, computed once per step on first use."""
        if self._full is None:
            self._full = self.model.score_all(self.state)
        return self._full

    def student_topk(self, K: int) -> torch.Tensor:
        """[B, K] ids of the student's K best items on this step's train-mode states (the consistency weight).
        Dense runs take them from ``full_scores`` (computed once per step, so call this with grad enabled the first
        time, as before); under ``optim.sparse`` they are streamed over item chunks without grad, so no [B, N]
        matrix (1 GiB at 1M items, batch 256) exists when nothing else asked for it."""
        if self._full is not None or not getattr(self.model, "sparse_grads", False):
            return self.full_scores.detach().topk(K, dim=1).indices
        return self.model.topk_from_state(self.state, K)

    def dros(self, ps: torch.Tensor, beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(DROS sum with the target swapped, plain sum) per row over ``full_scores`` (``losses.dros_lse``),
        computed once per step for equal (ps, β): the student's DROS loss and the official distillation's
        per-candidate DROS terms share one pass over [B, N]."""
        from dllm2rec.losses import dros_lse

        for cps, cbeta, out in self._dros:
            if cbeta == beta and (cps is ps or (cps.shape == ps.shape and torch.equal(cps, ps))):
                return out
        out = dros_lse(self.full_scores, self.target, ps, beta)
        self._dros.append((ps, beta, out))
        return out


class Strategy:
    """Base class; also the no-KD baseline."""

    registry_name = "none"
    needs_teacher = False

    def __init__(self, params: dict[str, Any] | None = None, dataset=None, teacher=None):
        self.params = dict(params or {})
        self.dataset = dataset
        self.teacher = teacher

    def attach(self, model) -> None:
        """Install hooks / submodules on the student (called once, before the optimiser is built)."""

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters that live outside the student (rare; hooks are submodules of the student)."""
        return []

    def loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.registry_name, **self.params}


register_strategy("none")(Strategy)

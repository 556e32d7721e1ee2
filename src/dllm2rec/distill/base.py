"""The distillation strategy interface. A strategy sees each training step through a ``StepContext`` and returns
named loss terms; the trainer adds them to the student's own loss and logs each term.

    strategy = get_strategy(name)(params, dataset, teacher)   # teacher: TeacherArtifacts | None
    strategy.attach(model)            # before the optimiser exists: install hooks / extra modules
    terms = strategy.loss(ctx)        # every step: {"rd": tensor, ...}

``no-kd`` ("none") is the plain student.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from dllm2rec.distill import weights
from dllm2rec.errors import ConfigError
from dllm2rec.losses import dros_lse
from dllm2rec.registry import register_strategy


class StrategyParams(BaseModel):
    """Typed parameters of a strategy (peft-style: each registered method is paired with its config class).

    ``distill.params`` is validated against the strategy's ``params_cls`` when the strategy is built (before the run
    directory exists): an unknown name, a wrong type or an out-of-range value is one line naming the parameter.
    Subclasses add fields with ``Field(default, ge=…, description=…)``; the description is the documentation.
    """

    model_config = ConfigDict(extra="forbid")


def _param_error(name: str, cls: type[StrategyParams], err: dict) -> str:
    loc = ".".join(map(str, err["loc"]))
    got = err.get("input")
    if err["type"] == "extra_forbidden":
        return f"strategy '{name}': unknown parameter '{loc}'; known: {', '.join(cls.model_fields)}"
    if err["type"] == "literal_error":
        return f"strategy '{name}': {loc} must be one of {err['ctx']['expected']} (got {got!r})"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"strategy '{name}': {loc}: {msg}" + (f" (got {got!r})" if loc else "")


def resolve_params(name: str, cls: type[StrategyParams], given: dict[str, Any],
                   overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``distill.params`` validated by ``cls`` (``overrides``: a registered variant's other defaults, e.g.
    ``dllm2rec-paper``'s ``variant: paper``; the user's values win); returned as a plain dict."""
    try:
        return cls.model_validate({**(overrides or {}), **given}).model_dump()
    except ValidationError as e:
        raise ConfigError(_param_error(name, cls, e.errors()[0])) from None


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
            return weights.student_topk(self.full_scores, K)
        return self.model.topk_from_state(self.state, K)

    def dros(self, ps: torch.Tensor, beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(DROS sum with the target swapped, plain sum) per row over ``full_scores`` (``losses.dros_lse``),
        computed once per step for equal (ps, β): the student's DROS loss and the official distillation's
        per-candidate DROS terms share one pass over [B, N]."""

        for cps, cbeta, out in self._dros:
            if cbeta == beta and (cps is ps or (cps.shape == ps.shape and torch.equal(cps, ps))):
                return out
        out = dros_lse(self.full_scores, self.target, ps, beta)
        self._dros.append((ps, beta, out))
        return out


@register_strategy("none")
class Strategy:
    """Base class; also the no-KD baseline (no parameters)."""

    registry_name = "none"
    needs_teacher = False
    params_cls: ClassVar[type[StrategyParams]] = StrategyParams
    overrides: ClassVar[dict[str, Any]] = {}  # a registered variant's other defaults (same fields)

    def __init__(self, params: dict[str, Any] | None = None, dataset=None, teacher=None):
        self.params = dict(params or {})
        self.dataset = dataset
        self.teacher = teacher
        self.p = resolve_params(self.registry_name, self.params_cls, self.params, self.overrides)

    def attach(self, model) -> None:
        """Install hooks / submodules on the student (called once, before the optimiser is built)."""

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters that live outside the student (rare; hooks are submodules of the student)."""
        return []

    def loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.registry_name, **self.p}

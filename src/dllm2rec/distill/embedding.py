"""Collaborative embedding distillation (paper Eq. 12-13, spec §1.1 and §1.2.3).

    e_i = b_i + w · g(z_i)       b_i: the student's own ID embedding ("offset"), z_i: the teacher's item embedding,
                                 g: projector D -> d (``linear``: one affine layer, the official; ``mlp``: 2 layers)

The offset modules plug into the student's hooks (``SequentialStudent.input_offset`` / ``output_offset``):

- ``TeacherInputOffset``  ids [...] -> [..., d]; the input sequence side (paper and official). Only the *unique* ids of
  the batch are projected, once per call (the official builds a [B, L, 4096] tensor per batch). Zero at PAD.
- ``TeacherOutputOffset`` () -> [N, H]; adds w·g(z_i) to the output-layer weights (an extension; needs
  ``hidden_dim == dim``, so not Caser). ``rows(ids)`` projects only the batch's unique ids (``optim.sparse``).
- "w/o offset" (paper Table 9): ``disable_id_embedding(model)`` zeroes and freezes b, so e_i = g(z_i) (scale 1).

Each module holds the teacher embeddings as a buffer (row N = PAD = 0; float32, or bfloat16 for D >= 1024 by
default — ``precision``) and describes itself with ``spec()``;
the builders below are registered with ``students.hooks`` so a distilled checkpoint reloads without teacher files.
"""
from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dllm2rec.distill.base import StrategyParams
from dllm2rec.errors import ConfigError
from dllm2rec.students.hooks import register_hook
from dllm2rec.utils.cpu import native_bf16

Projector = Literal["linear", "mlp"]
Side = Literal["input", "output", "both"]
Precision = Literal["auto", "float32", "bfloat16"]
PROJECTORS = get_args(Projector)
SIDES = get_args(Side)


def make_projector(d_in: int, d_out: int, kind: str = "linear", hidden: int = 256) -> nn.Module:
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))
    raise ConfigError(f"unknown projector '{kind}'; choose one of {', '.join(PROJECTORS)}")


PRECISIONS = get_args(Precision)
AUTO_BF16_MIN_DIM = 1024


class EmbeddingParams(StrategyParams):
    """Collaborative embedding distillation e_i = b_i + w·g(z_i) (paper §3.3), shared by every strategy that uses it."""

    use_embedding: bool = Field(True, description="add the projected teacher embedding to the student's ID embedding")
    ed_weight: float = Field(0.3, allow_inf_nan=False, description="w in e = b + w·g(z); official README command "
                             "(code default 0.2); 0 disables")
    projector: Projector = Field("linear", description="g: linear (official: one affine layer) | mlp")
    mlp_hidden: int = Field(256, ge=1, description="hidden size of the mlp projector")
    ed_side: Side = Field("input", description="input (paper/official) | output (extension) | both")
    offset: bool = Field(True, description="false: 'w/o offset', e = g(z), ID embedding zeroed and frozen")
    ed_precision: Precision = Field("auto", description="auto: bfloat16 table + autocast projector when D >= 1024 "
                                    "and the CPU/GPU has native bf16, else float32")


def resolve_precision(precision: str, d_in: int, device: str = "cpu") -> str:
    """``auto``: bfloat16 for LLM-sized teacher embeddings (D >= 1024), where the D -> d projection dominates the
    step, *if the hardware has native bf16* (then bf16 matmuls are ~3x faster; LLM states are produced in 16-bit
    anyway); float32 otherwise — emulated bf16 halved the step's speed on an AVX2 CPU (utils/cpu.py)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown ed_precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bfloat16" if d_in >= AUTO_BF16_MIN_DIM and native_bf16(device) else "float32"
    return precision


def _table(item_emb: np.ndarray | torch.Tensor, precision: str = "float32", device: str = "cpu") -> torch.Tensor:
    z = torch.as_tensor(np.asarray(item_emb) if not isinstance(item_emb, torch.Tensor) else item_emb)
    z = z.detach().to(torch.float32)
    z = torch.cat([z, torch.zeros(1, z.shape[1])], dim=0)  # PAD row
    return z.to(getattr(torch, resolve_precision(precision, z.shape[1], device))).contiguous()


class _TeacherProjection(nn.Module):
    type_name = "?"

    def __init__(self, teacher_emb: torch.Tensor, d_out: int, weight: float = 1.0, projector: str = "linear",
                 mlp_hidden: int = 256):
        super().__init__()
        self.n_items = int(teacher_emb.shape[0]) - 1
        self.d_in = int(teacher_emb.shape[1])
        self.d_out = int(d_out)
        self.weight = float(weight)
        self.projector_kind = projector
        self.mlp_hidden = int(mlp_hidden)
        self.register_buffer("teacher_emb", teacher_emb)
        self.proj = make_projector(self.d_in, self.d_out, projector, mlp_hidden)

    @classmethod
    def from_artifacts(cls, item_emb, d_out: int, **kw) -> "_TeacherProjection":
        return cls(_table(item_emb), d_out, **kw)

    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "n_items": self.n_items, "d_in": self.d_in, "d_out": self.d_out,
                "weight": self.weight, "projector": self.projector_kind, "mlp_hidden": self.mlp_hidden,
                "precision": str(self.teacher_emb.dtype).replace("torch.", "")}

    def _project(self, z: torch.Tensor) -> torch.Tensor:
        """g(z) in float32; a bfloat16 table runs the projector under autocast (float32 master weights)."""
        if z.dtype == torch.float32:
            return self.proj(z)
        with torch.autocast(device_type=z.device.type, dtype=z.dtype):
            out = self.proj(z)
        return out.float()

    def _live_columns(self) -> torch.Tensor | None:
        """The table's non-zero columns, or None when more than 75 % are live. Computed lazily and re-checked when the
        buffer changes (``from_spec`` loads the real table after ``__init__``).

        Why: a teacher exported with ``--pad-to 4096`` (the official script's hard-coded width) is mostly zero
        columns. They add exactly 0 to g(z) and receive exactly 0 gradient, so Adam never moves them: projecting
        only the live columns is the same model (checkpoints still hold the full ``Linear(D, d)``) at a fraction of
        the cost — on the padded LastFM teacher 382 of 4,096 columns are live."""
        key = (self.teacher_emb.data_ptr(), self.teacher_emb._version, self.teacher_emb.device)
        if getattr(self, "_live_key", None) != key:
            live = (self.teacher_emb != 0).any(dim=0).nonzero().squeeze(1)
            use = live.numel() <= 0.75 * self.d_in
            self._live = live if use else None
            self._z_live = self.teacher_emb.index_select(1, live).contiguous() if use else None
            self._live_key = key
        return self._live

    def _project_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """g(z_ids) in float32 for the table rows ``ids``, through the live columns only when the table has dead
        ones (equal to ``_project(teacher_emb[ids])`` up to float summation order)."""
        live = self._live_columns()
        if live is None:
            return self._project(self.teacher_emb.index_select(0, ids))  # row copy; 3x faster than [ids] on CPU
        z = self._z_live.index_select(0, ids)
        first = self.proj if isinstance(self.proj, nn.Linear) else self.proj[0]

        def run(z: torch.Tensor) -> torch.Tensor:
            h = F.linear(z, first.weight.index_select(1, live), first.bias)
            return h if first is self.proj else self.proj[2](self.proj[1](h))

        if z.dtype == torch.float32:
            return run(z)
        with torch.autocast(device_type=z.device.type, dtype=z.dtype):
            out = run(z)
        return out.float()

    @classmethod
    def from_spec(cls, spec: dict, state: dict, prefix: str) -> "_TeacherProjection":
        key = prefix + "teacher_emb"
        if key in state:
            shape, dtype = tuple(state[key].shape), state[key].dtype
        else:
            shape, dtype = (spec["n_items"] + 1, spec["d_in"]), getattr(torch, spec.get("precision", "float32"))
        return cls(torch.zeros(shape, dtype=dtype), spec["d_out"], spec.get("weight", 1.0), spec.get("projector", "linear"),
                   spec.get("mlp_hidden", 256))


class TeacherInputOffset(_TeacherProjection):
    """ids [...] -> w · g(z_ids), zero at PAD; the unique ids of the call are projected once."""

    type_name = "teacher-input-offset"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        uniq, inv = torch.unique(ids, return_inverse=True)
        p = self._project_rows(uniq)
        p = p * (uniq != self.n_items).unsqueeze(1).to(p.dtype)
        if self.weight != 1.0:
            p = p * self.weight
        return p[inv]


class TeacherOutputOffset(_TeacherProjection):
    """() -> [N, d] = w · g(z) for every item, added to the output weights (extension)."""

    type_name = "teacher-output-offset"

    def forward(self) -> torch.Tensor:
        p = self._project(self.teacher_emb[: self.n_items])
        return p * self.weight if self.weight != 1.0 else p

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [...] -> [..., d]: ``forward()[ids]`` projecting only the unique ids of the call (what
        ``score_items`` reads under ``optim.sparse``; at 1M items ``forward()`` would project the whole teacher
        table every step). The same per-row arithmetic as ``forward``; a GEMM over fewer rows may round in another
        order, so equal to forward()[ids] to float rounding (tests/unit/test_sparse_training.py)."""
        uniq, inv = torch.unique(ids, return_inverse=True)
        p = self._project_rows(uniq)
        if self.weight != 1.0:
            p = p * self.weight
        return p[inv]


@register_hook(TeacherInputOffset.type_name)
def _build_input(spec, state, prefix):
    return TeacherInputOffset.from_spec(spec, state, prefix)


@register_hook(TeacherOutputOffset.type_name)
def _build_output(spec, state, prefix):
    return TeacherOutputOffset.from_spec(spec, state, prefix)


def disable_id_embedding(model) -> None:
    """'w/o offset': b_i = 0 and frozen, so the item representation is the projected teacher embedding alone."""
    with torch.no_grad():
        model.item_emb.weight.zero_()
    model.item_emb.weight.requires_grad_(False)


def attach_embedding_distillation(model, item_emb, weight: float = 0.3, side: str = "input",
                                  projector: str = "linear", mlp_hidden: int = 256, offset: bool = True,
                                  precision: str = "auto") -> None:
    """Install the teacher offset(s) on ``model``. ``offset=False`` is the paper's "w/o offset" (e = g(z))."""
    if side not in SIDES:
        raise ConfigError(f"unknown ed_side '{side}'; choose one of {', '.join(SIDES)}")
    n = int(np.asarray(item_emb).shape[0]) if not isinstance(item_emb, torch.Tensor) else int(item_emb.shape[0])
    if n != model.n_items:
        raise ConfigError(f"teacher has {n} item embeddings but the student has {model.n_items} items")
    if side in ("output", "both") and model.hidden_dim != model.dim:
        raise ConfigError(f"ed_side='{side}' adds the projected teacher embedding to the output layer, which needs "
                          f"hidden_dim == dim; {model.registry_name} has hidden_dim {model.hidden_dim} != dim "
                          f"{model.dim}. Use ed_side='input' for this student.")
    w = weight if offset else 1.0
    device = next(model.parameters()).device.type  # the table follows the model; bf16 only if native there
    table = _table(item_emb, precision, device)
    if side in ("input", "both"):
        model.input_offset = TeacherInputOffset(table, model.dim, w, projector, mlp_hidden)
        if not offset:
            disable_id_embedding(model)
    if side in ("output", "both"):
        # a separate copy of the table: safetensors refuses tensors shared between two state-dict keys
        model.output_offset = TeacherOutputOffset(table.clone(), model.hidden_dim, w, projector, mlp_hidden)
        if not offset:
            with torch.no_grad():
                model.out.weight.zero_()
            model.out.weight.requires_grad_(False)


def attach_from_params(model, item_emb, p: dict[str, Any]) -> None:
    """Install the hooks an :class:`EmbeddingParams` setting asks for (nothing when ``use_embedding`` is off, or when
    w = 0 with the offset kept, which would be the plain student)."""
    if p["use_embedding"] and (p["ed_weight"] != 0 or not p["offset"]):
        attach_embedding_distillation(model, item_emb, weight=float(p["ed_weight"]), side=p["ed_side"],
                                      projector=p["projector"], mlp_hidden=int(p["mlp_hidden"]),
                                      offset=bool(p["offset"]), precision=p["ed_precision"])

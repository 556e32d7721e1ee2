"""The shared student interface.

Every student (GRU4Rec, Caser, SASRec, ...) maps a batch of right-padded histories to a state vector and scores
items with an output layer that is *not* tied to the input embeddings (as in the official DLLM2Rec/DROS code):

    e   = embed_items(seq)            # [B, L, d]  ID embedding b_i (+ optional offset hook, e.g. w·g(z_i))
    h   = encode(seq, lens)           # [B, H]
    ŷ   = score_all(h)                # [B, N]     h @ W^T + bias (W optionally + output offset hook)
    ŷ_j = score_items(h, items)       # [B, ...]   the same scores for selected items only (no [B, N] matrix)

Hooks: ``input_offset`` (module: ids [...] -> [..., d], zero at PAD) and ``output_offset`` (module: () -> [N, H];
optionally ``.rows(ids)`` -> [..., H], the same rows without projecting all N). Collaborative embedding
distillation plugs in through them; nothing here knows the teacher's dimension.

Row-sparse gradients (``optim.sparse``, large catalogues): :meth:`set_sparse` makes the item-embedding lookup and
``score_items``' gather of output rows (weight *and* bias) return sparse COO gradients that hold only the rows the
batch touched, instead of a dense [N, d] zero-filled gradient per table per step. ``score_all`` is unchanged, so a
loss that back-propagates through all N scores still yields a dense gradient (the optimiser refuses that).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from dllm2rec.errors import ConfigError
from dllm2rec.registry import get_student


class _SparseRows(torch.autograd.Function):
    """``weight[idx]`` whose gradient is a sparse COO tensor over ``weight``'s rows (for the 1-D output bias, which
    ``F.embedding`` cannot take: a sparse gradient cannot flow back through the ``bias[:, None]`` view)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.shape = weight.shape
        ctx.save_for_backward(idx)
        return weight.index_select(0, idx.reshape(-1)).view(*idx.shape, *weight.shape[1:])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        g = torch.sparse_coo_tensor(idx.reshape(1, -1), grad.reshape(-1, *ctx.shape[1:]), ctx.shape,
                                    check_invariants=False)
        return g, None


def sparse_rows(weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` of ``weight`` (any shape of ids) with a row-sparse gradient."""
    if weight.dim() == 2:
        return F.embedding(idx, weight, sparse=True)
    return _SparseRows.apply(weight, idx)


class StudentParams(BaseModel):
    """Typed architecture hyper-parameters (RecBole-style per-model defaults): every student declares a subclass as
    ``params_cls`` with its own fields; ``build_student`` validates a config against it, so a typo or an
    out-of-range value is one line naming the field instead of a TypeError deep in a constructor. The
    constructor's keyword defaults equal these (a contract test checks it)."""

    model_config = ConfigDict(extra="forbid")
    max_len: int = Field(10, ge=1, description="history window L")
    dim: int = Field(64, ge=1, description="item embedding / hidden size d (paper: 64)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, allow_inf_nan=False, description="dropout in [0, 1) (paper: 0.1)")


class SequentialStudent(nn.Module, ABC):
    registry_name: str = "?"
    paper: str = ""
    params_cls: ClassVar[type[StudentParams]] = StudentParams

    def __init__(self, n_items: int, max_len: int = 10, dim: int = 64, dropout: float = 0.1, **kwargs: Any):
        super().__init__()
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unknown options {sorted(kwargs)}")
        self.n_items = int(n_items)
        self.max_len = int(max_len)
        self.dim = int(dim)
        self.dropout_p = float(dropout)
        self.item_emb = nn.Embedding(self.n_items + 1, self.dim)  # row N is PAD
        nn.init.normal_(self.item_emb.weight, 0.0, 0.01)
        self.input_offset: nn.Module | None = None
        self.output_offset: nn.Module | None = None
        self._init_kwargs: dict[str, Any] = {"max_len": max_len, "dim": dim, "dropout": dropout}
        self.sparse_grads = False  # set_sparse(); a training-time switch, never saved with the weights

    # ----------------------------------------------------------------- to implement
    @property
    @abstractmethod
    def hidden_dim(self) -> int:
        """Size of the state returned by encode (the output layer's input size)."""

    @abstractmethod
    def encode(self, seq: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """[B, L] item ids (right-padded with N), [B] lengths -> [B, hidden_dim] state."""

    # ----------------------------------------------------------------- shared
    def _make_output(self) -> None:
        self.out = nn.Linear(self.hidden_dim, self.n_items)

    def embed_items(self, seq: torch.Tensor) -> torch.Tensor:
        e = self.item_emb(seq)
        if self.input_offset is not None:
            e = e + self.input_offset(seq)
        return e

    def output_bias(self) -> torch.Tensor:
        """[N] per-item score bias. Evaluation and serving call this (and :meth:`output_weight`) rather than reading
        ``self.out``, so a student is free in how it stores its output layer."""
        return self.out.bias

    def output_weight(self) -> torch.Tensor:
        w = self.out.weight
        if self.output_offset is not None:
            w = w + self.output_offset()
        return w

    def score_all(self, state: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(state, self.output_weight(), self.out.bias)

    def set_sparse(self, on: bool = True) -> SequentialStudent:
        """Row-sparse gradients for ``item_emb`` and the output rows ``score_items`` reads (see the module doc).
        Values and forward results are unchanged; only the gradient's layout differs (the densified sparse
        gradient equals the dense one, tests/unit/test_sparse_training.py)."""
        self.sparse_grads = bool(on)
        self.item_emb.sparse = bool(on)  # nn.Embedding reads the flag on every forward
        return self

    def score_items(self, state: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of ``items`` ([B] or [B, k]) without materialising [B, N]."""
        squeeze = items.dim() == 1
        if squeeze:
            items = items[:, None]
        if self.sparse_grads:
            w = sparse_rows(self.out.weight, items)  # [B, k, H], gradient only on these rows
            if self.output_offset is not None:
                rows = getattr(self.output_offset, "rows", None)
                w = w + (rows(items) if rows is not None else self.output_offset()[items])
            b = sparse_rows(self.out.bias, items)
        else:
            if self.output_offset is None:
                w = self.out.weight[items]  # [B, k, H]
            else:
                w = self.output_weight()[items]
            b = self.out.bias[items]
        s = torch.einsum("bh,bkh->bk", state, w) + b
        return s[:, 0] if squeeze else s

    @torch.no_grad()
    def topk_from_state(self, state: torch.Tensor, k: int, item_chunk: int | None = 65536) -> torch.Tensor:
        """[B, k] ids of the k best items for given states (no gradient, no [B, N] matrix: the catalogue is
        scanned in chunks with a running top-k). For DLLM2Rec's consistency weight on train-mode states, where
        ``evaluation.protocol.top_k`` would re-encode in eval mode. Same ids as ``score_all(state).topk(k)`` up
        to the order of exactly tied scores."""
        n = self.n_items
        k = min(int(k), n)
        chunk = n if item_chunk is None else max(int(item_chunk), 1)
        state = state.detach()
        w, b = self.output_weight().detach(), self.output_bias().detach()
        best_s = best_i = None
        for c in range(0, n, chunk):
            s, i = F.linear(state, w[c:c + chunk], b[c:c + chunk]).topk(min(k, min(chunk, n - c)), dim=1)
            i = i + c
            if best_s is not None:
                s, j = torch.cat([best_s, s], 1).topk(k, dim=1)
                i = torch.cat([best_i, i], 1).gather(1, j)
            best_s, best_i = s, i
        return best_i

    def forward(self, seq: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return self.score_all(self.encode(seq, lens))

    def clip_to_len(self, seq: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """PAD at every position >= len. Students that read the whole window (Caser) call it, so whatever lies
        after len can never reach the state; on well-formed input (right-padded) it changes nothing."""
        pos = torch.arange(seq.shape[1], device=seq.device)
        return seq.masked_fill(pos[None, :] >= lens[:, None], self.n_items)

    def pad_mask(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, L, 1] float mask, 1 at real items."""
        return (seq != self.n_items).unsqueeze(-1).to(self.item_emb.weight.dtype)

    def init_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this architecture (saved in checkpoints and bundles)."""
        return {"name": self.registry_name, "n_items": self.n_items, **self._init_kwargs}


def validate_student_params(name: str, kwargs: dict[str, Any]) -> StudentParams:
    """The student's typed parameters from ``kwargs``, or a one-line ConfigError naming the field."""

    cls = get_student(name)
    try:
        return cls.params_cls.model_validate(kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not err["loc"]:  # a check across fields (e.g. SASRec's n_heads | dim)
            raise ConfigError(f"student '{name}': {msg}") from None
        field = ".".join(map(str, err["loc"]))
        raise ConfigError(f"student '{name}': field '{field}': {msg} (got {err['input']!r}); "
                          f"fields: {', '.join(cls.params_cls.model_fields)}") from None


def build_student(name: str, n_items: int, **kwargs: Any) -> SequentialStudent:
    params = validate_student_params(name, kwargs)
    return get_student(name)(n_items=n_items, **params.model_dump())

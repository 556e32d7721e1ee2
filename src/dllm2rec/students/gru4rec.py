"""GRU4Rec — Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR 2016.

As in the DROS/DLLM2Rec code: one GRU layer (hidden = dim) over the item embeddings; the state is the hidden state
after the last real item (the official code packs the sequence; on right-padded input, gathering the output at
position len-1 gives the same state and is faster on CPU). ``n_layers`` stacks GRU layers.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from dllm2rec.registry import register_student
from dllm2rec.students.base import SequentialStudent, StudentParams


class GRU4RecParams(StudentParams):
    n_layers: int = Field(1, ge=1, description="stacked GRU layers (official: 1)")


@register_student("gru4rec")
class GRU4Rec(SequentialStudent):
    paper = "Hidasi et al., ICLR 2016"
    params_cls = GRU4RecParams

    def __init__(self, n_items: int, max_len: int = 10, dim: int = 64, dropout: float = 0.1, n_layers: int = 1):
        super().__init__(n_items, max_len, dim, dropout)
        self._init_kwargs.update(n_layers=n_layers)
        self.gru = nn.GRU(dim, dim, num_layers=n_layers, batch_first=True)
        self._make_output()

    @property
    def hidden_dim(self) -> int:
        return self.dim

    def encode(self, seq: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embed_items(seq))
        idx = (lens.clamp(min=1) - 1).view(-1, 1, 1).expand(-1, 1, self.dim)
        return out.gather(1, idx).squeeze(1)

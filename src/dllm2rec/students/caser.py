"""Caser — Tang & Wang, "Personalized Top-N Sequential Recommendation via Convolutional Sequence Embedding", WSDM 2018.

As in the DROS/DLLM2Rec code: horizontal convolutions of heights {2,3,4} with 16 filters each (ReLU + max-pool over
time), one vertical convolution over the L positions (a learned weighted sum of the item embeddings), concatenation,
dropout, then the output layer. Padded positions are zeroed before the convolutions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from dllm2rec.registry import register_student
from dllm2rec.students.base import SequentialStudent, StudentParams


class CaserParams(StudentParams):
    num_filters: int = Field(16, ge=1, description="filters per horizontal height (official: 16)")
    filter_sizes: list[PositiveInt] = Field([2, 3, 4], min_length=1,
                                            description="horizontal filter heights; heights > max_len are dropped")


@register_student("caser")
class Caser(SequentialStudent):
    paper = "Tang & Wang, WSDM 2018"
    params_cls = CaserParams

    def __init__(self, n_items: int, max_len: int = 10, dim: int = 64, dropout: float = 0.1,
                 num_filters: int = 16, filter_sizes: tuple[int, ...] | list[int] = (2, 3, 4)):
        super().__init__(n_items, max_len, dim, dropout)
        self.filter_sizes = [int(h) for h in filter_sizes if int(h) <= max_len]
        self._init_kwargs.update(num_filters=num_filters, filter_sizes=list(self.filter_sizes))
        self.num_filters = num_filters
        self.horizontal = nn.ModuleList([nn.Conv2d(1, num_filters, (h, dim)) for h in self.filter_sizes])
        self.vertical = nn.Conv2d(1, 1, (max_len, 1))
        self.drop = nn.Dropout(dropout)
        self._make_output()

    @property
    def hidden_dim(self) -> int:
        return self.dim + self.num_filters * len(self.filter_sizes)

    def encode(self, seq: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """The convolutions as matmuls (same parameters and values as ``Conv2d``; several times faster on CPU,
        whose conv backward dominates a step otherwise): a height-h filter over rows t..t+h-1 of the [L, d]
        embedding image is Σ_j x[t+j] · W[:, j], so one [B·L, d] × [d, Σh·F] product gives every (filter, offset)
        term and shifted slices add them up."""
        seq = self.clip_to_len(seq, lens)  # the convolutions see the whole window: nothing after len may count
        x = self.embed_items(seq) * self.pad_mask(seq)  # [B, L, d]
        B, L, d = x.shape
        if L != self.max_len:
            raise ValueError(f"Caser expects histories padded to max_len={self.max_len}, got length {L}")
        w_all = torch.cat([conv.weight.view(self.num_filters, h, d).transpose(0, 1).reshape(h * self.num_filters, d)
                           for conv, h in zip(self.horizontal, self.filter_sizes)])  # [Σh·F, d], (h, j, f) order
        # split per (height, offset) first: the backward of each time slice then zero-fills [B, L, F], not [B, L, Σh·F]
        parts = torch.matmul(x, w_all.t()).split(self.num_filters, dim=2)
        hs, k = [], 0
        for conv, h in zip(self.horizontal, self.filter_sizes):
            T = L - h + 1
            acc = parts[k][:, 0:T]
            for j in range(1, h):
                acc = acc + parts[k + j][:, j:j + T]
            hs.append(F.relu(acc + conv.bias).amax(dim=1))  # [B, F]
            k += h
        v = torch.einsum("bld,l->bd", x, self.vertical.weight.view(L)) + self.vertical.bias  # [B, d]
        return self.drop(torch.cat([v, *hs], dim=1))

"""Caser — Tang & Wang, "Personalized Top-N Sequential Recommendation via Convolutional Sequence Embedding", WSDM 2018.

As in the DROS/DLLM2Rec code: horizontal convolutions of heights {2,3,4} with 16 filters each (ReLU + max-pool over
time), one vertical convolution over the L positions (a learned weighted sum of the item embeddings), concatenation,
dropout, then the output layer. Padded positions are zeroed before the convolutions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dllm2rec.registry import register_student
from dllm2rec.students.base import SequentialStudent


@register_student("caser")
class Caser(SequentialStudent):
    paper = "Tang & Wang, WSDM 2018"

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
        x = (self.embed_items(seq) * self.pad_mask(seq)).unsqueeze(1)  # [B, 1, L, d]
        hs = [F.relu(conv(x)).squeeze(3).amax(dim=2) for conv in self.horizontal]  # each [B, F]
        v = self.vertical(x).view(x.shape[0], -1)  # [B, d]
        return self.drop(torch.cat([v, *hs], dim=1))

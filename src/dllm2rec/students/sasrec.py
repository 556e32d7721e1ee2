"""SASRec — Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018.

Follows the DROS/DLLM2Rec code (``SASRecModules_ori.py``): learned positional embedding, embedding dropout,
pre-LN on the queries, attention whose keys/values are the un-normalised sequence, scaled by 1/sqrt(dim), causal +
key-padding masks, residual onto the queries; then LN -> point-wise FFN (residual + its own LN) -> mask -> LN; the
state is the output at position len-1. ``n_layers``/``n_heads`` default to the official 1/1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from dllm2rec.registry import register_student
from dllm2rec.students.base import SequentialStudent, StudentParams


class _Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.dim, self.n_heads = dim, n_heads
        self.ln_q = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(dropout)
        self.ln_ff_in = nn.LayerNorm(dim)
        self.w1 = nn.Linear(dim, dim)  # = Conv1d(dim, dim, 1) in the official code
        self.w2 = nn.Linear(dim, dim)
        self.ff_drop = nn.Dropout(dropout)
        self.ln_ff = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor, qmask: torch.Tensor,
                q_pos: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L, D] -> [B, L, D]; with ``q_pos`` ([B] positions) only those queries: -> [B, 1, D].

        Keys and values always cover the whole sequence, so the output at a position is the same either way;
        computing just the one query the state needs skips 3 of the 5 projections' rows and (L-1)/L of the
        attention, the FFN and their dropout masks (training throughput, issue 2).
        """
        B, L, D = x.shape
        h = self.n_heads
        xs = x
        if q_pos is not None:
            xs = x.gather(1, q_pos.view(B, 1, 1).expand(B, 1, D))  # [B, 1, D]
            attn_bias = attn_bias.expand(B, attn_bias.shape[1], L, L).gather(
                2, q_pos.view(B, 1, 1, 1).expand(B, attn_bias.shape[1], 1, L))
            qmask = qmask.expand(B, 1, L, 1).gather(2, q_pos.view(B, 1, 1, 1))
        Lq = xs.shape[1]
        xq = self.ln_q(xs)
        q = self.q(xq).view(B, Lq, h, D // h).transpose(1, 2)
        k = self.k(x).view(B, L, h, D // h).transpose(1, 2)
        v = self.v(x).view(B, L, h, D // h).transpose(1, 2)
        # official scaling uses the full hidden size, not the per-head size
        att = torch.matmul(q, k.transpose(-1, -2)) / (D ** 0.5) + attn_bias
        att = torch.softmax(att, dim=-1) * qmask  # zero the rows of padded queries
        att = self.attn_drop(att)
        out = torch.matmul(att, v).transpose(1, 2).reshape(B, Lq, D) + xq
        y = self.ln_ff_in(out)
        y = self.ln_ff(self.ff_drop(self.w2(F.relu(self.w1(y)))) + y)
        return y


class SASRecParams(StudentParams):
    n_layers: int = Field(1, ge=1, description="self-attention blocks (official: 1)")
    n_heads: int = Field(1, ge=1, description="attention heads; must divide dim (official: 1)")

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> "SASRecParams":
        if self.dim % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide dim={self.dim}")
        return self


@register_student("sasrec")
class SASRec(SequentialStudent):
    paper = "Kang & McAuley, ICDM 2018"
    params_cls = SASRecParams

    def __init__(self, n_items: int, max_len: int = 10, dim: int = 64, dropout: float = 0.1,
                 n_layers: int = 1, n_heads: int = 1):
        super().__init__(n_items, max_len, dim, dropout)
        self._init_kwargs.update(n_layers=n_layers, n_heads=n_heads)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.emb_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([_Block(dim, n_heads, dropout) for _ in range(n_layers)])
        self.ln_out = nn.LayerNorm(dim)
        causal = torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)
        self._make_output()

    @property
    def hidden_dim(self) -> int:
        return self.dim

    def _prepare(self, seq: torch.Tensor):
        L = seq.shape[1]
        mask = self.pad_mask(seq)  # [B, L, 1]
        x = self.embed_items(seq) + self.pos_emb.weight[:L]
        x = self.emb_drop(x) * mask
        keypad = seq == self.n_items  # [B, L]
        blocked = self.causal[:L, :L][None, None] | keypad[:, None, None, :]
        attn_bias = torch.zeros(blocked.shape, dtype=x.dtype, device=x.device).masked_fill(blocked, -1e9)
        return x, mask, attn_bias, mask.unsqueeze(1)  # qmask [B, 1, L, 1]

    def sequence_states(self, seq: torch.Tensor) -> torch.Tensor:
        """Output at every position, [B, L, D] (before the final LayerNorm's gather; padded positions are 0)."""
        x, mask, attn_bias, qmask = self._prepare(seq)
        for blk in self.blocks:
            x = blk(x, attn_bias, qmask) * mask
        return self.ln_out(x)

    def encode(self, seq: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        B = seq.shape[0]
        x, mask, attn_bias, qmask = self._prepare(seq)
        for blk in self.blocks[:-1]:
            x = blk(x, attn_bias, qmask) * mask
        # the state is the output at len-1: the last block only needs that query (same value as computing all)
        pos = lens.clamp(min=1) - 1
        x = self.blocks[-1](x, attn_bias, qmask, q_pos=pos) * mask.gather(1, pos.view(B, 1, 1))
        return self.ln_out(x.squeeze(1))

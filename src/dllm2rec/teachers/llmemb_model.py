"""The ``llm-emb`` teacher's configuration, model and scoring helpers (see :mod:`dllm2rec.teachers.llmemb`).

``LLMEmbSeqModel`` scores items from adapted frozen title embeddings. Training (``llmemb_fit.train_model``) either
runs the adapter over all N items and takes the full softmax (``item_loss="full"``, the shipped recipe), or, for
large catalogues, over only the items a batch touches and takes a sampled softmax (``item_loss="sampled"``): the
batch's history items, its labels and ``negatives`` uniformly sampled items, with the logQ correction, so a step's
cost does not grow with N. ``item_loss="auto"`` picks sampled above ``sampled_above`` items.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dllm2rec.errors import ConfigError
from dllm2rec.evaluation.metrics import metrics_from_ranks
from dllm2rec.evaluation.protocol import history_mask, rank_targets

ITEM_LOSSES = ("auto", "full", "sampled")


@dataclass
class LLMEmbConfig:
    encoder: str = "minilm"
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    id_emb: bool = False           # pure LLM-embedding items by default (see docs/llm_emb_teacher.md)
    item_bias: bool = True
    adapter: str = "mlp"           # "mlp" (384 -> 2d -> d) | "linear" (384 -> d: items stay a linear map of the text)
    all_positions: bool = False   # CE at every prefix position too (SASRec-style) instead of the last one only
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 256
    epochs: int = 40
    patience: int = 3
    mask_history: str = "auto"    # "auto" (chosen on validation) | "on" | "off"
    cv_folds: int = 0             # 0/1: score training rows with the full model; K >= 2: K-fold cross-fitting
    top_n: int = 20
    pop_tau: float = 0.0          # rank by score − τ·log(1 + training count) (logit adjustment; 0 = off)
    seed: int = 0
    threads: int = 1
    eval_batch: int = 1024
    item_loss: str = "auto"       # "full" softmax | "sampled" softmax | "auto": sampled above `sampled_above` items
    negatives: int = 2048         # sampled mode: uniform negatives per step (shared by the batch, + in-batch labels)
    sampled_above: int = 10000    # auto: catalogues with more items than this train with the sampled softmax

    def __post_init__(self) -> None:
        if self.mask_history not in ("auto", "on", "off"):
            raise ConfigError(f"mask_history must be auto/on/off, got {self.mask_history!r}")
        if self.dim % self.n_heads:
            raise ConfigError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.cv_folds < 0 or self.cv_folds == 1:
            self.cv_folds = 0
        if self.top_n < 1:
            raise ConfigError("top_n must be >= 1")
        if self.pop_tau < 0:
            raise ConfigError(f"pop_tau must be >= 0, got {self.pop_tau}")
        if self.adapter not in ("mlp", "linear"):
            raise ConfigError(f"adapter must be mlp or linear, got {self.adapter!r}")
        if self.item_loss not in ITEM_LOSSES:
            raise ConfigError(f"item_loss must be one of {', '.join(ITEM_LOSSES)}, got {self.item_loss!r}")
        if self.negatives < 1:
            raise ConfigError(f"negatives must be >= 1, got {self.negatives}")

    def resolve_item_loss(self, n_items: int) -> tuple[str, str]:
        """(mode, why): the softmax a fit over ``n_items`` items uses."""
        if self.item_loss != "auto":
            return self.item_loss, f"item_loss={self.item_loss} (set explicitly)"
        if n_items > self.sampled_above:
            return "sampled", f"auto: {n_items} items > sampled_above={self.sampled_above}"
        return "full", f"auto: {n_items} items <= sampled_above={self.sampled_above}"


class LLMEmbSeqModel(nn.Module):
    """Causal transformer over adapted frozen title embeddings. Exposes ``n_items``/``encode``/``score_all`` so the
    students' evaluation protocol (``dllm2rec.evaluation.protocol.rank_targets``) runs on it unchanged."""

    def __init__(self, title_emb: np.ndarray | torch.Tensor, max_len: int = 10, dim: int = 64, n_layers: int = 2,
                 n_heads: int = 2, dropout: float = 0.2, id_emb: bool = True, item_bias: bool = True,
                 adapter: str = "mlp"):
        super().__init__()
        z = torch.as_tensor(np.asarray(title_emb, dtype=np.float32))
        z = z - z.mean(0, keepdim=True)
        z = z / z.pow(2).mean().sqrt().clamp(min=1e-8)  # unit RMS: encoders differ wildly in scale
        self.register_buffer("title", z, persistent=True)
        self.n_items, self.max_len, self.dim = int(z.shape[0]), int(max_len), int(dim)
        if adapter == "linear":
            self.adapter = nn.Sequential(nn.Linear(z.shape[1], dim), nn.LayerNorm(dim))
        else:
            self.adapter = nn.Sequential(nn.Linear(z.shape[1], 2 * dim), nn.GELU(), nn.Dropout(dropout),
                                         nn.Linear(2 * dim, dim), nn.LayerNorm(dim))
        self.id_emb = nn.Embedding(self.n_items, dim) if id_emb else None
        if self.id_emb is not None:
            nn.init.normal_(self.id_emb.weight, 0.0, 0.02)
        self.bias = nn.Parameter(torch.zeros(self.n_items)) if item_bias else None
        self.bos = nn.Parameter(torch.randn(dim) * 0.02)
        self.pos = nn.Embedding(max_len + 1, dim)
        nn.init.normal_(self.pos.weight, 0.0, 0.02)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, n_heads, 2 * dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(dim)
        causal = torch.triu(torch.full((max_len + 1, max_len + 1), float("-inf")), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)
        self._reps: torch.Tensor | None = None  # cached item representations in eval mode
        # popularity adjustment subtracted when *ranking* (eval mode only; training never sees it), see pop_tau
        self.rank_offset: torch.Tensor | None = None

    def item_reps(self) -> torch.Tensor:
        if not self.training and self._reps is not None:
            return self._reps
        e = self.adapter(self.title)
        if self.id_emb is not None:
            e = e + self.id_emb.weight
        if not self.training:
            self._reps = e
        return e

    def reps_for(self, ids: torch.Tensor) -> torch.Tensor:
        """Representations of the items ``ids`` only ([K, d]; the adapter runs over K titles, not N)."""
        e = self.adapter(self.title[ids])
        if self.id_emb is not None:
            e = e + self.id_emb(ids)
        return e

    def train(self, mode: bool = True):
        self._reps = None
        return super().train(mode)

    def hidden(self, seq: torch.Tensor, reps: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] right-padded ids -> [B, L+1, d]; position j is the state after the first j history items."""
        B, L = seq.shape
        reps = self.item_reps() if reps is None else reps
        table = torch.cat([reps, reps.new_zeros(1, self.dim)])  # PAD -> 0
        x = torch.cat([self.bos.expand(B, 1, self.dim), table[seq]], 1) + self.pos.weight[: L + 1]
        h = self.encoder(self.drop(x), mask=self.causal[: L + 1, : L + 1], is_causal=True)
        return self.ln(h)

    def encode(self, seq: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        h = self.hidden(seq)
        return h[torch.arange(seq.shape[0], device=seq.device), lens.clamp(min=0, max=seq.shape[1])]

    def score_all(self, state: torch.Tensor, reps: torch.Tensor | None = None) -> torch.Tensor:
        reps = self.item_reps() if reps is None else reps
        s = state @ reps.T
        if self.bias is not None:
            s = s + self.bias
        if self.rank_offset is not None and not self.training:
            s = s - self.rank_offset
        return s

    def score_items(self, state: torch.Tensor, reps: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """[B, K] scores of the items ``ids`` whose representations are ``reps`` [K, d] (training-time, no offset)."""
        s = state @ reps.T
        return s + self.bias[ids] if self.bias is not None else s

    def forward(self, seq: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return self.score_all(self.encode(seq, lens))


# ---------------------------------------------------------------------------------------------------- helpers
@torch.inference_mode()
def score_rows(model: LLMEmbSeqModel, split, rows: np.ndarray | None = None, mask: bool = True, top_n: int = 20,
               batch: int = 1024):
    """Top-n ids and distances (−log softmax prob), target rank (0-based, ties pessimistic) and target distance."""
    model.eval()
    idx = np.arange(len(split)) if rows is None else np.asarray(rows)
    n = model.n_items
    ids, dists, tds, ranks = [], [], [], []
    reps = model.item_reps()
    for s in range(0, len(idx), batch):
        b = torch.from_numpy(idx[s:s + batch])
        seq = torch.from_numpy(split.seq)[b]
        lens = torch.from_numpy(split.len)[b]
        tgt = torch.from_numpy(split.target)[b]
        sc = model.score_all(model.encode(seq, lens), reps)
        t = sc.gather(1, tgt[:, None])
        if mask:
            m = history_mask(seq, n)
            sc_rank = sc.masked_fill(m, float("-inf"))
        else:
            sc_rank = sc
        lse = torch.logsumexp(sc_rank, 1, keepdim=True)
        # the target always stays rankable and inside the softmax (a no-op when it is not in the history)
        tin = sc_rank.gather(1, tgt[:, None]) == float("-inf")
        lse_t = torch.where(tin, torch.logaddexp(lse, t), lse)
        ranks.append((sc_rank >= t).sum(1) - 1 + tin.view(-1).long())
        v, i = sc_rank.topk(min(top_n, n), dim=1)
        d = (lse - v).clamp(min=0)
        dead = torch.isinf(d)
        if bool(dead.any()):  # fewer non-history items than top_n (tiny catalogues): the list's tail is masked
            # history items with probability 0; the artifacts' contract is finite distances, so they get the row's
            # worst finite one (they rank last either way) instead of +inf
            worst = torch.where(dead, torch.zeros_like(d), d).amax(1, keepdim=True)
            d = torch.where(dead, worst, d)
        ids.append(i.numpy())
        dists.append(d.numpy())
        tds.append((lse_t - t).view(-1).clamp(min=0).numpy())
    cat = np.concatenate
    return (cat(ids).astype(np.int64), cat(dists).astype(np.float32), cat(tds).astype(np.float32),
            torch.cat(ranks).numpy().astype(np.float64))


def popularity_offset(dataset, tau: float) -> torch.Tensor | None:
    """τ·log(1 + n_i), n_i = item i's count as a training target; None for τ = 0.

    Logit adjustment (Menon et al., ICLR 2021): ranking by ŷ_i − τ·log(1 + n_i) moves the teacher's lists away from
    the popular items every sequential student already ranks high, towards the complementary items DLLM2Rec's
    ranking distillation feeds on (the paper's BIGRec teacher shares 1–4 % of the student's top-20). τ is chosen on
    validation (``benchmarks/teacher_debias.py``); the distances in the artifacts are those of the adjusted scores.
    """
    if not tau:
        return None
    return float(tau) * torch.log1p(torch.as_tensor(dataset.item_counts("train"), dtype=torch.float32))


def _ndcg20(ranks: np.ndarray) -> float:
    return metrics_from_ranks(ranks, ks=(20,))["full/NDCG@20"]


def _eval_ranks(model, split, mask: bool, batch: int) -> np.ndarray:
    return rank_targets(model, split, batch=batch, exclude_history=mask).numpy().astype(np.float64)


def _folds(split, k: int, seed: int) -> np.ndarray:
    """Fold id per training row: by user when known (no user's windows straddle folds), else contiguous blocks."""
    n = len(split)
    if split.user is not None:
        users = np.unique(split.user)
        rng = np.random.default_rng(seed)
        f_of_user = dict(zip(users.tolist(), rng.permutation(len(users)) % k))
        return np.asarray([f_of_user[u] for u in split.user.tolist()], dtype=np.int64)
    return (np.arange(n) * k // max(n, 1)).astype(np.int64)

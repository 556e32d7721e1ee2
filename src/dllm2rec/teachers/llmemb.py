"""LLM-embedding sequential teacher (``llm-emb``) — NOT BIGRec.

A CPU-trainable LLM-based teacher in the style of LLMEmb / LLM-ESR: every item is represented by a FROZEN title
embedding from a language model (all-MiniLM-L6-v2 or SmolLM2-135M, see ``encoders.py``) passed through a small
trainable adapter, and a causal transformer over the user's history scores all items:

    z_i  = frozen encoder(title_i)                         [N, E]  (centred, scaled to unit RMS)
    e_i  = LN(W2 · GELU(W1 · z_i)) (+ b_i, optional ID embedding)   [N, d]
    h_s  = LN(Transformer([BOS, e_{i1} .. e_{in}] + pos))[n]         (2 layers, 2 heads, pre-LN, causal)
    ŷ_si = h_s · e_i + c_i                                   (tied: the same e_i on both sides)

Trained with full-softmax cross-entropy over all N items (AdamW), early-stopped on VALIDATION NDCG@20 only.

Artifacts (the ``TeacherArtifacts`` contract, exactly what BIGRec emits):
- ``item_emb``   the frozen title embeddings z_i (fp16) — the language knowledge embedding distillation transfers;
- ``topk_ids``   the top-n items per training row by ŷ (history items masked when ``mask_history``);
- ``topk_dist``  d_si = logsumexp_j ŷ_sj − ŷ_si = −log p_teacher(i | s) (softmax over the ranked items): ascending
                 with rank, ≥ 0, and exp(−d) is the teacher's probability;
- ``target_dist`` the same for the true target (the target always stays in the softmax, even when masking);
- ``covered``    all True.
With ``cv_folds = K ≥ 2`` the training rows are scored by cross-fitting: K models, each trained on the other folds
(folds by user when the split has users, else contiguous row blocks), score the held-out fold, so the student never
receives rankings of rows the teacher memorised. Valid/test numbers always come from the model trained on all rows.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dllm2rec.errors import ConfigError
from dllm2rec.registry import register_teacher

TEACHER_NAME = "llm-emb"
TEACHER_KIND = "llm-emb-seq"
LABEL = "LLM-embedding sequential teacher (frozen title embeddings + adapter + causal transformer; not BIGRec)"


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

    def forward(self, seq: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return self.score_all(self.encode(seq, lens))


# ---------------------------------------------------------------------------------------------------- helpers
def history_mask(seq: torch.Tensor, n_items: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """[B, N] bool, True at items of each row's history (PAD ignored); ``keep`` [B] ids are never masked."""
    hist = seq.masked_fill(seq == n_items, 0)
    m = torch.zeros(seq.shape[0], n_items, dtype=torch.bool, device=seq.device).scatter_(1, hist, seq != n_items)
    if keep is not None:
        m.scatter_(1, keep[:, None], False)
    return m


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
        ids.append(i.numpy())
        dists.append((lse - v).clamp(min=0).numpy())
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
    from dllm2rec.evaluation.metrics import metrics_from_ranks

    return metrics_from_ranks(ranks, ks=(20,))["full/NDCG@20"]


def _eval_ranks(model, split, mask: bool, batch: int) -> np.ndarray:
    from dllm2rec.evaluation.protocol import rank_targets

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


def train_model(title_emb: np.ndarray, train, valid, n_items: int, max_len: int, cfg: LLMEmbConfig,
                rows: np.ndarray | None = None,
                log: Callable[[str], None] | None = None) -> tuple[LLMEmbSeqModel, dict]:
    """Train one model on ``train`` (optionally only ``rows``), early-stopped on valid NDCG@20; return best model."""
    log = log or (lambda m: None)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = LLMEmbSeqModel(title_emb, max_len, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.dropout, cfg.id_emb,
                           cfg.item_bias, cfg.adapter)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    seq_all = torch.from_numpy(train.seq)
    len_all = torch.from_numpy(train.len)
    tgt_all = torch.from_numpy(train.target)
    pool = np.arange(len(train)) if rows is None else np.asarray(rows)
    es_mask = cfg.mask_history != "off"
    best, best_state, best_ep, bad = -1.0, None, 0, 0
    hist: list[dict] = []
    t0 = time.time()
    for ep in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.from_numpy(rng.permutation(pool))
        tot, nb = 0.0, 0
        for s in range(0, len(perm), cfg.batch_size):
            b = perm[s:s + cfg.batch_size]
            seq, lens, tgt = seq_all[b], len_all[b], tgt_all[b]
            reps = model.item_reps()
            h = model.hidden(seq, reps)
            if cfg.all_positions:
                L = seq.shape[1]
                # labels per position j: the (j+1)-th history item for j < len, the target at j = len, else ignore
                lab = torch.full((len(b), L + 1), -100, dtype=torch.long)
                pos = torch.arange(L + 1)[None, :]
                nxt = torch.cat([seq, seq.new_full((len(b), 1), n_items)], 1)
                lab = torch.where(pos < lens[:, None], nxt, lab)
                lab[torch.arange(len(b)), lens] = tgt
                logits = model.score_all(h.reshape(-1, model.dim), reps)
                loss = F.cross_entropy(logits, lab.reshape(-1), ignore_index=-100)
            else:
                state = h[torch.arange(len(b)), lens]
                loss = F.cross_entropy(model.score_all(state, reps), tgt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item()
            nb += 1
        ranks = _eval_ranks(model, valid, es_mask, cfg.eval_batch)
        nd = _ndcg20(ranks)
        hist.append({"epoch": ep, "loss": round(tot / max(nb, 1), 4), "valid_ndcg20": round(nd, 5),
                     "seconds": round(time.time() - t0, 1)})
        log(f"epoch {ep}: loss {tot / max(nb, 1):.4f} valid NDCG@20 {nd:.4f} ({time.time() - t0:.0f}s)")
        if nd > best:
            best, best_state, best_ep, bad = nd, copy.deepcopy(model.state_dict()), ep, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, {"best_epoch": best_ep, "best_valid_ndcg20": round(best, 5), "epochs_run": len(hist),
                   "train_seconds": round(time.time() - t0, 1), "history": hist}


# ---------------------------------------------------------------------------------------------------- teacher
@register_teacher(TEACHER_NAME)
class LLMEmbTeacher:
    """The LLM-embedding sequential teacher. ``fit(dataset)`` then ``artifacts(dataset)`` (see module docstring)."""

    label = LABEL
    kind = TEACHER_KIND

    def __init__(self, config: LLMEmbConfig | None = None, **kwargs):
        self.cfg = config or LLMEmbConfig(**kwargs)
        self.model: LLMEmbSeqModel | None = None
        self.title_emb: np.ndarray | None = None
        self.mask: bool = self.cfg.mask_history != "off"
        self.info: dict = {}
        self.fold_models: list[tuple[np.ndarray, LLMEmbSeqModel]] = []  # (held-out rows, model) with cv_folds >= 2
        self.log: Callable[[str], None] = lambda m: None

    # ------------------------------------------------------------------ training
    def fit(self, dataset, title_emb: np.ndarray | None = None, log: Callable[[str], None] | None = None):
        from dllm2rec.teachers.encoders import encode_titles

        cfg = self.cfg
        self.log = log or self.log
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        t0 = time.time()
        self.title_emb = encode_titles(dataset.titles, cfg.encoder) if title_emb is None else np.asarray(title_emb)
        if self.title_emb.shape[0] != dataset.n_items:
            raise ConfigError(f"title embeddings have {self.title_emb.shape[0]} rows, "
                              f"dataset has {dataset.n_items} items")
        enc_s = time.time() - t0
        self.log(f"[llm-emb] title embeddings {self.title_emb.shape} from '{cfg.encoder}' in {enc_s:.1f}s")
        train, valid = dataset["train"], dataset["valid"]
        self.model, info = train_model(self.title_emb, train, valid, dataset.n_items, dataset.max_len, cfg,
                                       log=lambda m: self.log(f"[llm-emb full] {m}"))
        if cfg.mask_history == "auto":
            on = _ndcg20(_eval_ranks(self.model, valid, True, cfg.eval_batch))
            off = _ndcg20(_eval_ranks(self.model, valid, False, cfg.eval_batch))
            self.mask = on >= off
            info["mask_choice"] = {"valid_ndcg20_masked": round(on, 5), "valid_ndcg20_unmasked": round(off, 5)}
        else:
            self.mask = cfg.mask_history == "on"
        info["encode_seconds"] = round(enc_s, 1)
        self.info = info
        self.fold_models = []
        if cfg.cv_folds >= 2:
            folds = _folds(train, cfg.cv_folds, cfg.seed)
            fold_info = []
            for f in range(cfg.cv_folds):
                held = np.nonzero(folds == f)[0]
                m, fi = train_model(self.title_emb, train, valid, dataset.n_items, dataset.max_len, cfg,
                                    rows=np.nonzero(folds != f)[0],
                                    log=lambda msg, f=f: self.log(f"[llm-emb fold {f + 1}/{cfg.cv_folds}] {msg}"))
                self.fold_models.append((held, m))
                fold_info.append({k: v for k, v in fi.items() if k != "history"} | {"rows_held_out": int(len(held))})
            self.info["folds"] = fold_info
        self.info["fit_seconds"] = round(time.time() - t0, 1)
        self.set_pop_tau(cfg.pop_tau, dataset)
        return self

    def set_pop_tau(self, tau: float, dataset) -> "LLMEmbTeacher":
        """Rank with the popularity adjustment τ (see :func:`popularity_offset`); the trained weights are untouched."""
        self._need_model()
        self.cfg.pop_tau = float(tau)
        off = popularity_offset(dataset, tau)
        for m in [self.model, *(fm for _, fm in self.fold_models)]:
            m.rank_offset = off
        return self

    # ------------------------------------------------------------------ evaluation
    @property
    def protocol(self) -> str:
        """``full-excl`` when the teacher ranks with the history masked, else ``full`` (the metric-key prefix)."""
        from dllm2rec.evaluation.protocol import protocol_name

        return protocol_name(self.mask)

    def evaluate(self, dataset, split: str = "test", ks=(1, 5, 10, 20)) -> dict:
        """Full-ranking metrics keyed by protocol (``full-excl/HR@20`` when history is masked)."""
        from dllm2rec.evaluation.metrics import metrics_from_ranks

        self._need_model()
        ranks = _eval_ranks(self.model, dataset[split], self.mask, self.cfg.eval_batch)
        return metrics_from_ranks(ranks, ks=ks, protocol=self.protocol)

    def topk(self, dataset, split: str = "test", n: int | None = None) -> np.ndarray:
        self._need_model()
        ids, _, _, _ = score_rows(self.model, dataset[split], mask=self.mask, top_n=n or self.cfg.top_n,
                                  batch=self.cfg.eval_batch)
        return ids

    # ------------------------------------------------------------------ persistence (the full model only)
    def save_model(self, path, dataset=None) -> None:
        """Write the trained full model (``model.safetensors`` + ``teacher.json``) for later scoring/benchmarks."""
        import json
        from pathlib import Path

        from safetensors.torch import save_file

        from dllm2rec.utils.io import atomic_dir

        self._need_model()
        meta = {"teacher": TEACHER_NAME, "kind": TEACHER_KIND, "config": asdict(self.cfg), "mask": bool(self.mask),
                "n_items": self.model.n_items, "max_len": self.model.max_len, "title_dim": int(self.title_emb.shape[1]),
                "info": self.info}
        if dataset is not None:
            meta["dataset_fingerprint"] = dataset.fingerprint()
        with atomic_dir(Path(path)) as tmp:
            state = {k: v.contiguous() for k, v in self.model.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"))
            (tmp / "teacher.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

    @classmethod
    def load_model(cls, path, dataset=None) -> "LLMEmbTeacher":
        import json
        from pathlib import Path

        from safetensors.torch import load_file

        path = Path(path)
        meta = json.loads((path / "teacher.json").read_text(encoding="utf-8"))
        if dataset is not None and meta.get("dataset_fingerprint") not in (None, dataset.fingerprint()):
            raise ConfigError(f"{path}: teacher trained on dataset {meta['dataset_fingerprint']}, "
                              f"not {dataset.fingerprint()}")
        t = cls(LLMEmbConfig(**meta["config"]))
        state = load_file(str(path / "model.safetensors"))
        c = t.cfg
        t.model = LLMEmbSeqModel(np.zeros((meta["n_items"], meta["title_dim"]), np.float32), meta["max_len"], c.dim,
                                 c.n_layers, c.n_heads, c.dropout, c.id_emb, c.item_bias, c.adapter)
        t.model.load_state_dict(state)
        t.model.eval()
        t.mask, t.info = bool(meta["mask"]), meta.get("info", {})
        if dataset is not None:
            from dllm2rec.teachers.encoders import encode_titles

            t.title_emb = encode_titles(dataset.titles, c.encoder)
            t.set_pop_tau(c.pop_tau, dataset)
        return t

    def _need_model(self) -> None:
        if self.model is None:
            raise ConfigError("the llm-emb teacher is not trained; call fit(dataset) first")

    # ------------------------------------------------------------------ artifacts
    def artifacts(self, dataset, **extra_manifest):
        """Validated ``TeacherArtifacts`` for every training row (cross-fitted when ``cv_folds >= 2``)."""
        from dllm2rec.evaluation.metrics import metrics_from_ranks
        from dllm2rec.teachers.artifacts import TeacherArtifacts
        from dllm2rec.teachers.encoders import encoder_info

        self._need_model()
        cfg, train = self.cfg, dataset["train"]
        t0 = time.time()
        ids, dist, tdist, ranks = score_rows(self.model, train, mask=self.mask, top_n=cfg.top_n, batch=cfg.eval_batch)
        insample = {"train_top1_eq_target": round(float((ids[:, 0] == train.target).mean()), 5),
                    **{f"train_{k.split('/')[1]}": round(v, 5) for k, v in metrics_from_ranks(ranks, ks=(20,)).items()}}
        stats = {"insample": insample}
        scoring = "in-sample (the full model scores the rows it was trained on)"
        if self.fold_models:
            for held, m in self.fold_models:
                i2, d2, t2, r2 = score_rows(m, train, rows=held, mask=self.mask, top_n=cfg.top_n, batch=cfg.eval_batch)
                ids[held], dist[held], tdist[held], ranks[held] = i2, d2, t2, r2
            stats["crossfit"] = {"train_top1_eq_target": round(float((ids[:, 0] == train.target).mean()), 5),
                                 **{f"train_{k.split('/')[1]}": round(v, 5)
                                    for k, v in metrics_from_ranks(ranks, ks=(20,)).items()}}
            scoring = f"{cfg.cv_folds}-fold cross-fitted (each row scored by a model that never trained on it)"
        score_s = time.time() - t0
        valid = self.evaluate(dataset, "valid", ks=(10, 20))
        test = self.evaluate(dataset, "test", ks=(10, 20))
        manifest = {
            "teacher": TEACHER_NAME, "kind": TEACHER_KIND, "label": LABEL,
            **encoder_info(cfg.encoder),
            "item_emb_source": f"frozen {cfg.encoder} title embeddings (fp16), not the trained adapter output",
            "distance": "d = logsumexp(scores over ranked items) - score = -log p_teacher(item | history); "
                        "smaller is better, exp(-d) is the teacher's probability",
            "target_distance": "same d for the true target (the target is always kept in the softmax)",
            "mask_history": bool(self.mask),
            "pop_tau": float(cfg.pop_tau),
            "ranking": "score" if not cfg.pop_tau else f"score - {cfg.pop_tau:g} * log(1 + training-target count)",
            "train_row_scoring": scoring,
            "config": asdict(cfg),
            "fit": {k: v for k, v in self.info.items() if k != "history"},
            "train_row_stats": stats,
            "teacher_valid": {k: round(v, 5) for k, v in valid.items()},
            "teacher_test": {k: round(v, 5) for k, v in test.items()},
            "score_seconds": round(score_s, 1),
        }
        manifest.update(extra_manifest)
        art = TeacherArtifacts.from_rankings(self.title_emb.astype(np.float16), ids, dist,
                                             np.ones(len(train), dtype=bool), tdist, **manifest)
        return art.validate(dataset)


def fit_and_save(dataset, out, config: LLMEmbConfig, log: Callable[[str], None] | None = None, model_dir=None,
                 **extra):
    """Train the teacher on ``dataset``, write validated artifacts to ``out`` (and the full model to ``model_dir``
    when given); return (teacher, artifacts)."""
    t0 = time.time()
    teacher = LLMEmbTeacher(config).fit(dataset, log=log)
    art = teacher.artifacts(dataset, **extra)
    art.manifest["total_seconds"] = round(time.time() - t0, 1)
    art.save(out, dataset)
    if model_dir is not None:
        teacher.save_model(model_dir, dataset)
    return teacher, art

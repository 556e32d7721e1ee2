"""LLM-embedding sequential teacher (``llm-emb``) — NOT BIGRec.

A CPU-trainable LLM-based teacher in the style of LLMEmb / LLM-ESR: every item is represented by a FROZEN title
embedding from a language model (all-MiniLM-L6-v2 or SmolLM2-135M, see ``encoders.py``) passed through a small
trainable adapter, and a causal transformer over the user's history scores all items:

    z_i  = frozen encoder(title_i)                         [N, E]  (centred, scaled to unit RMS)
    e_i  = LN(W2 · GELU(W1 · z_i)) (+ b_i, optional ID embedding)   [N, d]
    h_s  = LN(Transformer([BOS, e_{i1} .. e_{in}] + pos))[n]         (2 layers, 2 heads, pre-LN, causal)
    ŷ_si = h_s · e_i + c_i                                   (tied: the same e_i on both sides)

Trained with cross-entropy over the items (AdamW), early-stopped on VALIDATION NDCG@20 only: the full softmax over
all N items up to ``sampled_above`` items, a sampled softmax with the logQ correction above (``item_loss``; the loop,
checkpoints and ``resume`` live in ``llmemb_fit.py``, the config and model in ``llmemb_model.py``).

Artifacts (the ``TeacherArtifacts`` contract, exactly what BIGRec emits):
- ``item_emb``   the frozen title embeddings z_i (fp16) — the language knowledge embedding distillation transfers;
- ``topk_ids``   the top-n items per training row by ŷ (history items masked when ``mask_history``);
- ``topk_dist``  d_si = logsumexp_j ŷ_sj − ŷ_si = −log p_teacher(i | s) (softmax over the ranked items): ascending
                 with rank, ≥ 0, and exp(−d) is the teacher's probability;
- ``target_dist`` the same for the true target (the target always stays in the softmax, even when masking);
- ``covered``    True for the scored rows: all of them, or a ``budget`` / ``rows_fraction`` subset (the rest get
                 ids −1 and NaN distances, as ``teacher generate --budget`` leaves BIGRec's).
With ``cv_folds = K ≥ 2`` the training rows are scored by cross-fitting: K models, each trained on the other folds
(folds by user when the split has users, else contiguous row blocks), score the held-out fold, so the student never
receives rankings of rows the teacher memorised. Valid/test numbers always come from the model trained on all rows.

Text-based encoders refuse datasets whose titles are mostly placeholders (``meta["placeholder_titles"]`` /
``meta["placeholder_title_ids"]`` written by the importers: more than ``PLACEHOLDER_REFUSE_SHARE`` of the items)
unless ``allow_placeholder_titles``; fewer are a logged warning and a manifest field.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from pydantic import Field

from dllm2rec.errors import ConfigError
from dllm2rec.evaluation.metrics import metrics_from_ranks
from dllm2rec.evaluation.protocol import protocol_name
from dllm2rec.registry import register_teacher
from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.teachers.base import Teacher, TeacherConfig, dataset_identity, train_positions
from dllm2rec.teachers.bigrec.generate import select_rows
from dllm2rec.teachers.encoders import encode_titles, encoder_info
from dllm2rec.teachers.llmemb_fit import has_checkpoint, train_model
from dllm2rec.teachers.llmemb_model import (
    ITEM_LOSSES,
    LLMEmbConfig,
    LLMEmbSeqModel,
    _eval_ranks,
    _folds,
    _ndcg20,
    popularity_offset,
    score_rows,
)
from dllm2rec.utils.io import atomic_dir, read_json

TEACHER_NAME = "llm-emb"
TEACHER_KIND = "llm-emb-seq"
LABEL = "LLM-embedding sequential teacher (frozen title embeddings + adapter + causal transformer; not BIGRec)"
PLACEHOLDER_REFUSE_SHARE = 0.01  # more than 1 % placeholder titles: refuse (ML-100K's one "unknown" only warns)
# config fields that do not change what training computes (excluded from the checkpoint key)
_NOT_TRAINING = ("threads", "eval_batch", "top_n", "pop_tau")


def placeholder_titles(dataset, encoder: str, allow: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Refuse (ConfigError) or note items without a real title; {} when titles are fine or not used."""
    ids = list(dataset.meta.get("placeholder_title_ids", []) or [])
    n = max(int(dataset.meta.get("placeholder_titles", 0) or 0), len(ids))
    if encoder == "random" or n == 0:
        return {}
    share = n / max(dataset.n_items, 1)
    eg = ", ".join(str(i) for i in ids[:5]) + (", ..." if len(ids) > 5 else "")
    what = (f"dataset '{dataset.name}': {n:,} of {dataset.n_items:,} items ({share:.1%}) have placeholder titles"
            + (f" (ids {eg})" if ids else ""))
    if share > PLACEHOLDER_REFUSE_SHARE and not allow:
        raise ConfigError(f"{what}; the llm-emb teacher would encode ids, not titles — import real titles, or pass "
                          "--allow-placeholder-titles to fit anyway")
    (log or (lambda m: None))(f"[llm-emb] warning: {what}; their embeddings carry no language knowledge")
    return {"placeholder_titles": n, "placeholder_title_share": round(share, 6)}


def fit_key(cfg: LLMEmbConfig, dataset, title_emb: np.ndarray, rows: np.ndarray | None) -> str:
    """What a checkpoint must match to be resumed: training config, data, fold rows, title embeddings."""
    h = hashlib.sha256()
    c = {k: v for k, v in asdict(cfg).items() if k not in _NOT_TRAINING}
    h.update(json.dumps(c, sort_keys=True).encode())
    h.update(dataset.fingerprint().encode())
    h.update(np.ascontiguousarray(title_emb, dtype=np.float32).tobytes())
    if rows is not None:
        h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def select_train_rows(n_rows: int, budget: int | None = None, rows_fraction: float | None = None,
                      select: str = "first", seed: int = 0) -> np.ndarray:
    """Positions of the training rows to score: all, ``budget`` N, or ``rows_fraction`` (ceil) of them — the first
    ones or a seeded random sorted subset, as ``teacher generate --budget`` selects BIGRec's rows."""

    if budget is not None and rows_fraction is not None:
        raise ConfigError("pass --budget or --rows-fraction, not both")
    if budget is not None and budget < 1:
        raise ConfigError(f"--budget must be >= 1, got {budget}")
    if rows_fraction is not None:
        if not 0 < rows_fraction <= 1:
            raise ConfigError(f"--rows-fraction must be in (0, 1], got {rows_fraction}")
        budget = math.ceil(rows_fraction * n_rows)
    return select_rows(n_rows, None, budget, select, seed)


# ---------------------------------------------------------------------------------------------------- teacher
class LLMEmbTeacherConfig(TeacherConfig):
    """The typed face of :class:`LLMEmbConfig` (the dataclass the fit code uses): same fields, same defaults (a
    unit test keeps them equal), with ranges, so ``LLMEmbTeacher.from_config`` names a bad field."""

    encoder: Literal["minilm", "smollm2", "random"] = Field("minilm", description="frozen title encoder")
    dim: int = Field(64, ge=1, description="transformer / adapter width d (divisible by n_heads)")
    n_layers: int = Field(2, ge=1, description="transformer layers")
    n_heads: int = Field(2, ge=1, description="attention heads")
    dropout: float = Field(0.2, ge=0, lt=1, allow_inf_nan=False)
    id_emb: bool = Field(False, description="add a learned per-item ID embedding")
    item_bias: bool = Field(True, description="learned per-item score bias")
    adapter: Literal["mlp", "linear"] = Field("mlp", description="title adapter: mlp (E -> 2d -> d) | linear")
    all_positions: bool = Field(False, description="cross-entropy at every prefix position, not the last only")
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(0.01, ge=0, allow_inf_nan=False)
    batch_size: int = Field(256, ge=1)
    epochs: int = Field(40, ge=1, description="maximum epochs (early stopping on validation NDCG@20)")
    patience: int = Field(3, ge=0, description="epochs without a validation gain before stopping")
    mask_history: Literal["auto", "on", "off"] = Field("auto", description="mask history items when ranking")
    cv_folds: int = Field(0, ge=0, description="K >= 2: cross-fitted training-row scores; 0 = in-sample")
    top_n: int = Field(20, ge=1, description="items ranked per training row")
    pop_tau: float = Field(0.0, ge=0, allow_inf_nan=False, description="popularity logit adjustment tau")
    seed: int = 0
    threads: int = Field(1, ge=0, description="torch threads (0: leave as is)")
    eval_batch: int = Field(1024, ge=1)
    item_loss: Literal["auto", "full", "sampled"] = Field("auto", description="full | sampled softmax | auto")
    negatives: int = Field(2048, ge=1, description="sampled softmax: uniform negatives per step")
    sampled_above: int = Field(10000, ge=0, description="auto: sampled softmax above this many items")


@register_teacher(TEACHER_NAME)
class LLMEmbTeacher(Teacher):
    """The LLM-embedding sequential teacher. ``fit(dataset)`` then ``artifacts(dataset)`` (see module docstring)."""

    label = LABEL
    kind = TEACHER_KIND
    config_cls = LLMEmbTeacherConfig
    stages = ("fit", "artifacts", "evaluate")

    def __init__(self, config: LLMEmbConfig | LLMEmbTeacherConfig | Mapping | None = None, **kwargs):
        if config is not None and kwargs:
            raise ConfigError(f"teacher '{TEACHER_NAME}': pass a config or keyword fields, not both")
        if isinstance(config, LLMEmbConfig):
            self.cfg = config
        else:  # typed validation first (names the field), then the dataclass the fit code reads
            self.cfg = LLMEmbConfig(**self.validate_config(kwargs if config is None else config).model_dump())
        self.model: LLMEmbSeqModel | None = None
        self.title_emb: np.ndarray | None = None
        self.mask: bool = self.cfg.mask_history != "off"
        self.info: dict = {}
        self.fold_models: list[tuple[np.ndarray, LLMEmbSeqModel]] = []  # (held-out rows, model) with cv_folds >= 2
        self.log: Callable[[str], None] = lambda m: None
        self.title_notes: dict = {}

    # ------------------------------------------------------------------ training
    def fit(self, dataset, title_emb: np.ndarray | None = None, log: Callable[[str], None] | None = None,
            ckpt_dir=None, resume: bool = False, allow_placeholder_titles: bool = False,
            on_epoch: Callable[[str, int], None] | None = None):
        """Train on ``dataset``. ``ckpt_dir``: per-epoch checkpoints (``full/``, ``fold-k/``); ``resume`` continues
        from them (an existing checkpoint without ``resume`` is refused). ``on_epoch(model_name, epoch)`` is called
        after each epoch's checkpoint."""
        import torch

        cfg = self.cfg
        self.log = log or self.log
        if ckpt_dir is not None and not resume and has_checkpoint(ckpt_dir):
            raise ConfigError(f"{ckpt_dir}: holds a checkpoint of an earlier fit; pass --resume to continue it, "
                              "or delete it to start over")
        self.title_notes = placeholder_titles(dataset, cfg.encoder, allow_placeholder_titles, self.log)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        t0 = time.time()
        self.title_emb = encode_titles(dataset.titles, cfg.encoder, log=self.log) if title_emb is None \
            else np.asarray(title_emb)
        if self.title_emb.shape[0] != dataset.n_items:
            raise ConfigError(f"title embeddings have {self.title_emb.shape[0]} rows, "
                              f"dataset has {dataset.n_items} items")
        enc_s = time.time() - t0
        self.log(f"[llm-emb] title embeddings {self.title_emb.shape} from '{cfg.encoder}' in {enc_s:.1f}s")
        train, valid = dataset["train"], dataset["valid"]

        def run(name: str, rows=None):
            sub = None if ckpt_dir is None else Path(ckpt_dir) / name
            return train_model(self.title_emb, train, valid, dataset.n_items, dataset.max_len, cfg, rows=rows,
                               log=lambda m: self.log(f"[llm-emb {name}] {m}"), ckpt_dir=sub, resume=resume,
                               key=fit_key(cfg, dataset, self.title_emb, rows), desc=f"llm-emb {name}",
                               on_epoch=None if on_epoch is None else (lambda ep: on_epoch(name, ep)))

        self.model, info = run("full")
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
                m, fi = run(f"fold-{f + 1}-of-{cfg.cv_folds}", rows=np.nonzero(folds != f)[0])
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

        return protocol_name(self.mask)

    def evaluate(self, dataset, split: str = "test", ks=(1, 5, 10, 20)) -> dict:
        """Full-ranking metrics keyed by protocol (``full-excl/HR@20`` when history is masked)."""

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
        from pathlib import Path

        from safetensors.torch import load_file

        path = Path(path)
        meta = read_json(path / "teacher.json", ConfigError)
        if dataset is not None and meta.get("dataset_fingerprint") not in (None, dataset.fingerprint()):
            raise ConfigError(f"{path}: teacher trained on dataset {meta['dataset_fingerprint']}, "
                              f"not {dataset.fingerprint()}")
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            raise ConfigError(f"{path / 'teacher.json'}: field 'config' is missing (not a saved llm-emb model)")
        t = cls.from_config(meta["config"], str(path / "teacher.json"))
        state = load_file(str(path / "model.safetensors"))
        c = t.cfg
        t.model = LLMEmbSeqModel(np.zeros((meta["n_items"], meta["title_dim"]), np.float32), meta["max_len"], c.dim,
                                 c.n_layers, c.n_heads, c.dropout, c.id_emb, c.item_bias, c.adapter)
        t.model.load_state_dict(state)
        t.model.eval()
        t.mask, t.info = bool(meta["mask"]), meta.get("info", {})
        if dataset is not None:
            t.title_emb = encode_titles(dataset.titles, c.encoder, log=t.log)
            t.set_pop_tau(c.pop_tau, dataset)
        return t

    def save(self, path, dataset=None) -> None:
        self.save_model(path, dataset)

    @classmethod
    def load(cls, path, dataset=None) -> "LLMEmbTeacher":
        return cls.load_model(path, dataset)

    @property
    def config(self) -> LLMEmbTeacherConfig:
        return LLMEmbTeacherConfig.model_validate(asdict(self.cfg))

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def _need_model(self) -> None:
        if self.model is None:
            raise ConfigError("the llm-emb teacher is not trained; call fit(dataset) first")

    # ------------------------------------------------------------------ artifacts
    def artifacts(self, dataset, rows: np.ndarray | None = None, **extra_manifest):
        """Validated ``TeacherArtifacts``: every training row, or only positions ``rows`` (the others uncovered);
        cross-fitted when ``cv_folds >= 2``."""

        self._need_model()
        cfg, train = self.cfg, dataset["train"]
        R = len(train)
        pos = np.arange(R) if rows is None else train_positions(dataset, rows)
        t0 = time.time()
        n = min(cfg.top_n, dataset.n_items)
        ids, dist = np.full((R, n), -1, np.int64), np.full((R, n), np.nan, np.float32)
        tdist = np.full(R, np.nan, np.float32)
        ranks = np.full(R, np.nan)
        ids[pos], dist[pos], tdist[pos], ranks[pos] = score_rows(self.model, train, rows=pos, mask=self.mask,
                                                                 top_n=cfg.top_n, batch=cfg.eval_batch)

        def row_stats():
            return {"train_top1_eq_target": round(float((ids[pos, 0] == train.target[pos]).mean()), 5),
                    **{f"train_{k.split('/')[1]}": round(v, 5)
                       for k, v in metrics_from_ranks(ranks[pos], ks=(20,)).items()}}

        stats = {"insample": row_stats()}
        scoring = "in-sample (the full model scores the rows it was trained on)"
        if self.fold_models:
            for held, m in self.fold_models:
                h = np.intersect1d(held, pos)
                if len(h):
                    ids[h], dist[h], tdist[h], ranks[h] = score_rows(m, train, rows=h, mask=self.mask,
                                                                     top_n=cfg.top_n, batch=cfg.eval_batch)
            stats["crossfit"] = row_stats()
            scoring = f"{cfg.cv_folds}-fold cross-fitted (each row scored by a model that never trained on it)"
        score_s = time.time() - t0
        covered = np.zeros(R, dtype=bool)
        covered[pos] = True
        valid = self.evaluate(dataset, "valid", ks=(10, 20))
        test = self.evaluate(dataset, "test", ks=(10, 20))
        body = {
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
            "train_rows_scored": int(len(pos)),
            "item_loss": self.info.get("item_loss", "full"),
            "config": asdict(cfg),
            "fit": {k: v for k, v in self.info.items() if k != "history"},
            "train_row_stats": stats,
            "teacher_valid": {k: round(v, 5) for k, v in valid.items()},
            "teacher_test": {k: round(v, 5) for k, v in test.items()},
            "score_seconds": round(score_s, 1),
            **self.title_notes,
        }
        manifest = self.manifest(dataset, body, **extra_manifest)
        art = TeacherArtifacts.from_rankings(self.title_emb.astype(np.float16), ids, dist, covered, tdist, **manifest)
        return art.validate(dataset)


def fit_and_save(dataset, out, config: LLMEmbConfig, log: Callable[[str], None] | None = None, model_dir=None,
                 ckpt_dir=None, resume: bool = False, keep_checkpoints: bool = False, budget: int | None = None,
                 rows_fraction: float | None = None, select: str = "first", allow_placeholder_titles: bool = False,
                 on_epoch=None, **extra):
    """Train the teacher on ``dataset``, write validated artifacts to ``out`` (and the full model to ``model_dir``
    when given); return (teacher, artifacts). ``ckpt_dir``: per-epoch checkpoints, removed after success unless
    ``keep_checkpoints``; ``resume`` continues from them. ``budget`` / ``rows_fraction`` + ``select``: score only
    that many training rows (the rest uncovered)."""
    import shutil

    t0 = time.time()
    pos = None
    if budget is not None or rows_fraction is not None:
        pos = select_train_rows(len(dataset["train"]), budget, rows_fraction, select, config.seed)
    teacher = LLMEmbTeacher(config).fit(dataset, log=log, ckpt_dir=ckpt_dir, resume=resume,
                                        allow_placeholder_titles=allow_placeholder_titles, on_epoch=on_epoch)
    if pos is not None:
        extra.setdefault("train_row_selection", {"budget": budget, "rows_fraction": rows_fraction, "select": select,
                                                 "seed": config.seed, "rows": int(len(pos))})
    art = teacher.artifacts(dataset, rows=pos, **extra)
    art.manifest["total_seconds"] = round(time.time() - t0, 1)
    for k in dataset_identity(dataset):  # after total_seconds on disk, where TeacherArtifacts.save used to add them
        art.manifest[k] = art.manifest.pop(k)
    art.save(out, dataset)
    if model_dir is not None:
        teacher.save_model(model_dir, dataset)
    if ckpt_dir is not None and not keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return teacher, art

"""LLM reranker teacher (``llm-rerank``): retriever top-M + an LLM verbalizer that reads the history as text.

LlamaRec (Yue et al., 2023) / LLaRA style, docs/reranker.md. A retriever (a trained dllm2rec student such as SASRec,
or any model with the student scoring interface) proposes the top-M items of a request; the LLM (SmolLM2-135M-Instruct
by default) + LoRA reads a prompt with the history titles and the M candidates behind single-token labels
("A".."Z") and scores all M in ONE forward pass: candidate j's score is the logit of label j at the answer position
(``reranker_prompts.py``). Trained with cross-entropy over the M label logits (``reranker_fit.py``).

Full ranking (``evaluate``): the M candidates in reranked order, then every other item in the retriever's order
below them (so ranks >= M are the retriever's own and HR@K for K > M is defined); history items are excluded from
the candidates and the ranking (``exclude_history``, protocol ``full-excl``) when set.

Artifacts (the ``TeacherArtifacts`` contract) for training rows: ``topk_ids`` the reranked M candidates;
``topk_dist`` d_j = logsumexp_k s_k - s_j = -log softmax(label logits)_j (the negated scores shifted to >= 0;
ascending with rank, exp(-d) is the reranker's probability over its M candidates); ``target_dist`` the target's d
when it is a candidate, else NaN (unknown); ``covered`` the scored rows; ``item_emb`` the base LLM's last-token title
embeddings (BIGRec's item embedding, ``bigrec/ground.py``; ``item_emb="minilm"|"random"`` for others). Scoring is
sharded and resumable with BIGRec's plan/shard/lock helpers (``bigrec/generate.py``), so a killed run only redoes the
shards in flight and several workers can share one directory.

The retriever is passed in, not loaded here: students sit above teachers in the layer order (docs/architecture.md),
so the CLI loads the checkpoint and hands :class:`ModelRetriever` the model.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from pydantic import Field, model_validator

from dllm2rec.errors import ConfigError, Dllm2recError
from dllm2rec.evaluation.metrics import metrics_from_ranks
from dllm2rec.evaluation.protocol import protocol_name, rank_targets, top_k
from dllm2rec.registry import register_teacher
from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.teachers.base import Teacher, TeacherConfig, train_positions
from dllm2rec.teachers.bigrec import generate as shards
from dllm2rec.teachers.bigrec.finetune import sample_positions
from dllm2rec.teachers.bigrec.ground import grounding_encoder
from dllm2rec.teachers.bigrec.prompts import dataset_domain
from dllm2rec.teachers.encoders import encode_random
from dllm2rec.teachers.models import load_causal_lm, load_tokenizer, require_teacher_extra, resolve_model
from dllm2rec.teachers.reranker_fit import lora_model, train_reranker
from dllm2rec.teachers.reranker_prompts import DEFAULT_LABELS, label_logits, label_token_ids, row_rerank_prompts
from dllm2rec.utils.io import atomic_dir, read_json
from dllm2rec.utils.progress import progress

TEACHER_NAME = "llm-rerank"
DISTANCE = ("d = logsumexp(label logits over the M candidates) - label logit = -log p_reranker(item | history, "
            "candidates); smaller is better")


class RerankerConfig(TeacherConfig):
    model: str = Field("smollm2-135m", description="LLM: local HF dir, .gguf file or alias")
    retriever: str = Field("", description="the retriever's id (e.g. a student checkpoint dir); recorded only")
    top_n: int = Field(20, ge=1, le=64, description="M: candidates per request (the retriever's top M) = items per "
                                                    "training row in the artifacts")
    labels: str = Field(DEFAULT_LABELS, description="single-token candidate labels, one character each, M used")
    max_history: int = Field(10, ge=1, description="history titles in the prompt (the last ones)")
    max_title_chars: int = Field(80, ge=0, description="titles cut to this many characters (0 = no cut)")
    domain: str | None = Field(None, description="prompt domain (default: the dataset's)")
    exclude_history: bool = Field(True, description="history items never candidates nor ranked (full-excl)")
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      description="LoRA targets (the attention projections)")
    lora_layers: int = Field(0, ge=0, description="LoRA on the last N decoder layers only (0 = all); cheaper "
                                                  "backward")
    lr: float = Field(5e-4, gt=0.0)
    steps: int = Field(100, ge=1, description="optimizer steps")
    batch_size: int = Field(4, ge=1, description="rows per optimizer step")
    warmup_steps: int = Field(10, ge=0)
    budget_rows: int = Field(200, ge=1, description="training rows (seeded sample of rows with target in top-M)")
    seed: int = 0
    eval_batch: int = Field(4, ge=1, description="rows per scoring forward")
    save_every: int = Field(25, ge=1, description="steps between resumable checkpoints")
    item_emb: Literal["llm", "minilm", "random"] = Field("llm", description="artifact item embeddings")
    dtype: str = "float32"
    device: str = "cpu"

    @model_validator(mode="after")
    def _labels_fit(self) -> "RerankerConfig":
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("field 'labels': labels must differ")
        if len(self.labels) < self.top_n:
            raise ValueError(f"field 'labels': {len(self.labels)} labels for top_n={self.top_n} candidates")
        return self


class ModelRetriever:
    """Candidates and target ranks from any model with the student scoring interface (``encode``,
    ``output_weight``/``output_bias``, ``score_all``; a dllm2rec student, ``baselines.popularity_scorer``), through
    the one ranking module (``evaluation.protocol``)."""

    def __init__(self, model, exclude_history: bool = True, batch: int = 1024, name: str = ""):
        self.model, self.exclude_history, self.batch, self.name = model, exclude_history, batch, name

    def candidates(self, split, rows, m: int) -> np.ndarray:
        """[B, m] top-m item ids of rows ``rows`` of ``split`` (best first, ties by lower id)."""
        import torch

        rows = np.asarray(rows, dtype=np.int64)
        out = []
        for s in range(0, len(rows), self.batch):
            r = rows[s:s + self.batch]
            ids, _ = top_k(self.model, torch.from_numpy(split.seq[r]), torch.from_numpy(split.len[r]), k=m,
                           exclude_history=self.exclude_history)
            out.append(ids.numpy())
        return np.concatenate(out) if out else np.zeros((0, m), np.int64)

    def target_ranks(self, split, rows) -> np.ndarray:
        """0-based rank of each row's target among all items (pessimistic ties)."""

        return rank_targets(self.model, split, self.batch, self.exclude_history,
                            rows=np.asarray(rows, dtype=np.int64)).numpy().astype(np.float64)


def reranked(cands: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates and scores sorted by score, best first; equal scores keep the retriever's order."""
    o = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(cands, o, 1), np.take_along_axis(scores, o, 1)


def neg_log_softmax(scores: np.ndarray) -> np.ndarray:
    s = scores.astype(np.float64)
    mx = s.max(1, keepdims=True)
    lse = mx + np.log(np.exp(s - mx).sum(1, keepdims=True))
    return (lse - s).astype(np.float32)


def full_ranks(order: np.ndarray, target: np.ndarray, retriever_rank: np.ndarray) -> np.ndarray:
    """Rank of the target in [reranked candidates, then the rest in retriever order]."""
    hit = order == target[:, None]
    return np.where(hit.any(1), hit.argmax(1), np.maximum(retriever_rank, order.shape[1])).astype(np.float64)


@register_teacher(TEACHER_NAME)
class RerankerTeacher(Teacher):
    """LLM reranker (LlamaRec-style): retriever top-M, one LLM forward scores the M candidates by label logits."""

    kind = "llm-rerank"
    config_cls = RerankerConfig
    stages = ("fit", "artifacts", "evaluate")

    def __init__(self, config=None, *, retriever=None, model=None, tokenizer=None, **kwargs):
        """``retriever``: a :class:`ModelRetriever` (or anything with ``candidates``/``target_ranks``);
        ``model``/``tokenizer``: a ready LLM (tests, reuse); otherwise loaded from ``config.model`` by ``fit``."""
        super().__init__(config, **kwargs)
        self.retriever, self.llm, self.tok = retriever, model, tokenizer
        self.label_ids: list[int] | None = None
        self.fit_info: dict = {}
        self.adapter: str | None = None

    # ------------------------------------------------------------------ model
    @property
    def labels(self) -> str:
        return self.config.labels[:self.config.top_n]

    def _ref(self):
        return resolve_model(self.config.model)

    def _need(self, what: str) -> None:
        if self.retriever is None:
            raise ConfigError(f"reranker teacher: {what} needs a retriever (pass retriever=ModelRetriever(student))")
        if self.llm is None:
            raise ConfigError(f"reranker teacher: {what} needs a fitted or loaded model (fit() or load())")

    def _domain(self, dataset) -> str:
        return dataset_domain(dataset, self.config.domain)

    def prompts(self, dataset, split: str, positions, cands: np.ndarray) -> list[str]:
        c = self.config
        return row_rerank_prompts(dataset, split, positions, cands, self._domain(dataset), self.labels,
                                  c.max_history, c.max_title_chars)

    # ------------------------------------------------------------------ the contract
    def fit(self, dataset, out: str | Path | None = None, resume: bool = False, stop_after: int | None = None,
            log: Callable[[str], None] | None = None, **kwargs) -> "RerankerTeacher":
        """LoRA-train the verbalizer on ``budget_rows`` training rows whose target is in the retriever's top M."""

        require_teacher_extra()
        if self.retriever is None:
            raise ConfigError("reranker teacher: fit needs a retriever (pass retriever=ModelRetriever(student))")
        log = log or (lambda m: None)
        c = self.config
        if self.llm is None:
            ref = self._ref()
            self.tok = load_tokenizer(ref)
            self.llm = lora_model(ref, c)
        self.label_ids = label_token_ids(self.tok, self.labels)
        train = dataset["train"]
        t0 = time.perf_counter()
        cands = self.retriever.candidates(train, np.arange(len(train)), c.top_n)
        hit = (cands == train.target[:, None]).any(1)
        eligible = np.nonzero(hit)[0]
        if not len(eligible):
            raise Dllm2recError(f"dataset '{dataset.name}': no training row has its target in the retriever's top "
                                f"{c.top_n}; nothing to train the reranker on")
        pos = eligible[sample_positions(len(eligible), c.budget_rows, c.seed)]
        log(f"[reranker] retriever top-{c.top_n} holds the target in {hit.mean():.1%} of {len(train):,} training rows "
            f"({time.perf_counter() - t0:.1f} s); training on {len(pos)} of them")
        prompts = self.prompts(dataset, "train", pos, cands[pos])
        targets = (cands[pos] == train.target[pos][:, None]).argmax(1)
        meta = {"teacher": TEACHER_NAME, "dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint(),
                "train_positions": pos.tolist(), "retriever_train_hit_rate": round(float(hit.mean()), 5)}
        res = train_reranker(self.llm, self.tok, prompts, targets, self.label_ids, c, out, resume, stop_after, meta)
        res["retriever_train_hit_rate"] = meta["retriever_train_hit_rate"]
        res["mean_prompt_tokens"] = round(float(np.mean([len(self.tok(p)["input_ids"]) for p in prompts[:64]])), 1)
        self.fit_info = res
        if out is not None and res["finished"]:
            self.adapter = str(Path(out) / "adapter")
        return self

    def score(self, dataset, split: str, rows, on_batch=None) -> tuple[np.ndarray, np.ndarray]:
        """(candidates [B, M] in retriever order, label logits [B, M]) for row positions ``rows`` of ``split``;
        ``on_batch(rows)`` after each forward (heartbeats, outer progress bars), else a progress bar of its own."""
        import torch

        self._need("scoring")
        if self.label_ids is None:
            self.label_ids = label_token_ids(self.tok, self.labels)
        rows = np.asarray(rows, dtype=np.int64)
        cands = self.retriever.candidates(dataset[split], rows, self.config.top_n)
        prompts = self.prompts(dataset, split, rows, cands)
        out = np.zeros(cands.shape, np.float32)
        bs = self.config.eval_batch
        was = self.llm.training
        self.llm.eval()
        bar = progress(total=len(rows), desc=f"rerank {split}", unit="row") if on_batch is None else None
        with torch.inference_mode():
            for s in range(0, len(rows), bs):
                out[s:s + bs] = label_logits(self.llm, self.tok, prompts[s:s + bs], self.label_ids).cpu().numpy()
                n = len(prompts[s:s + bs])
                if bar is not None:
                    bar.update(n)
                else:
                    on_batch(n)
        if bar is not None:
            bar.close()
        self.llm.train(was)
        return cands, out

    def evaluate(self, dataset, split: str = "test", ks=(1, 5, 10, 20), rows=None) -> dict:
        """HR/NDCG@K of the reranker (keys ``full-excl/HR@20`` ...); :meth:`compare` has the retriever's too."""
        return self.compare(dataset, split, ks, rows)["reranker"]

    def compare(self, dataset, split: str = "test", ks=(1, 5, 10, 20), rows=None) -> dict:
        """HR/NDCG@K of the reranker and of its retriever alone on the same rows (``rows``: positions, default
        all), with the per-row ranks; items outside the top M stay in retriever order below the reranked ones."""

        s = dataset[split]
        rows = np.arange(len(s)) if rows is None else np.asarray(rows, dtype=np.int64)
        t0 = time.perf_counter()
        cands, sc = self.score(dataset, split, rows)
        secs = time.perf_counter() - t0
        order, _ = reranked(cands, sc)
        # the retriever's own ranking on the same terms: its candidate list (ties by lower id, as top_k), then
        # the rest by its pessimistic full rank; the reranker only permutes the first M of it
        r_all = self.retriever.target_ranks(s, rows)
        r_ret = full_ranks(cands, s.target[rows], r_all)
        r_rr = full_ranks(order, s.target[rows], r_all)
        proto = protocol_name(self.config.exclude_history)
        return {"split": split, "rows": int(len(rows)), "protocol": proto, "m": self.config.top_n,
                "reranker": metrics_from_ranks(r_rr, ks, proto), "retriever": metrics_from_ranks(r_ret, ks, proto),
                "target_in_top_m": float((r_ret < self.config.top_n).mean()) if len(rows) else 0.0,
                "retriever_pessimistic": metrics_from_ranks(r_all, ks, proto),
                "seconds_per_row": round(secs / max(len(rows), 1), 4),
                "ranks": {"reranker": r_rr.tolist(), "retriever": r_ret.tolist()}}

    # ------------------------------------------------------------------ artifacts (sharded, resumable)
    def plan(self, dataset, work_dir: str | Path, positions, shard_size: int = 32):
        return shards.write_or_check_plan(
            Path(work_dir), shards.Plan("train", [int(p) for p in positions], int(shard_size), dataset.fingerprint(),
                                        self._model_id(), self.adapter, self._decoding(), {}))

    def _model_id(self) -> str:
        return self.config.model if not Path(self.config.model).exists() else Path(self.config.model).name

    def _decoding(self) -> dict:
        c = self.config
        return {"reranker": "label-logits", "m": c.top_n, "labels": self.labels, "max_history": c.max_history,
                "max_title_chars": c.max_title_chars, "exclude_history": c.exclude_history, "retriever": c.retriever}

    def score_shards(self, dataset, work_dir: str | Path, positions, shard_size: int = 32, worker_id: int = 0,
                     num_workers: int = 1, max_shards: int | None = None, lock_timeout: float = 1800.0) -> dict:
        """Score the pending shards of ``work_dir`` this worker can claim; finished shards are skipped."""
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        plan = self.plan(dataset, work_dir, positions, shard_size)
        todo = [i for i in shards.pending_shards(work_dir, plan) if i % num_workers == worker_id]
        done, rows_now, secs = 0, 0, 0.0
        bar = progress(total=sum(len(plan.shard_positions(i)) for i in todo), desc="rerank train", unit="row")
        try:
            for i in todo:
                if max_shards is not None and done >= max_shards:
                    break
                if not shards.try_claim(work_dir, i, lock_timeout):
                    continue
                try:
                    if shards.shard_path(work_dir, i).is_file():
                        continue
                    pos = plan.shard_positions(i)
                    t0 = time.perf_counter()
                    cands, sc = self.score(dataset, "train", pos,
                                           on_batch=lambda n, i=i: (shards.heartbeat(work_dir, i), bar.update(n)))
                    dt = time.perf_counter() - t0
                    shards.write_shard(work_dir, i, {"shard": i, "positions": pos,
                                                     "row_id": dataset["train"].row_id[pos].tolist(),
                                                     "candidates": cands.tolist(), "scores": sc.tolist(),
                                                     "seconds": round(dt, 4)})
                    done += 1
                    rows_now += len(pos)
                    secs += dt
                finally:
                    shards.release(work_dir, i)
        finally:
            bar.close()
        fin = len(shards.finished_shards(work_dir, plan))
        return {"work_dir": str(work_dir), "shards": plan.n_shards, "finished": fin, "scored_now": done,
                "rows_now": rows_now, "seconds_per_row": round(secs / rows_now, 4) if rows_now else None,
                "complete": fin == plan.n_shards}

    def item_embeddings(self, dataset) -> tuple[np.ndarray, str]:
        """(item_emb [N, D], pooling) for the artifacts."""
        kind = self.config.item_emb
        if kind == "random":
            return encode_random(dataset.titles), "none"

        enc, _, emb = grounding_encoder(dataset, self.config.model, kind)
        return emb, enc.pooling

    def artifacts(self, dataset, rows=None, work_dir: str | Path | None = None, shard_size: int = 32,
                  item_emb: np.ndarray | None = None, command: str | None = None,
                  **extra_manifest) -> TeacherArtifacts:
        """TeacherArtifacts over the train split from the finished shards of ``work_dir``. With ``rows`` (training-row
        positions) their plan is written or checked and its pending shards are scored first; without, the shards
        already there are used as they are (partial coverage). Without ``work_dir`` the rows are scored in memory.
        Rows not scored stay uncovered (ids -1, NaN distances)."""
        train = dataset["train"]
        if work_dir is not None:
            wd = Path(work_dir)
            if rows is not None:
                self.score_shards(dataset, wd, train_positions(dataset, rows), shard_size)
            elif not (wd / shards.PLAN).is_file():
                raise ConfigError(f"{wd}: no plan.json; a new work_dir needs rows (training-row positions)")
            plan, recs = shards.read_shards(wd)
            if plan.dataset_fingerprint != dataset.fingerprint():
                raise Dllm2recError(f"{wd}: scored for dataset {plan.dataset_fingerprint}, not '{dataset.name}' "
                                    f"({dataset.fingerprint()})")
            pos = np.asarray([p for r in recs for p in r["positions"]], np.int64)
            cands = np.asarray([c for r in recs for c in r["candidates"]], np.int64).reshape(len(pos), -1)
            sc = np.asarray([s for r in recs for s in r["scores"]], np.float32).reshape(len(pos), -1)
            decoding, model_id, adapter = plan.decoding, plan.model_id, plan.adapter
            secs = [r["seconds"] / max(len(r["positions"]), 1) for r in recs]
        else:
            pos = train_positions(dataset, np.arange(len(train)) if rows is None else rows)
            cands, sc = self.score(dataset, "train", pos)
            decoding, model_id, adapter, secs = self._decoding(), self._model_id(), self.adapter, []
        m = cands.shape[1] if cands.ndim == 2 and len(pos) else self.config.top_n
        R = len(train)
        ids = np.full((R, m), -1, np.int64)
        dist = np.full((R, m), np.nan, np.float32)
        tdist = np.full(R, np.nan, np.float32)
        covered = np.zeros(R, bool)
        if len(pos):
            d = neg_log_softmax(sc)
            order, dsorted = reranked(cands, -d)  # sort by -d == by score
            ids[pos], dist[pos], covered[pos] = order, -dsorted, True
            hit = cands == train.target[pos][:, None]
            tdist[pos] = np.where(hit.any(1), d[np.arange(len(pos)), hit.argmax(1)], np.nan)
        pooling = "none"
        if item_emb is None:
            item_emb, pooling = self.item_embeddings(dataset)
        body = {"model_id": model_id, "adapter": adapter, "retriever": self.config.retriever, "m": m,
                "distance": DISTANCE, "target_distance": "the target's d when it is a candidate, else NaN",
                "ranking": "reranked top-M candidates of the retriever (history excluded: "
                           f"{self.config.exclude_history})", "item_emb_source": self.config.item_emb,
                "pooling": pooling, "decoding": decoding, "rows_covered": int(covered.sum()),
                "seconds_per_row": round(float(np.mean(secs)), 4) if secs else None,
                "commands": [command] if command else []}
        art = TeacherArtifacts(np.asarray(item_emb, np.float32), ids, dist, covered, tdist,
                               self.manifest(dataset, body, **extra_manifest))
        return art.validate(dataset)

    # ------------------------------------------------------------------ persistence
    def save(self, path, dataset=None) -> None:
        """The adapter + reranker.json (what ``fit(out=...)`` already writes under ``out/adapter``)."""
        import json

        self._need("saving")
        with atomic_dir(path) as tmp:
            self.llm.save_pretrained(str(tmp))
            (Path(tmp) / "reranker.json").write_text(json.dumps({"teacher": TEACHER_NAME,
                                                                 "config": self.config_dict(),
                                                                 "state": self.fit_info}, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path, dataset=None, retriever=None, config: dict | None = None) -> "RerankerTeacher":
        """A fitted reranker from an adapter dir (``fit(out=OUT)`` writes ``OUT/adapter``); ``config`` overrides
        fields that do not change the model (``eval_batch``, ``retriever``, ``device``)."""

        path = Path(path)
        info = read_json(path / "reranker.json", ConfigError, "missing (not a reranker adapter; run "
                                                              "`dllm2rec teacher fit-reranker`)")
        cfg = {**info.get("config", {}), **(config or {})}
        t = cls(cls.validate_config(cfg, str(path / "reranker.json")), retriever=retriever)
        ref = t._ref()
        t.tok = load_tokenizer(ref)
        t.llm = load_causal_lm(ref, t.config.dtype, adapter=path, merge=True, device=t.config.device)
        t.label_ids = label_token_ids(t.tok, t.labels)
        t.adapter, t.fit_info = str(path), info.get("state", {})
        return t

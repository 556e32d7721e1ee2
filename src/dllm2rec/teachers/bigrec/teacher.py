"""BIGRec as a registered ``Teacher`` (``get_teacher("bigrec")``): the last stage of a multi-stage pipeline.

BIGRec is not fitted in one call. Its stages, each a CLI command under ``dllm2rec teacher``, hand files on:

1. ``finetune`` (:func:`dllm2rec.teachers.bigrec.finetune.finetune`, ``FinetuneConfig``): LoRA SFT -> adapter dir;
2. ``generate`` (:func:`dllm2rec.teachers.bigrec.generate.run_generation`, ``GenConfig``): beams for the rows of a
   split -> a generation dir (``plan.json`` + shards; resumable, several workers);
3. ``ground`` = this class: ``fit(dataset, gen_dir)`` embeds the catalogue and the TRAIN generation and grounds it
   (L2, ``ground.py``); ``artifacts(dataset)`` turns that into TeacherArtifacts with the manifest built here;
4. ``evaluate(dataset, split, gen_dir=...)`` grounds a valid/test generation and scores it against popularity.

``BIGRecConfig`` is the grounding stage's config. The generation's own settings (model id, adapter, decoding) are
not repeated in it: they come from the generation dir's plan into the manifest (``model_id``, ``adapter``,
``decoding``), so the artifacts say what produced them without the caller restating it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from dllm2rec.errors import ConfigError
from dllm2rec.registry import register_teacher
from dllm2rec.teachers.base import Teacher, TeacherConfig, train_positions
from dllm2rec.teachers.bigrec.evaluate import evaluate_generation
from dllm2rec.teachers.bigrec.generate import load_plan
from dllm2rec.teachers.bigrec.ground import (
    build_artifacts,
    ground_generation,
    grounding_encoder,
    grounding_manifest,
    select_grounded,
)


class BIGRecConfig(TeacherConfig):
    model: str = Field("smollm2-135m", description="base model (no LoRA) of the 'llm' grounding encoder: local HF "
                                                   "dir, .gguf file or alias")
    encoder: Literal["llm", "minilm"] = Field("llm", description="llm (BIGRec: last-token state of the base model) "
                                                                 "| minilm (all-MiniLM-L6-v2)")
    top_n: int = Field(20, ge=1, description="items kept per training row")
    match_titles: bool | None = Field(None, description="exact/normalised title match first (None: minilm only)")
    emb_dtype: Literal["float32", "float16", "fp16"] = Field("float32", description="item embeddings on disk")
    batch_size: int = Field(32, ge=1, description="texts per encoder batch")


@register_teacher("bigrec")
class BIGRecTeacher(Teacher):
    """BIGRec (Bao et al., 2023): a LoRA-tuned LLM generates a title; L2 grounding ranks the catalogue."""

    kind = "bigrec"
    config_cls = BIGRecConfig
    stages = ("finetune", "generate", "ground", "evaluate")

    def __init__(self, config=None, *, encoder=None, item_emb: np.ndarray | None = None, **kwargs):
        """``encoder`` + ``item_emb``: a ready grounding encoder and its catalogue embeddings (reuse, tests);
        otherwise built from the config on first use."""
        super().__init__(config, **kwargs)
        if (encoder is None) != (item_emb is None):
            raise ConfigError("bigrec teacher: pass both encoder and item_emb, or neither")
        self.encoder, self.item_emb = encoder, item_emb
        self.plan = None
        self.grounded = None

    def _grounding(self, dataset):
        if self.encoder is None:
            c = self.config
            self.encoder, _, self.item_emb = grounding_encoder(dataset, c.model, c.encoder, c.batch_size)
        if self.item_emb.shape[0] != dataset.n_items:
            raise ConfigError(f"bigrec teacher: item embeddings have {self.item_emb.shape[0]} rows, dataset "
                              f"'{dataset.name}' has {dataset.n_items} items")
        return self.encoder, self.item_emb

    def fit(self, dataset, gen_dir: str | Path | None = None, **kwargs) -> "BIGRecTeacher":
        """Ground the finished shards of a TRAIN generation dir (stages 1-2 wrote it)."""

        if gen_dir is None:
            raise ConfigError("bigrec teacher: fit needs gen_dir, a generation of the train split "
                              "(`dllm2rec teacher finetune` then `teacher generate`)")
        gen_dir = Path(gen_dir)
        plan = load_plan(gen_dir)
        if plan.split != "train":
            raise ConfigError(f"{gen_dir}: holds the '{plan.split}' split; artifacts are built from train "
                              "generations (use `teacher evaluate` for valid/test)")
        enc, emb = self._grounding(dataset)
        self.grounded = ground_generation(gen_dir, dataset, enc, emb, top_n=self.config.top_n,
                                          match_titles=self.config.match_titles)
        self.plan = plan
        return self

    def artifacts(self, dataset, rows=None, command: str | None = None, **extra_manifest):
        """TeacherArtifacts over the train split: the generated rows (of ``rows``, if given) covered, the rest not.
        ``command``: the command line of this stage, recorded after the generation's in ``commands``."""

        if self.grounded is None:
            raise ConfigError("the bigrec teacher has grounded nothing yet; call fit(dataset, gen_dir) first")
        g = self.grounded if rows is None else select_grounded(self.grounded, train_positions(dataset, rows))
        body = grounding_manifest(self.plan, self.encoder, g, [command] if command else [])
        art = build_artifacts(dataset, g, self.item_emb, self.manifest(dataset, body, **extra_manifest),
                              self.config.emb_dtype)
        return art.validate(dataset)

    def evaluate(self, dataset, split: str = "test", ks=(1, 5, 10, 20), gen_dir: str | Path | None = None) -> dict:
        """Teacher vs popularity HR/NDCG@K on the rows of ``gen_dir`` (a generation of ``split``) and its speed."""

        if gen_dir is None:
            raise ConfigError(f"bigrec teacher: evaluating needs gen_dir, a generation of the '{split}' split "
                              f"(`dllm2rec teacher generate --split {split}`)")
        gen_dir = Path(gen_dir)
        plan = load_plan(gen_dir)
        if plan.split != split:
            raise ConfigError(f"{gen_dir}: holds the '{plan.split}' split, not '{split}'")
        enc, emb = self._grounding(dataset)
        return evaluate_generation(gen_dir, dataset, enc, emb, ks=ks, top_n=max(ks),
                                   match_titles=self.config.match_titles)

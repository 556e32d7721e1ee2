"""``dllm2rec teacher fit-llmemb``: train the LLM-embedding sequential teacher and write its TeacherArtifacts.

This is the CPU-trainable LLM-based teacher (frozen LLM / sentence-encoder title embeddings + adapter + causal
transformer), not BIGRec; see docs/llm_emb_teacher.md. A fit writes a checkpoint after every epoch (default
``<out>.ckpt/``, removed once the artifacts are written); ``--resume`` continues an interrupted fit from it.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("fit-llmemb")
    def fit_llmemb(
        dataset: Path = typer.Argument(..., help="Prepared dataset directory (dllm2rec data prepare)."),
        out: Path = typer.Option(..., "--out",
                                 help="Artifacts directory to write (artifacts.safetensors + manifest.json)."),
        encoder: str = typer.Option("minilm", help="Frozen title encoder: minilm | smollm2 | random."),
        epochs: int = typer.Option(40, help="Maximum epochs (early stopping on validation NDCG@20)."),
        patience: int = typer.Option(3, help="Epochs without a validation NDCG@20 gain before stopping."),
        top_n: int = typer.Option(20, "--top-n", help="Items ranked per training row in the artifacts."),
        seed: int = typer.Option(0),
        dim: int = typer.Option(64, help="Transformer / adapter width d."),
        layers: int = typer.Option(2, help="Transformer layers."),
        heads: int = typer.Option(2, help="Attention heads."),
        dropout: float = typer.Option(0.2),
        lr: float = typer.Option(1e-3),
        weight_decay: float = typer.Option(0.01),
        batch_size: int = typer.Option(256),
        id_emb: bool = typer.Option(False, "--id-emb/--no-id-emb",
                                    help="Add a learned per-item ID embedding to the adapted title embedding."),
        adapter: str = typer.Option("mlp", help="Title adapter: mlp (384 -> 2d -> d) | linear (384 -> d)."),
        item_bias: bool = typer.Option(True, "--item-bias/--no-item-bias", help="Learned per-item score bias."),
        all_positions: bool = typer.Option(False, "--all-positions/--last-position",
                                           help="Cross-entropy at every prefix position, or at the last one only."),
        mask_history: str = typer.Option("auto", help="Mask history items when ranking: auto (chosen on "
                                                      "validation) | on | off."),
        cv_folds: int = typer.Option(0, help="K >= 2: score training rows by K-fold cross-fitting; 0 = in-sample."),
        pop_tau: float = typer.Option(0.0, "--pop-tau", help="Rank by score − τ·log(1 + training count) "
                                      "(popularity logit adjustment; choose τ on validation with "
                                      "benchmarks/teacher_debias.py). 0 = off."),
        threads: int = typer.Option(1, help="torch threads (keep 1 on shared machines)."),
        model_dir: Path = typer.Option(None, "--model-dir",
                                       help="Also save the trained full model here (for benchmarks / scoring)."),
        item_loss: str = typer.Option("auto", "--item-loss",
                                      help="Softmax over items: full (adapter over all N items per step) | sampled "
                                           "(only the batch's items + --negatives, logQ-corrected) | auto (sampled "
                                           "above --sampled-above items)."),
        negatives: int = typer.Option(2048, help="Sampled softmax: uniform negatives per step."),
        sampled_above: int = typer.Option(10000, "--sampled-above",
                                          help="--item-loss auto: catalogues larger than this use the sampled "
                                               "softmax."),
        checkpoint_dir: Path = typer.Option(None, "--checkpoint-dir",
                                            help="Per-epoch checkpoints (default: <out>.ckpt)."),
        checkpoints: bool = typer.Option(True, "--checkpoints/--no-checkpoints", help="Write per-epoch checkpoints."),
        keep_checkpoints: bool = typer.Option(False, "--keep-checkpoints",
                                              help="Keep the checkpoints after a successful fit."),
        resume: bool = typer.Option(False, "--resume",
                                    help="Continue an interrupted fit from its checkpoint (same options)."),
        budget: Optional[int] = typer.Option(None, help="Score only N training rows (the rest uncovered)."),
        rows_fraction: Optional[float] = typer.Option(None, "--rows-fraction",
                                                      help="Score only this fraction of the training rows."),
        select: str = typer.Option("first", help="With --budget/--rows-fraction: 'first' rows or seeded 'random'."),
        allow_placeholder_titles: bool = typer.Option(False, "--allow-placeholder-titles",
                                                      help="Fit even when many items have placeholder titles "
                                                           "(ids, ASINs): their embeddings carry no meaning."),
    ) -> None:
        """Train the LLM-embedding sequential teacher (llm-emb, NOT BIGRec) and write validated artifacts."""
        from dllm2rec.data.schema import SeqDataset
        from dllm2rec.teachers.llmemb import LLMEmbTeacher, fit_and_save

        # the typed config first: a bad option is one line naming its field, before the dataset is read
        cfg = LLMEmbTeacher(dict(encoder=encoder, dim=dim, n_layers=layers, n_heads=heads, dropout=dropout,
                                 id_emb=id_emb, all_positions=all_positions, adapter=adapter, item_bias=item_bias,
                                 lr=lr, weight_decay=weight_decay, batch_size=batch_size, epochs=epochs,
                                 patience=patience, mask_history=mask_history, cv_folds=cv_folds, top_n=top_n,
                                 pop_tau=pop_tau, seed=seed, threads=threads, item_loss=item_loss,
                                 negatives=negatives, sampled_above=sampled_above)).cfg
        ds = SeqDataset.load(dataset)
        ckpt = None
        if checkpoints:
            ckpt = checkpoint_dir or out.with_name(out.name + ".ckpt")
        command = "dllm2rec " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        _, art = fit_and_save(ds, out, cfg, log=lambda m: typer.echo(m, err=True), model_dir=model_dir,
                              ckpt_dir=ckpt, resume=resume, keep_checkpoints=keep_checkpoints, budget=budget,
                              rows_fraction=rows_fraction, select=select,
                              allow_placeholder_titles=allow_placeholder_titles, command=command)
        m = art.manifest
        summary = {"out": str(out), "teacher": m["teacher"], "encoder": m["encoder"], "item_loss": m["item_loss"],
                   "coverage": round(art.coverage, 4), "rows": art.n_rows,
                   "top_n": art.top_n, "mask_history": m["mask_history"], "train_row_scoring": m["train_row_scoring"],
                   "teacher_valid": m["teacher_valid"], "teacher_test": m["teacher_test"],
                   "train_row_stats": m["train_row_stats"], "seconds": m["total_seconds"]}
        typer.echo(json.dumps(summary, indent=1))

    @app.command("rescore-llmemb")
    def rescore_llmemb(
        model_dir: Path = typer.Argument(..., help="A model saved by `fit-llmemb --model-dir`."),
        dataset: Path = typer.Argument(..., help="The prepared dataset it was trained on."),
        out: Path = typer.Option(..., "--out", help="Artifacts directory to write (atomically)."),
        pop_tau: float = typer.Option(None, "--pop-tau", help="Popularity adjustment τ (default: the model's)."),
        top_n: int = typer.Option(None, "--top-n", help="Items per training row (default: the model's)."),
        threads: int = typer.Option(1),
    ) -> None:
        """Write llm-emb artifacts from a saved model without retraining (e.g. another --pop-tau). Training rows are
        scored in-sample by the full model (fold models of --cv-folds are not saved)."""
        import torch

        from dllm2rec.data.schema import SeqDataset
        from dllm2rec.teachers.llmemb import LLMEmbTeacher

        torch.set_num_threads(threads)
        ds = SeqDataset.load(dataset)
        t = LLMEmbTeacher.load_model(model_dir, ds)
        if pop_tau is not None:
            t.set_pop_tau(pop_tau, ds)
        if top_n is not None:
            t.cfg.top_n = LLMEmbTeacher.validate_config({"top_n": top_n}).top_n  # >= 1, named if not
        t.cfg.cv_folds = 0
        command = "dllm2rec " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        art = t.artifacts(ds, command=command, rescored_from=str(model_dir))
        art.save(out, ds)
        m = art.manifest
        typer.echo(json.dumps({"out": str(out), "pop_tau": m["pop_tau"], "rows": art.n_rows, "top_n": art.top_n,
                               "teacher_valid": m["teacher_valid"], "teacher_test": m["teacher_test"],
                               "train_row_stats": m["train_row_stats"]}, indent=1))

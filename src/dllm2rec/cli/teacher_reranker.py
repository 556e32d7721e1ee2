"""``dllm2rec teacher fit-reranker`` / ``evaluate-reranker`` / ``rerank-artifacts``: the LLM reranker teacher.

A retriever (a trained dllm2rec student checkpoint, e.g. ``runs/.../best``) proposes the top M items; the LLM + LoRA
scores them in one forward pass by label logits (teachers/reranker.py, docs/reranker.md).
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import typer


def _command() -> str:
    return "dllm2rec " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _retriever(path: Path, exclude_history: bool = True):
    from dllm2rec.students.checkpoint import load_student
    from dllm2rec.teachers.reranker import ModelRetriever

    model, info = load_student(path)
    return ModelRetriever(model, exclude_history, name=str(path)), info


# the LLM's placement, shared by the three commands (the retriever always runs on CPU)
DEVICE_OPT = typer.Option("cpu", help="torch device of the LLM (cpu, cuda, cuda:N); the retriever stays on CPU.")
DTYPE_OPT = typer.Option("float32", help="LLM weights: float32 | bfloat16 | float16 (GPU).")


def _load_fitted(dataset: Path, reranker: Path, retriever: Path, threads: int, **over):
    """(dataset, retriever, fitted RerankerTeacher) for evaluate-reranker / rerank-artifacts; ``over``: config
    fields that do not change the model (eval_batch, device, dtype, top_n, item_emb); None values are left out."""
    import torch

    from dllm2rec.data.schema import SeqDataset
    from dllm2rec.teachers.reranker import RerankerTeacher

    torch.set_num_threads(threads)
    ds = SeqDataset.load(dataset)
    ret, _ = _retriever(retriever)
    cfg = {"retriever": str(retriever), **{k: v for k, v in over.items() if v is not None}}
    return ds, ret, RerankerTeacher.load(reranker, ds, retriever=ret, config=cfg)


def _ci(values) -> dict:
    from dllm2rec.evaluation.stats import Stat

    s = Stat.of(values)
    return {"mean": round(s.mean, 5), "ci95": None if s.ci95 != s.ci95 else round(s.ci95, 5)}


def per_row_table(ranks: dict, ks=(10, 20)) -> dict:
    """Mean ± 95 % CI (Student t over rows) of HR@K / NDCG@K per ranking, and of each ranking's paired difference
    to the first one (the rows are the same, so the paired interval is the one that says which is better)."""
    import numpy as np

    def per_row(r, k):
        r = np.asarray(r, float)
        hit = r < k
        return {f"HR@{k}": hit.astype(float), f"NDCG@{k}": np.where(hit, 1.0 / np.log2(np.minimum(r, 1e9) + 2), 0.0)}

    vals = {name: {m: v for k in ks for m, v in per_row(r, k).items()} for name, r in ranks.items()}
    first = next(iter(vals))
    out = {}
    for name, v in vals.items():
        out[name] = {m: _ci(x) for m, x in v.items()}
        if name != first:
            out[name]["minus_" + first] = {m: _ci(x - vals[first][m]) for m, x in v.items()}
    return out


def register(app: typer.Typer) -> None:
    @app.command("fit-reranker")
    def fit_reranker(
        dataset: Path = typer.Argument(..., help="Prepared dataset directory."),
        retriever: Path = typer.Option(..., "--retriever", help="Student checkpoint dir (e.g. RUN/best) proposing "
                                                                "the candidates."),
        out: Path = typer.Option(..., "--out", help="Output dir: adapter/, last/ (resumable), log.jsonl."),
        model: str = typer.Option("smollm2-135m", help="LLM: local HF dir, .gguf file or alias."),
        m: int = typer.Option(20, "--m", "--top-n",
                              help="Candidates per request (retriever top-M, <= number of labels)."),
        labels: str = typer.Option("ABCDEFGHIJKLMNOPQRSTUVWXYZ", help="Single-token candidate labels."),
        steps: int = typer.Option(100, help="Optimizer steps."),
        batch_size: int = typer.Option(4, "--batch-size", help="Rows per step."),
        budget_rows: int = typer.Option(200, "--budget-rows", help="Training rows (target in the top M)."),
        lr: float = typer.Option(5e-4),
        lora_r: int = typer.Option(8, "--lora-r"),
        lora_alpha: int = typer.Option(16, "--lora-alpha"),
        warmup_steps: int = typer.Option(10, "--warmup-steps"),
        lora_layers: int = typer.Option(0, "--lora-layers", help="LoRA on the last N decoder layers only (0 = all; "
                                                                 "smaller N = cheaper backward)."),
        max_title_chars: int = typer.Option(80, "--max-title-chars", help="Titles cut to this many characters."),
        max_history: int = typer.Option(10, "--max-history"),
        seed: int = typer.Option(0),
        item_emb: str = typer.Option("llm", "--item-emb", help="Artifact item embeddings: llm | minilm | random."),
        resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last (same options)."),
        device: str = DEVICE_OPT,
        dtype: str = DTYPE_OPT,
        threads: int = typer.Option(1, help="torch threads."),
    ) -> None:
        """Train the LLM reranker's LoRA (cross-entropy over the M label logits)."""
        import torch

        from dllm2rec.data.schema import SeqDataset
        from dllm2rec.teachers.reranker import RerankerTeacher

        torch.set_num_threads(threads)
        ds = SeqDataset.load(dataset)
        ret, _ = _retriever(retriever)
        t = RerankerTeacher.from_config(dict(model=model, retriever=str(retriever), top_n=m, labels=labels, steps=steps,
                                             batch_size=batch_size, budget_rows=budget_rows, lr=lr, lora_r=lora_r,
                                             lora_alpha=lora_alpha, warmup_steps=warmup_steps,
                                             lora_layers=lora_layers, max_title_chars=max_title_chars,
                                             max_history=max_history, seed=seed, item_emb=item_emb,
                                             device=device, dtype=dtype))
        t.retriever = ret
        t.fit(ds, out=out, resume=resume, log=lambda s: typer.echo(s, err=True))
        info = {k: v for k, v in t.fit_info.items() if k != "losses"}
        losses = t.fit_info["losses"]
        info.update(out=str(out), adapter=t.adapter, first_losses=losses[:5], last_losses=losses[-5:],
                    command=_command())
        typer.echo(json.dumps(info, indent=1))

    @app.command("evaluate-reranker")
    def evaluate_reranker(
        dataset: Path = typer.Argument(..., help="Prepared dataset directory."),
        reranker: Path = typer.Option(..., "--reranker", help="The adapter dir fit-reranker wrote (OUT/adapter)."),
        retriever: Path = typer.Option(..., "--retriever", help="The student checkpoint dir it reranks."),
        split: str = typer.Option("test", help="valid | test."),
        rows: int = typer.Option(200, help="Seeded random sample of this many rows of the split (0 = all)."),
        seed: int = typer.Option(0, help="Seed of the row sample."),
        latency: int = typer.Option(0, help="Also time this many one-user requests (reranker vs retriever)."),
        eval_batch: int = typer.Option(4, "--eval-batch", help="Rows per LLM forward."),
        m: Optional[int] = typer.Option(None, "--m", "--top-n",
                                        help="Candidates per request (default: as trained; labels beyond the "
                                             "trained M were never a training target)."),
        json_out: Optional[Path] = typer.Option(None, "--json-out", help="Write the full result (with ranks)."),
        device: str = DEVICE_OPT,
        dtype: str = DTYPE_OPT,
        threads: int = typer.Option(1, help="torch threads."),
    ) -> None:
        """Reranker vs its retriever vs popularity on the SAME sampled rows, HR/NDCG@10/20 with 95 % CIs."""
        import numpy as np
        import torch

        from dllm2rec.evaluation.baselines import popularity_scorer
        from dllm2rec.evaluation.protocol import top_k
        from dllm2rec.teachers.bigrec.generate import select_rows
        from dllm2rec.teachers.reranker import ModelRetriever
        from dllm2rec.utils.cpu import describe

        ds, ret, t = _load_fitted(dataset, reranker, retriever, threads, eval_batch=eval_batch, device=device,
                                  dtype=dtype, top_n=m or None)
        n = len(ds[split])
        pos = select_rows(n, budget=rows or None, select="random", seed=seed)
        ev = t.compare(ds, split, ks=(1, 5, 10, 20), rows=pos)
        pop = ModelRetriever(popularity_scorer(ds), t.config.exclude_history).target_ranks(ds[split], pos)
        ranks = {"retriever": ev["ranks"]["retriever"], "reranker": ev["ranks"]["reranker"], "popularity": pop}
        res = {"split": split, "rows": len(pos), "row_seed": seed, "protocol": ev["protocol"], "m": ev["m"],
               "target_in_top_m": round(ev["target_in_top_m"], 4), "table": per_row_table(ranks),
               "seconds_per_row_batched": ev["seconds_per_row"], "cpu": describe(), "threads": threads,
               "command": _command()}
        if latency:
            s = ds[split]
            lat_rr, lat_st = [], []
            for p in pos[:latency]:
                t0 = time.perf_counter()
                t.score(ds, split, [p])
                lat_rr.append(time.perf_counter() - t0)
                seq, ln = torch.from_numpy(s.seq[[p]]), torch.from_numpy(s.len[[p]])
                t0 = time.perf_counter()
                top_k(ret.model, seq, ln, k=20, exclude_history=True)
                lat_st.append(time.perf_counter() - t0)
            res["latency_ms"] = {"reranker_one_user": round(1e3 * float(np.median(lat_rr)), 2),
                                 "retriever_one_user": round(1e3 * float(np.median(lat_st)), 3),
                                 "requests": len(lat_rr), "statistic": "median"}
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps({**res, "positions": pos.tolist(),
                                            "ranks": {k: np.asarray(v).tolist() for k, v in ranks.items()}}),
                                encoding="utf-8")
        typer.echo(json.dumps(res, indent=1))

    @app.command("rerank-artifacts")
    def rerank_artifacts(
        dataset: Path = typer.Argument(..., help="Prepared dataset directory."),
        reranker: Path = typer.Option(..., "--reranker", help="The adapter dir fit-reranker wrote (OUT/adapter)."),
        retriever: Path = typer.Option(..., "--retriever", help="The student checkpoint dir it reranks."),
        work: Path = typer.Option(..., "--work", help="Shard directory (plan.json + shard-*.json; resumable)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Artifacts dir to write once scoring is done "
                                                               "(partial coverage: the finished shards)."),
        budget: Optional[int] = typer.Option(None, help="Score only N training rows (the rest uncovered)."),
        select: str = typer.Option("random", help="With --budget: 'first' rows or a seeded 'random' sample."),
        seed: int = typer.Option(0),
        shard_size: int = typer.Option(32, "--shard-size"),
        worker_id: int = typer.Option(0, "--worker-id"),
        num_workers: int = typer.Option(1, "--num-workers"),
        max_shards: Optional[int] = typer.Option(None, "--max-shards", help="Stop after this many shards."),
        eval_batch: int = typer.Option(4, "--eval-batch"),
        item_emb: Optional[str] = typer.Option(None, "--item-emb", help="Artifact item embeddings: llm | minilm | "
                                                                        "random (default: as fitted)."),
        device: str = DEVICE_OPT,
        dtype: str = DTYPE_OPT,
        threads: int = typer.Option(1, help="torch threads."),
    ) -> None:
        """Score training rows in resumable shards, then write the reranker's TeacherArtifacts."""
        from dllm2rec.teachers.bigrec.generate import select_rows

        ds, _, t = _load_fitted(dataset, reranker, retriever, threads, eval_batch=eval_batch, device=device,
                                dtype=dtype, item_emb=item_emb or None)
        pos = select_rows(len(ds["train"]), budget=budget, select=select, seed=seed)
        t0 = time.perf_counter()
        res = t.score_shards(ds, work, pos, shard_size, worker_id, num_workers, max_shards)
        res["wall_seconds"] = round(time.perf_counter() - t0, 2)
        if out is not None:
            art = t.artifacts(ds, work_dir=work, command=_command())
            art.save(out, ds)
            res.update(out=str(out), rows_covered=int(art.covered.sum()), coverage=round(art.coverage, 6))
        typer.echo(json.dumps(res, indent=1))

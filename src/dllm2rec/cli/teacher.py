"""``dllm2rec teacher finetune|generate|ground|evaluate`` (BIGRec). Heavy imports happen inside the commands."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from dllm2rec.data.registry import load_or_prepare


def _threads(n: Optional[int]) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _command() -> str:
    return "dllm2rec " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _load_dataset(path: Path):
    return load_or_prepare(str(path))  # the one resolver: a prepared dir or a preset name (as train accepts)


def register(app: typer.Typer) -> None:
    @app.command()
    def finetune(
        dataset: Path = typer.Option(..., "--data", "--dataset", help="Prepared dataset directory or preset."),
        out: Path = typer.Option(..., help="Output directory (adapter/ or model/ with --full, last/, log.jsonl)."),
        model: str = typer.Option("smollm2-135m", help="Local HF dir, .gguf file, or alias smollm2-135m."),
        domain: Optional[str] = typer.Option(None, help="Prompt domain (games|movies|music|generic); default: dataset meta."),
        sample: int = typer.Option(1024, help="Training rows sampled (seeded); <=0 = all."),
        valid_sample: int = typer.Option(128, help="Validation rows for the early-stopping loss."),
        epochs: int = typer.Option(3),
        max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
        lr: float = typer.Option(3e-4),
        batch_size: int = typer.Option(4),
        grad_accum: int = typer.Option(1),
        warmup_steps: int = typer.Option(20),
        lora_r: int = typer.Option(8),
        lora_alpha: int = typer.Option(16),
        lora_dropout: float = typer.Option(0.05),
        target_modules: str = typer.Option("q_proj,v_proj", help="Comma-separated LoRA target modules."),
        train_on_inputs: bool = typer.Option(False, help="Loss on prompt + response (BIGRec) instead of response only."),
        cutoff_len: int = typer.Option(512),
        eval_every: int = typer.Option(0, help="Optimizer steps between validations; 0 = each epoch."),
        patience: int = typer.Option(5, help="Early-stopping patience in evaluations."),
        max_history: int = typer.Option(10),
        seed: int = typer.Option(0),
        dtype: str = typer.Option("float32"),
        device: str = typer.Option("cpu", help="cpu | cuda | auto."),
        threads: Optional[int] = typer.Option(None, help="torch threads."),
        resume: bool = typer.Option(False, help="Continue from OUT/last."),
        full: bool = typer.Option(False, "--full", help="Train all weights (no LoRA); the best model is saved as a "
                                                        "standalone HF dir OUT/model for generate --model / vLLM."),
        autocast: Optional[str] = typer.Option(None, help="Mixed precision: bfloat16 | float16 (float32 weights)."),
        max_seconds: Optional[float] = typer.Option(None, help="Time budget: stop (evaluate, save) after N s."),
    ) -> None:
        """LoRA SFT (or --full fine-tuning) on BIGRec prompts (docs/teacher.md)."""
        from dllm2rec.teachers.bigrec.finetune import FinetuneConfig
        from dllm2rec.teachers.bigrec.finetune import finetune as run
        from dllm2rec.teachers.bigrec.prompts import dataset_domain
        from dllm2rec.teachers.models import require_teacher_extra, resolve_model

        require_teacher_extra()
        _threads(threads)
        ds = _load_dataset(dataset)
        cfg = FinetuneConfig(sample=sample, valid_sample=valid_sample, seed=seed, epochs=epochs, max_steps=max_steps,
                             lr=lr, batch_size=batch_size, grad_accum=grad_accum, warmup_steps=warmup_steps,
                             lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                             target_modules=[m.strip() for m in target_modules.split(",") if m.strip()],
                             train_on_inputs=train_on_inputs, cutoff_len=cutoff_len, eval_every=eval_every,
                             patience=patience, domain=dataset_domain(ds, domain), max_history=max_history,
                             dtype=dtype, device=device, full=full, autocast=autocast, max_seconds=max_seconds)
        typer.echo(json.dumps(run(ds, resolve_model(model), out, cfg, resume=resume), indent=1))

    @app.command()
    def generate(
        dataset: Path = typer.Option(..., "--data", "--dataset", help="Prepared dataset directory or preset."),
        out: Path = typer.Option(..., help="Generation directory (plan.json + shard-*.json); reruns resume."),
        model: str = typer.Option("smollm2-135m", help="Local HF dir, .gguf file, or alias smollm2-135m."),
        adapter: Optional[Path] = typer.Option(None, help="LoRA adapter dir (finetune's OUT/adapter)."),
        split: str = typer.Option("train", help="train | valid | test."),
        num_beams: int = typer.Option(4, help="Beam width (1 = greedy)."),
        constrained: bool = typer.Option(False, "--constrained/--free",
                                         help="Constrain beams to catalogue titles (prefix trie)."),
        max_new_tokens: int = typer.Option(64),
        length_penalty: Optional[float] = typer.Option(None, help="Default 1.0 (HF); 0.0 with --constrained."),
        batch_size: int = typer.Option(8, help="Prompts per batch (left padding)."),
        shard_size: int = typer.Option(64, help="Rows per shard (unit of atomic writing and resuming)."),
        rows: Optional[str] = typer.Option(None, help="START:END positions of the split."),
        budget: Optional[int] = typer.Option(None, help="Generate only N of the selected rows."),
        select: str = typer.Option("first", help="With --budget: 'first' N or seeded 'random' N."),
        seed: int = typer.Option(0),
        worker_id: int = typer.Option(0),
        num_workers: int = typer.Option(1),
        lock_timeout: float = typer.Option(1800.0, help="Seconds after which another worker's shard lock is stale."),
        backend: str = typer.Option("hf", help="hf | vllm (GPU, optional extra)."),
        prompt_cache: bool = typer.Option(True, "--prompt-cache/--no-prompt-cache",
                                          help="Encode each prompt once and copy its KV cache to the beams."),
        share_prefix: bool = typer.Option(True, "--share-prefix/--no-share-prefix",
                                          help="Encode the prompt prefix shared by a batch (the template) once."),
        domain: Optional[str] = typer.Option(None),
        max_history: int = typer.Option(10),
        dtype: str = typer.Option("float32", help="float32 | bfloat16."),
        device: str = typer.Option("cpu", help="cpu | cuda | auto (hf backend)."),
        threads: Optional[int] = typer.Option(None),
        engine: str = typer.Option("local", help="local (lock-file workers on one directory) | ray (one Ray task "
                                                 "per shard; docs/ray.md)."),
        ray_address: Optional[str] = typer.Option(None, help="--engine ray: default starts a local Ray; 'auto' "
                                                             "joins this machine's cluster, or HOST:PORT."),
        ray_num_cpus: Optional[int] = typer.Option(None, help="--engine ray: CPUs of the local Ray (default all)."),
        ray_num_gpus_per_task: float = typer.Option(0.0, help="--engine ray: GPUs per shard task (1 for vLLM)."),
        ray_max_retries: int = typer.Option(3, help="--engine ray: reruns of a shard whose worker died."),
    ) -> None:
        """Beam generation for one split, sharded and resumable (docs/teacher.md, docs/ray.md)."""
        from dllm2rec.errors import ConfigError
        from dllm2rec.teachers.bigrec.generate import (
            GenConfig,
            HFBackend,
            VLLMBackend,
            run_generation,
            select_rows,
        )
        from dllm2rec.teachers.bigrec.prompts import dataset_domain
        from dllm2rec.teachers.models import (
            load_causal_lm,
            load_tokenizer,
            require_teacher_extra,
            resolve_model,
        )

        require_teacher_extra()
        _threads(threads)
        ds = _load_dataset(dataset)
        if backend not in ("hf", "vllm"):
            raise ConfigError(f"--backend must be 'hf' or 'vllm', got {backend!r}")
        if engine not in ("local", "ray"):
            raise ConfigError(f"--engine must be 'local' or 'ray', got {engine!r}")
        if engine == "ray" and (worker_id, num_workers) != (0, 1):
            raise ConfigError("--worker-id/--num-workers are for --engine local; Ray schedules the shards itself")
        if engine == "local" and (ray_address, ray_num_cpus, ray_num_gpus_per_task) != (None, None, 0.0):
            raise ConfigError("--ray-address/--ray-num-cpus/--ray-num-gpus-per-task need --engine ray")
        cfg = GenConfig(num_beams=num_beams, max_new_tokens=max_new_tokens, constrained=constrained,
                        batch_size=batch_size, length_penalty=length_penalty, reuse_prompt_cache=prompt_cache,
                        share_prefix=share_prefix,
                        max_history=max_history, domain=dataset_domain(ds, domain), dtype=dtype, backend=backend)
        ref = resolve_model(model)
        positions = select_rows(len(ds[split]), rows, budget, select, seed)

        def factory():  # also pickled to each Ray worker with --engine ray, hence the thread setting here too
            _threads(threads)
            if backend == "vllm":
                return VLLMBackend(str(ref.path), cfg, None if adapter is None else str(adapter))
            return HFBackend(load_causal_lm(ref, dtype, adapter, device=device), load_tokenizer(ref), cfg, ds.titles)

        if engine == "ray":
            from dllm2rec.teachers.bigrec.ray_engine import run_generation_ray

            res = run_generation_ray(ds, split, out, factory, cfg, ref.model_id, adapter, positions, shard_size,
                                     extra={"command": _command()}, address=ray_address, num_cpus=ray_num_cpus,
                                     num_gpus_per_task=ray_num_gpus_per_task, cpus_per_task=threads or 1,
                                     max_retries=ray_max_retries)
        else:
            res = run_generation(ds, split, out, factory, cfg, ref.model_id, adapter, positions, shard_size,
                                 worker_id, num_workers, lock_timeout, extra={"command": _command()})
        typer.echo(json.dumps(res, indent=1))

    @app.command()
    def ground(
        dataset: Path = typer.Option(..., "--data", "--dataset", help="Prepared dataset directory or preset."),
        gen: Path = typer.Option(..., help="Generation directory of the TRAIN split."),
        out: Path = typer.Option(..., help="Teacher-artifacts directory to write."),
        model: str = typer.Option("smollm2-135m", help="Base model (no LoRA) for the llm encoder."),
        encoder: str = typer.Option("llm", help="llm (BIGRec last-token state) | minilm (all-MiniLM-L6-v2)."),
        top_n: int = typer.Option(20, help="Items kept per row."),
        match_titles: Optional[bool] = typer.Option(None, "--match-titles/--no-match-titles",
                                                    help="Exact/normalised title match first (default: minilm only)."),
        emb_dtype: str = typer.Option("float32", help="Item embeddings on disk: float32 | float16."),
        batch_size: int = typer.Option(32),
        threads: Optional[int] = typer.Option(None),
    ) -> None:
        """Ground train generations and write validated TeacherArtifacts (docs/teacher.md)."""
        from dllm2rec.teachers.bigrec.teacher import BIGRecTeacher
        from dllm2rec.teachers.models import require_teacher_extra

        require_teacher_extra()
        _threads(threads)
        ds = _load_dataset(dataset)
        teacher = BIGRecTeacher.from_config(dict(model=model, encoder=encoder, top_n=top_n, match_titles=match_titles,
                                                 emb_dtype=emb_dtype, batch_size=batch_size))
        art = teacher.fit(ds, gen).artifacts(ds, command=_command())
        art.save(out, ds)
        typer.echo(json.dumps(art.stats(), indent=1))

    @app.command()
    def merge(
        adapter: Path = typer.Option(..., help="LoRA adapter directory (`teacher finetune`'s OUT/adapter)."),
        out: Path = typer.Option(..., help="New directory for the merged model (refused if it exists)."),
        model: str = typer.Option("smollm2-135m", help="Base model: local HF dir, .gguf file, or alias."),
        dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16 (weights as saved)."),
    ) -> None:
        """Merge a LoRA adapter into its base model: one HF directory for `generate --backend vllm` or any server."""
        from dllm2rec.teachers.models import merge_adapter, resolve_model

        path = merge_adapter(resolve_model(model), adapter, out, dtype=dtype)
        typer.echo(json.dumps({"merged_model": str(path), "use": f"--model {path} (no --adapter)"}, indent=1))

    @app.command()
    def evaluate(
        dataset: Path = typer.Option(..., "--data", "--dataset", help="Prepared dataset directory or preset."),
        gen: Path = typer.Option(..., help="Generation directory of a valid/test split."),
        model: str = typer.Option("smollm2-135m", help="Base model for the llm encoder."),
        encoder: str = typer.Option("llm", help="llm | minilm."),
        ks: str = typer.Option("1,5,10,20", help="Cut-offs K."),
        match_titles: Optional[bool] = typer.Option(None, "--match-titles/--no-match-titles"),
        batch_size: int = typer.Option(32),
        json_out: Optional[Path] = typer.Option(None, help="Also write the result as JSON here."),
        threads: Optional[int] = typer.Option(None),
    ) -> None:
        """Teacher HR/NDCG@K (students' metric code) vs popularity on the generated rows, plus rows/s and latency."""
        from dllm2rec.teachers.bigrec.evaluate import evaluate_generation
        from dllm2rec.teachers.bigrec.ground import grounding_encoder
        from dllm2rec.teachers.models import require_teacher_extra
        from dllm2rec.utils.io import atomic_write_text

        require_teacher_extra()
        _threads(threads)
        ds = _load_dataset(dataset)
        enc, _, emb = grounding_encoder(ds, model, encoder, batch_size)
        k = tuple(int(x) for x in ks.split(",") if x.strip())
        res = evaluate_generation(gen, ds, enc, emb, ks=k, top_n=max(k), match_titles=match_titles)
        text = json.dumps(res, indent=1)
        if json_out:
            atomic_write_text(json_out, text)
        typer.echo(text)

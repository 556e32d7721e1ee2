"""``dllm2rec train`` and ``dllm2rec evaluate``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def _print_table(rows: list[tuple[str, dict]], keys: list[str]) -> None:
    w = max(len(r[0]) for r in rows)
    typer.echo(f"{'':{w}}  " + "  ".join(f"{k:>14}" for k in keys))
    for name, m in rows:
        typer.echo(f"{name:{w}}  " + "  ".join(f"{m.get(k, float('nan')):>14.4f}" for k in keys))


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        ctx: typer.Context,
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see configs/)"),
        override: list[str] = typer.Option([], "--set", "-o", help="dotted override, e.g. -o train.epochs=5"),
        data: Optional[str] = typer.Option(None, "--data", help="prepared dataset dir or preset (ml-100k, lastfm)"),
        model: Optional[str] = typer.Option(None, "--model", help="student: sasrec | gru4rec | caser"),
        seed: Optional[int] = typer.Option(None, "--seed"),
        run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="default: <out_dir>/<run name>"),
        resume: bool = typer.Option(False, "--resume", help="continue a killed run from its last checkpoint "
                                    "(refused if the run dir is inconsistent or the config changed; only "
                                    "train.epochs, a higher train.patience and eval/thread knobs may change)"),
    ) -> None:
        """Train a student (optionally distilled) with validation-only model selection; print test metrics.

        Under ``torchrun --nproc_per_node N -m dllm2rec train ...`` it trains with DDP (see docs/scaling.md).
        """
        from dllm2rec.config import load_config
        from dllm2rec.data.registry import load_or_prepare
        from dllm2rec.training import distributed as dist_

        ov = list(override)
        if config is None and not data and not any(o.startswith("data.path=") for o in ov):
            typer.echo(ctx.get_help())  # no config and no data: a 200-epoch run on a default is not what was asked
            raise typer.Exit(2)
        if data:
            ov.append(f"data.path={data}")
        if model:
            ov.append(f"model.name={model}")
        if seed is not None:
            ov.append(f"train.seed={seed}")
        cfg = load_config(config, ov)
        if "path" not in cfg.data.model_fields_set:  # a dataset-agnostic config and no --data: do not guess one
            from dllm2rec.errors import ConfigError

            raise ConfigError(f"{config}: names no dataset (no data.path); pass --data DATASET")
        if dist_.init_from_env(cfg.train.device):  # launched by torchrun with WORLD_SIZE > 1
            try:
                _train(cfg, dist_.resolve_dataset_shared(cfg.data.path), run_dir, resume,
                       echo=dist_.is_main())
            finally:
                dist_.cleanup()
            return
        _train(cfg, load_or_prepare(cfg.data.path), run_dir, resume)

    def _train(cfg, ds, run_dir, resume: bool, echo: bool = True) -> None:
        from dllm2rec.training.trainer import Trainer

        tr = Trainer(cfg, ds, run_dir)
        if not echo:
            tr.fit(resume=resume)
            return
        typer.echo(f"run dir: {tr.run_dir}  dataset {ds.name} ({ds.n_items} items, "
                   f"{len(ds['train'])}/{len(ds['valid'])}/{len(ds['test'])} rows)  "
                   f"student {cfg.model.name}  strategy {cfg.distill.strategy}")
        res = tr.fit(resume=resume)
        proto = tr.proto
        keys = [f"{m}@{k}" for k in cfg.train.ks for m in ("HR", "NDCG")]
        if cfg.train.select_metric not in keys:  # a Recall/MRR selection or a K outside ks: show it too
            keys.append(cfg.train.select_metric)
        typer.echo(f"\nselected epoch {res['best_epoch']} by valid {cfg.train.select_metric} "
                   f"(protocol: {proto}, full ranking over {ds.n_items} items)")
        _print_table([("valid", {k: res["valid"].get(f"valid/{proto}/{k}") for k in keys}),
                      ("test", {k: res["test"].get(f"test/{proto}/{k}") for k in keys})], keys)
        typer.echo(f"results: {tr.run_dir / 'results.json'}")

    @app.command()
    def evaluate(
        checkpoint: Optional[Path] = typer.Argument(None, help="run dir (uses best/) or checkpoint dir; omit with "
                                                               "--baseline"),
        data: Optional[str] = typer.Option(None, "--data", help="dataset (default: the run's)"),
        split: str = typer.Option("test", "--split"),
        ks: str = typer.Option("1,5,10,20", "--ks"),
        exclude_history: bool = typer.Option(False, "--exclude-history"),
        batch: int = typer.Option(1024, "--batch"),
        item_chunk: Optional[int] = typer.Option(None, "--item-chunk",
                                                 help="rank against items in chunks of this size (bounded memory "
                                                      "for huge catalogues; same ranks)"),
        baseline: Optional[str] = typer.Option(None, "--baseline",
                                               help="rank a non-learned baseline instead of a student: popularity "
                                                    "(train target counts, ties pessimistic); needs --data"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Full-ranking HR/NDCG@K of a saved student (or of --baseline popularity) on a split."""
        from dllm2rec.data.registry import load_or_prepare
        from dllm2rec.errors import Dllm2recError
        from dllm2rec.evaluation.protocol import evaluate as run_eval
        from dllm2rec.students.checkpoint import load_student

        kk = [int(x) for x in ks.split(",")]
        if baseline is not None:
            from dllm2rec.evaluation.baselines import evaluate_baseline

            if checkpoint is not None:
                raise Dllm2recError(f"{checkpoint}: --baseline ranks without a checkpoint; pass --data only")
            if not data:
                raise Dllm2recError(f"--baseline {baseline}: pass --data DATASET (a prepared dir or preset)")
            ds = load_or_prepare(data)
            m = evaluate_baseline(baseline, ds, split, kk, batch, exclude_history, item_chunk=item_chunk)
        else:
            if checkpoint is None:
                raise Dllm2recError("evaluate: pass a run dir / checkpoint, or --baseline popularity --data DATASET")
            ck = checkpoint / "best" if (checkpoint / "best" / "student.json").is_file() else checkpoint
            model, info = load_student(ck)
            ds_path = data or info["meta"].get("config", {}).get("data", {}).get("path")
            if not ds_path:
                raise Dllm2recError(f"{ck}: no dataset recorded; pass --data")
            ds = load_or_prepare(ds_path)
            fp = info["meta"].get("dataset_fingerprint")
            if fp and fp != ds.fingerprint():
                raise Dllm2recError(f"{ck}: trained on dataset {fp}, but {ds_path} is {ds.fingerprint()}")
            m = run_eval(model, ds[split], kk, batch, exclude_history, item_chunk=item_chunk)
        if as_json:
            typer.echo(json.dumps(m, indent=2))
        else:
            keys = sorted({k.split("/", 1)[1] for k in m}, key=lambda s: (int(s.split("@")[1]), s))
            proto = next(iter(m)).split("/")[0]
            if baseline is not None:
                typer.echo(f"baseline {baseline}: scores = train target counts (ds.item_counts('train')), "
                           f"ties pessimistic")
            typer.echo(f"{ds.name} {split}: protocol {proto}, full ranking over {ds.n_items} items, "
                       f"{len(ds[split])} rows")
            _print_table([(split, {k: m[f"{proto}/{k}"] for k in keys})], keys)

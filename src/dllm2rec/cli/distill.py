"""``dllm2rec distill preflight|auto``: will distillation help, and a guarded run that never picks below plain."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    distill_app = typer.Typer(help="Will a teacher help? Pre-flight check and the validation-only guard.",
                              no_args_is_help=True)
    app.add_typer(distill_app, name="distill")

    @distill_app.command()
    def preflight(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="run config (YAML) with distill.teacher"),
        override: list[str] = typer.Option([], "--set", "-o", help="dotted override, e.g. distill.teacher=DIR"),
        out: Path = typer.Option(Path("runs/preflight"), "--out"),
        epochs: int = typer.Option(50, "--epochs", help="epoch cap of the plain student"),
        patience: int = typer.Option(3, "--patience", help="its early-stopping patience (validation)"),
        k: int = typer.Option(20, "--k"),
    ) -> None:
        """Teacher vs a short plain student on validation: HR@K, top-K overlap, teacher-right/student-wrong share."""
        from dllm2rec.workflows import guard  # torch and the trainer load with the command, not with --help

        guard.preflight(config, list(override), out, epochs=epochs, k=k, patience=patience, echo=typer.echo)

    @distill_app.command()
    def auto(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="a DLLM2Rec run config (YAML)"),
        override: list[str] = typer.Option([], "--set", "-o", help="dotted override for every trial"),
        out: Path = typer.Option(Path("runs/guard"), "--out"),
        trials: int = typer.Option(8, "--trials", help="budget; trial 0 = plain (lam=0, ed_weight=0), "
                                                        "trial 1 = the config's lam/ed_weight/K"),
        seed: int = typer.Option(0, "--seed", help="sampler seed"),
        chunk: int = typer.Option(5, "--chunk", help="epochs between pruning checks"),
        no_prune: bool = typer.Option(False, "--no-prune", help="train every trial to early stopping"),
        no_preflight: bool = typer.Option(False, "--no-preflight", help="skip the pre-flight check"),
    ) -> None:
        """Validation-only search over lam, ed_weight and K including 0 (writes guard.json); never below plain."""
        from dllm2rec.workflows import guard

        if not no_preflight:
            guard.preflight(config, list(override), out, echo=typer.echo)
        guard.guarded_distill(config, list(override), out, trials=trials, seed=seed, chunk=chunk,
                              prune=not no_prune, echo=typer.echo)

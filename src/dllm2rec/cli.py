"""The ``dllm2rec`` command line. Each area registers its commands from its own ``cli.py`` (``register(app)``);
heavy libraries are imported inside the commands, so ``dllm2rec --help`` stays fast.

Errors that are the user's (bad data, config, artifacts, missing extras) print as one line and exit with status 2.
"""
from __future__ import annotations

import importlib
import os
import sys

import typer

from dllm2rec.errors import Dllm2recError

app = typer.Typer(
    name="dllm2rec",
    help="Distil LLM recommenders (BIGRec) into millisecond sequential students (DLLM2Rec, RecSys 2024).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Prepare, import, inspect and export datasets.", no_args_is_help=True)
teacher_app = typer.Typer(help="LLM teachers: fine-tune, generate, ground, evaluate; teacher artifacts.",
                          no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(teacher_app, name="teacher")

# (module, target app) pairs; a module that is not present yet is skipped so partial installs still work.
_PARTS = [
    ("dllm2rec.data.cli", data_app),
    ("dllm2rec.teachers.cli", teacher_app),
    ("dllm2rec.teachers.cli_artifacts", teacher_app),
    ("dllm2rec.teachers.cli_llmemb", teacher_app),
    ("dllm2rec.training.cli", app),
    ("dllm2rec.distill.cli", app),
    ("dllm2rec.serving.cli", app),
]
for _mod, _target in _PARTS:
    try:
        importlib.import_module(_mod).register(_target)
    except ModuleNotFoundError as _e:
        if _e.name != _mod:
            raise


@app.command()
def version() -> None:
    """Print the installed version."""
    from dllm2rec import __version__

    typer.echo(__version__)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except Dllm2recError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

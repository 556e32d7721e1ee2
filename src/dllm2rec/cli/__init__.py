"""The ``dllm2rec`` command line: one thin module per command group in ``dllm2rec/cli/`` (``register(app)``), no
logic — commands parse options and call the layers (data, teachers, training, serving) or ``workflows/``. Heavy
libraries are imported inside the commands, so ``dllm2rec --help`` stays fast.

Errors that are the user's (bad data, config, artifacts, missing extras) print as one line and exit with status 2.
"""
from __future__ import annotations

import importlib
import sys

import typer

from dllm2rec.errors import Dllm2recError


def _flags_without_type() -> None:
    """Help shows switches as switches: typer 0.29's rich help prints ``<bool>`` after every flag (``--quick
    <bool>``), which reads as if it took a value; click's plain help does not. Only the help text changes."""
    opt = getattr(getattr(typer, "core", None), "TyperOption", None)
    if opt is None or not hasattr(opt, "display_type_rich"):
        return
    orig = opt.display_type_rich

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else orig(self, ctx)

    opt.display_type_rich = display_type_rich


_flags_without_type()

app = typer.Typer(
    name="dllm2rec",
    context_settings={"help_option_names": ["-h", "--help"]},
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
    ("dllm2rec.cli.data", data_app),
    ("dllm2rec.cli.teacher", teacher_app),
    ("dllm2rec.cli.teacher_artifacts", teacher_app),
    ("dllm2rec.cli.teacher_llmemb", teacher_app),
    ("dllm2rec.cli.teacher_reranker", teacher_app),
    ("dllm2rec.cli.train", app),
    ("dllm2rec.cli.experiment", app),
    ("dllm2rec.cli.serve", app),
    ("dllm2rec.cli.distill", app),
]
for _mod, _target in _PARTS:  # every group is part of the package: a failing import is a bug, not skipped
    importlib.import_module(_mod).register(_target)


@app.command()
def version() -> None:
    """Print the installed version."""
    from dllm2rec import __version__

    typer.echo(__version__)


def _version_flag(value: bool) -> None:
    if value:
        version()
        raise typer.Exit()


@app.callback()
def _root(_version: bool = typer.Option(False, "--version", "-V", callback=_version_flag, is_eager=True,
                                        help="Print the installed version and exit.")) -> None:
    """Distil LLM recommenders (BIGRec) into millisecond sequential students (DLLM2Rec, RecSys 2024)."""


def main(argv: list[str] | None = None) -> None:
    from dllm2rec.utils.threads import apply_default_threads

    apply_default_threads()  # before torch is imported: no oversubscription on a shared machine (utils/threads.py)
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

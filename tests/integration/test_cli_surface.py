"""The command line's surface: --version / -V, -h as --help, switches shown without a value type."""
import subprocess
import sys

from typer.testing import CliRunner

from dllm2rec import __version__
from dllm2rec.cli import app

runner = CliRunner()


def test_version_and_short_help():
    for flag in ("--version", "-V"):
        r = runner.invoke(app, [flag])
        assert r.exit_code == 0 and r.output.strip() == __version__
    r = runner.invoke(app, ["-h"])
    assert r.exit_code == 0 and "Usage" in r.output
    r = runner.invoke(app, ["data", "-h"])
    assert r.exit_code == 0 and "prepare" in r.output


def test_switches_have_no_value_type_in_help():
    r = runner.invoke(app, ["demo", "--help"], terminal_width=200)
    assert r.exit_code == 0
    quick = next(line for line in r.output.splitlines() if "--quick" in line)
    assert "<bool>" not in quick and "smoke run" in quick
    assert "<int>" in next(line for line in r.output.splitlines() if "--seed" in line)  # typed options keep it


def test_main_sets_a_non_oversubscribing_thread_default():
    code = ("import os, sys; os.environ.pop('OMP_NUM_THREADS', None); os.environ.pop('DLLM2REC_NUM_THREADS', None);"
            "from dllm2rec.utils.threads import apply_default_threads, physical_cores;"
            "n = apply_default_threads(); assert 1 <= n <= physical_cores(), n;"
            "os.environ['OMP_NUM_THREADS'] = '3'; from dllm2rec.utils.threads import default_threads;"
            "assert default_threads() == 3; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_default_threads_leave_busy_cores_alone():
    from dllm2rec.utils import threads

    import os
    saved = {k: os.environ.pop(k) for k in ("OMP_NUM_THREADS", "DLLM2REC_NUM_THREADS") if k in os.environ}
    try:
        assert threads.default_threads(load=1.6, cores=2) == 1      # the loaded 2-core box: one thread
        assert threads.default_threads(load=0.0, cores=2) == 2
        assert threads.default_threads(load=9.0, cores=4) == 1
        assert threads.default_threads(load=0.0, cores=64) == threads.MAX_DEFAULT_THREADS
    finally:
        os.environ.update(saved)


def test_one_naming_scheme():
    """-o is --set wherever it exists; every dataset option is spelled --data (alias --dataset)."""
    import click
    import typer.main

    root = typer.main.get_command(app)

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + [name])
        else:
            yield path, cmd

    for path, cmd in walk(root, []):
        for p in cmd.params:
            if not isinstance(p, click.Option):
                continue
            if "-o" in p.opts:
                assert "--set" in p.opts, (path, p.opts)
            if "--dataset" in p.opts:
                assert "--data" in p.opts, (path, p.opts)


def test_help_does_not_load_torch():
    """`dllm2rec --help` stays fast: building the CLI imports no torch (commands import their layers lazily)."""
    code = "import sys, dllm2rec.cli; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr

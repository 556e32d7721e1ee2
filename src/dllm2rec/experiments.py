"""Grid runner: datasets × students × methods × seeds, each run in its own directory, resumable.

    run_grid(GridSpec(data=["prepared/ml-100k"], students=["sasrec", "gru4rec", "caser"],
                      methods=["none", "random", "rd", "dllm2rec"], seeds=[0, 1, 2],
                      teacher="artifacts/teachers/ml-100k", out="runs/exp", overrides=["train.epochs=100"]))

Layout: ``<out>/<dataset>/<student>/<method>/s<seed>/`` with the trainer's files plus ``experiment.json`` (the
method label and the exact overrides, so a run can be repeated with ``dllm2rec train``). A run whose
``results.json`` exists is skipped; with ``resume=True`` a killed run continues from its ``last/`` checkpoint (without
it, a half-finished run starts again from scratch); with ``resume=True`` a finished run that stopped at a smaller epoch
cap (not by early stopping) is continued up to the current ``train.epochs``. Runs go seed-major (all cells of seed 0
first), so a grid cut short still has balanced cells. ``jobs > 1`` runs that many subprocesses at once, each with ``train.num_threads=1``.

A method is a name in :data:`METHODS`; every method maps to config overrides — the one place ablations are defined.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dllm2rec.config import load_config
from dllm2rec.data.registry import load_or_prepare
from dllm2rec.distill.strategies import ABLATION_SWITCHES
from dllm2rec.errors import ConfigError, Dllm2recError
from dllm2rec.training.trainer import Trainer
from dllm2rec.utils.io import atomic_write_text, read_json, try_read_json

TEACHER = "{teacher}"  # placeholder replaced by the grid's teacher path

# method name -> (display label, dotted config overrides). The ONE table of baselines, controls and ablations.
# Ablation switches are parameters of the ``dllm2rec`` strategy (see dllm2rec.distill.strategies).
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "none": ("none", {"distill.strategy": "none", "distill.teacher": None, "distill.params": {}}),
    "random": ("random-teacher control", {"distill.strategy": "dllm2rec", "distill.teacher": "random"}),
    "rd": ("rd", {"distill.strategy": "rd", "distill.teacher": TEACHER, "distill.params": {}}),
    "hint": ("hint", {"distill.strategy": "hint", "distill.teacher": TEACHER, "distill.params": {}}),
    "dllm2rec": ("dllm2rec", {"distill.strategy": "dllm2rec", "distill.teacher": TEACHER}),
    "dllm2rec-paper": ("dllm2rec-paper", {"distill.strategy": "dllm2rec", "distill.teacher": TEACHER,
                                          "distill.params.variant": "paper"}),
}
# the ablations: one method per switch of the strategy's own ablation table (distill.strategies.ABLATION_SWITCHES)
METHODS.update({
    f"dllm2rec-{suffix}": (f"dllm2rec-{suffix}", {"distill.strategy": "dllm2rec", "distill.teacher": TEACHER,
                                                  f"distill.params.{flag}": False})
    for flag, suffix in ABLATION_SWITCHES.items()
})
ABLATIONS = [m for m in METHODS if m.startswith("dllm2rec-wo-")]


def parse_methods(text: str | list[str]) -> list[str]:
    """Comma list of method names; ``ablations`` expands to every ``dllm2rec-wo-*`` method."""
    items = text if isinstance(text, list) else text.split(",")
    out: list[str] = []
    for m in (x.strip() for x in items):
        if not m:
            continue
        expanded = ABLATIONS if m == "ablations" else [m]
        for e in expanded:
            if e not in METHODS:
                raise ConfigError(f"unknown method '{e}'; choose from {', '.join(METHODS)} or 'ablations'")
            if e not in out:
                out.append(e)
    return out


def control_spec(teacher: str | None) -> str:
    """The random-teacher control with the real teacher's embedding dim (same shapes), ``random`` without one."""
    if teacher:
        dim = (try_read_json(Path(teacher, "manifest.json")) or {}).get("dim")
        if isinstance(dim, int) and dim > 0:
            return f"random:{dim}"
    return "random"


def method_overrides(method: str, teacher: str | None) -> list[str]:
    """Dotted overrides for ``method``; raises if it needs a teacher and none is given."""
    _, ov = METHODS[method]
    out = []
    for k, v in ov.items():
        if k == "distill.teacher" and v == "random":
            v = control_spec(teacher)
        if v == TEACHER:
            if not teacher:
                raise ConfigError(f"method '{method}' needs a teacher: pass --teacher DIR (or 'random'/'synthetic')")
            v = teacher
        out.append(f"{k}={'null' if v is None else json.dumps(v) if isinstance(v, bool) else v}")
    return out


def dataset_label(data: str) -> str:
    return Path(str(data).rstrip("/")).name


@dataclass
class RunSpec:
    data: str
    student: str
    method: str
    seed: int
    run_dir: Path
    overrides: list[str]

    teacher: str | None = None

    @property
    def label(self) -> str:
        """The method's display label; runs with the synthetic (oracle) teacher say so."""
        label = METHODS[self.method][0]
        uses_teacher = METHODS[self.method][1].get("distill.teacher") == TEACHER
        if uses_teacher and self.teacher and str(self.teacher).split(":")[0] == "synthetic":
            label += " (synthetic teacher)"
        return label

    extend_to: int | None = None   # with resume: a run that hit a smaller epoch cap is continued up to this cap

    @property
    def done(self) -> bool:
        f = self.run_dir / "results.json"
        if not f.is_file():
            return False
        if self.extend_to is None:
            return True
        try:
            res = read_json(f, ValueError)
            train = res["config"]["train"]
            ran, cap, best, pat = int(res["epochs_run"]), int(train["epochs"]), int(res["best_epoch"]), \
                int(train["patience"])
        except (OSError, ValueError, KeyError, TypeError):
            return True
        stopped_early = ran < cap or ran - best >= pat
        return stopped_early or cap >= self.extend_to or not self.started

    @property
    def started(self) -> bool:
        return (self.run_dir / "last" / "trainer_state.pt").is_file()


@dataclass
class GridSpec:
    data: list[str]
    students: list[str]
    methods: list[str]
    seeds: list[int]
    out: str | Path = "runs/exp"
    teacher: str | None = None
    config: str | Path | None = None
    overrides: list[str] = field(default_factory=list)
    resume: bool = False
    jobs: int = 1

    def runs(self) -> list[RunSpec]:
        out = Path(self.out)
        specs = []
        extend_to = None
        if self.resume:  # finished runs that ran into a smaller epoch cap are continued to the current one

            extend_to = load_config(self.config, list(self.overrides)).train.epochs
        for seed in self.seeds:
            for data in self.data:
                for student in self.students:
                    for method in self.methods:
                        ov = [f"data.path={data}", f"model.name={student}", f"train.seed={seed}"]
                        ov += method_overrides(method, self.teacher)
                        ov += list(self.overrides)
                        ds = dataset_label(data)
                        ov.append(f"name={ds}-{student}-{method}-s{seed}")
                        specs.append(RunSpec(data, student, method, seed,
                                             out / ds / student / method / f"s{seed}", ov, self.teacher,
                                             extend_to))
        return specs


def _write_experiment_json(spec: RunSpec, config: str | Path | None) -> None:
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec.run_dir / "experiment.json", json.dumps({
        "label": spec.label, "method": spec.method, "data": spec.data, "student": spec.student,
        "seed": spec.seed, "config": None if config is None else str(config), "overrides": spec.overrides,
    }, indent=2))


def _train_cmd(spec: RunSpec, config: str | Path | None, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "dllm2rec", "train", "--run-dir", str(spec.run_dir)]
    if config is not None:
        cmd += ["--config", str(config)]
    for ov in spec.overrides + ["train.num_threads=1"]:
        cmd += ["-o", ov]
    if resume:
        cmd.append("--resume")
    return cmd


def run_one(spec: RunSpec, config: str | Path | None = None, resume: bool = False,
            quiet: bool | None = True, dataset_cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one cell in-process (the dataset is loaded once per grid through ``dataset_cache``)."""

    cfg = load_config(config, spec.overrides)
    cache = dataset_cache if dataset_cache is not None else {}
    if cfg.data.path not in cache:
        cache[cfg.data.path] = load_or_prepare(cfg.data.path)
    _write_experiment_json(spec, config)
    tr = Trainer(cfg, cache[cfg.data.path], spec.run_dir, quiet=quiet)
    return tr.fit(resume=resume and spec.started)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire(spec: RunSpec) -> bool:
    """Claim a run directory for this process (``.lock`` with our pid); False if a live process holds it.

    Lets several ``experiment`` invocations (shells, machines sharing the filesystem) work on one grid without
    training the same cell twice. A lock left by a dead process is taken over.
    """
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    lock = spec.run_dir / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                return False
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def release(spec: RunSpec) -> None:
    lock = spec.run_dir / ".lock"
    try:
        if int(lock.read_text().strip() or 0) == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass


def run_grid(grid: GridSpec, log: Callable[[str], None] = print, quiet: bool | None = True) -> dict[str, Any]:
    """Run every unfinished cell of the grid; returns counts and the failed runs (a failure does not stop the rest)."""
    specs = grid.runs()
    todo = [s for s in specs if not s.done]
    log(f"grid: {len(specs)} runs ({len(specs) - len(todo)} finished, {len(todo)} to do) -> {grid.out}")
    failed: list[tuple[str, str]] = []
    t0 = time.perf_counter()
    if grid.jobs <= 1:
        cache: dict[str, Any] = {}
        for i, s in enumerate(todo, 1):
            t1 = time.perf_counter()
            if s.done:
                continue
            if not acquire(s):
                log(f"[{i}/{len(todo)}] {s.run_dir}: another process is training it; skipped")
                continue
            log(f"[{i}/{len(todo)}] {s.run_dir}" + (" (resuming)" if grid.resume and s.started else ""))
            try:
                res = run_one(s, grid.config, grid.resume, quiet=quiet, dataset_cache=cache)
            except Dllm2recError as e:
                failed.append((str(s.run_dir), str(e)))
                log(f"    failed: {e}")
                continue
            finally:
                release(s)
            _log_result(log, res, time.perf_counter() - t1)
    else:
        failed = _run_parallel(todo, grid, log)
    n_done = sum(1 for s in specs if s.done)
    log(f"grid: {n_done}/{len(specs)} runs finished in {time.perf_counter() - t0:.0f}s"
        + (f"; {len(failed)} failed" if failed else ""))
    return {"total": len(specs), "finished": n_done, "ran": len(todo), "failed": failed,
            "skipped": len(specs) - len(todo)}


def _log_result(log: Callable[[str], None], res: dict[str, Any], secs: float) -> None:
    if res.get("status") == "paused":
        log(f"    paused at epoch {res.get('epoch')}")
        return
    t = res.get("test", {})
    key = next((k for k in t if k.endswith("/NDCG@20")), None)
    log(f"    best epoch {res.get('best_epoch')}  " + (f"{key} {t[key]:.4f}  " if key else "") + f"({secs:.0f}s)")


def _run_parallel(todo: list[RunSpec], grid: GridSpec, log: Callable[[str], None]) -> list[tuple[str, str]]:
    failed: list[tuple[str, str]] = []
    pending = list(todo)
    running: list[tuple[RunSpec, subprocess.Popen, Any, float]] = []
    env = dict(os.environ, DLLM2REC_LOG_EPOCHS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    i = 0
    while pending or running:
        while pending and len(running) < grid.jobs:
            s = pending.pop(0)
            i += 1
            if s.done:
                continue
            if not acquire(s):
                log(f"[{i}/{len(todo)}] {s.run_dir}: another process is training it; skipped")
                continue
            _write_experiment_json(s, grid.config)
            fh = open(s.run_dir / "train.out", "a", encoding="utf-8")
            p = subprocess.Popen(_train_cmd(s, grid.config, grid.resume and s.started), stdout=fh,
                                 stderr=subprocess.STDOUT, env=env)
            running.append((s, p, fh, time.perf_counter()))
            log(f"[{i}/{len(todo)}] started {s.run_dir} (pid {p.pid})")
        time.sleep(0.5)
        still = []
        for s, p, fh, t1 in running:
            rc = p.poll()
            if rc is None:
                still.append((s, p, fh, t1))
                continue
            fh.close()
            release(s)
            if rc == 0 and s.done:
                res = read_json(s.run_dir / "results.json")
                log(f"    done {s.run_dir}")
                _log_result(log, res, time.perf_counter() - t1)
            else:
                tail = (s.run_dir / "train.out").read_text(encoding="utf-8", errors="replace").strip()
                msg = tail.splitlines()[-1] if tail else f"exit status {rc}"
                failed.append((str(s.run_dir), msg))
                log(f"    failed {s.run_dir}: {msg}")
        running = still
    return failed

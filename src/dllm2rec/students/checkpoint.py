"""Student checkpoints, pickle-free: ``<dir>/model.safetensors`` + ``<dir>/student.json``; the trainer's
resumable ``last/`` checkpoint as one atomic unit.

``student.json`` holds the architecture (``SequentialStudent.init_kwargs()``), the description of any attached
offset hooks (e.g. collaborative embedding distillation: ``{"input_offset": {...}}``) and free-form ``meta``
(dataset fingerprint, metrics it was selected with, config). The state dict includes the hooks' parameters and
buffers, so a checkpoint of a distilled student is self-contained (no teacher files needed to load it).

Crash consistency of a run directory (``<run>/last``, ``<run>/best``, ``<run>/log.jsonl``):

- ``last/`` = ``model.safetensors`` + ``student.json`` + ``trainer_state.pt`` + ``checkpoint.json`` (epoch and the
  size of every file, written last), all written to ``.last.*.tmp`` next to it, fsynced, then swapped in (see
  ``utils.io.atomic_dir``). The previous complete ``last/`` stays in place until the new one is complete, so a kill
  at any instant loses at most the epoch in flight.
- The log line of epoch E is appended (and fsynced) before ``last/`` of epoch E; ``best/`` of epoch E is written
  after it, and on ``--resume`` it is rebuilt from ``last/`` when a kill interrupted it.
- ``trainer_state.pt`` holds only tensors, numbers and lists; it is read with ``torch.load(weights_only=True)``
  (no code runs while loading it).
- ``recover_run_dir`` runs before training: a complete ``.last.*`` left by a kill between two renames becomes
  ``last/`` again, every other stale temp / ``.old`` directory or file is removed.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dllm2rec.config import resume_changes
from dllm2rec.errors import Dllm2recError
from dllm2rec.students.base import SequentialStudent, build_student
from dllm2rec.students.hooks import build_hook
from dllm2rec.utils.io import atomic_dir, crash_test_hook, disk_errors, read_json, try_read_json, write_file_durable

STATE_FILE = "trainer_state.pt"
MANIFEST = "checkpoint.json"
CHECKPOINT_FORMAT = 1
_STALE_NAMES = ("last", "best", "log.jsonl", "results.json", "config.yaml")


def save_hook(epoch: int, phase: str) -> None:
    """Crash-test instrumentation (``utils.io.crash_test_hook``; off unless its env var is set)."""
    crash_test_hook(phase, epoch)


def _student_files(model: SequentialStudent, meta: dict[str, Any] | None,
                   extra_tensors: dict[str, torch.Tensor] | None) -> tuple[bytes, bytes]:
    from safetensors.torch import save

    hooks = {}
    for attr in ("input_offset", "output_offset"):
        mod = getattr(model, attr)
        if mod is not None:
            if not hasattr(mod, "spec"):
                raise TypeError(f"{attr} module {type(mod).__name__} has no spec() for rebuilding")
            hooks[attr] = mod.spec()
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if extra_tensors:
        state.update({f"__extra__.{k}": v.detach().contiguous().cpu() for k, v in extra_tensors.items()})
    info = json.dumps({"student": model.init_kwargs(), "hooks": hooks, "meta": meta or {}}, indent=2)
    return save(state), info.encode("utf-8")


def save_student(model: SequentialStudent, path: str | Path, meta: dict[str, Any] | None = None,
                 extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a student checkpoint directory atomically and durably (a full disk -> one-line error)."""
    path = Path(path)
    weights, info = _student_files(model, meta, extra_tensors)
    with disk_errors(path), atomic_dir(path, durable=True) as tmp:
        write_file_durable(tmp / "model.safetensors", weights)
        write_file_durable(tmp / "student.json", info)
    return path


def save_checkpoint(path: str | Path, model: SequentialStudent, meta: dict[str, Any],
                    state: dict[str, Any]) -> Path:
    """``last/`` as one unit: student + ``trainer_state.pt`` + ``checkpoint.json``, swapped in when complete."""
    path = Path(path)
    epoch = int(state["epoch"])
    weights, info = _student_files(model, meta, None)
    buf = io.BytesIO()
    torch.save(state, buf)  # into memory: a full disk surfaces as OSError from our own writes, not mid-pickle
    files = {"model.safetensors": weights, "student.json": info, STATE_FILE: buf.getvalue()}
    with disk_errors(path), atomic_dir(path, durable=True) as tmp:
        for name, data in files.items():
            write_file_durable(tmp / name, data)
        manifest = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "files": {k: len(v) for k, v in files.items()}}
        write_file_durable(tmp / MANIFEST, json.dumps(manifest).encode("utf-8"))  # last: marks it complete
    save_hook(epoch, "last:committed")
    return path


def checkpoint_problem(path: str | Path, require_manifest: bool = False) -> str | None:
    """None when ``path`` is a complete checkpoint; otherwise what is wrong with it (for a one-line error)."""
    path = Path(path)
    if not path.is_dir():
        return "missing"
    mf = path / MANIFEST
    if mf.is_file():
        try:
            man = read_json(mf, ValueError)
            files = dict(man["files"])
            int(man["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            return f"{MANIFEST} is unreadable"
        for name, size in files.items():
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            if f.stat().st_size != int(size):
                return f"{name} is truncated ({f.stat().st_size} of {size} bytes)"
        return None
    if require_manifest:
        return f"no {MANIFEST}"
    for name in ("student.json", "model.safetensors", STATE_FILE):  # written before checkpoint.json existed
        if not (path / name).is_file():
            return f"no {name} (the save was interrupted)"
    return None


def checkpoint_epoch(path: str | Path) -> int | None:
    try:
        return int(try_read_json(Path(path) / MANIFEST)["epoch"])
    except (ValueError, KeyError, TypeError):
        return None


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def recover_run_dir(run_dir: str | Path) -> list[str]:
    """Clean what a kill left in ``run_dir``; returns what was done (for a notice).

    Where ``last/`` is missing (a kill between the two renames of a non-exchanging filesystem), the newest complete
    ``.last.*`` directory becomes ``last/``. Every other ``.last.*`` / ``.best.*`` directory and temp file of the run
    files is removed.
    """
    run_dir = Path(run_dir)
    done: list[str] = []
    if not run_dir.is_dir():
        return done
    for name in _STALE_NAMES:
        stale = sorted(run_dir.glob(f".{name}.*.tmp")) + sorted(run_dir.glob(f".{name}.*.old"))
        target = run_dir / name
        if name == "last" and not target.exists():
            cands = [(checkpoint_epoch(d), d) for d in stale
                     if d.is_dir() and checkpoint_problem(d, require_manifest=True) is None]
            if cands:
                ep, d = max(cands, key=lambda c: c[0])
                os.replace(d, target)
                stale.remove(d)
                done.append(f"restored {target} (epoch {ep}) from {d.name}")
        for d in stale:
            _remove(d)
            done.append(f"removed stale {d.name}")
    last = run_dir / "last"
    if last.is_dir():  # a trainer_state.pt temp file of the pre-unit format
        for f in last.glob(f".{STATE_FILE}.*.tmp"):
            _remove(f)
    return done


def load_trainer_state(path: str | Path, **kw) -> dict[str, Any]:
    """``trainer_state.pt`` of a checkpoint, loaded without executing code (``weights_only=True``)."""
    f = Path(path) / STATE_FILE
    try:
        st = torch.load(f, weights_only=True, **kw)
    except Exception as e:  # noqa: BLE001 - a corrupt or code-carrying file: one line, never run it
        raise Dllm2recError(f"{f}: unreadable trainer state ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(st, dict) or not {"epoch", "best_metric", "best_epoch", "bad_evals", "optimizer",
                                        "gen", "torch_rng", "history_len"} <= set(st):
        raise Dllm2recError(f"{f}: not a dllm2rec trainer state")
    return st


def read_log(run_dir: Path, epochs: int) -> tuple[list[str], list[dict[str, Any]]]:
    """The first ``epochs`` lines of ``log.jsonl`` (a longer log is from the epoch in flight), checked."""
    log = run_dir / "log.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    if len(lines) < epochs:
        raise Dllm2recError(f"{run_dir}: cannot resume: {run_dir / 'last'} is at epoch {epochs} but log.jsonl has "
                            f"{len(lines)} epoch(s); the run directory is inconsistent (start it again without "
                            "--resume, or use another --run-dir)")
    recs = []
    for i, line in enumerate(lines[:epochs]):
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and int(rec.get("epoch", -1)) == i + 1
        except (ValueError, TypeError):
            ok = False
        if not ok:
            raise Dllm2recError(f"{log}: line {i + 1} is not the record of epoch {i + 1}; cannot resume")
        recs.append(rec)
    return lines[:epochs], recs


@dataclass
class ResumePlan:
    """What ``plan_resume`` found consistent: the trainer state, the kept log, the config changes to apply."""
    state: dict[str, Any]
    epoch: int
    lines: list[str]
    history: list[dict[str, Any]]
    changed: dict[str, tuple[Any, Any]]
    rebuild_best: bool


def plan_resume(run_dir: Path, cfg, fingerprint: str, notify: bool = True, **load_kw) -> ResumePlan | None:
    """Check that ``run_dir`` can be resumed, writing nothing; None when no epoch ever completed.

    Refused (one-line Dllm2recError / ConfigError): an incomplete ``last/``, no checkpoint but more than the epoch
    in flight logged, a log shorter than the checkpoint, another dataset, a changed config that is not
    documented-safe, a ``best/`` that does not hold the selected epoch (except right after a kill between ``last/``
    and ``best/`` of the best epoch: then ``rebuild_best``).
    """

    last, run = run_dir / "last", run_dir
    if not last.exists():
        n_log = len((run / "log.jsonl").read_text(encoding="utf-8").splitlines()) \
            if (run / "log.jsonl").is_file() else 0
        if n_log > 1 or (run / "results.json").exists():
            raise Dllm2recError(f"{run}: cannot resume: no checkpoint in {last} but the run has "
                                + (f"{n_log} logged epochs" if n_log > 1 else "results.json")
                                + "; refusing to restart from epoch 1 (start it again without --resume, or use "
                                "another --run-dir)")
        if notify and n_log:
            notice(f"{run}: no complete checkpoint yet (killed during epoch 1); starting at epoch 1")
        return None
    problem = checkpoint_problem(last)
    if problem:
        raise Dllm2recError(f"{last}: incomplete checkpoint ({problem}); cannot resume, and restarting from "
                            "epoch 1 would lose the run (start it again without --resume to do that)")
    info = read_json(last / "student.json")
    meta = info.get("meta", {})
    fp = meta.get("dataset_fingerprint")
    if fp and fp != fingerprint:
        raise Dllm2recError(f"{last}: trained on dataset {fp}, but {cfg.data.path} is "
                            f"{fingerprint}; cannot resume on another dataset")
    st = load_trainer_state(last, **load_kw)
    epoch = int(st["epoch"])
    man_epoch = checkpoint_epoch(last)
    if (man_epoch is not None and man_epoch != epoch) or int(meta.get("epoch", epoch)) != epoch \
            or int(st["history_len"]) != epoch:
        raise Dllm2recError(f"{last}: inconsistent checkpoint (trainer state at epoch {epoch}, model at epoch "
                            f"{meta.get('epoch')}, manifest at epoch {man_epoch}); cannot resume")
    changed = resume_changes(meta.get("config", {}), cfg, epoch) if "config" in meta else {}
    lines, history = read_log(run, epoch)
    best_epoch = int(st["best_epoch"])
    rebuild_best = False
    if best_epoch >= 1:
        bproblem = next((f"no {n}" for n in ("student.json", "model.safetensors")
                         if not (run / "best" / n).is_file()), None)
        bepoch = None
        if bproblem is None:
            bmeta = read_json(run / "best" / "student.json").get("meta", {})
            bepoch = bmeta.get("epoch")
        if bepoch != best_epoch:
            if best_epoch != epoch:
                raise Dllm2recError(f"{run / 'best'}: holds epoch {bepoch} ({bproblem or 'complete'}), but the "
                                    f"checkpoint selected epoch {best_epoch}; cannot resume")
            rebuild_best = True  # killed after last/ of the best epoch, before best/: last/ is that model
    return ResumePlan(st, epoch, lines, history, changed, rebuild_best)


def notice(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr, flush=True)


def load_student(path: str | Path, map_location: str = "cpu") -> tuple[SequentialStudent, dict[str, Any]]:
    """Rebuild a student (with its hooks) from a checkpoint directory; returns (model in eval mode, info)."""
    from safetensors.torch import load_file

    path = Path(path)
    jpath, wpath = path / "student.json", path / "model.safetensors"
    for p in (jpath, wpath):
        if not p.is_file():
            raise Dllm2recError(f"{p}: missing (not a dllm2rec student checkpoint)")
    info = read_json(jpath)
    kw = dict(info["student"])
    name = kw.pop("name")
    n_items = kw.pop("n_items")
    model = build_student(name, n_items, **kw)
    state = load_file(str(wpath), device=map_location)
    extras = {k[len("__extra__."):]: state.pop(k) for k in list(state) if k.startswith("__extra__.")}
    for attr, spec in info.get("hooks", {}).items():
        setattr(model, attr, build_hook(spec, state, prefix=f"{attr}."))
    model.load_state_dict(state)
    model.eval()
    info["extras"] = extras
    return model, info

"""``dllm2rec tune``: an optuna search whose objective is the VALIDATION select metric (test is never read)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from dllm2rec.config import load_config
from dllm2rec.data.registry import load_or_prepare
from dllm2rec.errors import ConfigError, MissingDependencyError
from dllm2rec.training.trainer import Trainer
from dllm2rec.utils.io import atomic_write_text


def _num(text: str) -> int | float:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_space(items: list[str]) -> dict[str, tuple[str, Any]]:
    """``key=lo:hi`` (float; ints if both ints), ``key=lo:hi:log``, ``key=a,b,c`` (categorical, YAML values)."""

    space: dict[str, tuple[str, Any]] = {}
    for it in items:
        if "=" not in it:
            raise ConfigError(f"--space '{it}' must look like section.key=lo:hi | lo:hi:log | a,b,c")
        key, val = (s.strip() for s in it.split("=", 1))
        if ":" in val:
            parts = val.split(":")
            log = len(parts) == 3 and parts[2] == "log"
            if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
                raise ConfigError(f"--space '{it}': range must be lo:hi or lo:hi:log")
            try:
                lo, hi = (_num(x) for x in parts[:2])
            except ValueError:
                raise ConfigError(f"--space '{it}': bounds must be numbers") from None
            if lo >= hi:
                raise ConfigError(f"--space '{it}': lower bound must be below the upper bound")
            kind = "int" if isinstance(lo, int) and isinstance(hi, int) else "float"
            space[key] = (kind + ("-log" if log else ""), (lo, hi))
        else:
            choices = [yaml.safe_load(c) for c in val.split(",")]
            space[key] = ("cat", choices)
    return space


def _fmt_override(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"{key}={'true' if value else 'false'}"
    if value is None:
        return f"{key}=null"
    return f"{key}={value}"


def run_tune(config: Path | None, overrides: list[str], space: dict[str, tuple[str, Any]], trials: int, out: Path,
             seed: int = 0, echo=print) -> dict[str, Any]:
    """Optuna search; each trial trains in ``out/trial-NNNN``; objective = VALIDATION select metric (never test)."""
    try:
        import optuna
    except ImportError:
        raise MissingDependencyError("`dllm2rec tune` needs optuna: pip install 'dllm2rec[hpo]'") from None

    base = load_config(config, overrides)
    ds = load_or_prepare(base.data.path)
    select_key = None
    records: list[dict[str, Any]] = []

    def objective(trial) -> float:
        nonlocal select_key
        params: dict[str, Any] = {}
        for key, (kind, arg) in space.items():
            if kind == "cat":
                params[key] = trial.suggest_categorical(key, arg)
            elif kind.startswith("int"):
                params[key] = trial.suggest_int(key, arg[0], arg[1], log=kind.endswith("-log"))
            else:
                params[key] = trial.suggest_float(key, float(arg[0]), float(arg[1]), log=kind.endswith("-log"))
        ov = list(overrides) + [_fmt_override(k, v) for k, v in params.items()]
        cfg = load_config(config, ov + [f"name=trial-{trial.number:04d}"])
        tr = Trainer(cfg, ds, out / f"trial-{trial.number:04d}", quiet=True)
        res = tr.fit()
        select_key = tr.select_key
        if res.get("status") == "paused":
            raise RuntimeError("trial did not finish")
        value = float(res["valid"][tr.select_key])
        # test is recorded for the record only; it never feeds the search
        records.append({"trial": trial.number, "params": params, "value": value, "best_epoch": res["best_epoch"],
                        "run_dir": str(tr.run_dir)})
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        echo(f"trial {trial.number}: {shown}  -> {tr.select_key} {value:.4f} (epoch {res['best_epoch']})")
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    best = study.best_trial
    result = {
        "objective": f"{select_key} (validation; test never used for the search)",
        "best_value": best.value,
        "best_params": best.params,
        "best_overrides": [_fmt_override(k, v) for k, v in best.params.items()],
        "best_run_dir": str(out / f"trial-{best.number:04d}"),
        "trials": records,
        "base_config": None if config is None else str(config),
        "base_overrides": list(overrides),
        "space": {k: [kind, list(arg) if isinstance(arg, tuple) else arg] for k, (kind, arg) in space.items()},
    }
    atomic_write_text(out / "tune.json", json.dumps(result, indent=2))
    return result

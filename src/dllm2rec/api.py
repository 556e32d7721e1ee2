"""The Python API: what a notebook user writes in five lines.

    import dllm2rec as d
    ds = d.load_dataset("ml-100k")                                   # preset, prepared dir (or source=DIR)
    res = d.fit(data="ml-100k", student="sasrec", teacher="artifacts/teachers/ml-100k", out="runs/nb")
    d.export_bundle(res["run_dir"], ds, "bundles/nb")
    rec = d.Recommender.load("bundles/nb"); rec.recommend_one(["Toy Story (1995)", 12], k=5)

Each function is the same code path as its CLI command (``data prepare``, ``train``, ``export``, ``serve``), so
results, files and errors are identical.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from dllm2rec.config import RunConfig, apply_overrides, load_config
from dllm2rec.data.registry import PRESETS, load_or_prepare, prepare
from dllm2rec.data.schema import SeqDataset
from dllm2rec.errors import ConfigError
from dllm2rec.training.trainer import Trainer


def load_dataset(name_or_path: str | Path, source: str | Path | None = None) -> SeqDataset:
    """A prepared dataset directory, or a preset name (prepared on first use; from ``source`` if given)."""
    if source is not None:
        if str(name_or_path) not in PRESETS:
            raise ConfigError(f"source= needs a preset name ({', '.join(PRESETS)}), got '{name_or_path}'")
        return prepare(str(name_or_path), source=source)
    return load_or_prepare(name_or_path)


def fit(config: str | Path | RunConfig | None = None, *, data: str | Path | None = None,
        student: str | None = None, teacher: str | None = None, strategy: str | None = None,
        overrides: Sequence[str] = (), out: str | Path | None = None, name: str | None = None,
        resume: bool = False, quiet: bool = True) -> dict[str, Any]:
    """Train one student (distilled when ``teacher`` is given: strategy ``dllm2rec`` unless named) and return its
    results (validation-selected; test evaluated once), with ``run_dir`` added. Same as ``dllm2rec train``."""

    ov = list(overrides)
    if data is not None:
        ov.append(f"data.path={data}")
    if student is not None:
        ov.append(f"model.name={student}")
    if teacher is not None:
        ov += [f"distill.teacher={teacher}", f"distill.strategy={strategy or 'dllm2rec'}"]
    elif strategy is not None:
        ov.append(f"distill.strategy={strategy}")
    if out is not None:
        ov.append(f"out_dir={out}")
    if name is not None:
        ov.append(f"name={name}")
    if isinstance(config, RunConfig):  # a config object: the keyword arguments override it, as -o does
        from pydantic import ValidationError

        try:
            cfg = RunConfig.model_validate(apply_overrides(config.model_dump(), ov))
        except ValidationError as e:
            err = e.errors()[0]
            raise ConfigError(f"field '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None
    else:
        cfg = load_config(config, ov)
    ds = load_dataset(cfg.data.path)
    tr = Trainer(cfg, ds, quiet=quiet)
    res = tr.fit(resume=resume)
    return {**res, "run_dir": str(tr.run_dir)}

"""Name -> class registries for students, teachers and distillation strategies (peft-style self-registration).

Modules register themselves on import; ``get_*`` imports the built-in modules lazily so heavy optional
dependencies (transformers, onnxruntime, ...) are only imported when that component is used.
"""
from __future__ import annotations

import importlib
from typing import Callable, TypeVar

from dllm2rec.errors import ConfigError

T = TypeVar("T")

STUDENTS: dict[str, type] = {}
STRATEGIES: dict[str, type] = {}
TEACHERS: dict[str, type] = {}

_BUILTIN = {
    "student": ["dllm2rec.students.sasrec", "dllm2rec.students.gru4rec", "dllm2rec.students.caser"],
    "strategy": ["dllm2rec.distill.base", "dllm2rec.distill.baselines", "dllm2rec.distill.strategies",
                 "dllm2rec.distill.listwise", "dllm2rec.distill.score_confidence", "dllm2rec.distill.gating"],
    "teacher": ["dllm2rec.teachers.registry_entries"],
}
_TABLES = {"student": STUDENTS, "strategy": STRATEGIES, "teacher": TEACHERS}


def _register(kind: str, name: str) -> Callable[[T], T]:
    def deco(cls: T) -> T:
        table = _TABLES[kind]
        if name in table and table[name] is not cls:
            raise ValueError(f"{kind} '{name}' registered twice")
        table[name] = cls
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return deco


def register_student(name: str):
    return _register("student", name)


def register_strategy(name: str):
    return _register("strategy", name)


def register_teacher(name: str):
    """Register a ``dllm2rec.teachers.base.Teacher`` subclass; ``name`` becomes its ``name`` (manifest 'teacher').

    Checked by shape, not by isinstance, so this layer-0 module never imports the teachers."""
    inner = _register("teacher", name)

    def deco(cls: T) -> T:
        missing = [a for a in ("config_cls", "fit", "artifacts", "from_config") if not hasattr(cls, a)]
        if missing:
            raise TypeError(f"teacher '{name}' ({cls!r}) is not a Teacher: it lacks {', '.join(missing)}")
        cls.name = name  # type: ignore[attr-defined]
        return inner(cls)

    return deco


def _load_builtins(kind: str) -> None:
    for mod in _BUILTIN[kind]:
        importlib.import_module(mod)  # every built-in exists: a failing import is a bug, never skipped


def available(kind: str) -> list[str]:
    _load_builtins(kind)
    return sorted(_TABLES[kind])


def get(kind: str, name: str):
    _load_builtins(kind)
    table = _TABLES[kind]
    if name not in table:
        raise ConfigError(f"unknown {kind} '{name}'; choose one of: {', '.join(sorted(table))}")
    return table[name]


def get_student(name: str):
    return get("student", name)


def get_strategy(name: str):
    return get("strategy", name)


def get_teacher(name: str):
    return get("teacher", name)

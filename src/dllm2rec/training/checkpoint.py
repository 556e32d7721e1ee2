"""Student checkpoints, pickle-free: ``<dir>/model.safetensors`` + ``<dir>/student.json``.

``student.json`` holds the architecture (``SequentialStudent.init_kwargs()``), the description of any attached
offset hooks (e.g. collaborative embedding distillation: ``{"input_offset": {...}}``) and free-form ``meta``
(dataset fingerprint, metrics it was selected with, config). The state dict includes the hooks' parameters and
buffers, so a checkpoint of a distilled student is self-contained (no teacher files needed to load it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dllm2rec.errors import Dllm2recError
from dllm2rec.students.base import SequentialStudent, build_student
from dllm2rec.utils.io import atomic_dir


def save_student(model: SequentialStudent, path: str | Path, meta: dict[str, Any] | None = None,
                 extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
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
    with atomic_dir(path) as tmp:
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "student.json").write_text(json.dumps({"student": model.init_kwargs(), "hooks": hooks,
                                                      "meta": meta or {}}, indent=2), encoding="utf-8")
    return path


def load_student(path: str | Path, map_location: str = "cpu") -> tuple[SequentialStudent, dict[str, Any]]:
    """Rebuild a student (with its hooks) from a checkpoint directory; returns (model in eval mode, info)."""
    from safetensors.torch import load_file

    path = Path(path)
    jpath, wpath = path / "student.json", path / "model.safetensors"
    for p in (jpath, wpath):
        if not p.is_file():
            raise Dllm2recError(f"{p}: missing (not a dllm2rec student checkpoint)")
    info = json.loads(jpath.read_text(encoding="utf-8"))
    kw = dict(info["student"])
    name = kw.pop("name")
    n_items = kw.pop("n_items")
    model = build_student(name, n_items, **kw)
    state = load_file(str(wpath), device=map_location)
    extras = {k[len("__extra__."):]: state.pop(k) for k in list(state) if k.startswith("__extra__.")}
    for attr, spec in info.get("hooks", {}).items():
        from dllm2rec.students.hooks import build_hook

        setattr(model, attr, build_hook(spec, state, prefix=f"{attr}."))
    model.load_state_dict(state)
    model.eval()
    info["extras"] = extras
    return model, info

"""Rebuilding offset hooks (see SequentialStudent) from a checkpoint's spec.

A hook module implements ``spec() -> dict`` with a ``"type"`` key; hook types register a builder here:
``builder(spec, state_dict, prefix) -> nn.Module`` (the state dict holds its tensors under ``prefix``).
"""
from __future__ import annotations

from typing import Callable

HOOK_BUILDERS: dict[str, Callable] = {}


def register_hook(type_name: str):
    def deco(fn):
        HOOK_BUILDERS[type_name] = fn
        return fn

    return deco


def build_hook(spec: dict, state: dict, prefix: str):
    if spec["type"] not in HOOK_BUILDERS:
        import importlib

        importlib.import_module("dllm2rec.distill.embedding")  # built-in hook types live there
    return HOOK_BUILDERS[spec["type"]](spec, state, prefix)

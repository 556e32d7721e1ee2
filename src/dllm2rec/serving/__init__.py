"""Serving: self-contained bundles (``dllm2rec export``), the in-process ``Recommender``, the FastAPI service
(``dllm2rec serve``), ONNX export, and the latency benchmark (``dllm2rec bench``). See docs/serving.md.

Names are imported lazily so ``dllm2rec --help`` does not pay for torch/fastapi.
"""
from __future__ import annotations

__all__ = ["Recommender", "Recommendation", "RequestError", "export_bundle", "load_bundle", "create_app"]

_WHERE = {"Recommender": "recommender", "Recommendation": "recommender", "RequestError": "recommender",
          "export_bundle": "bundle", "load_bundle": "bundle", "create_app": "app"}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"dllm2rec.serving.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'dllm2rec.serving' has no attribute {name!r}")

"""dllm2rec: distil LLM-based recommenders into millisecond sequential students (DLLM2Rec, RecSys 2024).

The Python API (see ``dllm2rec.api``; names load lazily so ``import dllm2rec`` stays light)::

    import dllm2rec as d
    ds = d.load_dataset("ml-100k")
    res = d.fit(data="ml-100k", student="sasrec", teacher="artifacts/teachers/ml-100k")
    d.export_bundle(res["run_dir"], ds, "bundles/nb")
    d.Recommender.load("bundles/nb").recommend_one([12, 7], k=5)
"""
from __future__ import annotations

__version__ = "0.1.0"

_WHERE = {
    "load_dataset": "dllm2rec.api", "fit": "dllm2rec.api",
    "load_config": "dllm2rec.config", "RunConfig": "dllm2rec.config",
    "SeqDataset": "dllm2rec.data.schema",
    "TeacherArtifacts": "dllm2rec.teachers.artifacts",
    "Trainer": "dllm2rec.training.trainer",
    "load_student": "dllm2rec.students.checkpoint",
    "export_bundle": "dllm2rec.serving.bundle",
    "Recommender": "dllm2rec.serving.recommender",
}
__all__ = ["__version__", *_WHERE]


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'dllm2rec' has no attribute {name!r}")

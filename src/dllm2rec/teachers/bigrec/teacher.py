"""The registry face of BIGRec: one class holding the pipeline's entry points (``get_teacher("bigrec")``)."""
from __future__ import annotations

from dllm2rec.registry import register_teacher


@register_teacher("bigrec")
class BIGRecTeacher:
    """BIGRec: LoRA-tuned LLM generates a title; L2 grounding in the LLM's embedding space ranks the catalogue.

    Stages (each also a CLI command under ``dllm2rec teacher``): ``finetune`` -> ``generate`` -> ``ground``
    (writes TeacherArtifacts) and ``evaluate``.
    """

    kind = "bigrec"

    @staticmethod
    def finetune(*args, **kwargs):
        from dllm2rec.teachers.bigrec.finetune import finetune

        return finetune(*args, **kwargs)

    @staticmethod
    def generate(*args, **kwargs):
        from dllm2rec.teachers.bigrec.generate import run_generation

        return run_generation(*args, **kwargs)

    @staticmethod
    def ground(*args, **kwargs):
        from dllm2rec.teachers.bigrec.ground import ground_generation

        return ground_generation(*args, **kwargs)

    @staticmethod
    def evaluate(*args, **kwargs):
        from dllm2rec.teachers.bigrec.evaluate import evaluate_generation

        return evaluate_generation(*args, **kwargs)

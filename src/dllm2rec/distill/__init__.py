"""Distillation strategies (one registration style: ``@register_strategy("name")`` on the class, each with a typed
``params_cls``; ``dllm2rec.registry`` lists the built-in modules and imports them on first use):

- ``none``            the plain student (``base.py``)
- ``dllm2rec``, ``dllm2rec-paper``, ``rank-only``, ``embed-only``   DLLM2Rec and its registered variants
  (``strategies.py``)
- ``rd``, ``hint``    the baselines (``baselines.py``)
- ``listwise``        softmax KD over the teacher's scored top-K at a temperature (``listwise.py``)
- ``dllm2rec-score``  DLLM2Rec with confidence from the teacher's scores (``score_confidence.py``)
- ``dllm2rec-gated``  DLLM2Rec with a per-row teacher-reliability gate (``gating.py``)

docs/distillation.md and docs/distill-variants.md have the equations and the measurements.
"""

"""Distillation strategies. Besides the built-ins that ``registry._BUILTIN`` names (``base``, ``strategies``) the
package adds the beyond-the-paper variants (issue 14) to that list, so ``get_strategy``/``available`` import and
register them on first use:

- ``listwise``        softmax KD over the teacher's scored top-K at a temperature (``listwise.py``)
- ``dllm2rec-score``  DLLM2Rec with confidence from the teacher's scores (``score_confidence.py``)
- ``dllm2rec-gated``  DLLM2Rec with a per-row teacher-reliability gate (``gating.py``)

Why names and not imports: ``strategies.py`` imports this package (``from dllm2rec.distill import ranking``), and the
variants import ``strategies``, so importing them here would be an import cycle (tests/unit/test_layers.py). The
registry's own loop picks up the appended names: it imports ``dllm2rec.distill.base`` first, which runs this file.
docs/distill-variants.md has the equations and the measurements.
"""
from dllm2rec.registry import _BUILTIN

VARIANT_MODULES = ("dllm2rec.distill.listwise", "dllm2rec.distill.score_confidence", "dllm2rec.distill.gating")
_BUILTIN["strategy"].extend(m for m in VARIANT_MODULES if m not in _BUILTIN["strategy"])  # in place: a running loop sees them

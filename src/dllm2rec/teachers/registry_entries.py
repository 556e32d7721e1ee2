"""Built-in teachers register themselves on import (``dllm2rec.registry.get_teacher``); one import per family."""
import dllm2rec.teachers.bigrec.teacher  # noqa: F401  (bigrec)
import dllm2rec.teachers.controls  # noqa: F401  (random, synthetic)
import dllm2rec.teachers.llmemb  # noqa: F401  (llm-emb)
import dllm2rec.teachers.reranker  # noqa: F401  (llm-rerank)

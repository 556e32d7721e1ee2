"""dllm2rec: distil LLM-based recommenders into millisecond sequential students (DLLM2Rec, RecSys 2024)."""
__version__ = "0.1.0"

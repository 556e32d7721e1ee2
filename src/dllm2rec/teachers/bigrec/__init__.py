"""BIGRec (Bao et al., 2023) teacher: Alpaca prompts -> LoRA SFT -> beam generation -> L2 grounding.

Submodules import transformers/peft lazily (optional extra ``teacher``); importing this package is cheap.
"""

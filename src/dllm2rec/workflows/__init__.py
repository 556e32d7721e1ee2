"""Orchestration on top of the layers (distil → train → evaluate): the pre-flight check and the guard."""

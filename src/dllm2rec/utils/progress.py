"""tqdm progress bars that stay quiet in CI and when output is not a terminal."""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def quiet() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("DLLM2REC_PROGRESS", "").lower() in ("0", "false", "off") \
        or not sys.stderr.isatty()


def progress(iterable=None, **kwargs):
    kwargs.setdefault("disable", quiet())
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)

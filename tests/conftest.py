import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("CI", "true")  # quiet progress bars
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DLLM2REC_LOG_EPOCHS", "0")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED


@pytest.fixture(scope="session")
def tiny_dataset():
    from dllm2rec.data.synthetic import make_synthetic

    return make_synthetic(n_items=60, n_users=80, seq_len=14, seed=0)


@pytest.fixture()
def tiny_dataset_dir(tmp_path, tiny_dataset):
    return tiny_dataset.save(tmp_path / "tiny")


class Payload:
    """A pickle payload: unpickling calls ``open(marker, "w")``, so the file appearing means code from it ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture()
def marker(tmp_path):
    """Where a Payload would write; the test fails if it exists afterwards."""
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "code from an untrusted file was executed"

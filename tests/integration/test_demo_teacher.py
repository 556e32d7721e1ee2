"""The demo uses shipped artifacts only when they match the dataset's interactions, and never substitutes a
synthetic teacher: no match → a one-line error naming the fix. Other title strings are a note, not a mismatch."""
import dataclasses

import pytest

from dllm2rec.data.synthetic import make_synthetic
from dllm2rec.workflows import demo as dcli
from dllm2rec.errors import ArtifactError
from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.teachers.controls import make_control


def test_shipped_teacher_matched_by_interactions_not_titles(tmp_path, monkeypatch):
    ds = make_synthetic(n_items=40, n_users=30, seq_len=12, seed=0, name="toy")
    other = make_synthetic(n_items=40, n_users=30, seq_len=12, seed=1, name="toy")
    retitled = dataclasses.replace(ds, titles=[t.upper() + " (1995)" for t in ds.titles])
    assert retitled.fingerprint() != ds.fingerprint()
    assert retitled.interactions_fingerprint() == ds.interactions_fingerprint()
    monkeypatch.chdir(tmp_path)
    make_control("random", ds, seed=0).save(tmp_path / "artifacts" / "teachers" / "toy", ds)
    spec, desc = dcli.find_teacher("toy", None, ds)
    assert spec.endswith("artifacts/teachers/toy") and "shipped" in desc and "note" not in desc
    spec, desc = dcli.find_teacher("toy", None, retitled)       # same interactions, other titles: used + noted
    assert spec.endswith("artifacts/teachers/toy") and "titles differ" in desc
    assert TeacherArtifacts.load(spec, retitled).notes
    with pytest.raises(ArtifactError, match="dataset_interactions_fingerprint.*--teacher"):
        dcli.find_teacher("toy", None, other)                   # other interactions: refused, never synthetic


def test_no_shipped_teacher_stops(tmp_path, monkeypatch):
    ds = make_synthetic(n_items=40, n_users=30, seq_len=12, seed=0, name="toy")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match="no shipped teacher artifacts.*fit-llmemb"):
        dcli.find_teacher("nope", None, ds)
    spec, desc = dcli.find_teacher("nope", "synthetic", ds)     # only when asked for, and labelled
    assert spec == "synthetic" and "SYNTHETIC" in desc


def test_legacy_manifest_still_checks_full_fingerprint(tmp_path):
    ds = make_synthetic(n_items=40, n_users=30, seq_len=12, seed=0, name="toy")
    art = make_control("random", ds, seed=0)
    art.manifest["dataset_fingerprint"] = "0" * 16              # an artifact written before the split identity
    art.manifest["dataset_interactions_fingerprint"] = None
    with pytest.raises(ArtifactError, match="dataset_fingerprint"):
        art.validate(ds)

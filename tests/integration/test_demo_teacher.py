"""The demo uses shipped artifacts only when they match the dataset; otherwise the labelled synthetic teacher."""
from dllm2rec.data.synthetic import make_synthetic
from dllm2rec.distill import cli as dcli
from dllm2rec.teachers.controls import make_control


def test_mismatched_shipped_teacher_falls_back_to_synthetic(tmp_path, monkeypatch):
    ds = make_synthetic(n_items=40, n_users=30, seq_len=12, seed=0, name="toy")
    other = make_synthetic(n_items=40, n_users=30, seq_len=12, seed=1, name="toy")
    monkeypatch.chdir(tmp_path)
    make_control("random", ds, seed=0).save(tmp_path / "artifacts" / "teachers" / "toy", ds)
    spec, desc = dcli.find_teacher("toy", None, ds)
    assert spec.endswith("artifacts/teachers/toy") and "shipped" in desc
    spec, desc = dcli.find_teacher("toy", None, other)
    assert spec == "synthetic" and "do not match" in desc and "SYNTHETIC" in desc

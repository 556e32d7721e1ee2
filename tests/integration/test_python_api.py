"""The documented five-line Python API: dataset -> fit (distilled) -> bundle -> recommend."""
import json

import dllm2rec as d
from dllm2rec.teachers.controls import make_control


def test_notebook_flow(tmp_path, tiny_dataset):
    data = tiny_dataset.save(tmp_path / "data")
    make_control("synthetic", tiny_dataset, seed=0).save(tmp_path / "teacher", tiny_dataset)
    ds = d.load_dataset(data)
    assert ds.fingerprint() == tiny_dataset.fingerprint()
    res = d.fit(data=str(data), student="gru4rec", teacher=str(tmp_path / "teacher"), out=str(tmp_path / "runs"),
                name="nb", overrides=["model.dim=8", "train.epochs=2", "train.num_threads=1"])
    assert res["strategy"]["strategy"] == "dllm2rec" and res["run_dir"].endswith("nb")
    assert json.loads((tmp_path / "runs" / "nb" / "results.json").read_text())["best_epoch"] == res["best_epoch"]
    d.export_bundle(res["run_dir"], ds, tmp_path / "bundle")
    rec = d.Recommender.load(tmp_path / "bundle").recommend_one([1, 2, 3], k=5)
    assert len(rec.ids) == 5 and len(rec.titles) == 5 and not set(rec.ids) & {1, 2, 3}  # history excluded
    art = d.TeacherArtifacts.load(tmp_path / "teacher", ds)
    assert art.n_items == ds.n_items
    cfg = d.load_config(None, [f"data.path={data}", "model.dim=8", "train.epochs=1", "train.num_threads=1"])
    res2 = d.fit(cfg, out=str(tmp_path / "runs"), name="cfg")   # a config object works too
    assert res2["epochs_run"] == 1

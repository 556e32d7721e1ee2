"""ONNX export of encoder+scorer: parity with eager PyTorch for every student, and the onnxruntime serving path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from dllm2rec.data import SeqDataset, make_split  # noqa: E402
from dllm2rec.serving.bundle import export_bundle  # noqa: E402
from dllm2rec.serving.onnx_export import export_onnx, onnx_bytes, onnx_parity  # noqa: E402
from dllm2rec.serving.recommender import Recommender  # noqa: E402
from dllm2rec.students import build_student  # noqa: E402
from dllm2rec.students.checkpoint import save_student  # noqa: E402

N, L = 60, 6


def _dataset():
    hs = [[1, 2], [3, 4, 5], [6, 7, 8, 9, 10, 11]]
    sp = make_split(hs, [3, 6, 7], N, L)
    return SeqDataset("tiny", N, L, [f"t{i}" for i in range(N)], {"train": sp, "valid": sp, "test": sp})


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "caser"])
def test_onnx_parity_and_backend(tmp_path, name):
    torch.manual_seed(0)
    ds = _dataset()
    model = build_student(name, N, max_len=L, dim=16)
    with torch.no_grad():
        model.item_emb.weight.normal_(0, 1.0)
    save_student(model, tmp_path / "ck", meta={"dataset_fingerprint": ds.fingerprint()})
    m = export_bundle(tmp_path / "ck", ds, tmp_path / "bundle", onnx=True)
    diff = m["onnx"]["parity_max_abs_diff"]
    assert diff < 1e-4, f"{name}: max |eager - onnxruntime| = {diff:.2e}"  # the figure: dllm2rec export --onnx
    assert "model.onnx" in m["files"]
    # a second, independent parity check at other batch sizes (dynamic batch axis)
    assert onnx_parity(model.eval(), (tmp_path / "bundle" / "model.onnx").read_bytes(), batches=(1, 33)) < 1e-4

    eager = Recommender.load(tmp_path / "bundle", backend="torch")
    ort = Recommender.load(tmp_path / "bundle", backend="onnx")
    hs = [[1, 2, 3], [7], list(range(20, 29)), ["t5", 9]]
    a, b = eager.recommend(hs, k=7), ort.recommend(hs, k=7)
    assert [r.ids for r in a] == [r.ids for r in b]
    np.testing.assert_allclose([r.scores for r in a], [r.scores for r in b], atol=1e-4)
    torch.testing.assert_close(ort.scores(hs), eager.scores(hs), atol=1e-4, rtol=1e-4)


def test_onnx_backend_without_model_onnx_exports_in_memory(tmp_path):
    torch.manual_seed(0)
    ds = _dataset()
    model = build_student("gru4rec", N, max_len=L, dim=16)
    save_student(model, tmp_path / "ck")
    export_bundle(tmp_path / "ck", ds, tmp_path / "bundle", onnx=False)
    ort = Recommender.load(tmp_path / "bundle", backend="onnx", max_batch=2)  # also exercises buffer growth
    eager = Recommender.load(tmp_path / "bundle")
    hs = [[1], [2, 3], [4, 5, 6]]
    assert [r.ids for r in ort.recommend(hs, k=3)] == [r.ids for r in eager.recommend(hs, k=3)]


def test_export_refuses_unfolded_hooks(tmp_path):
    model = build_student("sasrec", N, max_len=L, dim=16)
    model.input_offset = torch.nn.Identity()
    with pytest.raises(ValueError, match="fold the offset hooks"):
        export_onnx(model, tmp_path / "m.onnx")
    model.input_offset = None
    assert len(onnx_bytes(model)) > 1000

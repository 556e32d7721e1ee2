"""serving/ann.py: exact = protocol.top_k, HNSW/IVF exact at generous settings, history exclusion never short,
the export default + reason in the manifest, old manifests, faiss missing/threads. Skips faiss parts without faiss."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dllm2rec.cli import app
from dllm2rec.data import SeqDataset, make_split
from dllm2rec.errors import ArtifactError, Dllm2recError, MissingDependencyError
from dllm2rec.evaluation.protocol import top_k
from dllm2rec.serving import ann
from dllm2rec.serving.ann import ExactIndex, FaissIndex, build_index, check_params, choose_index, topk_excluding
from dllm2rec.serving.bundle import export_bundle
from dllm2rec.serving.recommender import Recommender
from dllm2rec.students import build_student
from dllm2rec.students.checkpoint import save_student

N, L = 60, 5


def _data():
    sp = make_split([[1, 2], [3, 4, 5], [6]], [3, 6, 7], N, L)
    return SeqDataset("tiny-ann", N, L, [f"item {i}" for i in range(N)], {"train": sp, "valid": sp, "test": sp})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_student("sasrec", N, max_len=L, dim=16)
    with torch.no_grad():
        m.item_emb.weight.normal_(0, 1.0)
        m.out.bias.normal_(0, 0.5)  # a real bias: the folded extra dimension must matter
    return m.eval()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, model):
    tmp = tmp_path_factory.mktemp("ann")
    ds = _data()
    save_student(model, tmp / "ck", meta={"dataset_fingerprint": ds.fingerprint()})
    export_bundle(tmp / "ck", ds, tmp / "bundle")
    return tmp / "bundle"


def _rand_rows(n_rows: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, L + 1, (n_rows,), generator=g)
    seq = torch.randint(0, N, (n_rows, L), generator=g)
    seq[torch.arange(L)[None, :] >= lens[:, None]] = N
    return seq, lens


def test_exact_index_hand_values_and_equals_protocol_top_k(model):
    # hand-checked: scores [2,1]·w + b = [2 + 0, 1 + 0.5, 3 - 0.5] = [2, 1.5, 2.5]
    ix = ExactIndex(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0.0, 0.5, -0.5]))
    D, I = ix.search(torch.tensor([[2.0, 1.0]]), 3)
    assert I.tolist() == [[2, 0, 1]] and D.tolist() == [[2.5, 2.0, 1.5]]
    assert ix.search_row(torch.tensor([2.0, 1.0]), [2], 3) == ([2.0, 1.5], [0, 1])  # only 2 candidates remain
    seq, lens = _rand_rows(40)
    with torch.no_grad():
        ids, scores = top_k(model, seq, lens, k=10)
        ex = ExactIndex(model.output_weight(), model.output_bias())
        D, I = ex.search(model.encode(seq, lens), 10)
    assert I.tolist() == ids.tolist()
    np.testing.assert_allclose(D, scores.numpy(), rtol=1e-5)


@pytest.mark.parametrize("kind,params", [("flat", {}), ("hnsw", {"M": 16, "ef_construction": 200, "ef_search": 400}),
                                         ("ivf", {"nlist": 6, "nprobe": 6})])
def test_faiss_indexes_with_generous_parameters_are_exact(model, kind, params):
    pytest.importorskip("faiss")
    seq, lens = _rand_rows(50, seed=1)
    with torch.no_grad():
        h, w, b = model.encode(seq, lens), model.output_weight(), model.output_bias()
    _, truth = ExactIndex(w, b).search(h, 20)
    ix = build_index(kind, w, b, params, threads=1)
    D, I = ix.search(h, 20)
    recall = np.mean([len(set(a) & set(t)) / 20 for a, t in zip(I.tolist(), truth.tolist())])
    assert recall == 1.0
    ref = torch.addmm(b, h, w.t()).detach().gather(1, torch.from_numpy(I).long())  # the model's scores
    np.testing.assert_allclose(D, ref.numpy(), rtol=1e-4, atol=1e-5)


def test_history_exclusion_never_returns_history_and_never_short(model):
    pytest.importorskip("faiss")
    seq, lens = _rand_rows(30, seed=2)
    rows = [s[:n].tolist() for s, n in zip(seq, lens)]
    with torch.no_grad():
        h, w, b = model.encode(seq, lens), model.output_weight(), model.output_bias()
    exact = ExactIndex(w, b)
    # 30 lists, probe 1: a list holds ~2 of the 60 items, so the IVF alone returns far fewer than k
    ivf = build_index("ivf", w, b, {"nlist": 30, "nprobe": 1}, threads=1)
    vals, idx, fallbacks = topk_excluding(ivf, exact, h, rows, 10, True)
    assert fallbacks > 0
    _, eidx, efb = topk_excluding(exact, exact, h, rows, 10, True)
    assert efb == 0
    for r, got, want in zip(rows, idx, eidx):
        assert len(got) == 10 and not set(got) & set(r) and len(set(got)) == 10
    assert [i for i, v in zip(idx, vals) if v != sorted(v, reverse=True)] == []
    # k + history > N: every remaining item comes back (N - |history|), none from the history
    _, idx, _ = topk_excluding(ivf, exact, h[:1], [list(range(55))], 20, True)
    assert sorted(idx[0]) == [55, 56, 57, 58, 59]


def test_recommender_ann_counts_fallbacks(bundle):
    pytest.importorskip("faiss")
    rec = Recommender.load(bundle, index="ivf", index_params={"nlist": 30, "nprobe": 1})
    hs = [[1, 2, 3, 4, 5, 6, 7], [8], list(range(20, 40))]
    out = rec.recommend(hs, k=15)
    assert all(len(r.ids) == 15 and not set(r.ids) & set(h) for r, h in zip(out, hs))
    md = rec.metadata()["index"]
    assert md["kind"] == "ivf" and md["source"] == "override" and md["exact_fallbacks"] >= 1
    assert md["params"]["nlist"] == 30 and md["params"]["nprobe"] == 1


def test_export_records_the_default_and_why(tmp_path, model, monkeypatch):
    ds = _data()
    save_student(model, tmp_path / "ck", meta={"dataset_fingerprint": ds.fingerprint()})
    m = export_bundle(tmp_path / "ck", ds, tmp_path / "small")
    assert m["index"]["kind"] == "exact" and "60 items <= 200,000" in m["index"]["reason"]
    assert json.loads((tmp_path / "small" / "manifest.json").read_text())["index"] == m["index"]
    monkeypatch.setattr(ann, "EXACT_MAX_ITEMS", 50)  # pretend 60 items is a big catalogue
    ix = choose_index(N)
    assert ix["kind"] == "ivf" and ix["params"] == {"nlist": 8, "nprobe": 8, "train_size": 60}
    assert "60 items > 50" in ix["reason"] and "nlist=8, nprobe=8" in ix["reason"]
    ds.save(tmp_path / "data")
    r = CliRunner().invoke(app, ["export", str(tmp_path / "ck"), "--dataset", str(tmp_path / "data"),
                                 "--out", str(tmp_path / "big")])
    assert r.exit_code == 0, r.output
    assert "index: ivf (nlist=8, nprobe=8, train_size=60)" in r.output and "why: 60 items > 50" in r.output
    man = json.loads((tmp_path / "big" / "manifest.json").read_text())
    assert man["index"]["kind"] == "ivf" and man["index"]["params"]["nprobe"] == 8
    if "faiss" in sys.modules or _has_faiss():
        rec = Recommender.load(tmp_path / "big")  # auto: the manifest's choice, built at load
        assert rec.metadata()["index"]["kind"] == "ivf" and rec.metadata()["index"]["source"] == "bundle manifest"
        assert Recommender.load(tmp_path / "big", index="exact").index is None  # serve --index overrides
    r = CliRunner().invoke(app, ["export", str(tmp_path / "ck"), "--dataset", str(tmp_path / "data"),
                                 "--out", str(tmp_path / "bad"), "--index", "annoy"])
    assert r.exit_code != 0 and "--index must be auto or one of exact, flat, hnsw, ivf" in str(r.exception)


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def test_old_manifest_without_index_loads_as_exact_and_bad_kind_is_named(tmp_path, bundle):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    mpath = old / "manifest.json"
    m = json.loads(mpath.read_text())
    del m["index"]  # a bundle exported before the field existed (manifest.json itself is not hash-listed)
    mpath.write_text(json.dumps(m))
    rec = Recommender.load(old)
    assert rec.index is None and rec.metadata()["index"]["kind"] == "exact"
    assert rec.metadata()["index"]["source"] == "default (old bundle)"
    assert len(rec.recommend([[1, 2]], k=5)[0].ids) == 5
    m["index"] = {"kind": "annoy", "params": {}}
    mpath.write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"field 'index\.kind'"):
        Recommender.load(old)


def test_bad_params_are_one_line_errors_naming_the_field():
    with pytest.raises(Dllm2recError, match=r"index\.params\.efsearch: not a parameter of the hnsw index"):
        check_params("hnsw", {"efsearch": 10}, 100)
    with pytest.raises(Dllm2recError, match=r"index\.params\.nprobe: must be a positive integer, got 0"):
        check_params("ivf", {"nprobe": 0}, 100)
    assert check_params("ivf", {"nlist": 500, "nprobe": 900}, 100) == {"nlist": 100, "nprobe": 100, "train_size": 100}


def test_serve_index_options_are_checked(bundle):
    r = CliRunner().invoke(app, ["serve", str(bundle), "--index", "annoy"])
    assert r.exit_code != 0 and "--index must be one of auto, exact, flat, hnsw, ivf, faiss" in str(r.exception)
    r = CliRunner().invoke(app, ["serve", str(bundle), "--index", "ivf", "--index-param", "nprobe"])
    assert r.exit_code != 0 and "--index-param: expected KEY=INT (e.g. nprobe=64), got 'nprobe'" in str(r.exception)


def test_missing_faiss_is_one_line_naming_the_extra(monkeypatch, model):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError, installed or not
    with pytest.raises(MissingDependencyError) as e:
        FaissIndex(model.output_weight().detach(), model.output_bias().detach(), "hnsw")
    assert "pip install 'dllm2rec[faiss]'" in str(e.value) and "\n" not in str(e.value)


def test_faiss_threads_follow_the_setting(monkeypatch, model):
    faiss = pytest.importorskip("faiss")
    calls = []
    monkeypatch.setattr(faiss, "omp_set_num_threads", calls.append)
    ix = FaissIndex(model.output_weight().detach(), model.output_bias().detach(), "ivf", {"nlist": 4}, threads=3)
    ix.search(torch.zeros(2, model.dim), 5)
    assert calls == [3, 3]  # once for the build, once for the search


def test_auto_with_the_onnx_backend_serves_exact(tmp_path, model):
    pytest.importorskip("onnxruntime")
    ds = _data()
    save_student(model, tmp_path / "ck", meta={"dataset_fingerprint": ds.fingerprint()})
    m = export_bundle(tmp_path / "ck", ds, tmp_path / "b", index="hnsw")  # export --index hnsw
    assert m["index"]["kind"] == "hnsw" and m["index"]["reason"] == "chosen at export (--index hnsw)"
    rec = Recommender.load(tmp_path / "b", backend="onnx")  # the ONNX graph gives scores, not the state
    assert rec.index is None and rec.metadata()["index"]["source"].startswith("onnx backend")
    with pytest.raises(ValueError, match="needs the encoder state"):
        Recommender.load(tmp_path / "b", backend="onnx", index="ivf")

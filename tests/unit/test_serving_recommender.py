"""Recommender: ids/titles, truncation to the last L, exclusion, exact top-k, errors that name the item, backends."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dllm2rec.data import SeqDataset, make_split
from dllm2rec.serving.bundle import export_bundle
from dllm2rec.serving.recommender import Recommender, RequestError
from dllm2rec.students import build_student
from dllm2rec.students.checkpoint import save_student

N, L = 30, 4


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rec")
    titles = [f"movie {i}" for i in range(N)]
    titles[28] = titles[29] = "Twin"  # an ambiguous title
    hs = [[1, 2], [3, 4, 5], [6]]
    sp = make_split(hs, [3, 6, 7], N, L)
    ds = SeqDataset("tiny", N, L, titles, {"train": sp, "valid": sp, "test": sp})
    torch.manual_seed(0)
    model = build_student("sasrec", N, max_len=L, dim=16)
    with torch.no_grad():
        model.item_emb.weight.normal_(0, 1.0)
    save_student(model, tmp / "ck", meta={"dataset_fingerprint": ds.fingerprint()})
    export_bundle(tmp / "ck", ds, tmp / "bundle")
    return tmp / "bundle"


@pytest.fixture(scope="module")
def rec(bundle):
    return Recommender.load(bundle)


def test_scores_match_the_model_and_topk_is_exact(rec):
    hs = [[1, 2, 3], [7], [0, 5, 9, 11]]
    sp = make_split(hs, [0, 0, 0], N, L)
    with torch.no_grad():
        ref = rec.model(torch.from_numpy(sp.seq), torch.from_numpy(sp.len))
    torch.testing.assert_close(rec.scores(hs), ref)
    out = rec.recommend(hs, k=5, exclude_history=False)
    for r, row in zip(out, ref):
        v, i = torch.topk(row, 5)
        assert r.ids == i.tolist()
        np.testing.assert_allclose(r.scores, v.numpy(), rtol=1e-6)
        assert r.titles == [rec.titles[j] for j in r.ids]
        assert r.scores == sorted(r.scores, reverse=True)


def test_titles_ids_and_mixed_are_the_same(rec):
    a = rec.recommend([[1, 2, 3]], k=6)[0]
    b = rec.recommend([["movie 1", "movie 2", "movie 3"]], k=6)[0]
    c = rec.recommend_one([1, "movie 2", np.int64(3)], k=6)
    assert a == b == c


def test_long_history_is_truncated_to_last_L(rec):
    long = [9, 8, 7, 6, 1, 2, 3, 4]
    a = rec.recommend([long], k=N, exclude_history=False)[0]
    b = rec.recommend([long[-L:]], k=N, exclude_history=False)[0]
    assert a.ids == b.ids
    np.testing.assert_allclose(a.scores, b.scores)


def test_exclude_history_removes_every_history_item(rec):
    h = [9, 8, 7, 6, 1, 2, 3, 4, 4]
    r = rec.recommend_one(h, k=N)  # more than the remaining candidates: only real ones come back
    assert len(r.ids) == N - len(set(h)) and not set(r.ids) & set(h)
    assert all(np.isfinite(r.scores))
    r2 = rec.recommend_one(h, k=N, exclude_history=False)
    assert len(r2.ids) == N and set(h) <= set(r2.ids)


def test_batches_larger_than_the_buffer_are_chunked(bundle, rec):
    small = Recommender.load(bundle, max_batch=3)
    hs = [[i % N, (i * 7) % N] for i in range(10)]
    ref = rec.recommend(hs, k=4)
    for got in (small.recommend(hs, k=4), [small.recommend_one(h, k=4) for h in hs]):
        assert [r.ids for r in got] == [r.ids for r in ref]  # (scores may differ in the last bit across batch sizes)
        np.testing.assert_allclose([r.scores for r in got], [r.scores for r in ref], rtol=1e-5)


def test_torchscript_backend_matches(bundle, rec):
    ts = Recommender.load(bundle, backend="torchscript")
    hs = [[1, 2, 3], [7], [0, 5, 9, 11, 12, 13]]
    a, b = ts.recommend(hs, k=5), rec.recommend(hs, k=5)
    assert [r.ids for r in a] == [r.ids for r in b]
    np.testing.assert_allclose([r.scores for r in a], [r.scores for r in b], atol=1e-5)


@pytest.mark.parametrize("history,pattern", [
    ([1, 99], r"histories\[0\]\[1\]: unknown item id 99 \(valid ids are 0..29\)"),
    ([-1], r"histories\[0\]\[0\]: unknown item id -1"),
    (["movie 1", "No Such Film"], r"histories\[0\]\[1\]: unknown item title 'No Such Film'"),
    (["12"], r"unknown item title '12'; item ids must be given as integers"),
    (["Twin"], r"item title 'Twin' is ambiguous \(ids \[28, 29\]\)"),
    ([True], r"expected an item id \(int\) or title \(str\), got bool"),
    ([1.5], r"got float"),
    ([], r"histories\[0\]: history is empty"),
    ("movie 1", r"histories\[0\]: expected a list"),
])
def test_bad_items_raise_value_error_naming_them(rec, history, pattern):
    with pytest.raises(ValueError, match=pattern) as ei:
        rec.recommend([history], k=3)
    assert isinstance(ei.value, RequestError) and ei.value.field.startswith("histories[0]")


@pytest.mark.parametrize("k", [0, -1, N + 1, True, "3", 2.0])
def test_bad_k(rec, k):
    with pytest.raises(ValueError, match="^k: ") as ei:
        rec.recommend([[1]], k=k)
    assert ei.value.field == "k"


def test_single_history_field_names_and_batch_type(rec):
    with pytest.raises(RequestError, match=r"^history\[0\]: unknown item id 1000"):
        rec.recommend_one([1000])
    with pytest.raises(RequestError, match="histories: expected a list of histories"):
        rec.recommend("movie 1")
    assert rec.recommend([], k=3) == []
    assert rec.recommend([[N - 1]], k=N)[0].ids and rec.recommend([[0]], k=1)[0].ids


def test_metadata(rec):
    md = rec.metadata()
    assert md["model"]["name"] == "sasrec" and md["dataset"]["name"] == "tiny" and md["backend"] == "torch"
    assert md["n_items"] == N and md["max_len"] == L


def test_faiss_index_matches_exact(bundle, rec):
    pytest.importorskip("faiss")
    f = Recommender.load(bundle, index="faiss")
    hs = [[1, 2, 3], [7]]
    assert [r.ids for r in f.recommend(hs, k=5)] == [r.ids for r in rec.recommend(hs, k=5)]
    np.testing.assert_allclose([r.scores for r in f.recommend(hs, k=5)], [r.scores for r in rec.recommend(hs, k=5)],
                               rtol=1e-4)
    h = Recommender.load(bundle, index="faiss", faiss_kind="hnsw")  # approximate: valid, excluded, k long
    for r, hist in zip(h.recommend(hs, k=5), hs):
        assert len(r.ids) == 5 and not set(r.ids) & set(hist)


def test_faiss_missing_is_a_clear_error(bundle):
    try:
        import faiss  # noqa: F401
    except ImportError:
        from dllm2rec.errors import MissingDependencyError

        with pytest.raises(MissingDependencyError, match="faiss"):
            Recommender.load(bundle, index="faiss")
    else:
        pytest.skip("faiss is installed")


def test_bad_backend_and_index(bundle):
    with pytest.raises(ValueError, match="unknown backend"):
        Recommender.load(bundle, backend="tensorrt")
    with pytest.raises(ValueError, match="unknown index"):
        Recommender.load(bundle, index="annoy")

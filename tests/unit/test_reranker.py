"""The LLM reranker teacher (teachers/reranker*.py) on a tiny offline LLaMA + a locally trained tokenizer.

The reranker module is imported inside the tests (not at collection): importing it registers the 'llm-rerank'
teacher, and tests/contracts/test_teachers.py compares the registry with its own recipe list.
"""
import json

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

from dllm2rec.errors import ConfigError  # noqa: E402
from dllm2rec.teachers.bigrec.tiny import make_tiny_llama, tiny_dataset  # noqa: E402

M = 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from dllm2rec.teachers.reranker_prompts import DEFAULT_LABELS, rerank_instruction

    tmp = tmp_path_factory.mktemp("rr")
    ds = tiny_dataset(n_train=40, n_eval=10)
    # the instruction and label lines in the tokenizer's corpus keep the tiny prompts short
    extra = [rerank_instruction("movies"), "Candidates:\n" + "\n".join(f'{c}. "' for c in DEFAULT_LABELS)]
    return ds, make_tiny_llama(tmp / "model", extra_texts=extra)


def _ref_tok(path):
    from dllm2rec.teachers.models import load_tokenizer, resolve_model

    ref = resolve_model(str(path))
    return ref, load_tokenizer(ref)


def _teacher(ds, path, **cfg):
    from dllm2rec.evaluation.baselines import popularity_scorer
    from dllm2rec.teachers.reranker import ModelRetriever, RerankerTeacher

    base = dict(model=str(path), top_n=M, steps=4, batch_size=4, warmup_steps=1, budget_rows=12, lr=5e-3,
                eval_batch=3, save_every=2, item_emb="random")
    return RerankerTeacher({**base, **cfg}, retriever=ModelRetriever(popularity_scorer(ds), name="popularity"))


def test_labels_are_single_tokens_and_bad_labels_are_refused(tiny):
    from dllm2rec.teachers.reranker import RerankerTeacher
    from dllm2rec.teachers.reranker_prompts import DEFAULT_LABELS, label_token_ids

    _, tok = _ref_tok(tiny[1])
    ids = label_token_ids(tok, DEFAULT_LABELS)
    assert len(ids) == 26 and len(set(ids)) == 26
    assert all(tok.decode([i]) == c for i, c in zip(ids, DEFAULT_LABELS))
    tok.add_tokens(["<lab-x>"])  # one more token: a two-character label is not one token
    with pytest.raises(ConfigError, match="label 'é'"):
        label_token_ids(tok, "Aé")  # 'é' is two bytes: two byte-level tokens (unmerged in this corpus)
    with pytest.raises(ConfigError, match="field 'labels'"):
        RerankerTeacher(top_n=5, labels="ABCD")
    with pytest.raises(ConfigError, match="field 'labels'"):
        RerankerTeacher(top_n=2, labels="AAB")


def test_prompt_lists_history_and_labelled_candidates(tiny):
    from dllm2rec.teachers.reranker_prompts import build_rerank_prompt

    p = build_rerank_prompt("movies", ["Heat (1995)", '"Fargo (1996)"'], ["Toy Story (1995)", "Jaws (1975)"], "AB")
    assert '"Heat (1995)", "Fargo (1996)"\nCandidates:\nA. "Toy Story (1995)"\nB. "Jaws (1975)"' in p
    assert p.endswith("### Response:\n") and "will watch next" in p
    assert build_rerank_prompt("movies", [], ["x" * 20], "A", max_chars=5).count('"xxxx…"') == 1


def test_verbalizer_reads_label_logits_at_the_answer_position(tiny):
    """Hand-checked: lm_head row of label A = 0 and of B = 3 h/|h|^2 (h = the answer position's final hidden state)
    give scores exactly [0, 3], whatever the other vocabulary rows hold; padding in a batch changes nothing."""
    import torch

    from dllm2rec.teachers.models import load_causal_lm
    from dllm2rec.teachers.reranker_prompts import build_rerank_prompt, label_logits, label_token_ids

    ref, tok = _ref_tok(tiny[1])
    model = load_causal_lm(ref)
    lab = label_token_ids(tok, "AB")
    p = build_rerank_prompt("movies", ["Alpha Delta (1960)"], ["Bravo Echo (1961)", "Comet Galaxy (1962)"], "AB")
    long = build_rerank_prompt("movies", ["Alpha Delta (1960)"] * 6, ["Bravo Echo (1961)", "Comet Galaxy (1962)"],
                               "AB")
    with torch.no_grad():
        h = model.model(**tok([p], return_tensors="pt")).last_hidden_state[0, -1]
        w = model.lm_head.weight
        w.copy_(100 * torch.randn_like(w))
        w[lab[0]] = 0.0
        w[lab[1]] = 3.0 * h / h.dot(h)
        s = label_logits(model, tok, [p], lab)
        sb = label_logits(model, tok, [long, p], lab)  # p left-padded behind a longer prompt
    assert s.shape == (1, 2)
    assert s[0].tolist() == pytest.approx([0.0, 3.0], abs=1e-4)
    assert sb[1].tolist() == pytest.approx([0.0, 3.0], abs=1e-4)


def test_scores_shape_rerank_is_a_permutation_and_fit_lowers_the_loss(tiny, tmp_path):
    from dllm2rec.teachers.reranker import full_ranks, reranked

    ds, path = tiny
    t = _teacher(ds, path, steps=12, budget_rows=8, lr=2e-2)
    t.fit(ds, out=tmp_path / "fit")
    losses = t.fit_info["losses"]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert (tmp_path / "fit" / "adapter" / "adapter_config.json").is_file()
    rows = np.arange(5)
    cands, sc = t.score(ds, "test", rows)
    assert cands.shape == sc.shape == (5, M) and np.isfinite(sc).all()
    order, osc = reranked(cands, sc)
    assert (np.sort(order, 1) == np.sort(cands, 1)).all() and (np.diff(osc, axis=1) <= 0).all()
    # hand-checked: best score first, equal scores keep the retriever's order
    o, s = reranked(np.array([[5, 6, 7]]), np.array([[0.0, 2.0, 2.0]]))
    assert o.tolist() == [[6, 7, 5]] and s.tolist() == [[2.0, 2.0, 0.0]]
    # hand-checked full ranking: candidate hits take their reranked position, misses keep the retriever's rank
    o = np.array([[7, 3, 5], [1, 2, 4]])
    assert full_ranks(o, np.array([5, 9]), np.array([0.0, 17.0])).tolist() == [2.0, 17.0]
    ev = t.compare(ds, "test", ks=(1, 5, 10), rows=rows)
    assert t.evaluate(ds, "test", ks=(1, 5, 10), rows=rows) == ev["reranker"]
    assert ev["rows"] == 5 and len(ev["ranks"]["reranker"]) == 5
    # below M the rankings differ only inside the candidates; a target outside them has the same rank in both
    rr, rt = np.array(ev["ranks"]["reranker"]), np.array(ev["ranks"]["retriever"])
    assert ((rr < M) == (rt < M)).all() and (rr[rt >= M] == rt[rt >= M]).all()
    # the saved adapter reloads to the same scores
    from dllm2rec.teachers.reranker import RerankerTeacher

    t2 = RerankerTeacher.load(tmp_path / "fit" / "adapter", retriever=t.retriever)
    assert np.allclose(t2.score(ds, "test", rows)[1], sc, atol=1e-4)


def test_artifacts_validate_and_resume_after_a_kill(tiny, tmp_path):
    from dllm2rec.teachers.artifacts import TeacherArtifacts

    ds, path = tiny
    t = _teacher(ds, path)
    t.fit(ds)
    rows = np.arange(0, 20)
    wd = tmp_path / "score"
    r1 = t.score_shards(ds, wd, rows, shard_size=6, max_shards=2)  # "killed" after two of four shards
    assert r1["finished"] == 2 and not r1["complete"]
    first = {p.name: p.stat().st_mtime_ns for p in wd.glob("shard-*.json")}
    partial = t.artifacts(ds, work_dir=wd)
    assert partial.covered.sum() == 12  # partial coverage: only the finished shards
    r2 = t.score_shards(ds, wd, rows, shard_size=6)
    assert r2["complete"] and r2["scored_now"] == 2 and r2["rows_now"] == 8
    assert all((wd / n).stat().st_mtime_ns == m for n, m in first.items())  # finished shards were not redone
    with pytest.raises(ConfigError, match="shard_size"):
        t.score_shards(ds, wd, rows, shard_size=5)
    with pytest.raises(ConfigError, match="shard_size"):
        t.artifacts(ds, rows=rows, work_dir=wd, shard_size=5)
    with pytest.raises(ConfigError, match="no plan.json"):
        t.artifacts(ds, work_dir=tmp_path / "empty")
    art = t.artifacts(ds, work_dir=wd)
    art.save(tmp_path / "art", ds)
    back = TeacherArtifacts.load(tmp_path / "art", ds)
    assert back.covered.sum() == 20 and back.covered[:20].all() and back.top_n == M
    assert back.manifest["teacher"] == "llm-rerank" and back.manifest["m"] == M
    assert back.manifest["dataset_interactions_fingerprint"] == ds.interactions_fingerprint()
    d = back.topk_dist[:20]
    assert (d >= 0).all() and (np.diff(d, axis=1) >= 0).all()  # -log softmax: ascending with rank
    assert np.allclose(np.exp(-d).sum(1), 1.0, atol=1e-5)     # a distribution over the M candidates
    # the same rows scored in memory give the same artifacts
    mem = t.artifacts(ds, rows=rows, item_emb=back.item_emb)
    assert (mem.topk_ids[:20] == back.topk_ids[:20]).all()
    # another dataset's artifacts are refused
    other = tiny_dataset(n_train=40, n_eval=10, seed=5)
    from dllm2rec.errors import ArtifactError

    with pytest.raises(ArtifactError, match="fingerprint"):
        TeacherArtifacts.load(tmp_path / "art", other)
    assert json.loads((wd / "plan.json").read_text())["decoding"]["reranker"] == "label-logits"


def _cli_setup(tiny, tmp_path):
    """(dataset, tiny model path, the reranker module's own typer app) with the dataset and a retriever saved under
    tmp_path/ds and tmp_path/student."""
    import typer

    from dllm2rec.cli.teacher_reranker import register
    from dllm2rec.students.base import build_student
    from dllm2rec.students.checkpoint import save_student

    ds, path = tiny
    ds.save(tmp_path / "ds")
    save_student(build_student("sasrec", ds.n_items, max_len=ds.max_len, dim=16), tmp_path / "student")
    app = typer.Typer()
    register(app)
    return ds, path, app


def test_cli_module_fit_evaluate_artifacts(tiny, tmp_path):
    """The module's typer app on its own (its registration in cli/teacher.py is one line, added separately)."""
    from typer.testing import CliRunner

    from dllm2rec.teachers.artifacts import TeacherArtifacts

    ds, path, app = _cli_setup(tiny, tmp_path)

    def cli(*args):
        res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return json.loads(res.output[res.output.index("{"):])

    common = [tmp_path / "ds", "--retriever", tmp_path / "student"]
    fit = cli("fit-reranker", *common, "--out", tmp_path / "fit", "--model", path, "--m", 4, "--steps", 2,
              "--budget-rows", 4, "--batch-size", 2, "--warmup-steps", 1, "--item-emb", "random")
    assert fit["steps"] == 2 and fit["finished"]
    ev = cli("evaluate-reranker", *common, "--reranker", tmp_path / "fit" / "adapter", "--split", "test",
             "--rows", 6, "--latency", 2)
    assert ev["rows"] == 6 and set(ev["table"]) == {"retriever", "reranker", "popularity"}
    assert ev["table"]["reranker"]["HR@20"]["mean"] == ev["table"]["retriever"]["HR@20"]["mean"] or ev["m"] > 20
    assert ev["latency_ms"]["requests"] == 2
    art = cli("rerank-artifacts", *common, "--reranker", tmp_path / "fit" / "adapter", "--work", tmp_path / "w",
              "--out", tmp_path / "art", "--budget", 10, "--shard-size", 4, "--item-emb", "random")
    assert art["complete"] and art["rows_covered"] == 10
    assert TeacherArtifacts.load(tmp_path / "art", ds).manifest["commands"]
    with pytest.raises(ConfigError, match="field 'labels'"):
        CliRunner().invoke(app, [str(a) for a in ["fit-reranker", *common, "--out", tmp_path / "bad", "--model",
                                                  path, "--m", 30]], catch_exceptions=False)


def test_cli_device_and_dtype_reach_the_model(tiny, tmp_path):
    """--device/--dtype (the GPU run's switches, benchmarks/gpu_reranker.sh) reach the LLM; a bad dtype is one line."""
    from typer.testing import CliRunner

    from dllm2rec.errors import Dllm2recError

    _, path, app = _cli_setup(tiny, tmp_path)
    common = [tmp_path / "ds", "--retriever", tmp_path / "student", "--model", path, "--m", 4, "--steps", 1,
              "--budget-rows", 2, "--batch-size", 2, "--warmup-steps", 0, "--item-emb", "random"]
    res = CliRunner().invoke(app, [str(a) for a in ["fit-reranker", *common, "--out", tmp_path / "fit",
                                                    "--device", "cpu", "--dtype", "bfloat16"]],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "fit" / "adapter" / "reranker.json").read_text())
    assert info["config"]["dtype"] == "bfloat16" and info["config"]["device"] == "cpu"
    with pytest.raises(Dllm2recError, match="unknown dtype 'int8'"):
        CliRunner().invoke(app, [str(a) for a in ["fit-reranker", *common, "--out", tmp_path / "bad",
                                                  "--dtype", "int8"]], catch_exceptions=False)

